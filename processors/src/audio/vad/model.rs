//! [`EarshotVad`]: earshot 1.2.2's model, with its feature front end computed here.
//!
//! Why not `earshot::Detector` as is: its scalar 1024-point FFT and mel stage were ~45% of the
//! model's instructions (callgrind on the W2 call: ~50k of ~107k per window). This computes the
//! same features — pre-emphasis 0.97, a 768-sample periodic Hann window zero-padded to a 1024-point
//! real FFT, power at int16 scale, 40 triangular mel bands, natural log, then earshot's own
//! normalisation — on a 512-point complex rustfft (SIMD kernels picked at run time) with the real
//! split done here for the used bins only, and runs earshot's
//! network and weights in [`super::network`] (vectorised, bit-identical).
//! A unit test pins the scores to `earshot::Detector`'s on speech-like audio.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use super::VadAnalyzer;
use super::network::{CONTEXT, MELS, Network};
use super::tones::{self, ToneDetector};

const HOP: usize = 256;
const WINDOW: usize = 768;
/// The real FFT's length: the window zero-padded, as earshot does.
const FFT: usize = 1024;
/// It runs as a complex FFT of half the length over (even, odd) sample pairs.
const HALF: usize = FFT / 2;
const PRE_EMPHASIS: f32 = 0.97;
const POWER_SCALE: f32 = 1.0 / (32768.0 * 32768.0);
/// Corner bins of earshot's 40 triangular mel bands: band `i` rises from `MEL_POINTS[i]` to 1 at
/// `MEL_POINTS[i + 1]` and falls to 0 at `MEL_POINTS[i + 2]` (read off earshot 1.2.2's table,
/// whose every weight is exactly this triangle).
const MEL_POINTS: [usize; MELS + 2] = [
    4, 7, 10, 13, 17, 21, 25, 29, 33, 38, 43, 48, 54, 60, 66, 73, 80, 87, 95, 103, 112, 122, 132, 142, 153, 165, 178,
    191, 205, 220, 236, 253, 270, 289, 309, 330, 353, 376, 402, 428, 456, 486,
];
/// Bins the mel bands read (0..486 of the 513): the rest of the spectrum is never computed.
const USED: usize = MEL_POINTS[MELS + 1];
// The tone check reads bins 4..260 of the same spectrum.
const _: () = assert!(USED >= 4 + tones::BINS);

/// What every detector shares: the FFT plan (twiddles) and the window and band weights.
struct Tables {
    fft: Arc<dyn Fft<f32>>,
    hann: Vec<f32>,
    /// `e^{−2πik/1024}` for the used bins, split into real and imaginary parts.
    twiddle_re: Box<[f32; USED]>,
    twiddle_im: Box<[f32; USED]>,
    /// Per band: first bin and weights, flattened into `weights`.
    bands: [(usize, usize, usize); MELS],
    weights: Vec<f32>,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let fft = FftPlanner::<f32>::new().plan_fft_forward(HALF);
        let hann = (0..WINDOW)
            .map(|i| (0.5 * (1.0 - (2.0 * std::f64::consts::PI * i as f64 / WINDOW as f64).cos())) as f32)
            .collect();
        let angle = |k: usize| -2.0 * std::f64::consts::PI * k as f64 / FFT as f64;
        let twiddle_re = Box::new(std::array::from_fn(|k| angle(k).cos() as f32));
        let twiddle_im = Box::new(std::array::from_fn(|k| angle(k).sin() as f32));
        let mut bands = [(0, 0, 0); MELS];
        let mut weights = Vec::new();
        for (i, band) in bands.iter_mut().enumerate() {
            let (lo, peak, hi) = (MEL_POINTS[i], MEL_POINTS[i + 1], MEL_POINTS[i + 2]);
            let offset = weights.len();
            for k in lo..hi {
                let w =
                    if k <= peak { (k - lo) as f32 / (peak - lo) as f32 } else { (hi - k) as f32 / (hi - peak) as f32 };
                weights.push(w);
            }
            *band = (lo, offset, hi - lo);
        }
        Tables { fft, hann, twiddle_re, twiddle_im, bands, weights }
    })
}

