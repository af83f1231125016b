//! The runner: one task per pipeline that drives every processor, owns interruption and
//! backpressure, and reports what happened.
//!
//! # Why one task per pipeline
//! A hop between processors is a function call plus a bounded-queue hand-off inside one task, not
//! a wake-up of another task through the scheduler: tens of nanoseconds instead of microseconds.
//! Processors still run concurrently with each other: each has at most one in-flight call (a
//! boxed future the runner polls with a per-stage waker), so a stage awaiting a provider does not
//! stop audio flowing through the stages before it. Parallelism across calls comes from running
//! many pipelines (tasks) on the runtime.
//!
//! # Backpressure
//! Every stage has a bounded inbox. A stage is handed a frame only when its downstream neighbour
//! has room, and [`Context::push`](crate::Context::push) waits (returns `Pending`) while it has
//! none; the runner re-polls the stage when the neighbour pops a frame. The handle's frame lane
//! is a bounded channel (a fast producer waits), and the input-audio lane drops its oldest frame
//! when full, counting it, so a socket reader never blocks.
//!
//! # Caller input: the caller is never behind the bot
//! Caller input ([`Frame::is_caller_input`]: input audio and DTMF) does not queue behind data.
//! Every stage has a second, small queue for it, its *caller lane*. While a stage's data frames
//! can move (room downstream) the runner keeps arrival order across both queues; when they
//! cannot, caller input goes ahead of them, whatever the room downstream, and a push of caller
//! input never waits either. (Strict priority would starve data frames when input comes faster
//! than real time, as from a file; arrival order costs nothing when nothing is backed up.) So when the output is pacing 60 s of TTS
//! audio and every data inbox between it and the VAD is full, the caller's next 20 ms still
//! reaches the VAD (and the STT) in the same sweep it arrived in. This is Pipecat's "input audio
//! is a system frame", without a second task per processor.
//!
//! What it relies on, and why memory stays bounded:
//! - a stage *busy* with another call takes caller input when that call returns. The voice
//!   stages that see caller audio do not park their call: the output stage paces on an engine
//!   timer instead of sleeping inside `process` (see [`Context::wake_at`](crate::Context::wake_at)
//!   and [`clock::AudioOutput`](crate::clock::AudioOutput)), and stages that consume caller audio
//!   (speech-to-text) do not forward it unless asked, so it never reaches the LLM or TTS stages;
//! - caller input arrives at the caller's real-time rate (50 frames/s), so a lane only grows
//!   while a stage is stalled; past [`PipelineParams::caller_lane_capacity`] (5 s) the oldest
//!   frame is dropped and counted in [`TaskReport::input_audio_dropped`];
//! - caller input never overtakes `Start` (a stage takes its lane only after `Start`), and `End`
//!   from the handle waits for queued input audio, so the stream still ends after the audio.
//!
//! # Timers
//! [`Context::wake_at`](crate::Context::wake_at) arms one timer per stage; the runner calls
//! [`Processor::on_timer`](crate::Processor::on_timer) when it is due and the stage is idle, on
//! this same task. A stage that must act at a time (release the next 20 ms of audio, give up
//! waiting for a late transcript) returns from `process` instead of sleeping in it, so it stays
//! free to take caller input and events.
//!
//! # Interruption
//! On [`Event::Interrupt`] the runner, in chain order: bumps the epoch, cancels the in-flight
//! call of every stage unless its frame is uninterruptible, discards queued frames of the old
//! epoch (keeping uninterruptible ones), cancels the turn's `CancellationToken`, calls `on_event`
//! and forwards the event to subscribers. Frames stamped with an older epoch that are pushed
//! later (by a spawned task through a turn-scoped `FrameSender`) are dropped at the next hop; a
//! `StreamSender` stamps each frame with the epoch current when it is pushed. Events never
//! wait behind frames: the runner drains its event lane before moving any frame.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::{Context, External, Shared, TimerCmd, with_stage};
use crate::error::FlowError;
use crate::event::{ErrorEvent, Event, MetricsEvent, ProcessorCounters};
use crate::frame::{Direction, Envelope, Frame, FrameKind, StartInfo};
use crate::observer::{Hop, Observer};
use crate::pipeline::{Pipeline, Route, flatten};
use crate::processor::{Call, CallFuture, Owned};
use crate::sync::lock;

/// Settings of one pipeline task.
#[derive(Debug, Clone)]
pub struct PipelineParams {
    /// Name for logs and spans (e.g. the call SID).
    pub name: String,
    /// Default inbox capacity of a stage, in frames.
    pub default_capacity: usize,
    /// Capacity of the handle's in-order frame lane.
    pub input_capacity: usize,
    /// Capacity of the lossy input-audio lane (50 = 1 s of 20 ms frames).
    pub input_audio_capacity: usize,
    /// Caller input a stage may hold while it is busy with another call (250 = 5 s of 20 ms
    /// frames). Past it the oldest is dropped and counted in `input_audio_dropped`: memory stays
    /// bounded even when a stage that sees caller audio stalls.
    pub caller_lane_capacity: usize,
    /// Cancel the task after this long without activity (frames from outside, or events).
    pub idle_timeout: Option<Duration>,
    /// Measure and publish the wall time of every `process` call (costs two clock reads a call).
    pub processing_metrics: bool,
    /// How long `stop` calls may take after a cancel before the task gives up on them.
    pub cancel_timeout: Duration,
    /// Sent as the first frame.
    pub start: StartInfo,
}

