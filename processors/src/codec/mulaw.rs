//! μ-law (G.711, Twilio's wire format) decoder and encoder processors.
//!
//! - [`MulawDecoder`] consumes μ-law `InputAudio` (any rate, any channel count) and produces
//!   PCM16 at the same rate and layout. Empty frames are dropped (and counted).
//! - [`MulawEncoder`] consumes PCM16 8 kHz `OutputAudio` and `TtsAudio` and produces μ-law,
//!   keeping TTS word timings and context ids.
//!
//! Both forward every other frame unchanged and reject a wrong format with
//! `FlowError::NotNegotiated` naming both formats. Trade-off: no resampling inside the encoder;
//! put a [`crate::audio::Resampler`] before it so a rate mismatch is an explicit stage, not a
//! hidden cost.

use std::sync::Arc;

use voxline_pipeline::{AudioFrame, Context, Direction, FlowError, Frame, Processor};

use super::transcoder::{Law, Op, Transcoder, g711_processor};
use crate::audio::pcm::{AudioCounters, AudioPath};

g711_processor!(
    /// Decodes μ-law caller audio to PCM16. See the module docs.
    MulawDecoder,
    "mulaw_decoder",
    Law::Mulaw,
    Op::Decode,
    AudioPath::Input,
    "A decoder for `InputAudio`.",
    "Decode the frames on `path` instead (e.g. μ-law TTS audio headed for a PCM transport)."
);

g711_processor!(
    /// Encodes PCM16 8 kHz bot audio to μ-law. See the module docs.
    MulawEncoder,
    "mulaw_encoder",
    Law::Mulaw,
    Op::Encode { rate: 8000 },
    AudioPath::Output,
    "An encoder for `OutputAudio` and `TtsAudio` at 8 kHz.",
    "Encode the frames on `path` instead (e.g. caller audio for a μ-law-only recogniser)."
);
