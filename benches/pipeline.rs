//! Criterion: the engine's per-hop cost and interruption fan-out.
//!
//! `cargo bench --bench pipeline` — each iteration pushes a batch of frames through a chain of
//! N pass-throughs on a current-thread runtime and waits for them at the sink, so the figure per
//! frame divided by N+1 is the cost of one hop (hand-off + poll of a pass-through).

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::Notify;
use voxline::pipeline::{
    AudioFormat, AudioFrame, Context, Direction, Event, FlowResult, Frame, PassThrough, Pipeline, PipelineHandle,
    PipelineParams, PipelineTask, Processor,
};

struct Counter {
    seen: Arc<AtomicUsize>,
    notify: Arc<Notify>,
    interrupts: Arc<AtomicUsize>,
}

impl Processor for Counter {
    async fn process(&mut self, _frame: Frame, _dir: Direction, _cx: &mut Context) -> FlowResult {
        self.seen.fetch_add(1, Ordering::Release);
        self.notify.notify_one();
        Ok(())
    }
    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        if matches!(event, Event::Interrupt) {
            self.interrupts.fetch_add(1, Ordering::Release);
            self.notify.notify_one();
        }
        Ok(())
    }
}

struct Rig {
    handle: PipelineHandle,
    seen: Arc<AtomicUsize>,
    interrupts: Arc<AtomicUsize>,
    notify: Arc<Notify>,
}

fn rig(n: usize) -> Rig {
    let seen = Arc::new(AtomicUsize::new(0));
    let interrupts = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(Notify::new());
    let mut p = Pipeline::new();
    for _ in 0..n {
        p = p.with(PassThrough);
    }
    let p = p.with(Counter { seen: seen.clone(), notify: notify.clone(), interrupts: interrupts.clone() });
    let params = PipelineParams { input_capacity: 64, ..Default::default() };
    let (handle, _join) = PipelineTask::new(p, params).spawn();
    Rig { handle, seen, interrupts, notify }
}

fn frame() -> Frame {
    Frame::InputAudio(AudioFrame::new(Bytes::from_static(&[0u8; 320]), AudioFormat::pcm16(8000)))
}

fn per_hop(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut g = c.benchmark_group("chain_frame");
    const BATCH: usize = 64;
    for n in [1usize, 10, 50] {
        g.throughput(Throughput::Elements(BATCH as u64));
        let r = rt.block_on(async { rig(n) });
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let target = r.seen.load(Ordering::Acquire) + BATCH;
                        for _ in 0..BATCH {
                            let _ = r.handle.push(black_box(frame())).await;
                        }
                        while r.seen.load(Ordering::Acquire) < target {
                            r.notify.notified().await;
                        }
                    }
                    start.elapsed()
                })
            });
        });
    }
    g.finish();
}

fn interrupt_fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let r = rt.block_on(async { rig(10) });
    c.bench_function("interrupt_10_processors", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let target = r.interrupts.load(Ordering::Acquire) + 1;
                    let t0 = Instant::now();
                    let _ = r.handle.interrupt();
                    while r.interrupts.load(Ordering::Acquire) < target {
                        r.notify.notified().await;
                    }
                    total += t0.elapsed();
                }
                total
            })
        });
    });
}

criterion_group!(benches, per_hop, interrupt_fanout);
criterion_main!(benches);
