//! The error type that crosses the processor boundary.

/// A boxed error from a provider or other source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a processor could not handle a frame.
///
/// Modelled on GStreamer's `FlowReturn`: the variant tells the runner what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// Interrupted or cancelled: stop quietly, not an error.
    #[error("flushing")]
    Flushing,
    /// The frame's format is not one this processor can take.
    #[error("not negotiated: {processor} takes {expected}, got {got}")]
    NotNegotiated {
        /// Processor name.
        processor: &'static str,
        /// What it accepts.
        expected: String,
        /// What it received.
        got: String,
    },
    /// Bad input that was dropped (logged and reported, the pipeline goes on).
    #[error("bad input: {0}")]
    BadInput(String),
    /// A provider failed; the processor's policy decides about retries.
    #[error("service error: {0}")]
    Service(BoxError),
    /// Unrecoverable: the pipeline is torn down.
    #[error("fatal: {0}")]
    Fatal(BoxError),
}

impl FlowError {
    /// A service error from any displayable message.
    pub fn service(msg: impl Into<String>) -> Self {
        Self::Service(msg.into().into())
    }
    /// A fatal error from any displayable message.
    pub fn fatal(msg: impl Into<String>) -> Self {
        Self::Fatal(msg.into().into())
    }
}

/// Result of a processor call.
pub type FlowResult = Result<(), FlowError>;