/// Buffers that only live for one window: one set per thread, not per detector.
///
/// Why: with a thousand calls on a core, per-detector copies (~16 KiB) would be a thousand cold
/// buffers cycling through the cache; a shared set stays hot, and each detector keeps only its
/// real state (~7 KiB with the tone check's).
struct Scratch {
    /// The windowed frame as (even, odd) pairs, transformed in place.
    z: Vec<Complex<f32>>,
    fft: Vec<Complex<f32>>,
    /// `Z[k]` and `Z[(512 − k) mod 512]` for the used bins, split into real and imaginary parts
    /// so that the split below runs eight bins per instruction.
    re: Box<[f32; USED]>,
    im: Box<[f32; USED]>,
    re_mirror: Box<[f32; USED]>,
    im_mirror: Box<[f32; USED]>,
    power: Box<[f32; USED]>,
}

impl Scratch {
    fn new(t: &Tables) -> Self {
        Self {
            z: vec![Complex::default(); HALF],
            fft: vec![Complex::default(); t.fft.get_inplace_scratch_len()],
            re: Box::new([0.0; USED]),
            im: Box::new([0.0; USED]),
            re_mirror: Box::new([0.0; USED]),
            im_mirror: Box::new([0.0; USED]),
            power: Box::new([0.0; USED]),
        }
    }

    /// Power spectrum (int16 scale → full scale) of the 1024-point real FFT of `frame`, zero
    /// padded, for bins `0..USED`: a 512-point complex FFT of the (even, odd) sample pairs and
    /// the standard split `X[k] = E[k] + W^k·O[k]`, with `E`, `O` the spectra of the even and
    /// odd samples recovered from `Z[k]` and `conj(Z[512 − k])`.
    fn power_spectrum(&mut self, t: &Tables, frame: &[f32; WINDOW]) {
        for ((z, x), w) in self.z.iter_mut().zip(frame.chunks_exact(2)).zip(t.hann.chunks_exact(2)) {
            *z = Complex::new(x[0] * w[0], x[1] * w[1]);
        }
        self.z[WINDOW / 2..].fill(Complex::default());
        t.fft.process_with_scratch(&mut self.z, &mut self.fft);
        for ((re, im), z) in self.re.iter_mut().zip(self.im.iter_mut()).zip(&self.z) {
            *re = z.re;
            *im = z.im;
        }
        self.re_mirror[0] = self.z[0].re;
        self.im_mirror[0] = self.z[0].im;
        let mirrored = self.z[HALF + 1 - USED..].iter().rev();
        for ((re, im), z) in self.re_mirror[1..].iter_mut().zip(self.im_mirror[1..].iter_mut()).zip(mirrored) {
            *re = z.re;
            *im = z.im;
        }
        let bins = self.re.iter().zip(self.im.iter()).zip(self.re_mirror.iter().zip(self.im_mirror.iter()));
        let twiddles = t.twiddle_re.iter().zip(t.twiddle_im.iter());
        for ((p, ((&ar, &ai), (&br, &bi))), (&wr, &wi)) in self.power.iter_mut().zip(bins).zip(twiddles) {
            // E = (Z[k] + conj Z[N−k]) / 2, O = −i·(Z[k] − conj Z[N−k]) / 2.
            let (er, ei) = (0.5 * (ar + br), 0.5 * (ai - bi));
            let (or, oi) = (0.5 * (ai + bi), -0.5 * (ar - br));
            let xr = er + (wr * or - wi * oi);
            let xi = ei + (wr * oi + wi * or);
            *p = (xr * xr + xi * xi) * POWER_SCALE;
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// The earshot 1.2.2 neural VAD (the default backend): 256-sample (16 ms) windows at 16 kHz.
pub struct EarshotVad {
    network: Network,
    prev: f32,
    /// The last 768 pre-emphasised samples.
    ring: Box<[f32; WINDOW]>,
    /// Normalised log-mel features of the last three windows, oldest first.
    features: [[f32; MELS]; CONTEXT],
    /// Judges each window's spectrum tonal or not (see [`super::tones`]); read by the segmenter.
    tones: ToneDetector,
}

impl std::fmt::Debug for EarshotVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarshotVad").finish_non_exhaustive()
    }
}

impl EarshotVad {
    /// A fresh detector.
    #[must_use]
    pub fn new() -> Self {
        Self {
            network: Network::new(),
            prev: 0.0,
            ring: Box::new([0.0; WINDOW]),
            features: [[0.0; MELS]; CONTEXT],
            tones: ToneDetector::new(),
        }
    }

