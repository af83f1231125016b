//! A-law (G.711, the European telephone format) decoder and encoder processors.
//!
//! - [`AlawDecoder`] consumes A-law `InputAudio` (any rate, any channel count) and produces
//!   PCM16 at the same rate and layout. Empty frames are dropped (and counted).
//! - [`AlawEncoder`] consumes PCM16 8 kHz `OutputAudio` and `TtsAudio` and produces A-law,
//!   keeping TTS word timings and context ids.
//!
//! Both forward every other frame unchanged and reject a wrong format with
//! `FlowError::NotNegotiated` naming both formats. Trade-off: no resampling inside the encoder;
//! put a [`crate::audio::Resampler`] before it so a rate mismatch is an explicit stage, not a
//! hidden cost.

use std::sync::Arc;

use voxline_pipeline::{AudioFrame, Context, Direction, FlowError, FlowResult, Frame, Processor};

use super::transcoder::{Law, Op, Transcoder};
use crate::audio::pcm::{AudioCounters, AudioPath};

/// Decodes A-law caller audio to PCM16. See the module docs.
pub struct AlawDecoder(Transcoder);

impl AlawDecoder {
    /// A decoder for `InputAudio`.
    #[must_use]
    pub fn new() -> Self {
        Self(Transcoder::new("alaw_decoder", Law::Alaw, Op::Decode, AudioPath::Input))
    }
    /// Decode the frames on `path` instead (e.g. A-law prompts headed for a PCM transport).
    #[must_use]
    pub fn on(mut self, path: AudioPath) -> Self {
        self.0.path = path;
        self
    }
    /// Shared counters (frames, dropped empty frames, rejections).
    #[must_use]
    pub fn counters(&self) -> Arc<AudioCounters> {
        self.0.counters.clone()
    }
    /// Decode one frame outside a pipeline; `Ok(None)` for an empty payload.
    pub fn convert(&mut self, audio: &AudioFrame) -> Result<Option<AudioFrame>, FlowError> {
        self.0.convert(audio)
    }
}

impl Default for AlawDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Processor for AlawDecoder {
    fn name(&self) -> &str {
        self.0.name
    }
    fn process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        self.0.process_now(frame, direction, cx)
    }
    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        self.0.process(frame, direction, cx).await
    }
}

/// Encodes PCM16 8 kHz bot audio to A-law. See the module docs.
pub struct AlawEncoder(Transcoder);

impl AlawEncoder {
    /// An encoder for `OutputAudio` and `TtsAudio` at 8 kHz.
    #[must_use]
    pub fn new() -> Self {
        Self(Transcoder::new("alaw_encoder", Law::Alaw, Op::Encode { rate: 8000 }, AudioPath::Output))
    }
    /// Encode the frames on `path` instead (e.g. caller audio for an A-law-only recogniser).
    #[must_use]
    pub fn on(mut self, path: AudioPath) -> Self {
        self.0.path = path;
        self
    }
    /// Shared counters (frames, dropped empty frames, rejections).
    #[must_use]
    pub fn counters(&self) -> Arc<AudioCounters> {
        self.0.counters.clone()
    }
    /// Encode one frame outside a pipeline; `Ok(None)` for an empty payload.
    pub fn convert(&mut self, audio: &AudioFrame) -> Result<Option<AudioFrame>, FlowError> {
        self.0.convert(audio)
    }
}

impl Default for AlawEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Processor for AlawEncoder {
    fn name(&self) -> &str {
        self.0.name
    }
    fn process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        self.0.process_now(frame, direction, cx)
    }
    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        self.0.process(frame, direction, cx).await
    }
}
