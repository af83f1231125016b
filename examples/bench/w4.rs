//! W4: how many concurrent pipelines one core sustains in real time.
//!
//! K pipelines of source → μ-law decode → resample 8→16 kHz → VAD → 3 pass-throughs → sink,
//! each fed 20 ms frames on its own real-time schedule (phase-spread over 1 s) through the lossy
//! input-audio lane a socket reader uses, with delivery lateness ("jitter") measured at the sink.
//! `--turn 1` puts the end-of-turn detector behind every VAD (200 ms stop) with a stand-in model
//! that answers at once: the media path's share of the turn model (full-band 16 kHz window, a
//! copy of the turn's audio per stop) is counted on this core; the inferences themselves run on
//! the worker thread(s) of another core (see the README, W6, for their cost).
//! Without `--pipelines`, searches for the largest K that passes, running each K in a fresh child
//! process pinned to core 0.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use voxline::pipeline::sync::lock;

use bytes::Bytes;
use serde_json::{Value, json};
use voxline::pipeline::{
    AudioFormat, AudioFrame, Frame, PassThrough, Pipeline, PipelineParams, PipelineTask, processor_fn,
};
use voxline::processors::audio::{Resampler, VadProcessor};
use voxline::processors::codec::MulawDecoder;

use crate::common::{Opts, cpu_seconds, percentile, rss_mb, runtime};

pub(crate) const TOTAL_FRAMES: usize = 3118;
const FRAME: Duration = Duration::from_millis(20);

pub(crate) fn load_audio(o: &Opts) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = o.string("audio").map_or_else(|| root.join("../shared/bench/audio/call_8k.ulaw"), PathBuf::from);
    match std::fs::read(&path) {
        Ok(b) if b.len() >= 160 * TOTAL_FRAMES => b,
        Ok(_) | Err(_) => {
            eprintln!("cannot read the test call {}", path.display());
            std::process::exit(2);
        }
    }
}

/// One W4/W5 pipeline; `on_frame(pts)` runs at the sink for every delivered frame.
/// A stand-in end-of-turn model: "complete" at once (the inference's own cost is off this core).
struct InstantTurn;

impl voxline::processors::audio::turn::TurnModel for InstantTurn {
    fn submit(
        &self,
        audio_16k: Vec<f32>,
    ) -> Result<voxline::processors::audio::turn::TurnAnswer, voxline::processors::audio::turn::TurnError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Touch the audio as a worker would receive it (it crossed a queue), then answer.
        let _ = tx.send(Ok(if audio_16k.is_empty() { 0.0 } else { 0.9 }));
        Ok(rx)
    }
}

pub(crate) fn build(vad: bool, on_frame: impl Fn(Duration) + Send + 'static) -> Pipeline {
    build_with(vad, false, on_frame)
}

pub(crate) fn build_with(vad: bool, turn: bool, on_frame: impl Fn(Duration) + Send + 'static) -> Pipeline {
    let sink = processor_fn("sink", move |frame, _dir, _cx| {
        if let Frame::InputAudio(a) = &frame
            && let Some(pts) = a.pts
        {
            on_frame(pts);
        }
        Ok(())
    });
    let mut p = Pipeline::new().with(MulawDecoder::new());
    match Resampler::new(8000, 16_000) {
        Ok(r) => p = p.with(r),
        Err(e) => {
            eprintln!("resampler: {e}");
            std::process::exit(1);
        }
    }
    if vad && turn {
        use voxline::processors::audio::VadParams;
        use voxline::processors::audio::turn::{TurnDetector, TurnParams};
        let v = VadProcessor::with_params(VadParams { stop_secs: 0.2, ..VadParams::default() }).and_then(|v| {
            let d = TurnDetector::new(Box::new(InstantTurn), TurnParams::default())
                .map_err(voxline::pipeline::FlowError::fatal)?;
            Ok(v.with_turn_detector(d))
        });
        match v {
            Ok(v) => p = p.with(v),
            Err(e) => {
                eprintln!("vad: {e}");
                std::process::exit(1);
            }
        }
    } else if vad {
        p = p.with(VadProcessor::new());
    }
    p.with(PassThrough).with(PassThrough).with(PassThrough).with(sink)
}

