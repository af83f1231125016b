//! Whisper log-mel features for smart-turn: 8 s of 16 kHz mono audio in, 80 × 800 `f32` out.
//!
//! The same numbers as `transformers.WhisperFeatureExtractor(chunk_length=8)` with
//! `do_normalize=True`, which is what Pipecat's vendored `_whisper_features.py` feeds the model:
//!
//! 1. take the last 8 s (128 000 samples), zero-padding at the **start** when shorter (Pipecat's
//!    `truncate_audio_to_last_n_seconds`, so the speech that just ended sits at the right edge);
//! 2. zero-mean, unit-variance normalise the whole window (`(x − mean) / sqrt(var + 1e-7)`);
//! 3. centred STFT: reflect-pad 200 samples each side, 400-sample periodic Hann window, hop 160,
//!    |rFFT|² → 201 bins × 801 frames; the last frame is dropped (Whisper's convention) → 800;
//! 4. Slaney-normalised triangular mel filterbank (80 bands, 0–8 kHz, Slaney mel scale);
//! 5. `log10(max(mel, 1e-10))`, clamped to `global_max − 8` (80 dB of range), then `(x + 4) / 4`.
//!
//! Trade-offs:
//! - **f64 from normalisation to log.** The reference promotes to float64 after normalising; an
//!   `f32` FFT would be accurate enough in the loud bins but the clamp keeps 80 dB of quiet bins
//!   the model still sees, and the cost of f64 here (~800 FFTs of 400 points) is a few ms against
//!   tens of ms of inference. Mean and variance are taken in f64 too (numpy uses f32 pairwise
//!   sums): the difference is ~1e-7 relative, far below the feature tolerance the tests pin.
//! - **All buffers are allocated once** in [`WhisperFeatures::new`] (window, sparse filterbank,
//!   the padded signal, FFT scratch, the output matrix); [`WhisperFeatures::compute`] allocates
//!   nothing and returns a borrow of its output, which the model copies into its input tensor.
//! - The filterbank is stored sparse (each band's non-zero bin range): a band touches 2–10 of the
//!   201 bins, so the mel projection is ~5 % of a dense 201 × 80 product.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// Sample rate the model was trained at.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples the model looks at: the last 8 s.
pub const WINDOW_SAMPLES: usize = 8 * SAMPLE_RATE as usize;
/// Mel bands (rows of the feature matrix).
pub const N_MELS: usize = 80;
/// Feature frames (columns of the feature matrix), one per 10 ms.
pub const N_FRAMES: usize = WINDOW_SAMPLES / HOP;
/// STFT frame length (25 ms).
pub const N_FFT: usize = 400;
/// STFT hop (10 ms).
pub const HOP: usize = 160;

const N_BINS: usize = N_FFT / 2 + 1;
const PAD: usize = N_FFT / 2;
const MEL_FLOOR: f64 = 1e-10;
const NORM_VARIANCE_EPS: f64 = 1e-7;
/// Dynamic range kept below the loudest mel value, in log10 units (80 dB).
const LOG_RANGE: f64 = 8.0;

/// One mel band of the filterbank: weights for the bins `start..start + weights.len()`.
#[derive(Debug, Clone)]
struct MelBand {
    start: usize,
    weights: Vec<f64>,
}

/// Whisper log-mel feature extractor with every buffer preallocated.
///
/// Not `Sync` by design: one extractor per worker thread (it owns its scratch space).
pub struct WhisperFeatures {
    window: Vec<f64>,
    bands: Vec<MelBand>,
    fft: Arc<dyn Fft<f64>>,
    /// Reflect-padded, normalised signal: `WINDOW_SAMPLES + 2 * PAD` samples.
    padded: Vec<f64>,
    frame: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
    /// Mel-major (`[mel][frame]`), the model's `input_features` layout without the batch axis.
    out: Vec<f32>,
    /// The log10 mel values before clamping, same layout as `out` (kept in f64 so the clamp and
    /// scale happen at the reference's precision).
    log_mel: Vec<f64>,
}

