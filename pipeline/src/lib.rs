//! # voxline-pipeline: the engine core
//!
//! Typed frames flow through a chain of async processors; the runner owns interruption
//! (barge-in), backpressure and lifecycle so processors never re-invent them.
//!
//! - [`Frame`] (in-band, ordered, discarded on interruption unless uninterruptible) and
//!   [`Event`] (out-of-band, overtakes frames, never dropped by backpressure).
//! - [`Processor`]: `process`, `on_event`, `start`, `stop`, with a [`Context`] to push frames
//!   either way, emit events, reserve capacity, read the epoch and the turn's cancellation token.
//! - [`Pipeline`]: linear chains, nested pipelines, parallel branches.
//! - [`PipelineTask`]: runs one pipeline (graceful `End`, immediate cancel, idle timeout) and
//!   gives a [`PipelineHandle`] to inject frames and events from outside.
//! - [`clock`]: the media clock and paced audio output (20 ms chunks, send-ahead, stops within a
//!   chunk on interruption).
//! - [`observer`]: taps on every hop; metrics are published as [`Event::Metrics`] and `tracing`.
//! - [`g711`]: μ-law and A-law, the one implementation the workspace shares.
//! - [`sync`]: the one poison-ignoring lock helper the workspace uses.
//! - `testing` (feature): a harness to drive one processor or a chain in tests.
//!
//! ```
//! use voxline_pipeline::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let upper = processor_fn("upper", |frame, dir, cx| {
//!     let frame = match frame {
//!         Frame::Text(t) => Frame::Text(t.to_uppercase().into()),
//!         other => other,
//!     };
//!     cx.push_now(frame, dir);
//!     Ok(())
//! });
//! let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
//! let sink = out.clone();
//! let task = PipelineTask::new(Pipeline::new().with(upper), PipelineParams::default())
//!     .on_exit(move |_, f| if let Frame::Text(t) = f { sink.lock().unwrap().push(t) });
//! let handle = task.handle();
//! let run = tokio::spawn(task.run());
//! handle.push(Frame::Text("hello".into())).await.unwrap();
//! handle.end().await.unwrap();
//! assert_eq!(run.await.unwrap().outcome, TaskOutcome::Ended);
//! assert_eq!(&*out.lock().unwrap()[0], "HELLO");
//! # }
//! ```

pub mod clock;
mod context;
mod error;
mod event;
mod frame;
pub mod g711;
pub mod observer;
mod pipeline;
mod processor;
mod runner;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;

pub use context::{Context, FrameSender, Push, Reserve, StreamSender};
pub use error::{BoxError, FlowError, FlowResult};
pub use event::{ErrorEvent, Event, MetricsEvent, ProcessorCounters, Speculation};
pub use frame::*;
pub use pipeline::{Node, Pipeline};
pub use processor::{DynProcessor, FnProcessor, PassThrough, Processor, processor_fn};
pub use runner::{Closed, ExitFn, PipelineHandle, PipelineParams, PipelineTask, TaskOutcome, TaskReport};
pub use tokio_util::sync::CancellationToken;

/// The names most processors and applications need.
pub mod prelude {
    pub use crate::{
        AudioEncoding, AudioFormat, AudioFrame, Context, Direction, Event, FlowError, FlowResult, Frame, Pipeline,
        PipelineHandle, PipelineParams, PipelineTask, Processor, StartInfo, TaskOutcome, processor_fn,
    };
}
