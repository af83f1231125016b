//! Speech-to-text: streaming recognisers that turn caller audio into [`Frame::Transcript`]s.
//!
//! | processor | provider | transport |
//! |---|---|---|
//! | [`DeepgramStt`] | Deepgram live (`/v1/listen`, Nova models) | WebSocket |
//!
//! The family plumbing (socket task, reconnect with backoff and audio replay, keepalive,
//! `Finalize` on VAD stop with a timeout fallback, TTFB, transcripts that survive barge-in)
//! lives in [`live`] (reconnect policy, key and errors are shared with every provider in
//! [`service`](crate::service)); a provider file only maps frames to wire messages and back.
//!
//! [`Frame::Transcript`]: voxline_pipeline::Frame::Transcript

#[cfg(feature = "deepgram")]
pub mod deepgram;
#[cfg(feature = "deepgram")]
mod deepgram_protocol;
#[cfg(feature = "deepgram")]
pub mod live;

#[cfg(feature = "deepgram")]
pub use deepgram::{DeepgramSettings, DeepgramStt, Endpointing};
#[cfg(feature = "deepgram")]
pub use deepgram_protocol::DEEPGRAM_API_KEY_ENV;
#[cfg(feature = "deepgram")]
pub use live::{LiveSettings, SttCounters, SttStats};
