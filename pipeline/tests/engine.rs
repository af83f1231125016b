//! Engine semantics: interruption, backpressure, drain/cancel, parallel branches, panics.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use voxline_pipeline::observer::{Hop, Observer};
use voxline_pipeline::testing::Harness;
use voxline_pipeline::*;

fn text(s: &str) -> Frame {
    Frame::Text(s.into())
}

fn texts(frames: &[Frame]) -> Vec<String> {
    frames.iter().filter_map(|f| if let Frame::Text(t) = f { Some(t.to_string()) } else { None }).collect()
}

/// Records every event it sees.
struct EventLog {
    name: &'static str,
    log: Arc<Mutex<Vec<(String, String)>>>,
}

impl Processor for EventLog {
    fn name(&self) -> &str {
        self.name
    }
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        cx.push(frame, dir).await;
        Ok(())
    }
    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        self.log.lock().unwrap().push((self.name.to_string(), format!("{event:?}")));
        Ok(())
    }
}

/// Parks on every `Text` frame until cancelled; notes whether its future was dropped mid-await.
struct Blocker {
    entered: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(String, String)>>>,
}

struct DropFlag(Arc<AtomicBool>, bool);
impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

impl Processor for Blocker {
    fn name(&self) -> &str {
        "blocker"
    }
    fn capacity(&self) -> Option<usize> {
        Some(2)
    }
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        if let Frame::Text(t) = &frame
            && t.starts_with("old")
        {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let mut guard = DropFlag(self.dropped.clone(), false);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            guard.1 = true;
        }
        cx.push(frame, dir).await;
        Ok(())
    }
    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        self.log.lock().unwrap().push(("blocker".into(), format!("{event:?}")));
        Ok(())
    }
}

#[tokio::test]
async fn interrupt_with_full_queues_reaches_everyone_and_keeps_uninterruptible() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let entered = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let pipeline = Pipeline::new()
        .with_capacity(EventLog { name: "a", log: log.clone() }, 2)
        .with(Blocker { entered: entered.clone(), dropped: dropped.clone(), log: log.clone() })
        .with_capacity(EventLog { name: "c", log: log.clone() }, 2);
    let params = PipelineParams { input_capacity: 2, ..Default::default() };
    let h = Harness::with_params(pipeline, params);
    // Fill every queue: the blocker holds one frame, its inbox and the first stage's inbox fill
    // up, and the handle's lane fills behind them.
    for i in 0..6 {
        h.push(text(&format!("old {i}"))).await;
    }
    let uninterruptible = Frame::LlmMessagesAppend(Arc::from(vec![ChatMessage::text(Role::User, "keep me")]));
    let pushed = h.handle().try_push(uninterruptible.clone());
    assert!(pushed.is_err(), "input lane should be full while the blocker is parked");
    assert_eq!(entered.load(Ordering::SeqCst), 1);
    // Queue an uninterruptible frame directly into the first stage's inbox path: wait for room
    // by pushing from a task, then interrupt while everything is still full.
    let h2 = h.handle().clone();
    let keep = tokio::spawn(async move { h2.push(uninterruptible).await });
    tokio::task::yield_now().await;
    h.interrupt();
    keep.await.unwrap().unwrap();
    h.push(text("new 1")).await;
    assert!(
        h.wait_for(Duration::from_secs(2), |c| c.iter().any(|(_, f)| matches!(f, Frame::Text(t) if &**t == "new 1")))
            .await
    );
    let out = h.finish().await;
    assert!(dropped.load(Ordering::SeqCst), "the parked process future must have been dropped");
    let seen: Vec<String> =
        log.lock().unwrap().iter().filter(|(_, e)| e == "Interrupt").map(|(n, _)| n.clone()).collect();
    assert_eq!(seen, vec!["a", "blocker", "c"], "Interrupt reaches every processor in chain order");
    let t = texts(&out.downstream);
    assert_eq!(t, vec!["new 1"], "no frame of the old epoch survives: {t:?}");
    assert!(out.downstream.iter().any(|f| matches!(f, Frame::LlmMessagesAppend(_))));
    let dropped_total: u64 = out.report.counters.iter().map(|c| c.dropped_interrupted).sum();
    assert!(dropped_total >= 3, "discarded frames are counted: {:?}", out.report.counters);
    assert!(out.events.iter().any(|e| matches!(e, Event::Interrupt)));
}

