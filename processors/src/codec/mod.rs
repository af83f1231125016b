//! Codecs: G.711 μ-law and A-law (plain functions and processors) and Opus (feature `opus`).
//!
//! | item | consumes | produces |
//! |---|---|---|
//! | [`MulawDecoder`] / [`AlawDecoder`] | G.711 `InputAudio` | PCM16, same rate |
//! | [`MulawEncoder`] / [`AlawEncoder`] | PCM16 8 kHz `OutputAudio` / `TtsAudio` | G.711 |
//! | `OpusDecoder` / `OpusEncoder` (feature `opus`) | Opus packets / PCM16 | PCM16 / Opus packets |
//! | [`g711`] | sample and buffer functions, 256-entry decode tables (re-exported from `voxline_pipeline::g711`, the workspace's one implementation) | |

mod alaw;
mod mulaw;
#[cfg(feature = "opus")]
mod opus;
mod transcoder;

pub use voxline_pipeline::g711;

pub use alaw::{AlawDecoder, AlawEncoder};
pub use mulaw::{MulawDecoder, MulawEncoder};
#[cfg(feature = "opus")]
pub use opus::{OpusDecoder, OpusEncoder};