impl Default for PipelineParams {
    fn default() -> Self {
        Self {
            name: "pipeline".into(),
            default_capacity: 32,
            input_capacity: 64,
            input_audio_capacity: 50,
            caller_lane_capacity: 250,
            idle_timeout: None,
            processing_metrics: false,
            cancel_timeout: Duration::from_secs(2),
            start: StartInfo::default(),
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// `End` drained through the whole pipeline and every stage stopped.
    Ended,
    /// Cancelled (by the handle, an idle timeout, or every handle being dropped).
    Cancelled,
    /// A stage failed fatally or panicked; the message says which and why.
    Failed(String),
}

/// What [`PipelineTask::run`] returns.
#[derive(Debug, Clone)]
pub struct TaskReport {
    /// How the task ended.
    pub outcome: TaskOutcome,
    /// Per-stage counters, in chain order.
    pub counters: Vec<ProcessorCounters>,
    /// Caller input frames dropped by an overload policy (the handle's lossy lane or a stage's
    /// full caller lane). Zero unless a stage stalled or the task fell seconds behind.
    pub input_audio_dropped: u64,
    /// Interruptions handled.
    pub interruptions: u64,
}

/// The lossy input-audio lane: never blocks the writer; drops the oldest frame when full.
struct AudioLane {
    queue: Mutex<VecDeque<Frame>>,
    /// Frames queued, readable without the lock (the runner checks it on every iteration).
    len: AtomicUsize,
    capacity: usize,
    dropped: AtomicU64,
    waker: AtomicWaker,
}

/// A cloneable handle to a running pipeline: inject frames and events, subscribe to events.
#[derive(Clone)]
pub struct PipelineHandle {
    frames: mpsc::Sender<(Direction, Frame, u64)>,
    shared: Arc<Shared>,
    audio: Arc<AudioLane>,
    events: broadcast::Sender<Event>,
}

impl std::fmt::Debug for PipelineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineHandle").finish_non_exhaustive()
    }
}

/// The pipeline has finished; nothing more can be pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("pipeline closed")]
pub struct Closed;

impl PipelineHandle {
    /// Push a frame into the first stage, waiting while the input lane is full.
    pub async fn push(&self, frame: Frame) -> Result<(), Closed> {
        self.frames.send((Direction::Downstream, frame, self.epoch())).await.map_err(|_| Closed)
    }

    /// Push a frame into the last stage, travelling upstream.
    pub async fn push_upstream(&self, frame: Frame) -> Result<(), Closed> {
        self.frames.send((Direction::Upstream, frame, self.epoch())).await.map_err(|_| Closed)
    }

    /// Push without waiting; gives the frame back when the lane is full or closed.
    pub fn try_push(&self, frame: Frame) -> Result<(), Frame> {
        self.frames.try_send((Direction::Downstream, frame, self.epoch())).map_err(|e| match e {
            mpsc::error::TrySendError::Full((_, f, _)) | mpsc::error::TrySendError::Closed((_, f, _)) => f,
        })
    }

    /// Push input audio from a socket reader: never waits. When the lane is full the oldest
    /// queued frame is dropped and counted. Returns `true` if a frame was dropped.
    pub fn push_input_audio(&self, frame: Frame) -> bool {
        let dropped = {
            let mut q = lock(&self.audio.queue);
            q.push_back(frame);
            let dropped = if q.len() > self.audio.capacity {
                q.pop_front();
                true
            } else {
                false
            };
            self.audio.len.store(q.len(), Ordering::Release);
            dropped
        };
        if dropped {
            self.audio.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.audio.waker.wake();
        dropped
    }

    /// Input-audio frames dropped so far by the overload policy.
    #[must_use]
    pub fn input_audio_dropped(&self) -> u64 {
        self.audio.dropped.load(Ordering::Relaxed)
    }

    /// Emit an event into the pipeline (delivered to every stage and to subscribers).
    pub fn emit(&self, event: Event) -> Result<(), Closed> {
        self.shared.external.send(External::Event(event)).map_err(|_| Closed)
    }

    /// Interrupt the pipeline (barge-in). Frames this handle pushed before the call belong to
    /// the old epoch and are discarded; frames pushed after it are kept.
    pub fn interrupt(&self) -> Result<(), Closed> {
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        self.emit(Event::Interrupt)
    }

    /// Stop now, without draining.
    pub fn cancel(&self) -> Result<(), Closed> {
        self.emit(Event::Cancel)
    }

    /// Graceful end: `End` is queued behind everything pushed so far; the task stops once it has
    /// drained through every stage.
    pub async fn end(&self) -> Result<(), Closed> {
        self.push(Frame::End).await
    }

    /// Subscribe to the events the pipeline emits (errors, metrics, speaking state, ...).
    /// A subscriber that falls more than 1024 events behind loses the oldest ones.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The current epoch.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::Acquire)
    }

    /// Whether the task has finished.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.frames.is_closed()
    }
}

/// Called for every frame leaving the pipeline at either end.
pub type ExitFn = Box<dyn FnMut(Direction, Frame) + Send>;

/// Runs one pipeline. Build it, take a [`PipelineHandle`], then `run().await` (or `spawn()`).
pub struct PipelineTask {
    driver: Driver,
    handle: PipelineHandle,
    name: String,
}

impl std::fmt::Debug for PipelineTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineTask").finish_non_exhaustive()
    }
}

impl PipelineTask {
    /// Build a task for `pipeline`.
    #[must_use]
    pub fn new(pipeline: Pipeline, params: PipelineParams) -> Self {
        let (frames_tx, frames_rx) = mpsc::channel(params.input_capacity.max(1));
        // Unbounded on purpose: events must never block their sender (a socket reader, a VAD
        // emitting Interrupt); their volume is a handful per turn. Frames from spawned tasks share
        // this lane so they keep their order relative to the events those tasks emit.
        let (ext_tx, ext_rx) = mpsc::unbounded_channel();
        let (events_tx, _) = broadcast::channel(1024);
        let shared =
            Arc::new(Shared { epoch: AtomicU64::new(0), turn: Mutex::new(CancellationToken::new()), external: ext_tx });
        let audio = Arc::new(AudioLane {
            queue: Mutex::new(VecDeque::with_capacity(params.input_audio_capacity + 1)),
            capacity: params.input_audio_capacity.max(1),
            dropped: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            waker: AtomicWaker::new(),
        });
        let handle = PipelineHandle {
            frames: frames_tx,
            shared: shared.clone(),
            audio: audio.clone(),
            events: events_tx.clone(),
        };
        let name = params.name.clone();
        let driver = Driver::new(pipeline, params, shared, frames_rx, ext_rx, audio, events_tx);
        Self { driver, handle, name }
    }

