//! Out-of-band events: they overtake queued frames and are never dropped by backpressure.
//!
//! The runner delivers an event to every processor of the pipeline (in chain order) and to the
//! task's event subscribers. [`Event::Interrupt`] and [`Event::Cancel`] are handled by the runner
//! itself before processors see them (see [`crate::runner`]).

use std::sync::Arc;
use std::time::Duration;

use crate::frame::{CustomFrame, FrameKind};

/// An out-of-band event.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The user took the turn (barge-in): discard everything in flight for the old epoch.
    Interrupt,
    /// Stop the pipeline now, without draining.
    Cancel,
    /// The VAD heard the user start speaking.
    UserStartedSpeaking,
    /// The VAD heard the user stop speaking (a pause, not necessarily the end of the turn).
    UserStoppedSpeaking,
    /// The user's turn is over: after a `UserStoppedSpeaking`, the end-of-turn model (if any)
    /// judged the turn complete, or its fallback silence passed. Without a model the VAD emits it
    /// right after `UserStoppedSpeaking`. The user aggregator answers on this, not on the stop.
    EndOfTurn,
    /// The caller has talked over the bot long enough to silence it, but the barge-in is not
    /// confirmed yet (no words recognised). The output stops, discards what the far end holds and
    /// keeps its place; an `Interrupt` confirms the barge-in, `InterruptWithdrawn` resumes the
    /// bot where the caller stopped hearing it (a cough, an "mm-hmm": LiveKit's false interruption).
    InterruptPending,
    /// The pending barge-in was not one: resume the bot's utterance.
    InterruptWithdrawn,
    /// A speculative LLM request for a turn not yet confirmed (see [`Speculation`]).
    Speculation(Speculation),
    /// The bot's first audio of an utterance went out.
    BotStartedSpeaking,
    /// The bot's audio finished playing (or was cut off).
    BotStoppedSpeaking,
    /// A processor reported an error.
    Error(ErrorEvent),
    /// A metric sample.
    Metrics(MetricsEvent),
    /// The pipeline saw no activity for its idle timeout.
    IdleTimeout,
    /// A user-defined event.
    Custom(CustomFrame),
}

/// The life of a speculative LLM request: sent at the caller's pause with the transcript so far,
/// its output held until the turn is confirmed, cancelled (through an interruption) if the caller
/// goes on. No audio of a cancelled speculation is ever produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speculation {
    /// The request is on its way; hold its output.
    Started,
    /// The turn ended as speculated: release the held output.
    Confirmed,
    /// The caller went on: drop the held output (an `Interrupt` follows and aborts the request).
    Cancelled,
}

/// An error surfaced by a processor or by the runner on its behalf.
#[derive(Debug, Clone)]
pub struct ErrorEvent {
    /// Name of the processor it came from.
    pub processor: Arc<str>,
    /// Human-readable description.
    pub message: Arc<str>,
    /// `true` when the pipeline is being torn down because of it.
    pub fatal: bool,
}

/// A metric published on the event lane (and through `tracing`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum MetricsEvent {
    /// Time-to-first-byte of a service (request → first useful output).
    Ttfb {
        /// Processor name.
        processor: Arc<str>,
        /// The measured time.
        value: Duration,
    },
    /// Time one `process` call took (only with `PipelineParams::processing_metrics`).
    ProcessingTime {
        /// Processor name.
        processor: Arc<str>,
        /// The frame kind processed.
        kind: FrameKind,
        /// Wall time of the call.
        value: Duration,
    },
    /// LLM token usage.
    LlmUsage {
        /// Processor name.
        processor: Arc<str>,
        /// Prompt tokens.
        prompt_tokens: u64,
        /// Completion tokens.
        completion_tokens: u64,
    },
    /// Per-processor counters, published when the task ends and on request.
    Counters(Arc<[ProcessorCounters]>),
}

/// Frame counters of one processor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessorCounters {
    /// Processor name.
    pub processor: Arc<str>,
    /// Frames handed to `process`.
    pub processed: u64,
    /// Frames discarded by an interruption or because their epoch was stale.
    pub dropped_interrupted: u64,
    /// Input-audio frames dropped by the overload policy.
    pub dropped_overload: u64,
    /// Highest inbox depth seen.
    pub max_queue_depth: usize,
    /// Inbox capacity.
    pub capacity: usize,
}

impl Event {
    /// Whether the runner must never coalesce or drop this event.
    #[must_use]
    pub fn is_critical(&self) -> bool {
        matches!(self, Self::Interrupt | Self::Cancel | Self::Error(_))
    }
}