/// Emits `n` 20 ms PCM frames as fast as the pipeline lets it (10x real time pacing).
struct FastProducer {
    frames: usize,
    produced: Arc<AtomicUsize>,
}

impl Processor for FastProducer {
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        if matches!(frame, Frame::Text(_)) {
            let format = AudioFormat::pcm16(8000);
            for _ in 0..self.frames {
                let audio = AudioFrame::new(Bytes::from(vec![1u8; 320]), format);
                cx.push(Frame::OutputAudio(audio), Direction::Downstream).await;
                self.produced.fetch_add(1, Ordering::SeqCst);
                // 10x real time: a new 20 ms frame every 2 ms.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            return Ok(());
        }
        cx.push(frame, dir).await;
        Ok(())
    }
}

#[derive(Clone, Default)]
struct RecSink {
    writes: Arc<Mutex<Vec<(tokio::time::Instant, usize)>>>,
}

impl clock::AudioSink for RecSink {
    async fn write(&mut self, chunk: Bytes, _format: AudioFormat) -> FlowResult {
        self.writes.lock().unwrap().push((tokio::time::Instant::now(), chunk.len()));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn fast_producer_into_paced_sink_stays_bounded_and_loses_nothing() {
    let produced = Arc::new(AtomicUsize::new(0));
    let sink = RecSink::default();
    let out = clock::AudioOutput::new(
        sink.clone(),
        clock::OutputParams {
            chunk: Duration::from_millis(20),
            send_ahead: Duration::ZERO,
            ..clock::OutputParams::default()
        },
    );
    let pipeline = Pipeline::new()
        .with(FastProducer { frames: 3000, produced: produced.clone() })
        .with_capacity(PassThrough, 4)
        .with_capacity(out, 4);
    let h = Harness::new(pipeline);
    h.push(text("go")).await;
    let out = h.finish().await;
    assert_eq!(out.report.outcome, TaskOutcome::Ended);
    assert_eq!(produced.load(Ordering::SeqCst), 3000);
    let writes = sink.writes.lock().unwrap();
    assert_eq!(writes.len(), 3000, "every frame produced was played");
    for c in &out.report.counters {
        assert!(c.max_queue_depth <= c.capacity, "{} exceeded its capacity: {c:?}", c.processor);
        assert_eq!(c.dropped_interrupted, 0);
    }
    // The producer was held back to real time by the paced sink.
    let span = writes.last().unwrap().0 - writes[0].0;
    assert_eq!(span, Duration::from_millis(20) * 2999);
}

#[tokio::test]
async fn end_drains_everything_pushed_before_it() {
    let pipeline = Pipeline::new().with_capacity(PassThrough, 3).with(PassThrough).with_capacity(PassThrough, 1);
    let h = Harness::new(pipeline);
    for i in 0..1000 {
        h.push(text(&i.to_string())).await;
    }
    let out = h.finish().await;
    let t = texts(&out.downstream);
    assert_eq!(t.len(), 1000);
    assert!(t.iter().enumerate().all(|(i, s)| *s == i.to_string()), "order kept");
    assert!(matches!(out.downstream.first(), Some(Frame::Start(_))));
    assert!(matches!(out.downstream.last(), Some(Frame::End)));
    assert_eq!(out.report.outcome, TaskOutcome::Ended);
}

#[tokio::test]
async fn cancel_stops_at_once_even_when_blocked() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(AtomicBool::new(false));
    let pipeline =
        Pipeline::new().with(Blocker { entered: Arc::default(), dropped: dropped.clone(), log: log.clone() });
    let h = Harness::new(pipeline);
    h.push(text("old 1")).await;
    h.push(text("old 2")).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let t0 = std::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(1), h.cancel()).await.expect("cancel must be immediate");
    assert!(t0.elapsed() < Duration::from_millis(200));
    assert_eq!(out.report.outcome, TaskOutcome::Cancelled);
    assert!(dropped.load(Ordering::SeqCst));
    assert!(texts(&out.downstream).is_empty());
}

