//! The [`Processor`] trait: one small async entry point per processor, plus events and lifecycle.
//!
//! Processors are written against the generic trait (with `impl Future` returns, so no boxing by
//! hand) and stored as `Box<dyn DynProcessor>` by the builder; the one boxing adapter lives here.
//!
//! Contract, in the order the runner relies on it:
//! - `process` is called with one frame at a time. Awaiting inside it *is* backpressure: the next
//!   frame is not delivered until it returns, and [`Context::push`] waits while the receiver's inbox
//!   is full. A processor must forward (push) every frame it does not consume.
//! - Cancel safety: on [`Event::Interrupt`] the in-flight `process` future is dropped at whatever
//!   await it is parked on, unless the frame was uninterruptible. Keep state consistent across awaits
//!   (mutate after the await, not before) or mark the frame uninterruptible.
//! - `on_event` runs between `process` calls (never concurrently: it also takes `&mut self`), so an
//!   event reaches a busy processor when its current call returns or is cancelled. It must not wait
//!   on I/O; it may push frames with [`Context::push_now`] and emit events.
//! - `start` runs before any frame, `stop` after the last one (graceful end) or on cancel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use crate::context::{Context, cancel_requested};
use crate::error::{FlowError, FlowResult};
use crate::event::Event;
use crate::frame::{Direction, Frame};

/// A stage of a pipeline.
pub trait Processor: Send + 'static {
    /// A short name for logs, metrics and observers.
    fn name(&self) -> &str {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full)
    }

    /// Inbox capacity this processor wants (frames), if not the pipeline default.
    fn capacity(&self) -> Option<usize> {
        None
    }

    /// Handle one in-band frame travelling in `direction`.
    ///
    /// The default runs [`process_now`](Self::process_now) and forwards a frame it hands back, so
    /// a synchronous processor implements only `process_now`, and one that implements neither is
    /// a pass-through.
    fn process(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> impl Future<Output = FlowResult> + Send {
        async move {
            if let Some(frame) = self.process_now(frame, direction, cx)? {
                cx.push(frame, direction).await;
            }
            Ok(())
        }
    }

    /// Synchronous fast path, tried before [`process`](Self::process): handle the frame without
    /// awaiting and return `Ok(None)`, or hand it back (`Ok(Some(frame))`) to take the async
    /// path. The runner only calls it when the downstream neighbour has room for a frame, so a
    /// processor that emits at most one frame downstream per input can use
    /// [`Context::push_now`] here without overshooting its neighbour's capacity. Filters,
    /// mappers and codecs implement this to make a hop a plain function call (no boxed future).
    fn process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        let _ = (direction, cx);
        Ok(Some(frame))
    }

    /// React to an out-of-band event. The runner has already done the central part of
    /// `Interrupt` (epoch, queues, turn token) before this is called.
    fn on_event(&mut self, event: &Event, cx: &mut Context) -> FlowResult {
        let _ = (event, cx);
        Ok(())
    }

    /// Called when the timer set with [`Context::wake_at`] fires, while the stage is idle. It is
    /// an ordinary interruptible call: it may push (and wait for room) and set the next timer.
    fn on_timer(&mut self, cx: &mut Context) -> impl Future<Output = FlowResult> + Send {
        let _ = cx;
        std::future::ready(Ok(()))
    }

    /// Called once before the first frame.
    fn start(&mut self, cx: &mut Context) -> impl Future<Output = FlowResult> + Send {
        let _ = cx;
        std::future::ready(Ok(()))
    }

    /// Called once after the last frame (graceful end) or on cancel.
    fn stop(&mut self, cx: &mut Context) -> impl Future<Output = FlowResult> + Send {
        let _ = cx;
        std::future::ready(Ok(()))
    }
}

/// A processor and its context, owned by the runner between calls and by the in-flight future
/// during one.
pub(crate) struct Owned {
    pub(crate) proc: Box<dyn DynProcessor>,
    /// Boxed so handing it to and from a call moves a pointer, not the whole context.
    pub(crate) cx: Box<Context>,
}

