//! W6: turn-taking on a labelled corpus (`benches/w6/make_corpus.py`): when does the caller's turn
//! end, does a thinking pause end it early, does a backchannel or a tone count as barge-in.
//!
//! `w6 --corpus DIR [--start-ms 200] [--stop-ms 200 (400 without a model)] [--fallback-ms 2000] [--min-barge-in-ms 300] [--no-model]
//!     [--model PATH] [--text-guard]`
//!
//! Runs the phone bot's front end exactly as `VadProcessor` does (analysis upsampler → earshot VAD
//! with tone rejection; full-band upsampler → [`TurnDetector`] → smart-turn v3.2), in **stream
//! time**: each clip is fed 20 ms at a time as fast as the CPU allows, and every decision is
//! stamped with the stream position at which the engine would have taken it. A model verdict is
//! stamped `stop decided + inference time` (the inference runs synchronously here and is timed;
//! on a call it runs on the worker thread while audio keeps flowing). Without the `smart-turn`
//! feature, or with `--no-model`, every VAD stop is the end of the turn (the configuration
//! without a model).
//!
//! `--text-guard` adds the user aggregator's textual rule on top (a turn whose text ends on "is",
//! "the", "uh", a comma… waits up to 900 ms after the VAD stop for the caller to go on). Its text
//! is the corpus's own, split at the pauses: a perfect STT whose final is in by the decision. The
//! phone bot has the rule on with a real STT, and waits for the final (~100 ms after a Finalize).
//!
//! `--speculate` (implies `--text-guard`) adds the user aggregator's speculation: at a VAD stop
//! whose text reads complete the LLM is asked at once; speech resuming cancels it, the turn end
//! uses it. Each turn end then has an `llm_requests` time (the speculation's, or the turn end's).
//!
//! Prints one JSON line per clip (`benches/w6/README.md` has the schema; `score.py` scores it)
//! and a final summary line `{"workload":"w6","engine":"voxline",...}`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use voxline::processors::audio::turn::{
    Inference, TurnAnswer, TurnDetector, TurnEnd, TurnError, TurnModel, TurnParams,
};
use voxline::processors::audio::vad::VadChange;
use voxline::processors::audio::{EarshotVad, StreamResampler, VadParams, VadSegmenter, VadState};
use voxline::processors::codec::g711;