/// Tags text frames with a branch name and lets everything else through.
fn tagger(tag: &'static str) -> impl Processor {
    processor_fn(tag, move |frame, dir, cx| {
        let frame = match frame {
            Frame::Text(t) => Frame::Text(format!("{tag}:{t}").into()),
            other => other,
        };
        cx.push_now(frame, dir);
        Ok(())
    })
}

#[tokio::test]
async fn parallel_branches_fan_out_and_synchronise_end() {
    let pipeline = Pipeline::new()
        .with(PassThrough)
        .with_parallel(vec![Pipeline::new().with(tagger("a")), Pipeline::new().with(tagger("b")).with(PassThrough)]);
    let h = Harness::new(pipeline);
    h.push(text("x")).await;
    let out = h.finish().await;
    let mut t = texts(&out.downstream);
    t.sort();
    assert_eq!(t, vec!["a:x", "b:x"]);
    let ends = out.downstream.iter().filter(|f| matches!(f, Frame::End)).count();
    let starts = out.downstream.iter().filter(|f| matches!(f, Frame::Start(_))).count();
    assert_eq!((starts, ends), (1, 1), "fan-in forwards one Start and one End");
    assert_eq!(out.report.outcome, TaskOutcome::Ended);
}

#[tokio::test]
async fn nested_pipelines_run_as_stages() {
    let inner = Pipeline::new().with(tagger("in1")).with(tagger("in2"));
    let h = Harness::new(Pipeline::new().with(tagger("out")).with_pipeline(inner));
    h.push(text("x")).await;
    let out = h.finish().await;
    assert_eq!(texts(&out.downstream), vec!["in2:in1:out:x"]);
}

struct Panicker;
impl Processor for Panicker {
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        if matches!(&frame, Frame::Text(t) if &**t == "boom") {
            panic!("processor bug");
        }
        cx.push(frame, dir).await;
        Ok(())
    }
}

struct Failer;
impl Processor for Failer {
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        if matches!(&frame, Frame::Text(t) if &**t == "bad") {
            return Err(FlowError::BadInput("bad frame".into()));
        }
        cx.push(frame, dir).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_processor_fails_only_its_own_pipeline() {
    let healthy = Harness::new(Pipeline::new().with(Failer).with(PassThrough));
    let mut broken = Harness::new(Pipeline::new().with(PassThrough).with(Panicker));
    broken.push(text("boom")).await;
    let err = broken.wait_event(Duration::from_secs(2), |e| matches!(e, Event::Error(e) if e.fatal)).await;
    assert!(matches!(err, Some(Event::Error(e)) if e.message.contains("panicked")));
    healthy.push(text("bad")).await;
    for i in 0..100 {
        healthy.push(text(&i.to_string())).await;
    }
    let broken_out = broken.finish().await;
    assert!(matches!(broken_out.report.outcome, TaskOutcome::Failed(m) if m.contains("Panicker")));
    let out = healthy.finish().await;
    assert_eq!(out.report.outcome, TaskOutcome::Ended);
    assert_eq!(texts(&out.downstream).len(), 100, "the bad frame was dropped, the rest went through");
    assert!(out.events.iter().any(|e| matches!(e, Event::Error(e) if !e.fatal && e.message.contains("bad frame"))));
}

/// Spawns a task that pushes through a `FrameSender` after the turn was interrupted.
struct LatePusher {
    sender: Arc<Mutex<Option<FrameSender>>>,
}
impl Processor for LatePusher {
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        if matches!(frame, Frame::Text(_)) {
            *self.sender.lock().unwrap() = Some(cx.sender());
        }
        cx.push(frame, dir).await;
        Ok(())
    }
}

