//! W3: interruption latency. input → 3 pass-throughs → bot-audio generator → paced output →
//! last processor; inject a barge-in while the bot speaks and time how fast it takes effect.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use voxline::pipeline::sync::lock;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::Notify;
use voxline::pipeline::clock::{AudioOutput, AudioSink, OutputParams};
use voxline::pipeline::{
    AudioFormat, AudioFrame, Context, Direction, Event, FlowResult, Frame, PassThrough, Pipeline, PipelineParams,
    PipelineTask, Processor, TtsAudio,
};

use crate::common::{Opts, Rng, mean, percentile, runtime, us};

#[derive(Default)]
struct Marks {
    writes: Vec<Instant>,
    cleared: Vec<Instant>,
    last_interrupt: Vec<Instant>,
}

type Shared = Arc<Mutex<Marks>>;

/// The TTS stand-in: 250 frames of 20 ms, as fast as the pipeline takes them.
struct Generator;

impl Processor for Generator {
    fn name(&self) -> &str {
        "generator"
    }
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        if !matches!(frame, Frame::Text(_)) {
            cx.push(frame, dir).await;
            return Ok(());
        }
        let ctx: Arc<str> = Arc::from(format!("utt-{}", cx.epoch()));
        cx.push(Frame::TtsStarted { context_id: ctx.clone() }, Direction::Downstream).await;
        let words: Arc<[voxline::pipeline::WordTiming]> = Arc::from(Vec::new());
        for i in 0..250u32 {
            let audio = AudioFrame::new(Bytes::from(vec![0u8; 640]), AudioFormat::pcm16(16_000));
            let tts = TtsAudio {
                audio,
                context_id: ctx.clone(),
                words: words.clone(),
                offset: Duration::from_millis(20) * i,
            };
            cx.push(Frame::from(tts), Direction::Downstream).await;
            tokio::task::yield_now().await;
        }
        cx.push(Frame::TtsStopped { context_id: ctx }, Direction::Downstream).await;
        Ok(())
    }
}

/// The output transport's writer: a null socket that notes when each chunk write starts.
struct NullSink {
    marks: Shared,
    first_write: Arc<Notify>,
}

impl AudioSink for NullSink {
    async fn write(&mut self, _chunk: Bytes, _format: AudioFormat) -> FlowResult {
        let mut m = lock(&self.marks);
        m.writes.push(Instant::now());
        if m.writes.len() == 1 {
            self.first_write.notify_one();
        }
        Ok(())
    }
    fn clear(&mut self) {
        lock(&self.marks).cleared.push(Instant::now());
    }
}

struct Last {
    marks: Shared,
}

impl Processor for Last {
    fn name(&self) -> &str {
        "last"
    }
    async fn process(&mut self, _frame: Frame, _dir: Direction, _cx: &mut Context) -> FlowResult {
        Ok(())
    }
    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        if matches!(event, Event::Interrupt) {
            lock(&self.marks).last_interrupt.push(Instant::now());
        }
        Ok(())
    }
}

pub(crate) fn main(args: &[String]) {
    let o = Opts::parse(args);
    let trials: usize = o.get("trials", 50);
    let warmup: usize = o.get("warmup", 5);
    let seed: u64 = o.get("seed", 1);
    let rt = runtime();
    let line = rt.block_on(async move {
        let marks: Shared = Arc::default();
        let first_write = Arc::new(Notify::new());
        let output = AudioOutput::new(
            NullSink { marks: marks.clone(), first_write: first_write.clone() },
            OutputParams { chunk: Duration::from_millis(20), send_ahead: Duration::ZERO, ..OutputParams::default() },
        );
        let p = Pipeline::new()
            .with(PassThrough)
            .with(PassThrough)
            .with(PassThrough)
            .with(Generator)
            .with(output)
            .with(Last { marks: marks.clone() });
        let (handle, join) = PipelineTask::new(p, PipelineParams::default()).spawn();
        let mut rng = Rng::new(seed);
        let (mut to_last, mut to_silent) = (Vec::new(), Vec::new());
        let mut chunks_after = 0usize;
        for trial in 0..warmup + trials {
            {
                let mut m = lock(&marks);
                m.writes.clear();
                m.cleared.clear();
                m.last_interrupt.clear();
            }
            let notified = first_write.notified();
            let _ = handle.push(Frame::Text("speak".into())).await;
            notified.await;
            tokio::time::sleep(Duration::from_secs_f64(rng.uniform(0.2, 0.6))).await;
            let t_inject = Instant::now();
            let _ = handle.interrupt();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (after, last, cleared) = {
                let m = lock(&marks);
                let after: Vec<Instant> = m.writes.iter().copied().filter(|t| *t >= t_inject).collect();
                (after, m.last_interrupt.first().copied(), m.cleared.first().copied())
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            if trial < warmup {
                continue;
            }
            chunks_after += after.len();
            if let Some(t) = last {
                to_last.push(us(t - t_inject));
            }
            let silent = [cleared, after.last().copied()].into_iter().flatten().max();
            if let Some(t) = silent {
                to_silent.push(us(t - t_inject));
            }
        }
        let _ = handle.cancel();
        let _ = join.await;
        let (ml, ms) = (mean(&to_last), mean(&to_silent));
        to_last.sort_by(f64::total_cmp);
        to_silent.sort_by(f64::total_cmp);
        json!({
            "workload": "w3",
            "engine": "voxline",
            "trials": trials,
            "to_last_processor_mean_us": ml,
            "to_last_processor_p50_us": percentile(&to_last, 50.0),
            "to_last_processor_p99_us": percentile(&to_last, 99.0),
            "to_output_silent_mean_us": ms,
            "to_output_silent_p50_us": percentile(&to_silent, 50.0),
            "to_output_silent_p99_us": percentile(&to_silent, 99.0),
            "chunks_after_inject": chunks_after,
        })
    });
    println!("{line}");
}
