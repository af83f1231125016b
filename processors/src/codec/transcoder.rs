//! The shared body of the G.711 encoder and decoder processors (μ-law and A-law differ only in
//! their sample functions), so the four public processors stay one screen each.

use std::sync::Arc;

use bytes::BytesMut;
use voxline_pipeline::{AudioEncoding, AudioFormat, AudioFrame, Context, Direction, FlowError, Frame};

use crate::audio::pcm::{self, AudioCounters, AudioPath};
use voxline_pipeline::g711;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Law {
    Mulaw,
    Alaw,
}

impl Law {
    fn encoding(self) -> AudioEncoding {
        match self {
            Self::Mulaw => AudioEncoding::Mulaw,
            Self::Alaw => AudioEncoding::Alaw,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Decode,
    /// Encode PCM16 at this rate (G.711 is defined at 8 kHz; other rates need a resampler first).
    Encode {
        rate: u32,
    },
}

pub(crate) struct Transcoder {
    pub(crate) name: &'static str,
    pub(crate) law: Law,
    pub(crate) op: Op,
    pub(crate) path: AudioPath,
    /// Reused output buffer: once the previous frame's `Bytes` is dropped downstream, `reserve`
    /// reclaims the same allocation, so steady state allocates nothing per frame.
    out: BytesMut,
    pub(crate) counters: Arc<AudioCounters>,
}

impl Transcoder {
    pub(crate) fn new(name: &'static str, law: Law, op: Op, path: AudioPath) -> Self {
        Self { name, law, op, path, out: BytesMut::with_capacity(2048), counters: Arc::default() }
    }

    /// The synchronous fast path of every G.711 processor (one output frame per input at most).
    pub(crate) fn process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        let path = self.path;
        pcm::map_now(frame, path, direction, cx, |audio| {
            let result = self.convert(audio);
            let out = pcm::counted(&self.counters, result)?;
            match out {
                Some(_) => self.counters.frame(),
                None => self.counters.empty(),
            }
            Ok(out)
        })
    }

    /// `Ok(None)` for an empty payload (dropped: nothing to play and no samples to time).
    pub(crate) fn convert(&mut self, audio: &AudioFrame) -> Result<Option<AudioFrame>, FlowError> {
        let fmt = audio.format;
        let (encoding, rate) = match self.op {
            Op::Decode => {
                if fmt.encoding != self.law.encoding() || fmt.channels == 0 {
                    let expected = format!("{:?} (any rate, any channels)", self.law.encoding());
                    return Err(pcm::not_negotiated(self.name, expected, &fmt));
                }
                (AudioEncoding::Pcm16, fmt.sample_rate)
            }
            Op::Encode { rate } => {
                if fmt.encoding != AudioEncoding::Pcm16 || fmt.sample_rate != rate || fmt.channels == 0 {
                    let expected = format!("Pcm16 {rate} Hz (any channels)");
                    return Err(pcm::not_negotiated(self.name, expected, &fmt));
                }
                pcm::check_whole_samples(self.name, audio.data.len(), 2 * usize::from(fmt.channels))?;
                (self.law.encoding(), rate)
            }
        };
        if audio.data.is_empty() {
            return Ok(None);
        }
        match (self.op, self.law) {
            (Op::Decode, Law::Mulaw) => g711::decode_mulaw_into(&audio.data, &mut self.out),
            (Op::Decode, Law::Alaw) => g711::decode_alaw_into(&audio.data, &mut self.out),
            (Op::Encode { .. }, Law::Mulaw) => g711::encode_mulaw_into(&audio.data, &mut self.out),
            (Op::Encode { .. }, Law::Alaw) => g711::encode_alaw_into(&audio.data, &mut self.out),
        }
        let format = AudioFormat { encoding, sample_rate: rate, channels: fmt.channels };
        Ok(Some(AudioFrame { data: self.out.split().freeze(), format, pts: audio.pts }))
    }
}

/// Declares one public G.711 processor: a named [`Transcoder`] with the shared constructor,
/// `on`, `counters`, `convert`, `Default` and `Processor` glue (the four codecs differ only in
/// name, law, direction and default path).
macro_rules! g711_processor {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $law:expr, $op:expr, $path:expr, $new_doc:literal, $on_doc:literal) => {
        $(#[$doc])*
        pub struct $ty(Transcoder);

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct($name).finish_non_exhaustive()
            }
        }

        impl $ty {
            #[doc = $new_doc]
            #[must_use]
            pub fn new() -> Self {
                Self(Transcoder::new($name, $law, $op, $path))
            }
            #[doc = $on_doc]
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
            /// Convert one frame outside a pipeline; `Ok(None)` for an empty payload.
            pub fn convert(&mut self, audio: &AudioFrame) -> Result<Option<AudioFrame>, FlowError> {
                self.0.convert(audio)
            }
        }

        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }

        impl Processor for $ty {
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
        }
    };
}
pub(crate) use g711_processor;