#[tokio::test]
async fn stale_frames_from_spawned_work_are_dropped_at_the_next_hop() {
    let slot = Arc::new(Mutex::new(None));
    let h = Harness::new(Pipeline::new().with(LatePusher { sender: slot.clone() }).with(PassThrough));
    h.push(text("turn 1")).await;
    assert!(h.wait_for(Duration::from_secs(1), |c| c.len() >= 2).await);
    let sender = slot.lock().unwrap().clone().unwrap();
    assert!(sender.push(text("fresh"), Direction::Downstream));
    assert!(
        h.wait_for(Duration::from_secs(1), |c| c.iter().any(|(_, f)| matches!(f, Frame::Text(t) if &**t == "fresh")))
            .await
    );
    h.interrupt();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!sender.is_current());
    sender.push(text("stale"), Direction::Downstream);
    let out = h.finish().await;
    assert_eq!(texts(&out.downstream), vec!["turn 1", "fresh"]);
}

/// Hands out both kinds of sender when the first text passes, as a processor that spawns work
/// would.
#[derive(Default, Clone)]
struct Spawner {
    senders: Arc<Mutex<Option<(FrameSender, StreamSender)>>>,
}
impl Processor for Spawner {
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        if matches!(frame, Frame::Text(_)) {
            self.senders.lock().unwrap().get_or_insert_with(|| (cx.sender(), cx.stream_sender()));
        }
        cx.push(frame, dir).await;
        Ok(())
    }
}

/// Runs one turn through a `Spawner`, interrupts, and returns the senders it handed out.
async fn senders_after_an_interrupt(h: &mut Harness, spawner: &Spawner) -> (FrameSender, StreamSender) {
    h.push(text("turn 1")).await;
    assert!(h.wait_for(Duration::from_secs(1), |c| c.len() >= 2).await);
    h.interrupt();
    assert!(h.wait_event(Duration::from_secs(1), |e| matches!(e, Event::Interrupt)).await.is_some());
    spawner.senders.lock().unwrap().clone().unwrap()
}

/// The engine owns the epoch of a stream that outlives a turn: spawned work holding a stream
/// sender keeps delivering after a barge-in without anyone refreshing its sender, while a
/// turn-scoped sender's frames are of the old turn and dropped.
#[tokio::test]
async fn a_stream_sender_delivers_after_an_interrupt_a_turn_sender_does_not() {
    let spawner = Spawner::default();
    let mut h = Harness::new(Pipeline::new().with(spawner.clone()).with(PassThrough));
    let (turn, stream) = senders_after_an_interrupt(&mut h, &spawner).await;
    let from_task = tokio::spawn(async move {
        assert!(turn.push(text("turn sender"), Direction::Downstream));
        assert!(stream.push(text("stream sender"), Direction::Downstream));
    });
    from_task.await.unwrap();
    let out = h.finish().await;
    assert_eq!(texts(&out.downstream), ["turn 1", "stream sender"]);
}

/// A stream sender is never stale: it survives any number of turns, and its frames keep their
/// place in order with the pipeline's own.
#[tokio::test]
async fn a_stream_sender_stays_current_across_many_interruptions() {
    let spawner = Spawner::default();
    let mut h = Harness::new(Pipeline::new().with(spawner.clone()).with(PassThrough));
    let (_, stream) = senders_after_an_interrupt(&mut h, &spawner).await;
    for i in 0..3 {
        h.interrupt();
        assert!(h.wait_event(Duration::from_secs(1), |e| matches!(e, Event::Interrupt)).await.is_some());
        assert!(stream.push(text(&format!("after {i}")), Direction::Downstream));
        let want = format!("after {i}");
        assert!(
            h.wait_for(Duration::from_secs(1), |c| c.iter().any(|(_, f)| matches!(f, Frame::Text(t) if **t == *want)))
                .await
        );
    }
    let out = h.finish().await;
    assert_eq!(texts(&out.downstream), ["turn 1", "after 0", "after 1", "after 2"]);
}

/// Uninterruptible frames (transcripts, tool results) survive an interruption whichever sender
/// pushed them: a turn sender's stale epoch only drops what a barge-in is meant to drop.
#[tokio::test]
async fn uninterruptible_frames_from_a_stale_turn_sender_still_arrive() {
    let spawner = Spawner::default();
    let mut h = Harness::new(Pipeline::new().with(spawner.clone()).with(PassThrough));
    let (turn, _) = senders_after_an_interrupt(&mut h, &spawner).await;
    assert!(!turn.is_current());
    let result = ToolResult {
        call_id: "c1".into(),
        name: "lookup".into(),
        content: "{}".into(),
        outcome: ToolOutcome::Ok,
        run_llm: false,
    };
    assert!(turn.push(Frame::ToolResult(result), Direction::Downstream));
    let out = h.finish().await;
    assert_eq!(out.kinds(), [FrameKind::Text, FrameKind::ToolResult]);
}

