//! Opus encoder and decoder processors (feature `opus`, libopus through audiopus 0.2).
//!
//! - [`OpusEncoder`] consumes PCM16 mono at 16 or 48 kHz (`OutputAudio`/`TtsAudio` by default)
//!   and produces one Opus packet per 20 ms, in frames of encoding `Opus`. Input of any size is
//!   buffered to whole 20 ms frames (Opus only takes 2.5/5/10/20/40/60 ms), so a frame shorter than
//!   20 ms may produce nothing yet and a longer one several packets.
//! - [`OpusDecoder`] consumes Opus packets (`InputAudio` by default) and produces PCM16 mono at the
//!   configured rate. A packet libopus rejects is refused with `BadInput`; the decoder state
//!   stays valid for the next packet.
//!
//! Trade-offs: VOIP application mode (speech-tuned, what telephony and WebRTC peers expect),
//! libopus' default bitrate; mono only (voice agents never need stereo on the wire). The libopus
//! buffers are sized once; the output `BytesMut` is reused.

use std::sync::Arc;

use audiopus::coder::{Decoder, Encoder};
use audiopus::{Application, Channels, SampleRate};
use bytes::{BufMut, BytesMut};
use voxline_pipeline::{
    AudioEncoding, AudioFormat, AudioFrame, Context, Direction, FlowError, FlowResult, Frame, Processor,
};

use crate::audio::pcm::{self, AudioCounters, AudioPath};

/// Largest packet we ask libopus for (its documented recommendation for one frame).
const MAX_PACKET: usize = 4000;

fn opus_rate(rate: u32) -> Result<SampleRate, FlowError> {
    match rate {
        16_000 => Ok(SampleRate::Hz16000),
        48_000 => Ok(SampleRate::Hz48000),
        other => Err(FlowError::fatal(format!("opus: unsupported rate {other} Hz (16000 or 48000)"))),
    }
}

fn opus_format(rate: u32) -> AudioFormat {
    AudioFormat { encoding: AudioEncoding::Opus, sample_rate: rate, channels: 1 }
}

/// PCM16 → Opus packets. See the module docs.
pub struct OpusEncoder {
    encoder: Encoder,
    rate: u32,
    path: AudioPath,
    pending: Vec<i16>,
    packet: Vec<u8>,
    counters: Arc<AudioCounters>,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// An encoder for mono PCM16 at `rate` (16000 or 48000), on `OutputAudio`/`TtsAudio`.
    pub fn new(rate: u32) -> Result<Self, FlowError> {
        let encoder = Encoder::new(opus_rate(rate)?, Channels::Mono, Application::Voip)
            .map_err(|e| FlowError::fatal(format!("opus encoder: {e}")))?;
        let frame = rate as usize / 50;
        Ok(Self {
            encoder,
            rate,
            path: AudioPath::Output,
            pending: Vec::with_capacity(frame * 2),
            packet: vec![0; MAX_PACKET],
            counters: Arc::default(),
        })
    }

    /// Encode the frames on `path` instead.
    #[must_use]
    pub fn on(mut self, path: AudioPath) -> Self {
        self.path = path;
        self
    }

    /// Shared counters.
    #[must_use]
    pub fn counters(&self) -> Arc<AudioCounters> {
        self.counters.clone()
    }

    /// Encode one PCM frame; returns the packets completed by it (possibly none).
    pub fn convert(&mut self, audio: &AudioFrame) -> Result<Vec<AudioFrame>, FlowError> {
        let r = self.convert_inner(audio);
        pcm::counted(&self.counters, r)
    }

    fn convert_inner(&mut self, audio: &AudioFrame) -> Result<Vec<AudioFrame>, FlowError> {
        pcm::expect_pcm16_mono("opus_encoder", &audio.format, Some(self.rate))?;
        pcm::check_whole_samples("opus_encoder", audio.data.len(), 2)?;
        self.pending.extend(pcm::pcm16_samples(&audio.data));
        let frame = self.rate as usize / 50;
        let mut out = Vec::new();
        let mut start = 0;
        while self.pending.len() - start >= frame {
            let n = self
                .encoder
                .encode(&self.pending[start..start + frame], &mut self.packet)
                .map_err(|e| FlowError::BadInput(format!("opus encode: {e}")))?;
            let data = bytes::Bytes::copy_from_slice(&self.packet[..n]);
            out.push(AudioFrame { data, format: opus_format(self.rate), pts: audio.pts });
            start += frame;
        }
        self.pending.drain(..start);
        Ok(out)
    }
}

