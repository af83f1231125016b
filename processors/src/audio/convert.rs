//! Sample-format conversion: i16 ↔ f32, mono ↔ stereo, gain — as buffer functions and as the
//! [`FormatConverter`] processor.
//!
//! - [`FormatConverter`] consumes PCM16 or F32, mono or stereo, at any rate (`InputAudio` by
//!   default, or `OutputAudio`/`TtsAudio` with [`FormatConverter::on`]) and produces the
//!   configured encoding and channel count at the same rate, with an optional gain. Rate changes
//!   are the [`crate::audio::Resampler`]'s job, so a hidden resample never hides here. Other
//!   encodings are refused with `NotNegotiated`, a payload that is not whole sample frames with
//!   `BadInput`.
//! - **Non-finite input.** NaN and ±inf in F32 input are replaced by 0 (silence) and counted
//!   ([`ConvertStats::non_finite`]): a broken upstream sample must not become a full-scale click
//!   or garbage, and dropping the whole frame would break the stream's timing for one bad value.
//! - **Rounding.** i16 → f32 is dasp's (`s / 32768`, exact). f32 → i16 rounds to nearest and
//!   saturates; dasp's own conversion truncates toward zero, which biases quiet signals by half
//!   an LSB and turns a tiny negative value into -0 rather than -1.
//! - Stereo → mono averages the two channels (no clipping possible); mono → stereo duplicates.
//!
//! Steady state allocates nothing but the output payload (scratch buffers grow once to the
//! largest frame; the output `BytesMut` is reclaimed once downstream drops the previous frame).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use dasp::Sample;
use voxline_pipeline::{AudioEncoding, AudioFormat, AudioFrame, Context, Direction, FlowError, Frame, Processor};

use super::pcm::{self, AudioCounters, AudioPath};

/// Append `input` as f32 in [-1, 1).
pub fn i16_to_f32(input: &[i16], out: &mut Vec<f32>) {
    out.extend(input.iter().map(|&s| s.to_sample::<f32>()));
}

/// Append `input` as i16 (rounded, saturating); NaN and ±inf become 0. Returns how many
/// samples were not finite.
pub fn f32_to_i16(input: &[f32], out: &mut Vec<i16>) -> usize {
    let mut bad = 0;
    out.extend(input.iter().map(|&x| {
        bad += usize::from(!x.is_finite());
        // ±inf would saturate to full scale: silence is the safer reading of a broken sample.
        if x.is_finite() { pcm::f32_to_i16(x) } else { 0 }
    }));
    bad
}

/// Replace NaN and ±inf by 0 in place; returns how many were replaced.
pub fn sanitize_f32(samples: &mut [f32]) -> usize {
    let mut bad = 0;
    for s in samples.iter_mut().filter(|s| !s.is_finite()) {
        *s = 0.0;
        bad += 1;
    }
    bad
}

/// Append each mono sample twice (left = right).
pub fn mono_to_stereo<S: Copy>(input: &[S], out: &mut Vec<S>) {
    out.reserve(input.len() * 2);
    for &s in input {
        out.extend([s, s]);
    }
}

/// Append the average of each interleaved left/right pair (a trailing odd sample is ignored).
pub fn stereo_to_mono_i16(input: &[i16], out: &mut Vec<i16>) {
    // The sum fits in i32 and halving it cannot overflow i16.
    out.extend(input.chunks_exact(2).map(|p| ((i32::from(p[0]) + i32::from(p[1])) >> 1) as i16));
}

/// Append the average of each interleaved left/right pair (a trailing odd sample is ignored).
pub fn stereo_to_mono_f32(input: &[f32], out: &mut Vec<f32>) {
    out.extend(input.chunks_exact(2).map(|p| 0.5 * (p[0] + p[1])));
}

/// Linear amplitude factor of a gain in dB.
#[must_use]
pub fn db_to_gain(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}

/// Scale i16 samples in place by `gain` (linear), rounding and saturating at full scale.
pub fn apply_gain_i16(samples: &mut [i16], gain: f32) {
    for s in samples {
        *s = pcm::f32_to_i16(s.to_sample::<f32>() * gain);
    }
}

/// Scale f32 samples in place by `gain` (linear); non-finite results become 0.
pub fn apply_gain_f32(samples: &mut [f32], gain: f32) {
    for s in samples {
        let v = *s * gain;
        *s = if v.is_finite() { v } else { 0.0 };
    }
}

/// Counters specific to [`FormatConverter`], shared with whoever built it.
#[derive(Debug, Default)]
pub struct ConvertStats {
    non_finite: AtomicU64,
}

impl ConvertStats {
    /// NaN/±inf input samples replaced by silence so far.
    #[must_use]
    pub fn non_finite(&self) -> u64 {
        self.non_finite.load(Ordering::Relaxed)
    }
}

/// Largest gain accepted, in dB: beyond it every voice signal is clipping anyway.
const MAX_GAIN_DB: f32 = 40.0;
/// Smallest gain accepted, in dB (below it use silence, not a converter).
const MIN_GAIN_DB: f32 = -120.0;

