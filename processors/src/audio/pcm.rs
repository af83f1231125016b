//! Small shared pieces for audio processors: which frames a processor works on, format checks
//! that produce the house "not negotiated" error, and PCM16 byte helpers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use voxline_pipeline::{
    AudioEncoding, AudioFormat, AudioFrame, Context, Direction, FlowError, Frame, TtsAudio, WordTiming,
};

/// Which audio frames a processor transforms; every other frame passes through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AudioPath {
    /// Caller audio: [`Frame::InputAudio`].
    #[default]
    Input,
    /// Audio to the caller: [`Frame::OutputAudio`] and the audio of [`Frame::TtsAudio`].
    Output,
}

/// The non-audio part of an audio-carrying frame, to rebuild it around new audio.
pub(crate) enum Wrap {
    Input,
    Output,
    Tts { context_id: Arc<str>, words: Arc<[WordTiming]>, offset: Duration },
}

impl Wrap {
    pub(crate) fn wrap(self, audio: AudioFrame) -> Frame {
        match self {
            Self::Input => Frame::InputAudio(audio),
            Self::Output => Frame::OutputAudio(audio),
            Self::Tts { context_id, words, offset } => Frame::from(TtsAudio { audio, context_id, words, offset }),
        }
    }
}

/// Take the audio out of `frame` if it is on `path`; otherwise give the frame back.
pub(crate) fn split(frame: Frame, path: AudioPath) -> Result<(AudioFrame, Wrap), Frame> {
    match (frame, path) {
        (Frame::InputAudio(a), AudioPath::Input) => Ok((a, Wrap::Input)),
        (Frame::OutputAudio(a), AudioPath::Output) => Ok((a, Wrap::Output)),
        (Frame::TtsAudio(t), AudioPath::Output) => {
            Ok((t.audio, Wrap::Tts { context_id: t.context_id, words: t.words, offset: t.offset }))
        }
        (other, _) => Err(other),
    }
}

/// The synchronous body every 1:1 audio stage shares: frames not on `path` pass through
/// unchanged; audio on it goes through `convert`, and its output (if any) is pushed in the same
/// wrapper (TTS word timings and context id kept). Returns `Ok(None)`: the frame is handled.
pub(crate) fn map_now(
    frame: Frame,
    path: AudioPath,
    direction: Direction,
    cx: &mut Context,
    convert: impl FnOnce(&AudioFrame) -> Result<Option<AudioFrame>, FlowError>,
) -> Result<Option<Frame>, FlowError> {
    match split(frame, path) {
        Ok((audio, wrap)) => {
            if let Some(out) = convert(&audio)? {
                cx.push_now(wrap.wrap(out), direction);
            }
        }
        Err(other) => cx.push_now(other, direction),
    }
    Ok(None)
}

/// The "not negotiated" error naming what the processor takes and what it got.
pub(crate) fn not_negotiated(processor: &'static str, expected: impl Into<String>, got: &AudioFormat) -> FlowError {
    FlowError::NotNegotiated { processor, expected: expected.into(), got: got.to_string() }
}

/// Check `got` is mono PCM16 at `rate` (any rate when `None`).
pub(crate) fn expect_pcm16_mono(
    processor: &'static str,
    got: &AudioFormat,
    rate: Option<u32>,
) -> Result<(), FlowError> {
    let rate_ok = rate.is_none_or(|r| r == got.sample_rate);
    if got.encoding == AudioEncoding::Pcm16 && got.channels == 1 && rate_ok {
        Ok(())
    } else {
        let expected = match rate {
            Some(r) => AudioFormat::pcm16(r).to_string(),
            None => "Pcm16 x1 (any rate)".to_string(),
        };
        Err(not_negotiated(processor, expected, got))
    }
}

/// A PCM payload whose length is not a whole number of samples is a producer bug: say so and drop
/// the frame rather than shift every later sample by one byte.
pub(crate) fn check_whole_samples(
    processor: &'static str,
    len: usize,
    bytes_per_frame: usize,
) -> Result<(), FlowError> {
    if bytes_per_frame == 0 || !len.is_multiple_of(bytes_per_frame) {
        Err(FlowError::BadInput(format!(
            "{processor}: payload of {len} bytes is not a whole number of {bytes_per_frame}-byte sample frames"
        )))
    } else {
        Ok(())
    }
}

/// Iterate the samples of a little-endian PCM16 payload (a trailing odd byte is ignored).
pub(crate) fn pcm16_samples(data: &[u8]) -> impl Iterator<Item = i16> + '_ {
    data.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]]))
}

/// f32 in [-1, 1] → i16, rounded half away from zero, with saturation; NaN maps to silence
/// rather than garbage.
///
/// Why not `round()`: without SSE4.1 in the baseline target it is a libm call per sample (it was
/// a quarter of the resampler's instructions). Adding ±0.5 and truncating is the same rounding,
/// and `as` already saturates (+1.0 → 32767) and maps NaN to 0, so no branch is needed.
#[inline(always)]
pub(crate) fn f32_to_i16(x: f32) -> i16 {
    let y = x * 32768.0;
    (y + 0.5f32.copysign(y)) as i16
}

/// Append f32 samples in [-1, 1] as little-endian PCM16 (see [`f32_to_i16`]).
pub(crate) fn put_pcm16_f32(out: &mut BytesMut, samples: &[f32]) {
    let start = out.len();
    // One resize (a memset) and plain indexed stores: per-sample `put_i16_le` re-checks the
    // capacity on every call and keeps the loop from vectorising.
    out.resize(start + samples.len() * 2, 0);
    for (dst, &x) in out[start..].chunks_exact_mut(2).zip(samples) {
        dst.copy_from_slice(&f32_to_i16(x).to_le_bytes());
    }
}

/// Counters a processor shares with whoever built it (tests, metrics), readable while it runs.
#[derive(Debug, Default)]
pub struct AudioCounters {
    frames: AtomicU64,
    dropped_empty: AtomicU64,
    rejected: AtomicU64,
}

impl AudioCounters {
    pub(crate) fn frame(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn empty(&self) {
        self.dropped_empty.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn reject(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
    /// Audio frames transformed.
    #[must_use]
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
    /// Empty audio frames dropped (they carry no samples and no timing worth keeping).
    #[must_use]
    pub fn dropped_empty(&self) -> u64 {
        self.dropped_empty.load(Ordering::Relaxed)
    }
    /// Frames refused with an error (wrong format, broken payload).
    #[must_use]
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// Count a rejection on the way out of a check.
pub(crate) fn counted<T>(counters: &AudioCounters, r: Result<T, FlowError>) -> Result<T, FlowError> {
    if r.is_err() {
        counters.reject();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_to_i16_rounds_like_round_and_saturates() {
        for i in -70_000..=70_000 {
            // Quarter steps hit every tie and both sides of it.
            let x = i as f32 / 4.0 / 32768.0;
            let want = (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
            assert_eq!(f32_to_i16(x), want, "{x}");
        }
        assert_eq!(f32_to_i16(f32::NAN), 0);
        assert_eq!(f32_to_i16(f32::INFINITY), 32767);
        assert_eq!(f32_to_i16(f32::NEG_INFINITY), -32768);
        let mut out = BytesMut::new();
        put_pcm16_f32(&mut out, &[0.5, -1.0, 1.0]);
        assert_eq!(&out[..], &[0x00, 0x40, 0x00, 0x80, 0xFF, 0x7F]);
    }
}