#[derive(Default)]
struct CountingObserver {
    hops: Mutex<Vec<(String, String, FrameKind, Direction)>>,
}
impl Observer for CountingObserver {
    fn on_hop(&self, hop: &Hop<'_>) {
        self.hops.lock().unwrap().push((hop.from.into(), hop.to.into(), hop.kind, hop.direction));
    }
}

#[tokio::test]
async fn observers_see_every_hop() {
    let obs = Arc::new(CountingObserver::default());
    let task = PipelineTask::new(Pipeline::new().with(tagger("a")).with(tagger("b")), PipelineParams::default())
        .with_observer(obs.clone());
    let handle = task.handle();
    let run = tokio::spawn(task.run());
    handle.push(text("x")).await.unwrap();
    handle.end().await.unwrap();
    run.await.unwrap();
    let hops = obs.hops.lock().unwrap();
    let text_hops: Vec<_> =
        hops.iter().filter(|h| h.2 == FrameKind::Text).map(|h| (h.0.as_str(), h.1.as_str())).collect();
    assert_eq!(text_hops, vec![("source", "a"), ("a", "b"), ("b", "exit")]);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_cancels_a_silent_pipeline() {
    let params = PipelineParams { idle_timeout: Some(Duration::from_secs(5)), ..Default::default() };
    let h = Harness::with_params(Pipeline::new().with(PassThrough), params);
    // Activity keeps it alive.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        h.push(text("still here")).await;
    }
    let mut h = h;
    let ev = h.wait_event(Duration::from_secs(30), |e| matches!(e, Event::IdleTimeout)).await;
    assert!(ev.is_some());
    let out = h.cancel().await;
    assert_eq!(out.report.outcome, TaskOutcome::Cancelled);
    assert_eq!(texts(&out.downstream).len(), 3);
}

#[tokio::test]
async fn input_audio_lane_drops_oldest_and_counts_without_blocking() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(AtomicBool::new(false));
    let params = PipelineParams { input_audio_capacity: 10, ..Default::default() };
    let h = Harness::with_params(
        Pipeline::new().with(Blocker { entered: Arc::default(), dropped, log }).with(PassThrough),
        params,
    );
    h.push(text("old block")).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let fmt = AudioFormat::mulaw_8k();
    let mut n_dropped = 0;
    for i in 0..200u8 {
        if h.handle().push_input_audio(Frame::InputAudio(AudioFrame::new(Bytes::from(vec![i; 160]), fmt))) {
            n_dropped += 1;
        }
    }
    // Inbox of the blocked stage (2) plus the lane (10) hold the newest frames; the rest dropped.
    assert!(n_dropped >= 200 - 12 - 1, "dropped {n_dropped}");
    assert_eq!(h.handle().input_audio_dropped(), n_dropped);
    h.interrupt();
    let out = h.finish().await;
    assert_eq!(out.report.input_audio_dropped, n_dropped);
}

#[tokio::test]
async fn events_reach_processors_and_subscribers() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = Harness::new(
        Pipeline::new().with(EventLog { name: "a", log: log.clone() }).with(EventLog { name: "b", log: log.clone() }),
    );
    h.emit(Event::UserStartedSpeaking);
    assert!(h.wait_event(Duration::from_secs(1), |e| matches!(e, Event::UserStartedSpeaking)).await.is_some());
    let out = h.finish().await;
    assert_eq!(out.report.outcome, TaskOutcome::Ended);
    let got: Vec<_> =
        log.lock().unwrap().iter().filter(|(_, e)| e == "UserStartedSpeaking").map(|(n, _)| n.clone()).collect();
    assert_eq!(got, vec!["a", "b"]);
}