/// Converts encoding (PCM16 ↔ F32), channel count (1 ↔ 2) and level. See the module docs.
pub struct FormatConverter {
    encoding: AudioEncoding,
    channels: u16,
    gain: f32,
    path: AudioPath,
    scratch: Vec<f32>,
    mapped: Vec<f32>,
    out: BytesMut,
    counters: Arc<AudioCounters>,
    stats: Arc<ConvertStats>,
}

impl std::fmt::Debug for FormatConverter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormatConverter").finish_non_exhaustive()
    }
}

impl FormatConverter {
    /// Convert to `encoding` (`Pcm16` or `F32`) with `channels` (1 or 2), on `InputAudio`.
    pub fn new(encoding: AudioEncoding, channels: u16) -> Result<Self, FlowError> {
        if !matches!(encoding, AudioEncoding::Pcm16 | AudioEncoding::F32) || !(1..=2).contains(&channels) {
            return Err(FlowError::fatal(format!(
                "format converter: cannot produce {encoding:?} x{channels} (Pcm16 or F32, 1 or 2 channels)"
            )));
        }
        Ok(Self {
            encoding,
            channels,
            gain: 1.0,
            path: AudioPath::Input,
            scratch: Vec::new(),
            mapped: Vec::new(),
            out: BytesMut::new(),
            counters: Arc::default(),
            stats: Arc::default(),
        })
    }

    /// Apply a gain of `db` decibels (within -120..=40).
    pub fn with_gain_db(mut self, db: f32) -> Result<Self, FlowError> {
        if !db.is_finite() || !(MIN_GAIN_DB..=MAX_GAIN_DB).contains(&db) {
            return Err(FlowError::fatal(format!(
                "format converter: gain must be within {MIN_GAIN_DB}..={MAX_GAIN_DB} dB, got {db}"
            )));
        }
        self.gain = db_to_gain(db);
        Ok(self)
    }

    /// Convert the frames on `path` instead.
    #[must_use]
    pub fn on(mut self, path: AudioPath) -> Self {
        self.path = path;
        self
    }

    /// Shared counters (frames, dropped empty frames, rejections).
    #[must_use]
    pub fn counters(&self) -> Arc<AudioCounters> {
        self.counters.clone()
    }

    /// Shared conversion statistics (non-finite samples replaced).
    #[must_use]
    pub fn stats(&self) -> Arc<ConvertStats> {
        self.stats.clone()
    }

    /// Convert one frame outside a pipeline; `Ok(None)` for an empty payload.
    pub fn convert(&mut self, audio: &AudioFrame) -> Result<Option<AudioFrame>, FlowError> {
        let r = self.convert_inner(audio);
        pcm::counted(&self.counters, r)
    }

    fn convert_inner(&mut self, audio: &AudioFrame) -> Result<Option<AudioFrame>, FlowError> {
        let fmt = audio.format;
        let bytes = match fmt.encoding {
            AudioEncoding::Pcm16 => 2,
            AudioEncoding::F32 => 4,
            _ => 0,
        };
        if bytes == 0 || !(1..=2).contains(&fmt.channels) {
            return Err(pcm::not_negotiated("format_converter", "Pcm16 or F32, 1 or 2 channels (any rate)", &fmt));
        }
        pcm::check_whole_samples("format_converter", audio.data.len(), bytes * usize::from(fmt.channels))?;
        if audio.data.is_empty() {
            self.counters.empty();
            return Ok(None);
        }
        self.scratch.clear();
        if fmt.encoding == AudioEncoding::Pcm16 {
            self.scratch.extend(pcm::pcm16_samples(&audio.data).map(|s| s.to_sample::<f32>()));
        } else {
            self.scratch.extend(audio.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            let bad = sanitize_f32(&mut self.scratch);
            if bad > 0 {
                self.stats.non_finite.fetch_add(bad as u64, Ordering::Relaxed);
            }
        }
        let samples = match (fmt.channels, self.channels) {
            (1, 2) => {
                self.mapped.clear();
                mono_to_stereo(&self.scratch, &mut self.mapped);
                &mut self.mapped
            }
            (2, 1) => {
                self.mapped.clear();
                stereo_to_mono_f32(&self.scratch, &mut self.mapped);
                &mut self.mapped
            }
            _ => &mut self.scratch,
        };
        if self.gain != 1.0 {
            apply_gain_f32(samples, self.gain);
        }
        match self.encoding {
            AudioEncoding::F32 => {
                self.out.reserve(samples.len() * 4);
                for s in samples.iter() {
                    self.out.extend_from_slice(&s.to_le_bytes());
                }
            }
            _ => pcm::put_pcm16_f32(&mut self.out, samples),
        }
        self.counters.frame();
        let format = AudioFormat { encoding: self.encoding, sample_rate: fmt.sample_rate, channels: self.channels };
        Ok(Some(AudioFrame { data: self.out.split().freeze(), format, pts: audio.pts }))
    }
}

impl Processor for FormatConverter {
    fn name(&self) -> &str {
        "format_converter"
    }

    /// 1:1 and synchronous.
    fn process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        pcm::map_now(frame, self.path, direction, cx, |audio| self.convert(audio))
    }
}