    /// A handle to inject frames and events and to subscribe to events.
    #[must_use]
    pub fn handle(&self) -> PipelineHandle {
        self.handle.clone()
    }

    /// Add an observer that sees every hop and event.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.driver.observers.push(observer);
        self
    }

    /// Receive every frame that leaves the pipeline (downstream past the last stage, upstream
    /// past the first). Without it those frames are dropped.
    #[must_use]
    pub fn on_exit(mut self, f: impl FnMut(Direction, Frame) + Send + 'static) -> Self {
        self.driver.exit = Some(Box::new(f));
        self
    }

    /// Run to completion.
    pub async fn run(self) -> TaskReport {
        let span = tracing::info_span!("pipeline", name = %self.name);
        let handle = self.handle;
        let mut driver = self.driver;
        drop(handle);
        std::future::poll_fn(move |cx| driver.poll_run(cx)).instrument(span).await
    }

    /// Spawn onto the current tokio runtime.
    pub fn spawn(self) -> (PipelineHandle, tokio::task::JoinHandle<TaskReport>) {
        let handle = self.handle.clone();
        (handle, tokio::spawn(self.run()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Stopping,
    Cancelling,
    Done,
}

enum State {
    Idle(Owned),
    Busy { fut: CallFuture, uninterruptible: bool, kind: Option<FrameKind>, since: Option<Instant> },
    Dead,
}

struct Slot {
    name: Arc<str>,
    state: State,
    inbox: VecDeque<(Direction, Envelope)>,
    /// Caller input waiting for this stage, each with the count of data frames queued before it
    /// (`data_in` when it arrived); see the module docs.
    lane: VecDeque<(u64, Envelope)>,
    /// Data frames ever queued into / taken from `inbox` (dropped ones count as taken): a lane
    /// frame whose mark is ≤ `data_out` has no older data frame still waiting.
    data_in: u64,
    data_out: u64,
    /// The stage has taken `Start` (caller input must not overtake it).
    seen_start: bool,
    /// When to call `on_timer`, if armed.
    timer_at: Option<tokio::time::Instant>,
    capacity: usize,
    down: Route,
    up: Route,
    /// Stages whose downstream route includes this one (woken when this inbox frees room).
    feeders: Vec<usize>,
    pending_events: Vec<Event>,
    waker: Waker,
    waiting_room: bool,
    started: bool,
    stopped: bool,
    counters: ProcessorCounters,
    span: tracing::Span,
}

struct WakeSet {
    task: AtomicWaker,
    ready: Box<[AtomicBool]>,
    any: AtomicUsize,
}

struct SlotWaker {
    set: Arc<WakeSet>,
    index: usize,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.set.ready[self.index].store(true, Ordering::Release);
        self.set.any.fetch_add(1, Ordering::Release);
        self.set.task.wake();
    }
}

const EXIT_ROOM: usize = usize::MAX / 4;

struct Driver {
    slots: Vec<Slot>,
    params: PipelineParams,
    shared: Arc<Shared>,
    frames_rx: mpsc::Receiver<(Direction, Frame, u64)>,
    held_input: Option<(Direction, Frame, u64)>,
    ext_rx: mpsc::UnboundedReceiver<External>,
    audio: Arc<AudioLane>,
    events_tx: broadcast::Sender<Event>,
    wake: Arc<WakeSet>,
    observers: Vec<Arc<dyn Observer>>,
    exit: Option<ExitFn>,
    phase: Phase,
    epoch: u64,
    interruptions: u64,
    outcome: Option<TaskOutcome>,
    event_queue: VecDeque<(Event, Option<usize>)>,
    /// Emptied frame buffers, one per level of [`chain`](Self::chain) nesting: a stage's output
    /// is swapped out of the thread-local stage into one of these, so the hot path never
    /// allocates.
    frame_pool: Vec<Vec<(Direction, Envelope)>>,
    scratch_events: Vec<Event>,
    /// How many stages deep the current [`chain`](Self::chain) is.
    chain_depth: usize,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    active: bool,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    inputs_closed: bool,
    /// Set when a frame was queued upstream, so the next sweep also runs backwards.
    upstream_moved: bool,
    /// Stages with an armed timer.
    timers_armed: usize,
    /// Wakes the task for the earliest timer of an idle stage.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Deepest nesting of [`Driver::chain`]: beyond it frames are queued as usual (bounds the stack).
const MAX_CHAIN: usize = 64;

impl Driver {
    fn new(
        pipeline: Pipeline,
        params: PipelineParams,
        shared: Arc<Shared>,
        frames_rx: mpsc::Receiver<(Direction, Frame, u64)>,
        ext_rx: mpsc::UnboundedReceiver<External>,
        audio: Arc<AudioLane>,
        events_tx: broadcast::Sender<Event>,
    ) -> Self {
        let mut pipeline = pipeline;
        if pipeline.is_empty() && pipeline.nodes.is_empty() {
            pipeline = pipeline.with(crate::processor::PassThrough);
        }
        let specs = flatten(pipeline);
        let n = specs.len();
        let wake = Arc::new(WakeSet {
            task: AtomicWaker::new(),
            ready: (0..n).map(|_| AtomicBool::new(false)).collect(),
            any: AtomicUsize::new(0),
        });
        let start = Arc::new(params.start.clone());
        let mut slots: Vec<Slot> = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let name: Arc<str> = Arc::from(spec.proc.dyn_name());
                let capacity =
                    spec.capacity.or_else(|| spec.proc.dyn_capacity()).unwrap_or(params.default_capacity).max(1);
                let mut cx = Box::new(Context::new(i, name.clone(), shared.clone()));
                cx.start = Some(start.clone());
                let waker = Waker::from(Arc::new(SlotWaker { set: wake.clone(), index: i }));
                let span = tracing::debug_span!("processor", name = %name);
                Slot {
                    counters: ProcessorCounters { processor: name.clone(), capacity, ..Default::default() },
                    name,
                    state: State::Idle(Owned { proc: spec.proc, cx }),
                    inbox: VecDeque::with_capacity(capacity + 4),
                    lane: VecDeque::new(),
                    data_in: 0,
                    data_out: 0,
                    seen_start: false,
                    timer_at: None,
                    capacity,
                    down: spec.down,
                    up: spec.up,
                    feeders: Vec::new(),
                    pending_events: Vec::new(),
                    waker,
                    waiting_room: false,
                    started: false,
                    stopped: false,
                    span,
                }
            })
            .collect();
        for i in 0..n {
            let targets: Vec<usize> = match &slots[i].down {
                Route::Slot(j) => vec![*j],
                Route::Fan(js) => js.to_vec(),
                Route::Exit => Vec::new(),
            };
            for j in targets {
                slots[j].feeders.push(i);
            }
        }
        let idle = params.idle_timeout.map(|d| Box::pin(tokio::time::sleep(d)));
        let mut d = Self {
            slots,
            params,
            shared,
            frames_rx,
            held_input: None,
            ext_rx,
            audio,
            events_tx,
            wake,
            observers: Vec::new(),
            exit: None,
            phase: Phase::Starting,
            epoch: 0,
            interruptions: 0,
            outcome: None,
            event_queue: VecDeque::new(),
            frame_pool: vec![Vec::with_capacity(64)],
            scratch_events: Vec::new(),
            chain_depth: 0,
            idle,
            active: false,
            deadline: None,
            inputs_closed: false,
            upstream_moved: false,
            timers_armed: 0,
            timer: None,
        };
        // The Start frame is the first thing every stage sees, ahead of anything pushed.
        let env = Envelope { frame: Frame::Start(start), epoch: 0, uninterruptible: true };
        d.slots[0].inbox.push_back((Direction::Downstream, env));
        d.slots[0].data_in += 1;
        d
    }

    fn poll_run(&mut self, cx: &mut TaskContext<'_>) -> Poll<TaskReport> {
        // A pipeline run inside another pipeline's stage shares this thread's stage area: keep the
        // outer one aside while this one runs.
        let nested = crate::context::enter_driver();
        let r = self.poll_inner(cx);
        crate::context::exit_driver(nested);
        r
    }

    fn poll_inner(&mut self, cx: &mut TaskContext<'_>) -> Poll<TaskReport> {
        self.wake.task.register(cx.waker());
        self.audio.waker.register(cx.waker());
        if self.phase == Phase::Starting {
            for i in 0..self.slots.len() {
                if !self.slots[i].started {
                    self.slots[i].started = true;
                    self.begin_call(i, Call::Start, None, true);
                }
            }
            self.phase = Phase::Running;
        }
        loop {
            let mut progress = false;
            progress |= self.drain_external(cx);
            progress |= self.process_events();
            if self.phase == Phase::Running {
                progress |= self.take_inputs(cx);
            }
            progress |= self.sweep();
            progress |= self.process_events();
            progress |= self.fire_timers();
            progress |= self.advance_lifecycle();
            if self.phase == Phase::Done {
                return Poll::Ready(self.report());
            }
            if !progress {
                break;
            }
        }
        self.arm_timer(cx);
        if let Some(idle) = self.idle.as_mut()
            && idle.as_mut().poll(cx).is_ready()
        {
            if self.active {
                self.active = false;
                if let Some(d) = self.params.idle_timeout {
                    idle.as_mut().reset(tokio::time::Instant::now() + d);
                    let _ = idle.as_mut().poll(cx);
                }
            } else if matches!(self.phase, Phase::Running) {
                tracing::info!("idle timeout: cancelling pipeline");
                self.idle = None;
                self.event_queue.push_back((Event::IdleTimeout, None));
                self.event_queue.push_back((Event::Cancel, None));
                cx.waker().wake_by_ref();
            }
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            tracing::warn!("stages did not stop within the cancel timeout; abandoning them");
            for s in &mut self.slots {
                s.state = State::Dead;
            }
            self.phase = Phase::Done;
            return Poll::Ready(self.report());
        }
        Poll::Pending
    }

    fn report(&mut self) -> TaskReport {
        let counters: Vec<ProcessorCounters> = self.slots.iter().map(|s| s.counters.clone()).collect();
        let input_audio_dropped = self.audio.dropped.load(Ordering::Relaxed);
        if let Some(first) = self.slots.first() {
            tracing::debug!(first = %first.name, input_audio_dropped, "pipeline finished");
        }
        let _ = self.events_tx.send(Event::Metrics(MetricsEvent::Counters(counters.clone().into())));
        TaskReport {
            outcome: self.outcome.clone().unwrap_or(TaskOutcome::Ended),
            counters,
            input_audio_dropped,
            interruptions: self.interruptions,
        }
    }

    /// Frames from spawned tasks and events from anywhere outside a stage poll.
    fn drain_external(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let mut progress = false;
        while let Poll::Ready(msg) = self.ext_rx.poll_recv(cx) {
            let Some(msg) = msg else { break };
            progress = true;
            match msg {
                External::Event(ev) => {
                    self.active = true;
                    self.event_queue.push_back((ev, None));
                }
                External::Frame { slot, direction, envelope } => {
                    if slot < self.slots.len() && self.accepting() {
                        self.route(slot, direction, envelope);
                    }
                }
            }
        }
        progress
    }

    fn accepting(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::Starting)
    }

    /// Move frames from the handle's lanes into the first (or last) stage while it has room.
    fn take_inputs(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let mut progress = false;
        let first = 0;
        let last = self.slots.len() - 1;
        // Input audio first: it is the oldest data, and End must not overtake it. It goes to the
        // first stage's caller lane whether or not that stage has room for data frames.
        loop {
            if self.audio.len.load(Ordering::Acquire) == 0 {
                break;
            }
            let next = {
                let mut q = lock(&self.audio.queue);
                let f = q.pop_front();
                self.audio.len.store(q.len(), Ordering::Release);
                f
            };
            let Some(frame) = next else { break };
            self.active = true;
            progress = true;
            let uninterruptible = frame.uninterruptible_by_default();
            let env = Envelope { frame, epoch: self.epoch, uninterruptible };
            self.enqueue(first, Direction::Downstream, env, None);
        }
        loop {
            if self.held_input.is_none() {
                if self.inputs_closed {
                    break;
                }
                match self.frames_rx.poll_recv(cx) {
                    Poll::Ready(Some(item)) => self.held_input = Some(item),
                    Poll::Ready(None) => {
                        self.inputs_closed = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            let Some((dir, frame, epoch)) = self.held_input.take() else { break };
            let target = if dir == Direction::Downstream { first } else { last };
            let audio_pending = matches!(frame, Frame::End) && self.audio.len.load(Ordering::Acquire) > 0;
            if self.room(target) == 0 || audio_pending {
                self.held_input = Some((dir, frame, epoch));
                break;
            }
            self.active = true;
            progress = true;
            let unint = frame.uninterruptible_by_default();
            let env = Envelope { frame, epoch, uninterruptible: unint };
            if env.epoch < self.epoch && !env.uninterruptible {
                continue;
            }
            self.enqueue(target, dir, env, None);
        }
        progress
    }

    fn room(&self, i: usize) -> usize {
        let s = &self.slots[i];
        s.capacity.saturating_sub(s.inbox.len())
    }

    fn route_room(&self, route: &Route) -> usize {
        match route {
            Route::Slot(j) => self.room(*j),
            Route::Fan(js) => js.iter().map(|j| self.room(*j)).min().unwrap_or(EXIT_ROOM),
            Route::Exit => EXIT_ROOM,
        }
    }

    fn enqueue(&mut self, target: usize, dir: Direction, env: Envelope, from: Option<usize>) {
        if !self.observers.is_empty() {
            let at = Instant::now();
            let from_name = from.map_or("source", |f| &*self.slots[f].name);
            let hop = Hop {
                from: from_name,
                to: &self.slots[target].name,
                kind: env.frame.kind(),
                direction: dir,
                epoch: env.epoch,
                at,
            };
            for o in &self.observers {
                o.on_hop(&hop);
            }
        }
        if dir == Direction::Upstream {
            self.upstream_moved = true;
        }
        let s = &mut self.slots[target];
        if matches!(s.state, State::Dead) {
            return;
        }
        if dir == Direction::Downstream && env.frame.is_caller_input() {
            s.lane.push_back((s.data_in, env));
            if s.lane.len() > self.params.caller_lane_capacity.max(1) {
                s.lane.pop_front();
                self.audio.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        s.inbox.push_back((dir, env));
        s.data_in += 1;
        if s.inbox.len() > s.counters.max_queue_depth {
            s.counters.max_queue_depth = s.inbox.len();
        }
    }

    /// Route a frame pushed by stage `from`.
    fn route(&mut self, from: usize, dir: Direction, env: Envelope) {
        if env.epoch < self.epoch && !env.uninterruptible {
            self.slots[from].counters.dropped_interrupted += 1;
            return;
        }
        let route = match dir {
            Direction::Downstream => &self.slots[from].down,
            Direction::Upstream => &self.slots[from].up,
        };
        match route {
            Route::Slot(j) => {
                let j = *j;
                let chain = dir == Direction::Downstream && self.can_chain(j, env.frame.is_caller_input());
                if chain {
                    self.chain(j, env);
                } else {
                    self.enqueue(j, dir, env, Some(from));
                }
            }
            Route::Exit => self.exit(from, dir, env),
            Route::Fan(js) => {
                let js = js.clone();
                for (k, j) in js.iter().enumerate() {
                    if k + 1 == js.len() {
                        self.enqueue(*j, dir, env, Some(from));
                        break;
                    }
                    self.enqueue(*j, dir, env.clone(), Some(from));
                }
            }
        }
    }

    /// Whether a frame routed downstream to stage `j` may be handed to it at once instead of
    /// queued: exactly when servicing `j` next would take this frame first and call it now.
    ///
    /// Why: in a chain of synchronous stages a queued frame costs a queue push and pop, a sweep
    /// step and a wake check per hop; handed on depth-first, a hop is the processor call. The
    /// order of frames on every link is unchanged (`j` is idle and nothing of it waits ahead of
    /// the frame), events still overtake frames (no hand-off while one is pending), and
    /// observers still see every hop (no hand-off while any is attached).
    ///
    /// What "first" means follows the service loop: a data frame needs an empty inbox and lane
    /// and room below `j`; caller input needs an empty lane, `Start` taken, and either an empty
    /// inbox or no room below `j` (then it goes ahead of the data).
    fn can_chain(&self, j: usize, caller: bool) -> bool {
        let s = &self.slots[j];
        let first = if caller {
            s.seen_start && (s.inbox.is_empty() || self.route_room(&s.down) == 0)
        } else {
            s.inbox.is_empty() && self.route_room(&s.down) > 0
        };
        first
            && s.lane.is_empty()
            && s.pending_events.is_empty()
            && matches!(s.state, State::Idle(_))
            && self.chain_depth < MAX_CHAIN
            && self.observers.is_empty()
            && !self.params.processing_metrics
            && self.event_queue.is_empty()
            && matches!(self.phase, Phase::Running | Phase::Stopping)
    }

    /// Stage `j` takes `env` now instead of from its inbox (see [`can_chain`](Self::can_chain)).
    fn chain(&mut self, j: usize, env: Envelope) {
        self.chain_depth += 1;
        self.take(j, Direction::Downstream, env);
        self.chain_depth -= 1;
    }

    /// Idle stage `i` takes one frame: the synchronous call, or the async one if it asks for it.
    fn take(&mut self, i: usize, dir: Direction, env: Envelope) {
        let kind = env.frame.kind();
        if let Frame::Start(info) = &env.frame {
            self.slots[i].seen_start = true;
            if let State::Idle(o) = &mut self.slots[i].state {
                o.cx.start = Some(info.clone());
            }
        }
        self.slots[i].counters.processed += 1;
        if let Some(frame) = self.try_now(i, env.frame, dir) {
            self.begin_call(i, Call::Process(frame, dir), Some(kind), env.uninterruptible);
        }
    }

    fn exit(&mut self, from: usize, dir: Direction, env: Envelope) {
        if !self.observers.is_empty() {
            let hop = Hop {
                from: &self.slots[from].name,
                to: "exit",
                kind: env.frame.kind(),
                direction: dir,
                epoch: env.epoch,
                at: Instant::now(),
            };
            for o in &self.observers {
                o.on_hop(&hop);
            }
        }
        let is_end = dir == Direction::Downstream && matches!(env.frame, Frame::End);
        if let Some(f) = self.exit.as_mut() {
            f(dir, env.frame);
        }
        if is_end && self.phase == Phase::Running {
            self.phase = Phase::Stopping;
        }
    }

    /// One pass over the stages; returns whether anything moved.
    fn sweep(&mut self) -> bool {
        let n = self.slots.len();
        let mut progress = false;
        if self.wake.any.swap(0, Ordering::AcqRel) > 0 {
            progress = true;
        }
        // Downstream frames cross the whole chain in one forward pass; a backward pass is only
        // needed when something travels upstream.
        for i in 0..n {
            progress |= self.service(i);
            if !self.event_queue.is_empty() {
                // Events overtake frames: handle them before moving anything else.
                self.process_events();
            }
        }
        if std::mem::take(&mut self.upstream_moved) {
            for i in (0..n).rev() {
                progress |= self.service(i);
                if !self.event_queue.is_empty() {
                    self.process_events();
                }
            }
        }
        progress
    }

    fn service(&mut self, i: usize) -> bool {
        let woken = self.wake.ready[i].swap(false, Ordering::AcqRel);
        match self.slots[i].state {
            State::Busy { .. } => {
                let room_now = self.slots[i].waiting_room && self.route_room(&self.slots[i].down) > 0;
                if woken || room_now {
                    self.poll_busy(i);
                    return true;
                }
                false
            }
            State::Idle(_) => {
                let mut progress = false;
                if !self.slots[i].pending_events.is_empty() {
                    let evs = std::mem::take(&mut self.slots[i].pending_events);
                    for ev in &evs {
                        self.deliver_event(i, ev);
                    }
                    progress = true;
                }
                if !matches!(self.phase, Phase::Running | Phase::Stopping) {
                    return progress;
                }
                while matches!(self.slots[i].state, State::Idle(_)) {
                    // Arrival order while data can move; caller input first when it cannot (no
                    // room downstream): caller input never waits behind the bot, and its pushes
                    // never wait for room (see the module docs). Only after `Start`.
                    let room = self.route_room(&self.slots[i].down) > 0;
                    let s = &self.slots[i];
                    let lane_next = s.seen_start
                        && s.lane.front().is_some_and(|(mark, _)| *mark <= s.data_out || !room || s.inbox.is_empty());
                    if lane_next && let Some((_, env)) = self.slots[i].lane.pop_front() {
                        progress = true;
                        if env.epoch < self.epoch && !env.uninterruptible {
                            self.slots[i].counters.dropped_interrupted += 1;
                            continue;
                        }
                        self.take(i, Direction::Downstream, env);
                        continue;
                    }
                    if !room {
                        break;
                    }
                    let Some((dir, env)) = self.slots[i].inbox.pop_front() else { break };
                    self.slots[i].data_out += 1;
                    progress = true;
                    self.wake_feeders(i);
                    if env.epoch < self.epoch && !env.uninterruptible {
                        self.slots[i].counters.dropped_interrupted += 1;
                        continue;
                    }
                    self.take(i, dir, env);
                }
                progress
            }
            State::Dead => {
                let had = !self.slots[i].inbox.is_empty() || !self.slots[i].lane.is_empty();
                self.slots[i].inbox.clear();
                self.slots[i].data_out = self.slots[i].data_in;
                self.slots[i].lane.clear();
                had
            }
        }
    }

    /// The synchronous fast path: a plain call, no boxed future. Returns the frame when the
    /// processor wants the async path (or when processing metrics need a timed call).
    fn try_now(&mut self, i: usize, frame: Frame, dir: Direction) -> Option<Frame> {
        if self.params.processing_metrics {
            return Some(frame);
        }
        let is_end = matches!(frame, Frame::End);
        self.arm_stage(i, false);
        // No per-processor span here: entering one costs more than a synchronous hop itself;
        // events logged from the fast path still carry the pipeline's span.
        let State::Idle(owned) = &mut self.slots[i].state else { return Some(frame) };
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| owned.proc.dyn_process_now(frame, dir, &mut owned.cx)));
        match r {
            Ok(Ok(back @ Some(_))) => {
                let _ = self.collect_stage(i, true);
                back
            }
            Ok(result) => {
                let _ = self.collect_stage(i, true);
                if is_end && matches!(self.slots[i].down, Route::Exit) && self.phase == Phase::Running {
                    self.phase = Phase::Stopping;
                }
                self.handle_result(i, result.map(|_| ()));
                None
            }
            Err(panic) => {
                let _ = self.collect_stage(i, false);
                let msg = panic_message(&panic);
                let name = self.slots[i].name.clone();
                tracing::error!(processor = %name, panic = %msg, "processor panicked");
                self.slots[i].state = State::Dead;
                self.fail(i, format!("processor `{name}` panicked: {msg}"));
                None
            }
        }
    }

    fn wake_feeders(&mut self, i: usize) {
        for k in 0..self.slots[i].feeders.len() {
            let f = self.slots[i].feeders[k];
            if self.slots[f].waiting_room {
                self.wake.ready[f].store(true, Ordering::Release);
            }
        }
    }

    fn begin_call(&mut self, i: usize, call: Call, kind: Option<FrameKind>, uninterruptible: bool) {
        let state = std::mem::replace(&mut self.slots[i].state, State::Dead);
        let State::Idle(owned) = state else {
            self.slots[i].state = state;
            return;
        };
        let since = if self.params.processing_metrics { Some(Instant::now()) } else { None };
        let fut = owned.proc.call(owned.cx, call);
        self.slots[i].state = State::Busy { fut, uninterruptible, kind, since };
        self.poll_busy(i);
    }

    /// Set up the thread-local stage for stage `i`.
    fn arm_stage(&self, i: usize, cancel: bool) {
        let room_down = self.route_room(&self.slots[i].down);
        let epoch = self.epoch;
        with_stage(|s| {
            s.room_down = room_down;
            s.epoch = epoch;
            s.cancel = cancel;
            s.blocked = false;
            s.timer = TimerCmd::Keep;
        });
    }

    /// Take what stage `i` staged and route it; returns whether it blocked on a full neighbour.
    fn collect_stage(&mut self, i: usize, keep_frames: bool) -> bool {
        let mut frames = self.frame_pool.pop().unwrap_or_default();
        let mut events = std::mem::take(&mut self.scratch_events);
        let mut timer = TimerCmd::Keep;
        let blocked = with_stage(|s| {
            timer = std::mem::take(&mut s.timer);
            // Swap buffers rather than copy frames out: both keep their capacity, so the hot
            // path never allocates.
            if !s.frames.is_empty() {
                std::mem::swap(&mut s.frames, &mut frames);
            }
            if !s.events.is_empty() {
                std::mem::swap(&mut s.events, &mut events);
            }
            s.cancel = false;
            s.blocked
        });
        // Events first: a frame staged together with an event must not be handed on (see
        // `can_chain`) ahead of it.
        if !events.is_empty() {
            for ev in events.drain(..) {
                self.event_queue.push_back((ev, Some(i)));
            }
        }
        self.scratch_events = events;
        match timer {
            TimerCmd::Keep => {}
            TimerCmd::Set(at) => {
                if self.slots[i].timer_at.replace(at).is_none() {
                    self.timers_armed += 1;
                }
            }
            TimerCmd::Clear => {
                if self.slots[i].timer_at.take().is_some() {
                    self.timers_armed -= 1;
                }
            }
        }
        if !frames.is_empty() {
            if keep_frames {
                for (dir, env) in frames.drain(..) {
                    self.route(i, dir, env);
                }
            } else {
                frames.clear();
            }
        }
        self.frame_pool.push(frames);
        blocked
    }

    fn poll_busy(&mut self, i: usize) {
        self.poll_busy_with(i, false);
    }

    fn poll_busy_with(&mut self, i: usize, cancel: bool) {
        self.arm_stage(i, cancel);
        let slot = &mut self.slots[i];
        let State::Busy { fut, .. } = &mut slot.state else { return };
        let waker = &slot.waker;
        let _enter = slot.span.enter();
        let mut tcx = TaskContext::from_waker(waker);
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut tcx)));
        drop(_enter);
        match polled {
            Err(panic) => {
                let msg = panic_message(&panic);
                let _ = self.collect_stage(i, false);
                let name = self.slots[i].name.clone();
                tracing::error!(processor = %name, panic = %msg, "processor panicked");
                self.slots[i].state = State::Dead;
                self.fail(i, format!("processor `{name}` panicked: {msg}"));
            }
            Ok(Poll::Pending) => {
                let blocked = self.collect_stage(i, !cancel);
                self.slots[i].waiting_room = blocked;
            }
            Ok(Poll::Ready((owned, result))) => {
                let _ = self.collect_stage(i, !cancel);
                let prev = std::mem::replace(&mut self.slots[i].state, State::Idle(owned));
                self.slots[i].waiting_room = false;
                // A last stage that swallows `End` instead of forwarding it must not leave the
                // task running forever: the drain is complete once it has processed `End`.
                if let State::Busy { kind: Some(FrameKind::End), .. } = prev
                    && matches!(self.slots[i].down, Route::Exit)
                    && self.phase == Phase::Running
                {
                    self.phase = Phase::Stopping;
                }
                if let State::Busy { kind: Some(kind), since: Some(t0), .. } = prev {
                    let value = t0.elapsed();
                    let processor = self.slots[i].name.clone();
                    self.event_queue
                        .push_back((Event::Metrics(MetricsEvent::ProcessingTime { processor, kind, value }), Some(i)));
                }
                self.handle_result(i, result);
            }
        }
    }

    fn handle_result(&mut self, i: usize, result: Result<(), FlowError>) {
        match result {
            Ok(()) | Err(FlowError::Flushing) => {}
            Err(FlowError::Fatal(e)) => {
                let name = self.slots[i].name.clone();
                tracing::error!(processor = %name, error = %e, "fatal processor error");
                self.fail(i, format!("processor `{name}` failed: {e}"));
            }
            Err(e) => {
                let name = self.slots[i].name.clone();
                tracing::warn!(processor = %name, error = %e, "processor error");
                let ev = ErrorEvent { processor: name, message: Arc::from(e.to_string()), fatal: false };
                self.event_queue.push_back((Event::Error(ev), Some(i)));
            }
        }
    }

    fn fail(&mut self, i: usize, message: String) {
        let ev =
            ErrorEvent { processor: self.slots[i].name.clone(), message: Arc::from(message.as_str()), fatal: true };
        let _ = self.events_tx.send(Event::Error(ev.clone()));
        for o in &self.observers {
            o.on_event(&Event::Error(ev.clone()), Instant::now());
        }
        if self.outcome.is_none() {
            self.outcome = Some(TaskOutcome::Failed(message));
        }
        self.begin_cancel();
    }

    /// Deliver an event to an idle stage now, or queue it until its current call returns.
    fn deliver_event(&mut self, i: usize, ev: &Event) {
        if !matches!(self.slots[i].state, State::Idle(_)) {
            if !matches!(self.slots[i].state, State::Dead) {
                self.slots[i].pending_events.push(ev.clone());
            }
            return;
        }
        self.arm_stage(i, false);
        let slot = &mut self.slots[i];
        let State::Idle(owned) = &mut slot.state else { return };
        let _enter = slot.span.enter();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| owned.proc.dyn_on_event(ev, &mut owned.cx)));
        drop(_enter);
        match r {
            Ok(result) => {
                let _ = self.collect_stage(i, true);
                self.handle_result(i, result);
            }
            Err(panic) => {
                let _ = self.collect_stage(i, false);
                let msg = panic_message(&panic);
                let name = self.slots[i].name.clone();
                self.slots[i].state = State::Dead;
                self.fail(i, format!("processor `{name}` panicked in on_event: {msg}"));
            }
        }
    }

    fn process_events(&mut self) -> bool {
        let mut progress = false;
        while let Some((ev, origin)) = self.event_queue.pop_front() {
            progress = true;
            self.dispatch(ev, origin);
        }
        progress
    }

    fn dispatch(&mut self, ev: Event, origin: Option<usize>) {
        match ev {
            Event::Interrupt => self.interrupt(),
            Event::Cancel => {
                if self.outcome.is_none() {
                    self.outcome = Some(TaskOutcome::Cancelled);
                }
                self.begin_cancel();
            }
            ev => {
                if matches!(ev, Event::UserStartedSpeaking | Event::BotStartedSpeaking) {
                    self.active = true;
                }
                for i in 0..self.slots.len() {
                    if Some(i) != origin {
                        self.deliver_event(i, &ev);
                    }
                }
                self.publish(ev);
            }
        }
    }

    fn publish(&mut self, ev: Event) {
        if !self.observers.is_empty() {
            let at = Instant::now();
            for o in &self.observers {
                o.on_event(&ev, at);
            }
        }
        let _ = self.events_tx.send(ev);
    }

    fn interrupt(&mut self) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        self.interruptions += 1;
        // A handle bumps the shared epoch before sending Interrupt so its later pushes are
        // already stamped with the new epoch; take whichever is newer.
        self.epoch = (self.epoch + 1).max(self.shared.epoch.load(Ordering::Acquire));
        self.shared.epoch.store(self.epoch, Ordering::Release);
        {
            let mut turn = lock(&self.shared.turn);
            turn.cancel();
            *turn = CancellationToken::new();
        }
        for i in 0..self.slots.len() {
            if let State::Busy { uninterruptible: false, .. } = self.slots[i].state {
                self.slots[i].counters.dropped_interrupted += 1;
                self.poll_busy_with(i, true);
            }
            let before = self.slots[i].inbox.len();
            let epoch = self.epoch;
            self.slots[i].inbox.retain(|(_, e)| e.uninterruptible || e.epoch >= epoch);
            let dropped = before - self.slots[i].inbox.len();
            self.slots[i].data_out += dropped as u64;
            self.slots[i].counters.dropped_interrupted += dropped as u64;
            if dropped > 0 {
                self.wake_feeders(i);
            }
            self.deliver_event(i, &Event::Interrupt);
        }
        self.publish(Event::Interrupt);
    }

    fn begin_cancel(&mut self) {
        if matches!(self.phase, Phase::Cancelling | Phase::Done) {
            return;
        }
        self.phase = Phase::Cancelling;
        self.epoch += 1;
        self.shared.epoch.store(self.epoch, Ordering::Release);
        // Cancel even when poisoned: spawned turn work must stop with the pipeline.
        lock(&self.shared.turn).cancel();
        for i in 0..self.slots.len() {
            if matches!(self.slots[i].state, State::Busy { .. }) {
                self.poll_busy_with(i, true);
            }
            let dropped = self.slots[i].inbox.len() + self.slots[i].lane.len();
            self.slots[i].counters.dropped_interrupted += dropped as u64;
            self.slots[i].inbox.clear();
            self.slots[i].data_out = self.slots[i].data_in;
            self.slots[i].lane.clear();
            self.slots[i].pending_events.clear();
        }
        for i in 0..self.slots.len() {
            self.deliver_event(i, &Event::Cancel);
        }
        self.publish(Event::Cancel);
        self.deadline = Some(Box::pin(tokio::time::sleep(self.params.cancel_timeout)));
        self.wake.task.wake();
    }

    /// Call `on_timer` on every idle stage whose timer is due.
    fn fire_timers(&mut self) -> bool {
        if self.timers_armed == 0 || !matches!(self.phase, Phase::Running | Phase::Stopping) {
            return false;
        }
        let now = tokio::time::Instant::now();
        let mut progress = false;
        for i in 0..self.slots.len() {
            if self.slots[i].timer_at.is_some_and(|at| at <= now) && matches!(self.slots[i].state, State::Idle(_)) {
                self.slots[i].timer_at = None;
                self.timers_armed -= 1;
                progress = true;
                self.begin_call(i, Call::Timer, None, false);
            }
        }
        progress
    }

    /// Make the task wake for the earliest timer of an idle stage. A busy stage's due timer
    /// fires when its call returns (that return wakes the task), so it is left out: counting it
    /// would spin the task on an already-expired sleep.
    fn arm_timer(&mut self, cx: &mut TaskContext<'_>) {
        if self.timers_armed == 0 || !matches!(self.phase, Phase::Running | Phase::Stopping) {
            return;
        }
        let earliest = self.slots.iter().filter(|s| matches!(s.state, State::Idle(_))).filter_map(|s| s.timer_at).min();
        let Some(at) = earliest else { return };
        let sleep = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }

    /// Stop stages once `End` has left the pipeline (or on cancel), then finish.
    fn advance_lifecycle(&mut self) -> bool {
        if !matches!(self.phase, Phase::Stopping | Phase::Cancelling) {
            return false;
        }
        let mut progress = false;
        let mut all_done = true;
        for i in 0..self.slots.len() {
            match self.slots[i].state {
                State::Dead => {}
                State::Busy { .. } => all_done = false,
                State::Idle(_) => {
                    if !self.slots[i].stopped {
                        self.slots[i].stopped = true;
                        self.slots[i].inbox.clear();
                        self.slots[i].data_out = self.slots[i].data_in;
                        self.slots[i].lane.clear();
                        progress = true;
                        all_done = false;
                        self.begin_call(i, Call::Stop, None, true);
                    }
                }
            }
        }
        if all_done {
            self.phase = Phase::Done;
            progress = true;
        }
        progress
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