/// The boxed future of one call; it hands the processor back when it completes or is cancelled.
pub(crate) type CallFuture = Pin<Box<dyn Future<Output = (Owned, FlowResult)> + Send>>;

/// What a call is for.
pub(crate) enum Call {
    Process(Frame, Direction),
    Start,
    Stop,
    Timer,
}

/// Object-safe form of [`Processor`]; implemented for every `Processor`.
pub trait DynProcessor: Send + 'static {
    /// See [`Processor::name`].
    fn dyn_name(&self) -> &str;
    /// See [`Processor::capacity`].
    fn dyn_capacity(&self) -> Option<usize>;
    /// See [`Processor::process_now`].
    fn dyn_process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError>;
    /// See [`Processor::on_event`].
    fn dyn_on_event(&mut self, event: &Event, cx: &mut Context) -> FlowResult;
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn call(self: Box<Self>, cx: Box<Context>, call: Call) -> CallFuture;
}

impl<P: Processor> DynProcessor for P {
    fn dyn_name(&self) -> &str {
        self.name()
    }
    fn dyn_capacity(&self) -> Option<usize> {
        self.capacity()
    }
    fn dyn_process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        self.process_now(frame, direction, cx)
    }
    fn dyn_on_event(&mut self, event: &Event, cx: &mut Context) -> FlowResult {
        self.on_event(event, cx)
    }
    #[allow(private_interfaces)]
    fn call(self: Box<Self>, cx: Box<Context>, call: Call) -> CallFuture {
        Box::pin(async move {
            let mut p = self;
            let mut cx = cx;
            let result = match call {
                Call::Process(frame, dir) => Cancellable(std::pin::pin!(p.process(frame, dir, &mut cx))).await,
                Call::Start => Cancellable(std::pin::pin!(p.start(&mut cx))).await,
                Call::Stop => Cancellable(std::pin::pin!(p.stop(&mut cx))).await,
                Call::Timer => Cancellable(std::pin::pin!(p.on_timer(&mut cx))).await,
            };
            let proc: Box<dyn DynProcessor> = p;
            (Owned { proc, cx }, result)
        })
    }
}

/// Drops the inner future when the runner asks for cancellation, so the enclosing call can hand
/// the processor back (a plain `drop` of the call future would drop the processor with it).
struct Cancellable<'a, F>(Pin<&'a mut F>);

impl<F: Future<Output = FlowResult>> Future for Cancellable<'_, F> {
    type Output = FlowResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<FlowResult> {
        if cancel_requested() {
            return Poll::Ready(Err(FlowError::Flushing));
        }
        self.0.as_mut().poll(cx)
    }
}

/// A processor from a synchronous closure, for small cases (filters, taps, mappers).
///
/// The closure pushes with [`Context::push_now`]; a 1:1 closure cannot overflow its neighbour
/// because the runner only hands it a frame when the neighbour has room.
pub fn processor_fn<F>(name: &'static str, f: F) -> FnProcessor<F>
where
    F: FnMut(Frame, Direction, &mut Context) -> FlowResult + Send + 'static,
{
    FnProcessor { name, f }
}

/// See [`processor_fn`].
pub struct FnProcessor<F> {
    name: &'static str,
    f: F,
}

impl<F> std::fmt::Debug for FnProcessor<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnProcessor").finish_non_exhaustive()
    }
}

impl<F> Processor for FnProcessor<F>
where
    F: FnMut(Frame, Direction, &mut Context) -> FlowResult + Send + 'static,
{
    fn name(&self) -> &str {
        self.name
    }
    fn process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        (self.f)(frame, direction, cx).map(|()| None)
    }
}

/// A processor that forwards every frame unchanged.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl Processor for PassThrough {
    fn name(&self) -> &str {
        "pass_through"
    }
    fn process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        cx.push_now(frame, direction);
        Ok(None)
    }
}