    fn score(&mut self, window: &[i16], t: &Tables, sc: &mut Scratch) -> f32 {
        self.ring.copy_within(HOP.., 0);
        for (dst, &s) in self.ring[WINDOW - HOP..].iter_mut().zip(window) {
            let s = f32::from(s);
            *dst = s - PRE_EMPHASIS * self.prev;
            self.prev = s;
        }
        sc.power_spectrum(t, &self.ring);
        self.tones.push(&sc.power[..]);
        self.features.rotate_left(1);
        let power = &sc.power[..];
        let current = &mut self.features[CONTEXT - 1];
        for (dst, &(lo, offset, len)) in current.iter_mut().zip(&t.bands) {
            let band: f32 = power[lo..lo + len].iter().zip(&t.weights[offset..offset + len]).map(|(p, w)| p * w).sum();
            *dst = (band + 1e-20).ln();
        }
        Network::normalize(current);
        self.network.predict(&self.features).clamp(0.0, 1.0)
    }
}

impl Default for EarshotVad {
    fn default() -> Self {
        Self::new()
    }
}

impl VadAnalyzer for EarshotVad {
    fn window_samples(&self) -> usize {
        HOP
    }

    fn speech_probability(&mut self, window: &[i16]) -> f32 {
        if window.len() != HOP {
            // The segmenter only hands over whole windows; a wrong size is not speech.
            return 0.0;
        }
        let t = tables();
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut slot) => {
                let sc = slot.get_or_insert_with(|| Scratch::new(t));
                self.score(window, t, sc)
            }
            // Unreachable (scoring never re-enters), but a fresh set is still correct.
            Err(_) => self.score(window, t, &mut Scratch::new(t)),
        })
    }

    fn tonal(&self) -> bool {
        self.tones.tonal()
    }

    fn reset(&mut self) {
        self.tones.reset();
        self.network.reset();
        self.prev = 0.0;
        self.ring.fill(0.0);
        self.features = [[0.0; MELS]; CONTEXT];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A voiced, pitch-gliding signal with silence and noise stretches: exercises every band.
    fn speechy(n: usize) -> Vec<i16> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        (0..n)
            .map(|i| {
                let t = i as f64 / 16_000.0;
                let f0 = 120.0 + 40.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
                let env = (2.0 * std::f64::consts::PI * 1.3 * t).sin().max(0.0);
                let v: f64 = (1..20).map(|h| (2.0 * std::f64::consts::PI * f0 * h as f64 * t).sin() / h as f64).sum();
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 300.0;
                (v * 6000.0 * env + noise) as i16
            })
            .collect()
    }

    #[test]
    fn power_spectrum_is_the_zero_padded_real_dft() {
        // The split of the half-length complex FFT against the definition, bin by bin.
        let t = tables();
        let mut sc = Scratch::new(t);
        let audio = speechy(WINDOW);
        let frame: [f32; WINDOW] = std::array::from_fn(|i| f32::from(audio[i]));
        sc.power_spectrum(t, &frame);
        let mut worst = 0.0f64;
        let peak = sc.power.iter().copied().fold(0.0f32, f32::max) as f64;
        for k in 0..USED {
            let (mut re, mut im) = (0.0f64, 0.0f64);
            for (n, (&x, &w)) in frame.iter().zip(&t.hann).enumerate() {
                let ph = -2.0 * std::f64::consts::PI * (k * n) as f64 / FFT as f64;
                re += f64::from(x * w) * ph.cos();
                im += f64::from(x * w) * ph.sin();
            }
            let want = (re * re + im * im) * f64::from(POWER_SCALE);
            worst = worst.max((f64::from(sc.power[k]) - want).abs() / peak);
        }
        assert!(peak > 0.0);
        assert!(worst < 1e-5, "largest error {worst} of the peak bin");
    }

    #[test]
    fn scores_match_earshot_detector() {
        let audio = speechy(16_000 * 4);
        let mut ours = EarshotVad::new();
        let mut reference = earshot::Detector::default_boxed();
        let mut worst = 0.0f32;
        let mut speech = 0;
        for w in audio.chunks_exact(HOP) {
            let a = ours.speech_probability(w);
            let b = reference.predict_i16(w).clamp(0.0, 1.0);
            worst = worst.max((a - b).abs());
            speech += usize::from(b > 0.7);
        }
        assert!(speech > 20, "the test signal should look like speech somewhere ({speech} windows)");
        assert!(worst < 0.01, "largest score difference {worst}");
        ours.reset();
        reference.reset();
        for w in audio.chunks_exact(HOP).take(50) {
            let (a, b) = (ours.speech_probability(w), reference.predict_i16(w).clamp(0.0, 1.0));
            assert!((a - b).abs() < 0.01);
        }
        assert_eq!(ours.speech_probability(&[0; 10]), 0.0);
    }
}
