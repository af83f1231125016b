//! # Voxline
//!
//! A streaming media pipeline engine for voice agents. This facade re-exports the workspace
//! crates:
//!
//! - [`pipeline`] (`voxline-pipeline`): frames, events, the processor trait, the runner.
//! - [`processors`] (`voxline-processors`): codecs, audio, STT, LLM, TTS, tools, text.
//! - [`transports`] (`voxline-transports`): Twilio, generic websocket, WAV files.
//!
//! ## Features
//!
//! Each provider is a feature, so an application compiles only the clients it calls. The default
//! is what the phone bot uses.
//!
//! | feature | default | what |
//! |---|---|---|
//! | `deepgram` | yes | Deepgram live STT (`processors::stt::DeepgramStt`) |
//! | `openai` | yes | OpenAI-compatible chat completions (`processors::llm::OpenAiLlm`) |
//! | `anthropic` | yes | Anthropic Messages (`processors::llm::AnthropicLlm`) |
//! | `elevenlabs` | yes | ElevenLabs TTS (`processors::tts::ElevenLabsTts`) |
//! | `twilio` | yes | Twilio Media Streams (`transports::twilio`, `serve_call`) |
//! | `opus` | no | Opus codec through libopus (needs `libopus-dev`) |
//! | `smart-turn` | no | in-process smart-turn v3.2 end-of-turn model (tract) |
//!
//! ```toml
//! # an agent on Deepgram + Anthropic + ElevenLabs over the generic websocket:
//! voxline = { version = "0.1", default-features = false, features = ["deepgram", "anthropic", "elevenlabs"] }
//! ```

pub use voxline_pipeline as pipeline;
pub use voxline_processors as processors;
pub use voxline_transports as transports;

/// Everything a typical voice agent needs in scope.
pub mod prelude {
    pub use voxline_pipeline::prelude::*;
}
