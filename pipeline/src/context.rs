//! [`Context`]: what a processor uses to push frames, emit events and read the turn state.
//!
//! Design note (why a thread-local staging area): the runner polls every processor of a pipeline
//! from one task, so a hop is a function call, not a task switch. While the runner polls one
//! processor's future it installs a *stage* in a thread-local: `push` appends there and the
//! runner routes the staged frames to the next inbox right after the poll returns, on the same
//! thread. That gives an allocation-free, lock-free hand-off without self-referential borrows
//! between processors and their queues. A `Context` is only reachable through `&mut` borrows the
//! runner hands out, so pushes always happen inside such a poll. Work spawned onto other tasks
//! pushes through a channel instead, with one of two senders that differ only in the epoch their
//! frames carry:
//!
//! - [`FrameSender`] ([`Context::sender`]) is *turn-scoped*: its frames carry the epoch it was
//!   made in, so after an interruption the runner drops them at the next hop. For work that
//!   belongs to one bot turn: a TTS utterance's audio, a tool batch's follow-up LLM run.
//! - [`StreamSender`] ([`Context::stream_sender`]) is *stream-scoped*: each frame takes the
//!   pipeline's epoch at the moment it is pushed, so the sender stays valid across
//!   interruptions. For streams that outlive a turn: a recogniser's transcripts, a background
//!   track, a processor's own timers. The engine owns the epoch; no processor refreshes a sender
//!   on `Interrupt`.
//!
//! A frame a stream sender pushed *before* an interruption carries the old epoch and is
//! discarded like anything else of the old turn still in flight (unless it is uninterruptible):
//! the stamp follows the push, not the arrival, so "before the barge-in" means the same for
//! spawned work as for a processor's own pushes.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::{Event, MetricsEvent};
use crate::frame::{Direction, Envelope, Epoch, Frame, StartInfo};

/// Frames and events a processor produced during one poll.
#[derive(Default)]
pub(crate) struct Stage {
    pub(crate) frames: Vec<(Direction, Envelope)>,
    pub(crate) events: Vec<Event>,
    /// Remaining downstream credits for this poll (room in the receiver's inbox).
    pub(crate) room_down: usize,
    /// Set when a push found no room: the runner wakes the processor when room appears.
    pub(crate) blocked: bool,
    pub(crate) epoch: Epoch,
    /// The runner asks the in-flight call to unwind (interrupt or cancel).
    pub(crate) cancel: bool,
    /// A timer request made during this poll ([`Context::wake_at`] / [`Context::cancel_wake`]).
    pub(crate) timer: TimerCmd,
}

/// What a processor asked of its stage's timer during one poll.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerCmd {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Call `on_timer` at this instant (replaces an armed timer).
    Set(tokio::time::Instant),
    /// Disarm.
    Clear,
}

thread_local! {
    static STAGE: RefCell<Stage> = RefCell::new(Stage::default());
}

pub(crate) fn with_stage<R>(f: impl FnOnce(&mut Stage) -> R) -> R {
    STAGE.with(|s| f(&mut s.borrow_mut()))
}

pub(crate) fn cancel_requested() -> bool {
    with_stage(|s| s.cancel)
}

/// State shared between the runner and every context of one pipeline task.
pub(crate) struct Shared {
    pub(crate) epoch: AtomicU64,
    pub(crate) turn: std::sync::Mutex<CancellationToken>,
    pub(crate) external: mpsc::UnboundedSender<External>,
}

impl Shared {
    pub(crate) fn turn(&self) -> CancellationToken {
        crate::sync::lock(&self.turn).clone()
    }
}

/// Messages from outside the runner's poll (spawned tasks, handles) into the runner.
pub(crate) enum External {
    Frame { slot: usize, direction: Direction, envelope: Envelope },
    Event(Event),
}

