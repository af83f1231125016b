//! # Voxline
//!
//! A streaming media pipeline engine for voice agents. This facade re-exports the workspace
//! crates:
//!
//! - [`pipeline`] (`voxline-pipeline`): frames, events, the processor trait, the runner.
//! - [`processors`] (`voxline-processors`): codecs, audio, STT, LLM, TTS, tools, text.
//! - [`transports`] (`voxline-transports`): Twilio, generic websocket, WAV files.

pub use voxline_pipeline as pipeline;
pub use voxline_processors as processors;
pub use voxline_transports as transports;

/// Everything a typical voice agent needs in scope.
pub mod prelude {
    pub use voxline_pipeline::prelude::*;
}
