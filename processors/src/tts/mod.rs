//! Text-to-speech: turn the bot's text into audio with word timings.
//!
//! | processor | provider | transport |
//! |---|---|---|
//! | [`ElevenLabsTts`] | ElevenLabs multi-context websocket, or HTTP streaming ([`TtsMode`]) | WebSocket / HTTP |
//!
//! Frame contract shared by the family: `Text` (a speakable chunk from the sentence aggregator)
//! and `LlmText` (raw tokens, when no aggregator runs) are consumed as "speak this";
//! `LlmResponseEnd` flushes the current utterance; each utterance (one per bot turn) produces
//! `TtsStarted`, `TtsText` + `TtsAudio` (with word timings relative to the utterance start), and
//! `TtsStopped`. On `Interrupt` the utterance is cancelled at the provider and none of its audio
//! is pushed afterwards. Character-to-word alignment is shared in `alignment`.

#[cfg(feature = "elevenlabs")]
mod alignment;
#[cfg(feature = "elevenlabs")]
pub mod elevenlabs;
#[cfg(feature = "elevenlabs")]
mod elevenlabs_http;
#[cfg(feature = "elevenlabs")]
mod elevenlabs_protocol;
#[cfg(feature = "elevenlabs")]
mod elevenlabs_ws;

#[cfg(feature = "elevenlabs")]
pub use elevenlabs::{ElevenLabsSettings, ElevenLabsTts, TtsCounters, TtsMode, TtsStats, VoiceSettings};
#[cfg(feature = "elevenlabs")]
pub use elevenlabs_protocol::ELEVENLABS_API_KEY_ENV;