/// A processor's handle on the pipeline.
pub struct Context {
    pub(crate) slot: usize,
    pub(crate) name: Arc<str>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) start: Option<Arc<StartInfo>>,
    ttfb_started: Option<Instant>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn new(slot: usize, name: Arc<str>, shared: Arc<Shared>) -> Self {
        Self { slot, name, shared, start: None, ttfb_started: None }
    }

    /// The processor's name as the pipeline knows it.
    #[must_use]
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Stream information from the last `Start` frame that reached this processor.
    #[must_use]
    pub fn start_info(&self) -> Option<&Arc<StartInfo>> {
        self.start.as_ref()
    }

    /// The current epoch (bumped by every interruption).
    #[must_use]
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch.load(Ordering::Acquire)
    }

    /// A token cancelled at the next interruption: hand it to spawned provider work of this turn.
    #[must_use]
    pub fn turn_token(&self) -> CancellationToken {
        self.shared.turn()
    }

    /// Push a frame to the neighbour in `direction`, waiting while its inbox is full.
    ///
    /// Caller input ([`Frame::is_caller_input`]) pushed downstream never waits: it goes to the
    /// neighbour's caller lane, ahead of its queued data frames. Upstream pushes never wait: upstream traffic is sparse control (play-out reports, errors),
    /// and letting it block could deadlock against a downstream push in the other direction.
    pub fn push(&mut self, frame: Frame, direction: Direction) -> Push {
        let uninterruptible = frame.uninterruptible_by_default();
        Push { item: Some((frame, direction, uninterruptible)) }
    }

    /// Like [`push`](Self::push), but the frame survives interruptions.
    pub fn push_uninterruptible(&mut self, frame: Frame, direction: Direction) -> Push {
        Push { item: Some((frame, direction, true)) }
    }

    /// Push without waiting, even if the receiver is full (a bounded overshoot: use it for a
    /// frame or two from `on_event` or a synchronous processor, never in a loop).
    pub fn push_now(&mut self, frame: Frame, direction: Direction) {
        let uninterruptible = frame.uninterruptible_by_default();
        stage_push(frame, direction, uninterruptible, true);
    }

    /// Wait until the downstream neighbour has room for one frame.
    pub fn reserve(&mut self) -> Reserve {
        Reserve { _priv: () }
    }

    /// Emit an out-of-band event: delivered to every processor and to the task's subscribers.
    pub fn emit(&mut self, event: Event) {
        with_stage(|s| s.events.push(event));
    }

    /// Ask the runner to call [`Processor::on_timer`](crate::Processor::on_timer) once, at `at`
    /// or as soon after it as the stage is idle. One timer per stage: a later call replaces an
    /// armed one. Timers survive interruptions (the processor decides what a late one means).
    ///
    /// Why the engine owns timers: a stage that waits on a clock inside `process` holds its call,
    /// and a busy stage takes nothing else (caller input, events) until the call returns. With a
    /// timer the stage returns at once and the runner calls it back, on the pipeline's own task.
    pub fn wake_at(&mut self, at: tokio::time::Instant) {
        with_stage(|s| s.timer = TimerCmd::Set(at));
    }

    /// Disarm a timer set with [`wake_at`](Self::wake_at).
    pub fn cancel_wake(&mut self) {
        with_stage(|s| s.timer = TimerCmd::Clear);
    }

    /// Emit `Event::Interrupt`: the runner interrupts the whole pipeline centrally.
    ///
    /// The epoch moves on at once, as a handle's interruption does: what this call pushes after
    /// `interrupt()` belongs to the new turn and survives the flush (a user aggregator that
    /// interrupts on the words that also complete the caller's turn pushes that turn's run next);
    /// what it pushed before is of the old turn and is dropped with everything else in flight.
    pub fn interrupt(&mut self) {
        let next = self.shared.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        with_stage(|s| s.epoch = next);
        self.emit(Event::Interrupt);
    }

    /// Mark the start of a time-to-first-byte measurement (e.g. request sent).
    pub fn ttfb_start(&mut self) {
        self.ttfb_started = Some(Instant::now());
    }

    /// End a TTFB measurement started by [`ttfb_start`](Self::ttfb_start) and publish it; later
    /// calls before the next start do nothing.
    pub fn ttfb_stop(&mut self) {
        if let Some(t0) = self.ttfb_started.take() {
            let value = t0.elapsed();
            tracing::debug!(processor = %self.name, ttfb_ms = value.as_secs_f64() * 1e3, "ttfb");
            self.emit(Event::Metrics(MetricsEvent::Ttfb { processor: self.name.clone(), value }));
        }
    }

    /// Whether a TTFB measurement is running.
    #[must_use]
    pub fn ttfb_running(&self) -> bool {
        self.ttfb_started.is_some()
    }

    /// A turn-scoped sender for tasks spawned by this processor: frames it pushes enter the
    /// pipeline as if this processor pushed them, stamped with the epoch current *now*, so after
    /// the next interruption they are stale and dropped at the next hop. Use it for work whose
    /// output means nothing once the caller barged in (an utterance's audio); for a stream that
    /// outlives the turn use [`stream_sender`](Self::stream_sender).
    #[must_use]
    pub fn sender(&self) -> FrameSender {
        FrameSender { slot: self.slot, epoch: self.epoch(), shared: self.shared.clone() }
    }

    /// A stream-scoped sender for tasks spawned by this processor: every frame it pushes takes
    /// the pipeline's epoch at the moment of the push, so it stays valid across interruptions
    /// and nobody has to swap in a fresh one. Use it for streams that outlive a turn (a
    /// recogniser's results, a background track, periodic work). See the module docs for what
    /// "current" means around an interruption.
    #[must_use]
    pub fn stream_sender(&self) -> StreamSender {
        StreamSender { slot: self.slot, shared: self.shared.clone() }
    }
}

