//! W1: per-frame overhead. source → N pass-throughs → sink, flat (windowed) or real-time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};
use voxline::pipeline::{
    AudioFormat, AudioFrame, Context, Direction, FlowResult, Frame, PassThrough, Pipeline, PipelineParams,
    PipelineTask, Processor,
};

use crate::common::{Opts, mean, percentile, runtime, us};

/// The last processor: notes when it starts processing each frame.
struct Sink {
    arrivals: Vec<Instant>,
    done: Arc<AtomicUsize>,
    waiting: Arc<AtomicBool>,
    notify: Arc<Notify>,
    report: Option<oneshot::Sender<Vec<Instant>>>,
}

impl Processor for Sink {
    fn name(&self) -> &str {
        "sink"
    }
    async fn process(&mut self, frame: Frame, _dir: Direction, _cx: &mut Context) -> FlowResult {
        if let Frame::InputAudio(_) = frame {
            self.arrivals.push(Instant::now());
            self.done.fetch_add(1, Ordering::Release);
            if self.waiting.load(Ordering::Acquire) {
                self.notify.notify_one();
            }
        }
        Ok(())
    }
    async fn stop(&mut self, _cx: &mut Context) -> FlowResult {
        if let Some(tx) = self.report.take() {
            let _ = tx.send(std::mem::take(&mut self.arrivals));
        }
        Ok(())
    }
}

fn frame() -> Frame {
    Frame::InputAudio(AudioFrame::new(Bytes::from(vec![0u8; 320]), AudioFormat::pcm16(8000)))
}

async fn run_one(n: usize, frames: usize, realtime: bool, window: usize, warmup: usize) -> Value {
    let done = Arc::new(AtomicUsize::new(0));
    let waiting = Arc::new(AtomicBool::new(false));
    let notify = Arc::new(Notify::new());
    let (tx, rx) = oneshot::channel();
    let mut p = Pipeline::new();
    for _ in 0..n {
        p = p.with(PassThrough);
    }
    let sink = Sink {
        arrivals: Vec::with_capacity(frames + warmup),
        done: done.clone(),
        waiting: waiting.clone(),
        notify: notify.clone(),
        report: Some(tx),
    };
    let p = p.with(sink);
    let params = PipelineParams { input_capacity: window.max(1), default_capacity: 32, ..Default::default() };
    let (handle, join) = PipelineTask::new(p, params).spawn();

    let wait_window = |pushed: usize| {
        let done = done.clone();
        let waiting = waiting.clone();
        let notify = notify.clone();
        async move {
            while pushed - done.load(Ordering::Acquire) >= window {
                waiting.store(true, Ordering::Release);
                if pushed - done.load(Ordering::Acquire) < window {
                    waiting.store(false, Ordering::Release);
                    break;
                }
                notify.notified().await;
                waiting.store(false, Ordering::Release);
            }
        }
    };

    let mut pushed = 0usize;
    for _ in 0..warmup {
        wait_window(pushed).await;
        let _ = handle.push(frame()).await;
        pushed += 1;
    }
    wait_window_all(&done, &waiting, &notify, pushed).await;

    let mut sent = Vec::with_capacity(frames);
    let t_start = Instant::now();
    for i in 0..frames {
        if realtime {
            let due = t_start + Duration::from_millis(20) * i as u32;
            tokio::time::sleep_until(due.into()).await;
        } else {
            wait_window(pushed).await;
        }
        let f = frame();
        sent.push(Instant::now());
        let _ = handle.push(f).await;
        pushed += 1;
        if realtime {
            // Like a socket reader going back to its socket: let the pipeline run before this
            // task arms its next timer (arming a timer pokes the I/O driver with a syscall).
            tokio::task::yield_now().await;
        }
    }
    let _ = handle.end().await;
    let _ = join.await;
    let arrivals = rx.await.unwrap_or_default();
    let arrivals = &arrivals[arrivals.len().saturating_sub(frames)..];
    let last = arrivals.last().copied().unwrap_or(t_start);
    let throughput = frames as f64 / (last - t_start).as_secs_f64();
    let mut lat: Vec<f64> = arrivals.iter().zip(&sent).map(|(a, s)| us(a.saturating_duration_since(*s))).collect();
    let lat_mean = mean(&lat);
    lat.sort_by(f64::total_cmp);
    let p50 = percentile(&lat, 50.0);
    let p99 = percentile(&lat, 99.0);
    let hops = (n + 1) as f64;
    json!({
        "processors": n,
        "cadence": if realtime { "realtime" } else { "flat" },
        "frames": frames,
        "throughput_fps": throughput,
        "lat_mean_us": lat_mean,
        "lat_p50_us": p50,
        "lat_p99_us": p99,
        "hop_cost_us": if realtime { Value::Null } else { json!(1e6 / throughput / hops) },
        "hop_latency_us": if realtime { json!(p50 / hops) } else { Value::Null },
    })
}

async fn wait_window_all(done: &AtomicUsize, waiting: &AtomicBool, notify: &Notify, pushed: usize) {
    while done.load(Ordering::Acquire) < pushed {
        waiting.store(true, Ordering::Release);
        if done.load(Ordering::Acquire) >= pushed {
            break;
        }
        notify.notified().await;
    }
    waiting.store(false, Ordering::Release);
}

/// The source runs as a spawned task, like a transport's socket reader (the runtime's
/// `block_on` future is woken through the I/O driver, which would add a syscall per frame).
async fn spawned(n: usize, frames: usize, realtime: bool, window: usize, warmup: usize) -> Value {
    match tokio::spawn(run_one(n, frames, realtime, window, warmup)).await {
        Ok(v) => v,
        Err(e) => json!({"error": e.to_string()}),
    }
}

pub(crate) fn main(args: &[String]) {
    let o = Opts::parse(args);
    let window: usize = o.get("window", 64);
    let warmup: usize = o.get("warmup", 1000);
    let rt = runtime();
    let line = if o.has("processors") || o.has("cadence") {
        let n: usize = o.get("processors", 10);
        let cadence: String = o.get("cadence", "flat".to_string());
        let realtime = cadence == "realtime";
        let frames: usize = o.get("frames", if realtime { 1000 } else { 20000 });
        let mut v = rt.block_on(spawned(n, frames, realtime, window, warmup));
        v["workload"] = json!("w1");
        v["engine"] = json!("voxline");
        v["window"] = json!(window);
        v
    } else {
        let mut results = Vec::new();
        for n in [1usize, 10, 50] {
            for (realtime, frames) in [(false, 20_000usize), (true, 1000)] {
                results.push(rt.block_on(spawned(n, frames, realtime, window, warmup)));
            }
        }
        json!({"workload": "w1", "engine": "voxline", "window": window, "results": results})
    };
    println!("{line}");
}