impl Processor for OpusEncoder {
    fn name(&self) -> &str {
        "opus_encoder"
    }
    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        let (audio, wrap) = match pcm::split(frame, self.path) {
            Ok(v) => v,
            Err(other) => {
                cx.push(other, direction).await;
                return Ok(());
            }
        };
        let packets = self.convert(&audio)?;
        if packets.is_empty() {
            return Ok(());
        }
        self.counters.frame();
        let mut wrap = Some(wrap);
        let last = packets.len() - 1;
        for (i, p) in packets.into_iter().enumerate() {
            // TTS metadata (words, context) rides on the last packet of the frame only.
            let frame = match (i == last, wrap.take()) {
                (true, Some(w)) => w.wrap(p),
                (_, w) => {
                    wrap = w;
                    match self.path {
                        AudioPath::Input => Frame::InputAudio(p),
                        AudioPath::Output => Frame::OutputAudio(p),
                    }
                }
            };
            cx.push(frame, direction).await;
        }
        Ok(())
    }
}

/// Opus packets → PCM16. See the module docs.
pub struct OpusDecoder {
    decoder: Decoder,
    rate: u32,
    path: AudioPath,
    pcm: Vec<i16>,
    out: BytesMut,
    counters: Arc<AudioCounters>,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder").finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// A decoder producing mono PCM16 at `rate` (16000 or 48000), on `InputAudio`.
    pub fn new(rate: u32) -> Result<Self, FlowError> {
        let decoder = Decoder::new(opus_rate(rate)?, Channels::Mono)
            .map_err(|e| FlowError::fatal(format!("opus decoder: {e}")))?;
        // 120 ms is the longest Opus packet.
        let pcm = vec![0; rate as usize * 120 / 1000];
        Ok(Self { decoder, rate, path: AudioPath::Input, pcm, out: BytesMut::new(), counters: Arc::default() })
    }

    /// Decode the frames on `path` instead.
    #[must_use]
    pub fn on(mut self, path: AudioPath) -> Self {
        self.path = path;
        self
    }

    /// Shared counters.
    #[must_use]
    pub fn counters(&self) -> Arc<AudioCounters> {
        self.counters.clone()
    }

    /// Decode one packet; `Ok(None)` for an empty payload.
    pub fn convert(&mut self, audio: &AudioFrame) -> Result<Option<AudioFrame>, FlowError> {
        let r = self.convert_inner(audio);
        pcm::counted(&self.counters, r)
    }

    fn convert_inner(&mut self, audio: &AudioFrame) -> Result<Option<AudioFrame>, FlowError> {
        if audio.format.encoding != AudioEncoding::Opus || audio.format.channels != 1 {
            return Err(pcm::not_negotiated("opus_decoder", "Opus x1 (any rate)", &audio.format));
        }
        if audio.data.is_empty() {
            self.counters.empty();
            return Ok(None);
        }
        let n = self
            .decoder
            .decode(Some(&audio.data[..]), &mut self.pcm[..], false)
            .map_err(|e| FlowError::BadInput(format!("opus decode of a {}-byte packet: {e}", audio.data.len())))?;
        self.out.reserve(n * 2);
        for &s in &self.pcm[..n.min(self.pcm.len())] {
            self.out.put_i16_le(s);
        }
        Ok(Some(AudioFrame { data: self.out.split().freeze(), format: AudioFormat::pcm16(self.rate), pts: audio.pts }))
    }
}

impl Processor for OpusDecoder {
    fn name(&self) -> &str {
        "opus_decoder"
    }
    /// One packet in, at most one PCM frame out: the synchronous fast path is safe.
    fn process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        let path = self.path;
        pcm::map_now(frame, path, direction, cx, |audio| {
            let out = self.convert(audio)?;
            if out.is_some() {
                self.counters.frame();
            }
            Ok(out)
        })
    }
}