fn stage_push(frame: Frame, direction: Direction, uninterruptible: bool, force: bool) -> bool {
    with_stage(|s| {
        if direction == Direction::Downstream && !force {
            if s.room_down == 0 {
                s.blocked = true;
                return false;
            }
            s.room_down -= 1;
        }
        let epoch = s.epoch;
        s.frames.push((direction, Envelope { frame, epoch, uninterruptible }));
        true
    })
}

/// Future returned by [`Context::push`].
#[must_use = "a push does nothing unless awaited"]
pub struct Push {
    item: Option<(Frame, Direction, bool)>,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push").finish_non_exhaustive()
    }
}

impl Future for Push {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<()> {
        let Some((frame, direction, unint)) = self.item.take() else {
            return Poll::Ready(());
        };
        // Caller input never waits for room: it travels the caller lane (see the runner docs).
        let lane = frame.is_caller_input();
        // One thread-local access per push: this is the per-hop hot path.
        let rejected = with_stage(|s| {
            if direction == Direction::Downstream && !lane {
                if s.room_down == 0 {
                    // The runner re-polls this processor when the receiver pops a frame.
                    s.blocked = true;
                    return Some(frame);
                }
                s.room_down -= 1;
            }
            let epoch = s.epoch;
            s.frames.push((direction, Envelope { frame, epoch, uninterruptible: unint }));
            None
        });
        match rejected {
            None => Poll::Ready(()),
            Some(frame) => {
                self.item = Some((frame, direction, unint));
                Poll::Pending
            }
        }
    }
}

/// Future returned by [`Context::reserve`].
#[must_use = "a reservation does nothing unless awaited"]
pub struct Reserve {
    _priv: (),
}

impl std::fmt::Debug for Reserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reserve").finish_non_exhaustive()
    }
}

impl Future for Reserve {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<()> {
        with_stage(|s| {
            if s.room_down > 0 {
                Poll::Ready(())
            } else {
                s.blocked = true;
                Poll::Pending
            }
        })
    }
}

