//! [`Context`]: what a processor uses to push frames, emit events and read the turn state.
//!
//! Design note (why a thread-local staging area): the runner polls every processor of a pipeline
//! from one task, so a hop is a function call, not a task switch. While the runner polls one
//! processor's future it installs a *stage* in a thread-local: `push` appends there and the
//! runner routes the staged frames to the next inbox right after the poll returns, on the same
//! thread. That gives an allocation-free, lock-free hand-off without self-referential borrows
//! between processors and their queues. A `Context` is only reachable through `&mut` borrows the
//! runner hands out, so pushes always happen inside such a poll. Work spawned onto other tasks
//! uses a [`FrameSender`] instead, which goes through a channel.

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
        match self.turn.lock() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
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

    /// A sender for tasks spawned by this processor: frames it pushes enter the pipeline as if
    /// this processor pushed them, stamped with the *current* epoch, so after an interruption
    /// they are stale and dropped at the next hop.
    #[must_use]
    pub fn sender(&self) -> FrameSender {
        FrameSender { slot: self.slot, epoch: self.epoch(), shared: self.shared.clone() }
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

/// Pushes frames and events into a running pipeline from a spawned task.
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
        let uninterruptible = frame.uninterruptible_by_default();
        let envelope = Envelope { frame, epoch: self.epoch, uninterruptible };
        self.shared.external.send(External::Frame { slot: self.slot, direction, envelope }).is_ok()
    }

    /// Emit an event. Returns `false` if the pipeline ended.
    pub fn emit(&self, event: Event) -> bool {
        self.shared.external.send(External::Event(event)).is_ok()
    }

    /// Whether the epoch this sender was made in is still current (no interruption since).
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
