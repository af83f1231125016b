//! Observers: taps that see every hop and event without sitting in the chain.
//!
//! An observer is called synchronously by the runner, so it must be cheap (count, sample,
//! or hand off to a channel). With no observers installed the runner reads no clock for them.

use std::time::Instant;

use crate::event::Event;
use crate::frame::{Direction, Epoch, FrameKind};

/// One frame moving from one stage to the next.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// Stage that pushed the frame (`"source"` for frames injected through the handle).
    pub from: &'a str,
    /// Stage that receives it (`"exit"` when it leaves the pipeline).
    pub to: &'a str,
    /// What kind of frame.
    pub kind: FrameKind,
    /// Which way it travels.
    pub direction: Direction,
    /// The epoch it was pushed in.
    pub epoch: Epoch,
    /// When the hand-off happened.
    pub at: Instant,
}

/// A tap on a pipeline task.
pub trait Observer: Send + Sync + 'static {
    /// A frame was handed from one stage to the next (or left the pipeline).
    fn on_hop(&self, hop: &Hop<'_>);
    /// An event was published.
    fn on_event(&self, event: &Event, at: Instant) {
        let _ = (event, at);
    }
}