/// Sends one frame from outside a poll into the runner, as if stage `slot` pushed it.
fn send_external(shared: &Shared, slot: usize, frame: Frame, direction: Direction, epoch: Epoch) -> bool {
    let uninterruptible = frame.uninterruptible_by_default();
    let envelope = Envelope { frame, epoch, uninterruptible };
    shared.external.send(External::Frame { slot, direction, envelope }).is_ok()
}

/// Pushes one turn's frames and events into a running pipeline from a spawned task
/// ([`Context::sender`]).
///
/// Its frames carry the epoch the sender was made in: after an interruption they are stale and
/// the runner drops them at the next hop (uninterruptible frames, such as tool results, still
/// arrive). That is what a turn's own output needs: audio of an utterance the caller talked over
/// must never play. For a stream that outlives turns, use [`StreamSender`].
///
/// Not bounded by the receiver's inbox (the channel is unbounded): use it for provider receive
/// loops whose rate the provider bounds (a TTS or STT socket), not for bulk data.
#[derive(Clone)]
pub struct FrameSender {
    slot: usize,
    epoch: Epoch,
    shared: Arc<Shared>,
}

impl FrameSender {
    /// Push as the owning processor would, in `direction`. Returns `false` if the pipeline ended.
    pub fn push(&self, frame: Frame, direction: Direction) -> bool {
        send_external(&self.shared, self.slot, frame, direction, self.epoch)
    }

    /// Emit an event. Returns `false` if the pipeline ended.
    pub fn emit(&self, event: Event) -> bool {
        self.shared.external.send(External::Event(event)).is_ok()
    }

    /// Whether the epoch this sender was made in is still current (no interruption since): lets
    /// turn-scoped work stop early instead of producing frames the runner would drop.
    #[must_use]
    pub fn is_current(&self) -> bool {
        self.shared.epoch.load(Ordering::Acquire) == self.epoch
    }

    /// The epoch frames from this sender are stamped with.
    #[must_use]
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender").field("slot", &self.slot).field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

/// Pushes frames and events of a stream that outlives a turn into a running pipeline from a
/// spawned task ([`Context::stream_sender`]).
///
/// Each frame takes the pipeline's epoch when it is pushed, so a frame pushed after an
/// interruption belongs to the new turn and is delivered; the sender never goes stale. Why a
/// second type rather than a flag on [`FrameSender`]: which one a task holds is a decision about
/// what its output means after a barge-in, and the type makes it visible where the task is
/// spawned.
///
/// Not bounded by the receiver's inbox (the channel is unbounded), as [`FrameSender`]: for
/// streams whose rate a provider or a clock bounds, not for bulk data.
#[derive(Clone)]
pub struct StreamSender {
    slot: usize,
    shared: Arc<Shared>,
}

impl StreamSender {
    /// Push as the owning processor would, in `direction`, stamped with the current epoch.
    /// Returns `false` if the pipeline ended.
    pub fn push(&self, frame: Frame, direction: Direction) -> bool {
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        send_external(&self.shared, self.slot, frame, direction, epoch)
    }

    /// Emit an event. Returns `false` if the pipeline ended.
    pub fn emit(&self, event: Event) -> bool {
        self.shared.external.send(External::Event(event)).is_ok()
    }
}

impl std::fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender").field("slot", &self.slot).finish_non_exhaustive()
    }
}

thread_local! {
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Called by a runner before it polls anything; saves an outer runner's stage when nested.
pub(crate) fn enter_driver() -> Option<Stage> {
    let depth = DEPTH.with(|d| {
        let n = d.get();
        d.set(n + 1);
        n
    });
    if depth > 0 { Some(with_stage(std::mem::take)) } else { None }
}

/// Called by a runner when its poll ends; restores the outer stage saved by [`enter_driver`].
pub(crate) fn exit_driver(saved: Option<Stage>) {
    DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    if let Some(outer) = saved {
        with_stage(|s| *s = outer);
    }
}