pub(crate) fn params() -> PipelineParams {
    let mut params = PipelineParams::default();
    params.start.input_audio = AudioFormat::mulaw_8k();
    params
}

#[derive(Default)]
struct Stats {
    jitter_ms: Vec<f32>,
    delivered: u64,
    last_index: i64,
}

fn single(k: usize, seconds: usize, warmup: usize, audio: Arc<Vec<u8>>, turn: bool) -> Value {
    let rt = runtime();
    rt.block_on(async move {
        let rss0 = rss_mb();
        let t_setup = Instant::now();
        let per = (warmup + seconds) * 50;
        let warm_frames = (warmup * 50) as i64;
        // Every due time is `base + pts`; `base` is fixed once all pipelines exist.
        let base_cell: Arc<std::sync::OnceLock<Instant>> = Arc::default();
        let mut lanes = Vec::with_capacity(k);
        let mut joins = Vec::with_capacity(k);
        let mut all_stats = Vec::with_capacity(k);
        for idx in 0..k {
            let stats = Arc::new(Mutex::new(Stats { last_index: -1, ..Default::default() }));
            let phase = Duration::from_secs(1) * idx as u32 / k as u32;
            let (st, cell) = (stats.clone(), base_cell.clone());
            let p = build_with(true, turn, move |pts| {
                let now = Instant::now();
                let Some(base) = cell.get() else { return };
                let i = (pts.saturating_sub(phase).as_micros() / 20_000) as i64;
                let mut s = lock(&st);
                s.delivered += 1;
                s.last_index = s.last_index.max(i);
                if i >= warm_frames {
                    let late = now.saturating_duration_since(*base + pts);
                    s.jitter_ms.push(late.as_secs_f32() * 1e3);
                }
            });
            let (h, j) = PipelineTask::new(p, params()).spawn();
            lanes.push((h, phase));
            joins.push(j);
            all_stats.push(stats);
        }
        // Let every task run its start-up (Start frame through every stage).
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let setup_s = t_setup.elapsed().as_secs_f64();
        let base = Instant::now() + Duration::from_millis(200);
        let _ = base_cell.set(base);
        let mut feeders = Vec::with_capacity(k);
        for (idx, (h, phase)) in lanes.into_iter().enumerate() {
            let audio = audio.clone();
            feeders.push(tokio::spawn(async move {
                let start = (idx * 211) % TOTAL_FRAMES;
                for i in 0..per {
                    let pts = phase + FRAME * i as u32;
                    tokio::time::sleep_until((base + pts).into()).await;
                    let f = (start + i) % TOTAL_FRAMES;
                    let payload = Bytes::copy_from_slice(&audio[f * 160..(f + 1) * 160]);
                    let mut a = AudioFrame::new(payload, AudioFormat::mulaw_8k());
                    a.pts = Some(pts);
                    h.push_input_audio(Frame::InputAudio(a));
                }
                h
            }));
        }
        tokio::time::sleep_until((base + Duration::from_secs(warmup as u64)).into()).await;
        let cpu0 = cpu_seconds();
        let t_cpu = Instant::now();
        let last_due = base + Duration::from_secs(1) + FRAME * (per as u32 - 1);
        let grace = last_due + Duration::from_secs(1);
        loop {
            let all_in = all_stats.iter().all(|s| lock(s).last_index + 1 >= per as i64);
            if all_in || Instant::now() >= grace {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = t_cpu.elapsed().as_secs_f64();
        let cpu_pct = 100.0 * (cpu_seconds() - cpu0) / wall;
        let rss = rss_mb();
        let mut handles = Vec::new();
        for f in feeders {
            if let Ok(h) = f.await {
                handles.push(h);
            }
        }
        let done: i64 = all_stats.iter().map(|s| (lock(s).last_index + 1).min(per as i64)).sum();
        let delivered: u64 = all_stats.iter().map(|s| lock(s).delivered).sum();
        let mut jitter: Vec<f64> = all_stats
            .iter()
            .flat_map(|s| lock(s).jitter_ms.iter().map(|x| f64::from(*x)).collect::<Vec<_>>())
            .collect();
        jitter.sort_by(f64::total_cmp);
        for h in &handles {
            let _ = h.cancel();
        }
        for j in joins {
            let _ = j.await;
        }
        let p99 = percentile(&jitter, 99.0);
        let fed = (k * per) as i64;
        json!({
            "workload": "w4",
            "engine": "voxline",
            "pipelines": k,
            "turn_detector": turn,
            "seconds": seconds,
            "setup_s": setup_s,
            "frames_fed": fed,
            "frames_done": done,
            "frames_delivered": delivered,
            "jitter_p50_ms": percentile(&jitter, 50.0),
            "jitter_p99_ms": p99,
            "jitter_max_ms": jitter.last().copied().unwrap_or(f64::NAN),
            "cpu_pct": cpu_pct,
            "rss_mb": rss,
            "rss_per_pipeline_mb": (rss - rss0) / k as f64,
            "pass": done == fed && p99 < 20.0,
        })
    })
}

fn child(k: usize, o: &Opts) -> Option<Value> {
    let exe = std::env::current_exe().ok()?;
    let mut cmd = std::process::Command::new("taskset");
    cmd.arg("-c").arg("0").arg(exe).arg("w4").arg("--pipelines").arg(k.to_string());
    for key in ["seconds", "warmup", "audio", "turn"] {
        if let Some(v) = o.string(key) {
            cmd.arg(format!("--{key}")).arg(v);
        }
    }
    let out = cmd.stderr(std::process::Stdio::inherit()).output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).ok()
}

pub(crate) fn main(args: &[String]) {
    let o = Opts::parse(args);
    let seconds: usize = o.get("seconds", 10);
    let warmup: usize = o.get("warmup", 2);
    if o.has("pipelines") {
        let k: usize = o.get("pipelines", 1).max(1);
        let audio = Arc::new(load_audio(&o));
        println!("{}", single(k, seconds, warmup, audio, o.has("turn")));
        return;
    }
    let mut tried: Vec<Value> = Vec::new();
    let mut ks: Vec<usize> = vec![1, 10, 50, 100, 200, 500, 1000, 2000];
    let mut k = 4000;
    while k <= 32_000 {
        ks.push(k);
        k *= 2;
    }
    let (mut best, mut first_fail): (Option<Value>, Option<usize>) = (None, None);
    let passes = |v: &Value| v["pass"].as_bool().unwrap_or(false);
    for k in ks {
        let Some(v) = child(k, &o) else { break };
        eprintln!("w4 K={k}: jitter p99 {:.1} ms, cpu {:.0}%, pass {}", v["jitter_p99_ms"], v["cpu_pct"], v["pass"]);
        tried.push(v.clone());
        if passes(&v) {
            best = Some(v);
        } else {
            first_fail = Some(k);
            break;
        }
    }
    if let (Some(fail), Some(b)) = (first_fail, best.clone()) {
        let mut lo = b["pipelines"].as_u64().unwrap_or(1) as usize;
        let mut hi = fail;
        for _ in 0..3 {
            if hi - lo <= (lo / 10).max(2) {
                break;
            }
            let mid = (lo + hi) / 2;
            let Some(v) = child(mid, &o) else { break };
            eprintln!("w4 K={mid}: jitter p99 {:.1} ms, pass {}", v["jitter_p99_ms"], v["pass"]);
            tried.push(v.clone());
            if passes(&v) {
                lo = mid;
                best = Some(v);
            } else {
                hi = mid;
                first_fail = Some(mid);
            }
        }
    }
    let b = best.unwrap_or(Value::Null);
    println!(
        "{}",
        json!({
            "workload": "w4",
            "engine": "voxline",
            "max_pipelines": b["pipelines"],
            "cpu_pct": b["cpu_pct"],
            "jitter_p99_ms": b["jitter_p99_ms"],
            "rss_per_pipeline_mb": b["rss_per_pipeline_mb"],
            "first_failing": first_fail,
            "tried": tried,
        })
    );
}