impl std::fmt::Debug for WhisperFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperFeatures").field("n_mels", &N_MELS).field("n_frames", &N_FRAMES).finish()
    }
}

impl Default for WhisperFeatures {
    fn default() -> Self {
        Self::new()
    }
}

impl WhisperFeatures {
    /// Precompute the window and filterbank, allocate the buffers (~1.7 MB).
    pub fn new() -> Self {
        // A complex FFT of the real frame: 400 points is 2^4·5^2, which rustfft plans as a mixed
        // radix; a real-input FFT would halve the work but is not the bottleneck (see module docs).
        let fft = FftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        let scratch = vec![Complex::default(); fft.get_inplace_scratch_len()];
        Self {
            window: periodic_hann(N_FFT),
            bands: mel_filterbank(),
            fft,
            padded: vec![0.0; WINDOW_SAMPLES + 2 * PAD],
            frame: vec![Complex::default(); N_FFT],
            scratch,
            power: vec![0.0; N_BINS],
            out: vec![0.0; N_MELS * N_FRAMES],
            log_mel: vec![0.0; N_MELS * N_FRAMES],
        }
    }

    /// Features of the last 8 s of `audio_16k` (samples in −1..1), as an `N_MELS × N_FRAMES`
    /// mel-major matrix. Shorter audio is zero-padded at the start; empty audio is silence.
    /// Non-finite samples are treated as 0 so one bad sample cannot poison the whole window.
    pub fn compute(&mut self, audio_16k: &[f32]) -> &[f32] {
        let tail = &audio_16k[audio_16k.len().saturating_sub(WINDOW_SAMPLES)..];
        let lead = WINDOW_SAMPLES - tail.len();

        // Normalise over the whole 8 s window, zero padding included (the reference pads first).
        let finite = |x: f32| if x.is_finite() { f64::from(x) } else { 0.0 };
        let n = WINDOW_SAMPLES as f64;
        let mean = tail.iter().map(|&x| finite(x)).sum::<f64>() / n;
        let var = (tail.iter().map(|&x| (finite(x) - mean).powi(2)).sum::<f64>() + lead as f64 * mean * mean) / n;
        let inv_std = 1.0 / (var + NORM_VARIANCE_EPS).sqrt();

        let body = &mut self.padded[PAD..PAD + WINDOW_SAMPLES];
        body[..lead].fill(-mean * inv_std);
        for (dst, &x) in body[lead..].iter_mut().zip(tail) {
            *dst = (finite(x) - mean) * inv_std;
        }
        // numpy's "reflect" mode: mirror around the edge sample without repeating it.
        for i in 0..PAD {
            self.padded[PAD - 1 - i] = self.padded[PAD + 1 + i];
            self.padded[PAD + WINDOW_SAMPLES + i] = self.padded[PAD + WINDOW_SAMPLES - 2 - i];
        }

        let mut max = f64::NEG_INFINITY;
        for f in 0..N_FRAMES {
            let start = f * HOP;
            let samples = &self.padded[start..start + N_FFT];
            for ((c, &x), &w) in self.frame.iter_mut().zip(samples).zip(&self.window) {
                *c = Complex::new(x * w, 0.0);
            }
            self.fft.process_with_scratch(&mut self.frame, &mut self.scratch);
            for (p, c) in self.power.iter_mut().zip(&self.frame[..N_BINS]) {
                *p = c.norm_sqr();
            }
            for (m, band) in self.bands.iter().enumerate() {
                let bins = &self.power[band.start..band.start + band.weights.len()];
                let energy: f64 = bins.iter().zip(&band.weights).map(|(p, w)| p * w).sum();
                let log = energy.max(MEL_FLOOR).log10();
                max = max.max(log);
                self.log_mel[m * N_FRAMES + f] = log;
            }
        }

        let floor = max - LOG_RANGE;
        for (o, &l) in self.out.iter_mut().zip(&self.log_mel) {
            *o = ((l.max(floor) + 4.0) / 4.0) as f32;
        }
        &self.out
    }
}