#[tokio::test]
async fn a_last_stage_that_swallows_end_still_lets_the_task_finish() {
    let swallow = processor_fn("swallow", |_frame, _dir, _cx| Ok(()));
    let h = Harness::new(Pipeline::new().with(PassThrough).with(swallow));
    h.push(text("x")).await;
    let out = tokio::time::timeout(Duration::from_secs(2), h.finish()).await.expect("task must end");
    assert_eq!(out.report.outcome, TaskOutcome::Ended);
}

#[tokio::test]
async fn synchronous_processors_also_run_through_the_async_path() {
    // With processing metrics on, the runner times every call through `process`, whose default
    // delegates to `process_now`.
    let params = PipelineParams { processing_metrics: true, ..Default::default() };
    let h = Harness::with_params(Pipeline::new().with(tagger("a")).with(PassThrough), params);
    h.push(text("x")).await;
    let out = h.finish().await;
    assert_eq!(texts(&out.downstream), vec!["a:x"]);
    assert!(out.events.iter().any(|e| matches!(e, Event::Metrics(MetricsEvent::ProcessingTime { .. }))));
}

/// Notes, in one log, every frame it takes and every event it is told of.
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
}

impl Processor for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn process_now(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> Result<Option<Frame>, FlowError> {
        if let Frame::Text(t) = &frame {
            self.log.lock().unwrap().push(format!("frame {t}"));
        }
        cx.push_now(frame, dir);
        Ok(None)
    }
    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        self.log.lock().unwrap().push(format!("event {event:?}"));
        Ok(())
    }
}

#[tokio::test]
async fn frames_handed_on_between_stages_keep_order_and_events_still_overtake_them() {
    // Synchronous stages take a frame straight from the stage before them when they are idle;
    // an asynchronous stage in the middle and an event emitted together with a frame must not
    // change what any stage sees, nor in which order.
    let emitter = processor_fn("emitter", |frame, dir, cx| {
        if matches!(&frame, Frame::Text(t) if &**t == "7") {
            cx.emit(Event::UserStartedSpeaking);
        }
        cx.push_now(frame, dir);
        Ok(())
    });
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut p = Pipeline::new().with(emitter);
    for _ in 0..4 {
        p = p.with(PassThrough);
    }
    p = p.with(EventLog { name: "async", log: Arc::default() });
    for _ in 0..4 {
        p = p.with(PassThrough);
    }
    let h = Harness::new(p.with(Recorder { log: log.clone() }));
    for i in 0..30 {
        h.push(text(&i.to_string())).await;
    }
    let out = h.finish().await;
    let want: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    assert_eq!(texts(&out.downstream), want);
    let log = log.lock().unwrap().clone();
    let seen: Vec<&String> = log.iter().filter(|l| l.starts_with("frame ")).collect();
    assert_eq!(seen.len(), 30, "{log:?}");
    let event = log.iter().position(|l| l == "event UserStartedSpeaking").expect("event delivered");
    let frame = log.iter().position(|l| l == "frame 7").expect("frame delivered");
    assert!(event < frame, "the frame emitted with the event overtook it: {log:?}");
}

/// A stage that interrupts and then pushes in the same call (a user aggregator whose confirming
/// words also complete the caller's turn): what it pushed before the interruption is of the old
/// turn and dropped, what it pushed after belongs to the new one and arrives.
#[tokio::test]
async fn a_push_after_interrupt_in_the_same_call_belongs_to_the_new_turn() {
    let interrupter = processor_fn("interrupter", |frame, dir, cx| {
        if matches!(&frame, Frame::Text(t) if &**t == "turn") {
            cx.push_now(text("before"), dir);
            cx.interrupt();
            cx.push_now(text("after"), dir);
            return Ok(());
        }
        cx.push_now(frame, dir);
        Ok(())
    });
    let mut h = Harness::new(Pipeline::new().with(interrupter).with(PassThrough).with(PassThrough));
    h.push(text("turn")).await;
    // A frame pushed from outside before the interruption is of the old turn too: wait for it.
    assert!(h.wait_event(Duration::from_secs(5), |e| matches!(e, Event::Interrupt)).await.is_some());
    h.push(text("next")).await;
    let out = h.finish().await;
    assert_eq!(texts(&out.downstream), ["after", "next"]);
}