struct Args {
    corpus: PathBuf,
    start_ms: u64,
    stop_ms: u64,
    fallback_ms: u64,
    min_barge_in_ms: u64,
    model: bool,
    model_path: Option<PathBuf>,
    text_guard: bool,
    speculate: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        corpus: PathBuf::new(),
        start_ms: 200,
        stop_ms: 200,
        fallback_ms: 2000,
        min_barge_in_ms: 300,
        model: cfg!(feature = "smart-turn"),
        model_path: None,
        text_guard: false,
        speculate: false,
    };
    let mut corpus = None;
    let mut it = args.iter();
    let num = |v: Option<&String>, name: &str| -> Result<u64, String> {
        let v = v.ok_or(format!("{name} needs a number"))?;
        v.parse().map_err(|_| format!("{name}: not a number: {v}"))
    };
    while let Some(x) = it.next() {
        match x.as_str() {
            "--corpus" => corpus = Some(PathBuf::from(it.next().ok_or("--corpus needs a directory")?)),
            "--start-ms" => a.start_ms = num(it.next(), "--start-ms")?,
            "--stop-ms" => a.stop_ms = num(it.next(), "--stop-ms")?,
            "--fallback-ms" => a.fallback_ms = num(it.next(), "--fallback-ms")?,
            "--min-barge-in-ms" => a.min_barge_in_ms = num(it.next(), "--min-barge-in-ms")?,
            "--no-model" => a.model = false,
            "--text-guard" => a.text_guard = true,
            "--speculate" => {
                a.speculate = true;
                a.text_guard = true;
            }
            "--model" => a.model_path = Some(PathBuf::from(it.next().ok_or("--model needs a path")?)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    a.corpus = corpus.ok_or("--corpus DIR is required (make it with benches/w6/make_corpus.py)")?;
    // Without a model the VAD stop is the turn end: the phone bot's 400 ms, unless told.
    if !a.model && !args.iter().any(|x| x == "--stop-ms") {
        a.stop_ms = 400;
    }
    Ok(a)
}

/// Runs the model synchronously inside `submit` and keeps how long it took: the benchmark stamps
/// the verdict at `submitted + inference time` rather than at the next frame it polls.
#[derive(Clone)]
struct Timed {
    #[cfg(feature = "smart-turn")]
    model: Arc<Mutex<voxline::processors::audio::turn::SmartTurn>>,
    last: Arc<Mutex<Option<(Duration, f32)>>>,
}

impl TurnModel for Timed {
    fn submit(&self, audio_16k: Vec<f32>) -> Result<TurnAnswer, TurnError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        #[cfg(feature = "smart-turn")]
        {
            let t0 = std::time::Instant::now();
            let p = self.model.lock().unwrap_or_else(|p| p.into_inner()).predict(&audio_16k)?;
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((t0.elapsed(), p));
            let _ = tx.send(Ok(p));
        }
        #[cfg(not(feature = "smart-turn"))]
        {
            let _ = (audio_16k, tx);
        }
        Ok(rx)
    }
}

#[cfg(feature = "smart-turn")]
fn load_model(path: Option<PathBuf>) -> Result<Timed, String> {
    use voxline::processors::audio::turn::{SmartTurn, default_model_path};
    let path = path.or_else(default_model_path).ok_or("no model path: set VOXLINE_SMART_TURN_MODEL")?;
    let model = SmartTurn::load(&path).map_err(|e| e.to_string())?;
    Ok(Timed { model: Arc::new(Mutex::new(model)), last: Arc::default() })
}

#[cfg(not(feature = "smart-turn"))]
fn load_model(_path: Option<PathBuf>) -> Result<Timed, String> {
    Err("this binary was built without the smart-turn feature (cargo build --release --example bench --features smart-turn)".into())
}

/// A turn ends at `t`: the LLM was asked then, or earlier by a speculation still standing.
fn end_turn(
    t: f64,
    ends: &mut Vec<Value>,
    requests: &mut Vec<Value>,
    spec_at: &mut Option<f64>,
    counts: &mut [u32; 3],
) {
    ends.push(json!(t));
    match spec_at.take() {
        Some(at) => {
            counts[1] += 1;
            requests.push(json!(at.min(t)));
        }
        None => requests.push(json!(t)),
    }
}

/// The engine column's name: which of Voxline's turn configurations ran.
fn engine_name(args: &Args, model: bool) -> String {
    let how =
        if model { format!("smart-turn, stop {} ms", args.stop_ms) } else { format!("VAD stop {} ms", args.stop_ms) };
    if args.speculate {
        format!("voxline ({how} + text + speculation)")
    } else if args.text_guard {
        format!("voxline ({how} + text)")
    } else {
        format!("voxline ({how})")
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 1e4
}

fn within(intervals: &Value, t: f64) -> bool {
    intervals.as_array().is_some_and(|v| {
        v.iter().any(|iv| {
            let s = iv.get(0).and_then(Value::as_f64).unwrap_or(f64::INFINITY);
            let e = iv.get(1).and_then(Value::as_f64).unwrap_or(f64::NEG_INFINITY);
            s <= t && t <= e
        })
    })
}

struct ClipResult {
    line: Value,
    inference_ms: Vec<f64>,
}

fn run_clip(args: &Args, model: Option<&Timed>, clip: &Value, ulaw: &[u8]) -> Result<ClipResult, String> {
    let vad_params = VadParams {
        start_secs: args.start_ms as f32 / 1000.0,
        stop_secs: args.stop_ms as f32 / 1000.0,
        min_barge_in_secs: args.min_barge_in_ms as f32 / 1000.0,
        ..VadParams::default()
    };
    let mut seg = VadSegmenter::new(Box::new(EarshotVad::new()), vad_params)?;
    let mut analysis = StreamResampler::for_analysis(8000, 16_000).map_err(|e| e.to_string())?;
    let mut full = StreamResampler::new(8000, 16_000).map_err(|e| e.to_string())?;
    let mut detector = match model {
        Some(m) => {
            let p = TurnParams { fallback: Duration::from_millis(args.fallback_ms), ..TurnParams::default() };
            Some(TurnDetector::new(Box::new(m.clone()), p)?)
        }
        None => None,
    };
    let bot = clip.get("bot_speaking").cloned().unwrap_or(Value::Null);
    let min_barge_in = Duration::from_millis(args.min_barge_in_ms);
    let (mut vad, mut vad_decided, mut turn_ends, mut barge_ins, mut inferences) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut inference_ms = Vec::new();
    let mut barged = false;
    // The text guard: the caller's words up to each pause (the corpus marks pauses with "...").
    let parts: Vec<String> =
        clip.get("text").and_then(Value::as_str).unwrap_or("").split("...").map(|p| p.trim().to_string()).collect();
    let pause_ends: Vec<f64> = clip
        .get("pauses")
        .and_then(Value::as_array)
        .map(|v| v.iter().filter_map(|p| p.get(1).and_then(Value::as_f64)).collect())
        .unwrap_or_default();
    let (mut last_stop, mut guard_until) = (Duration::ZERO, None::<Duration>);
    let (mut spec_at, mut llm_requests, mut spec_counts) = (None::<f64>, Vec::new(), [0u32; 3]);
    let incomplete = voxline::processors::llm::DEFAULT_INCOMPLETE_TIMEOUT;
    // The words recognised by `t` (a perfect STT): how the turn so far ends is how its latest
    // part ends, the one after the last pause the caller has resumed from.
    let text_at = |t: f64| -> &str {
        let heard = pause_ends.iter().filter(|&&p| p < t).count().min(parts.len().saturating_sub(1));
        parts.get(heard).map_or("", String::as_str)
    };
    // Where a turn end at `t` lands once the aggregator's text rule has looked at it.
    let guarded = |t: f64, last_stop: Duration| -> Option<Duration> {
        if !args.text_guard {
            return None;
        }
        let text = text_at(t);
        let until = last_stop + incomplete;
        (voxline::processors::llm::reads_unfinished(text) && t < until.as_secs_f64()).then_some(until)
    };
    let (mut a16, mut f16) = (Vec::with_capacity(320), Vec::with_capacity(320));
    let mut record = |inf: Option<Inference>, model: Option<&Timed>, inferences: &mut Vec<Value>| -> Option<f64> {
        let inf = inf?;
        let (took, p) = model.and_then(|m| *m.last.lock().unwrap_or_else(|p| p.into_inner()))?;
        let at = inf.submitted + took;
        let complete = p > TurnParams::default().threshold;
        inference_ms.push(took.as_secs_f64() * 1e3);
        inferences.push(json!({"at": secs(at), "prob": p, "complete": complete, "cpu_ms": took.as_secs_f64() * 1e3}));
        Some(secs(at))
    };
    for chunk in ulaw.chunks(160) {
        let pcm: Vec<i16> = chunk.iter().map(|&c| g711::mulaw_decode(c)).collect();
        a16.clear();
        analysis
            .push(pcm.iter().copied(), |c| a16.extend(c.iter().map(|&x| (x * 32768.0).clamp(-32768.0, 32767.0) as i16)))
            .map_err(|e| e.to_string())?;
        if let Some(d) = detector.as_mut() {
            f16.clear();
            full.push(pcm.iter().copied(), |c| f16.extend_from_slice(c)).map_err(|e| e.to_string())?;
            d.push_audio(&f16);
        }
        let mut changes = Vec::new();
        let mut raw_ends: Vec<f64> = Vec::new();
        seg.push(&a16, |c| changes.push(c));
        let now = seg.position();
        for c in changes {
            match c {
                VadChange::Started { onset } => {
                    guard_until = None;
                    if spec_at.take().is_some() {
                        spec_counts[2] += 1;
                    }
                    vad.push(json!([secs(onset), null]));
                    vad_decided.push(json!([secs(now), null]));
                    if let Some(d) = detector.as_mut() {
                        d.on_speech_started();
                    }
                }
                VadChange::Stopped { offset } => {
                    barged = false;
                    last_stop = now;
                    if let Some(last) = vad.last_mut() {
                        last[1] = json!(secs(offset));
                    }
                    if let Some(last) = vad_decided.last_mut() {
                        last[1] = json!(secs(now));
                    }
                    if args.speculate
                        && spec_at.is_none()
                        && !voxline::processors::llm::reads_unfinished(text_at(now.as_secs_f64()))
                    {
                        spec_at = Some(secs(now));
                        spec_counts[0] += 1;
                    }
                    let ended = match detector.as_mut() {
                        None => true,
                        Some(d) => d.on_speech_stopped(now).is_some(),
                    };
                    if ended {
                        raw_ends.push(secs(now));
                    }
                }
            }
        }
        let speaking = matches!(seg.state(), VadState::Speaking | VadState::Stopping);
        if speaking && !barged && seg.speaking_for() >= min_barge_in && within(&bot, now.as_secs_f64()) {
            barged = true;
            barge_ins.push(json!(secs(now)));
        }
        if let Some(d) = detector.as_mut()
            && d.waiting()
        {
            let end = d.poll(now);
            let answered = record(d.take_inference(), model, &mut inferences);
            match end {
                // The verdict was ready the moment the inference finished, not at this frame.
                Some(TurnEnd::Model { .. }) => raw_ends.push(answered.unwrap_or(secs(now))),
                Some(_) => raw_ends.push(secs(now)),
                None => {}
            }
        }
        for t in raw_ends.drain(..) {
            match guarded(t, last_stop) {
                Some(until) => guard_until = Some(until),
                None => end_turn(t, &mut turn_ends, &mut llm_requests, &mut spec_at, &mut spec_counts),
            }
        }
        if let Some(until) = guard_until
            && now >= until
        {
            guard_until = None;
            end_turn(secs(until), &mut turn_ends, &mut llm_requests, &mut spec_at, &mut spec_counts);
        }
    }
    let id = clip.get("id").cloned().unwrap_or(Value::Null);
    let engine = engine_name(args, model.is_some());
    let line = json!({
        "id": id, "engine": engine, "vad": vad, "vad_decided": vad_decided,
        "turn_ends": turn_ends, "barge_ins": barge_ins, "inferences": inferences,
        "llm_requests": llm_requests, "speculations": spec_counts,
    });
    Ok(ClipResult { line, inference_ms })
}

/// Entry point of `bench w6`.
pub(crate) fn main(args: &[String]) {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("w6: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("w6: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let manifest_path = args.corpus.join("manifest.jsonl");
    let manifest = std::fs::read_to_string(&manifest_path).map_err(|e| {
        format!("cannot read {}: {e} (make it with benches/w6/make_corpus.py)", manifest_path.display())
    })?;
    let model = if args.model { Some(load_model(args.model_path.clone())?) } else { None };
    let (mut clips, mut all_ms, mut audio_s) = (0usize, Vec::new(), 0.0);
    let t0 = std::time::Instant::now();
    for (n, line) in manifest.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let clip: Value = serde_json::from_str(line).map_err(|e| format!("manifest line {}: {e}", n + 1))?;
        let file = clip.get("file").and_then(Value::as_str).ok_or(format!("manifest line {}: no file", n + 1))?;
        let ulaw = std::fs::read(args.corpus.join(file)).map_err(|e| format!("{file}: {e}"))?;
        audio_s += ulaw.len() as f64 / 8000.0;
        let r = run_clip(args, model.as_ref(), &clip, &ulaw)?;
        println!("{}", r.line);
        all_ms.extend(r.inference_ms);
        clips += 1;
    }
    let wall = t0.elapsed().as_secs_f64();
    all_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| all_ms.get(((all_ms.len() as f64 - 1.0) * q).round() as usize).copied();
    let mean = (!all_ms.is_empty()).then(|| all_ms.iter().sum::<f64>() / all_ms.len() as f64);
    println!(
        "{}",
        json!({
            "workload": "w6", "engine": engine_name(args, model.is_some()), "text_guard": args.text_guard,
            "model": if model.is_some() { "smart-turn-v3.2 (tract)" } else { "none (VAD stop ends the turn)" },
            "start_ms": args.start_ms, "stop_ms": args.stop_ms, "fallback_ms": args.fallback_ms, "min_barge_in_ms": args.min_barge_in_ms,
            "clips": clips, "audio_s": audio_s, "wall_s": wall,
            "inferences": all_ms.len(), "cpu_ms_per_decision_mean": mean,
            "cpu_ms_per_decision_p50": pct(0.5), "cpu_ms_per_decision_p90": pct(0.9),
        })
    );
    Ok(())
}