/// Periodic Hann window (`torch.hann_window(n)`, i.e. `np.hanning(n + 1)[:-1]`).
fn periodic_hann(n: usize) -> Vec<f64> {
    (0..n).map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()).collect()
}

fn hz_to_mel_slaney(hz: f64) -> f64 {
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = 15.0;
    if hz >= MIN_LOG_HZ { MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() * (27.0 / 6.4f64.ln()) } else { 3.0 * hz / 200.0 }
}

fn mel_to_hz_slaney(mel: f64) -> f64 {
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = 15.0;
    if mel >= MIN_LOG_MEL { MIN_LOG_HZ * ((6.4f64.ln() / 27.0) * (mel - MIN_LOG_MEL)).exp() } else { 200.0 * mel / 3.0 }
}

/// `np.linspace(start, stop, n)[i]`, computed the way numpy does (`start + i * step`, last point
/// exact) so the filter edges land on the same doubles as the reference's.
fn linspace(start: f64, stop: f64, n: usize, i: usize) -> f64 {
    if i + 1 == n {
        return stop;
    }
    start + i as f64 * ((stop - start) / (n - 1) as f64)
}

/// Slaney-normalised triangular filters over 0..8 kHz, as transformers' `mel_filter_bank(
/// norm="slaney", mel_scale="slaney")`, stored as each band's non-zero bin range.
fn mel_filterbank() -> Vec<MelBand> {
    let nyquist = f64::from(SAMPLE_RATE) / 2.0;
    let (mel_min, mel_max) = (hz_to_mel_slaney(0.0), hz_to_mel_slaney(nyquist));
    let edges: Vec<f64> =
        (0..N_MELS + 2).map(|i| mel_to_hz_slaney(linspace(mel_min, mel_max, N_MELS + 2, i))).collect();
    let bin_hz: Vec<f64> = (0..N_BINS).map(|k| linspace(0.0, (SAMPLE_RATE / 2) as f64, N_BINS, k)).collect();
    (0..N_MELS)
        .map(|m| {
            let (lo, mid, hi) = (edges[m], edges[m + 1], edges[m + 2]);
            let enorm = 2.0 / (hi - lo);
            let dense: Vec<f64> = bin_hz
                .iter()
                .map(|&hz| {
                    let down = (hz - lo) / (mid - lo);
                    let up = (hi - hz) / (hi - mid);
                    down.min(up).max(0.0) * enorm
                })
                .collect();
            let start = dense.iter().position(|&w| w > 0.0).unwrap_or(0);
            let end = dense.iter().rposition(|&w| w > 0.0).map_or(start, |e| e + 1);
            MelBand { start, weights: dense[start..end].to_vec() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_band_has_weight_and_bands_ascend() {
        let bands = mel_filterbank();
        assert_eq!(bands.len(), N_MELS);
        for pair in bands.windows(2) {
            assert!(pair[0].start <= pair[1].start);
        }
        // The lowest bands are narrower than one 40 Hz bin, yet each still catches one bin.
        assert!(bands.iter().all(|b| !b.weights.is_empty()), "an empty mel band");
    }

    #[test]
    fn silence_is_the_floor_everywhere() {
        // All zeros: normalisation leaves zeros, every band sits at the 1e-10 floor → log −10,
        // which is also the max, so (−10 + 4) / 4 = −1.5 everywhere.
        let mut fx = WhisperFeatures::new();
        let out = fx.compute(&[]);
        assert!(out.iter().all(|&v| v == -1.5), "silence is not flat −1.5");
    }

    #[test]
    fn non_finite_samples_do_not_poison_the_window() {
        let mut fx = WhisperFeatures::new();
        let mut audio: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        audio[100] = f32::NAN;
        audio[200] = f32::INFINITY;
        assert!(fx.compute(&audio).iter().all(|v| v.is_finite()));
    }
}
