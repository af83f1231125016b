//! W2 of `bench/SPEC.md`: the audio front end (μ-law decode → 8→16 kHz resample → VAD) as an
//! ordinary pipeline, fed flat with at most `--window` input frames in flight.
//!
//! `w2 [--audio PATH] [--window 64]`; PATH defaults to `../shared/bench/audio/call_8k.ulaw`
//! relative to the repository root (a relative PATH is tried against the working directory, the
//! repository root and `../shared`). Prints one JSON line; logs go to stderr.
//!
//! Frame identity: every input frame carries `pts = index · 20 ms`; the decoder and resampler keep
//! it, the VAD reports the `pts` of the frame whose processing produced a change, and the sink
//! marks frames done by index (frames arrive in order, so a frame dropped upstream counts as
//! done once a later one arrives, and at `End`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use voxline::pipeline::{AudioFormat, AudioFrame, Frame, Pipeline, PipelineParams, PipelineTask, processor_fn};
use voxline::processors::audio::{Resampler, VadProcessor};
use voxline::processors::codec::MulawDecoder;

const FRAME_BYTES: usize = 160;
const FRAME_SECS: f64 = 0.020;
const WARMUP_FRAMES: usize = 250;

struct Args {
    audio: PathBuf,
    window: u64,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut audio = None;
    let mut window = 64u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--audio" => audio = Some(it.next().ok_or("--audio needs a path")?.clone()),
            "--window" => {
                let v = it.next().ok_or("--window needs a number")?;
                window = v.parse().map_err(|_| format!("--window: not a number: {v}"))?;
                if window == 0 {
                    return Err("--window must be at least 1".into());
                }
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    let audio = match audio {
        None => root.join("../shared/bench/audio/call_8k.ulaw"),
        Some(p) => {
            let p = PathBuf::from(p);
            let candidates = [p.clone(), root.join(&p), root.join("../shared").join(&p)];
            candidates.iter().find(|c| c.exists()).cloned().unwrap_or(p)
        }
    };
    Ok(Args { audio, window })
}

/// Process CPU time (user + system) from `/proc/self/stat`, in seconds (USER_HZ = 100 on Linux).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (tick(11) + tick(12)) / 100.0
}

/// `[start_s, stop_s]` detection times; `None` while speech is still on.
type Segments = Vec<(f64, Option<f64>)>;

struct RunResult {
    wall_s: f64,
    cpu_s: f64,
    segments: Segments,
    start_secs: f64,
    stop_secs: f64,
}

async fn run(frames: &[&[u8]], window: u64) -> anyhow::Result<RunResult> {
    let segments: Arc<Mutex<Segments>> = Arc::default();
    let seg_sink = segments.clone();
    let vad = VadProcessor::new().on_transition(move |t| {
        let at = t.frame_pts.map_or(f64::NAN, |p| p.as_secs_f64()) + FRAME_SECS;
        let mut s = seg_sink.lock().unwrap_or_else(|p| p.into_inner());
        if t.speaking {
            s.push((at, None));
        } else if let Some(last) = s.last_mut() {
            last.1 = Some(at);
        }
    });
    let (start_secs, stop_secs) = (vad.start_delay().as_secs_f64(), vad.stop_delay().as_secs_f64());

    // Frames done = highest index seen at the sink + 1 (in-order delivery).
    let done = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    let (done_sink, notify_sink) = (done.clone(), notify.clone());
    let sink = processor_fn("sink", move |frame, dir, cx| {
        if let Frame::InputAudio(AudioFrame { pts: Some(pts), .. }) = &frame {
            let idx = (pts.as_micros() / 20_000) as u64;
            done_sink.fetch_max(idx + 1, Ordering::Release);
            notify_sink.notify_one();
        }
        cx.push_now(frame, dir);
        Ok(())
    });
    let pipeline = Pipeline::new().with(MulawDecoder::new()).with(Resampler::new(8000, 16_000)?).with(vad).with(sink);
    let mut params = PipelineParams::default();
    params.start.input_audio = AudioFormat::mulaw_8k();
    params.name = "w2".into();
    let task = PipelineTask::new(pipeline, params);
    let handle = task.handle();
    let join = tokio::spawn(task.run());

    let total = frames.len() as u64;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for (i, payload) in frames.iter().enumerate() {
        let i = i as u64;
        while i - done.load(Ordering::Acquire).min(i) >= window {
            notify.notified().await;
        }
        let mut audio = AudioFrame::new(Bytes::copy_from_slice(payload), AudioFormat::mulaw_8k());
        audio.pts = Some(Duration::from_micros(i * 20_000));
        handle.push(Frame::InputAudio(audio)).await.map_err(|_| anyhow::anyhow!("pipeline closed early"))?;
    }
    handle.end().await.map_err(|_| anyhow::anyhow!("pipeline closed early"))?;
    // The last frame is done when it reaches the sink; `End` behind it settles any dropped tail.
    let wait_last = async {
        while done.load(Ordering::Acquire) < total {
            notify.notified().await;
        }
    };
    let report = tokio::select! {
        biased;
        () = wait_last => None,
        r = join => Some(r?),
    };
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu0;
    if let Some(r) = report {
        eprintln!("w2: pipeline finished before the last frame was seen at the sink: {:?}", r.outcome);
    }
    let segments = segments.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(RunResult { wall_s, cpu_s, segments, start_secs, stop_secs })
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

pub(crate) fn main(args: &[String]) {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("w2: {e}\nusage: bench w2 [--audio PATH] [--window 64]");
            std::process::exit(2);
        }
    };
    let bytes = match std::fs::read(&args.audio) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("w2: cannot read {}: {e}", args.audio.display());
            std::process::exit(1);
        }
    };
    let frames: Vec<&[u8]> = bytes.chunks_exact(FRAME_BYTES).collect();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("w2: runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        run(&frames[..WARMUP_FRAMES.min(frames.len())], args.window).await?;
        run(&frames, args.window).await
    });
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("w2: {e}");
            std::process::exit(1);
        }
    };
    let n = frames.len();
    let audio_s = n as f64 * FRAME_SECS;
    let segments: Vec<serde_json::Value> =
        r.segments.iter().map(|(s, e)| serde_json::json!([round(*s, 3), e.map(|e| round(e, 3))])).collect();
    let line = serde_json::json!({
        "workload": "w2",
        "engine": "voxline",
        "frames": n,
        "audio_s": round(audio_s, 3),
        "wall_s": r.wall_s,
        "rtf": r.wall_s / audio_s,
        "cpu_s": round(r.cpu_s, 3),
        "us_per_frame": r.wall_s / n as f64 * 1e6,
        "segments": segments,
        "start_secs": round(r.start_secs, 4),
        "stop_secs": round(r.stop_secs, 4),
        "window": args.window,
        "vad": "earshot",
    });
    println!("{line}");
}
