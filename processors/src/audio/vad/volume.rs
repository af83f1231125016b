//! The loudness gate of the VAD: a BS.1770-style momentary loudness normalised to 0..1.
//!
//! Why: a VAD model scores *speech-likeness*, not level; a faint far-away voice or line hum can
//! score high. Pipecat pairs its model with a loudness floor (`min_volume` 0.6), and so do we, with
//! the same scale so the same number means the same thing:
//!
//! 1. K-weighting (BS.1770's two biquads: +4 dB high shelf above ~1.7 kHz, 38 Hz high-pass),
//!    coefficients derived for the analysis rate the way pyloudnorm does it.
//! 2. Mean square over the last 0.4 s (BS.1770's momentary window), `L = -0.691 + 10·log10(ms)` LUFS.
//! 3. Map −110.3..−10.3 LUFS (Pipecat computes loudness on raw int16 values, i.e. +90.3 dB,
//!    and maps −20..80) linearly to 0..1, clamped. 0.6 is therefore −50.3 LUFS: quiet room
//!    tone and −55 dBFS line noise stay under it, normal phone speech (−30..−15 LUFS) is well above.
//! 4. Smoothing: instant attack, exponential release with factor 0.2 per analysis window
//!    (`v += 0.2·(new − v)` when falling). Pipecat smooths both ways; measured on espeak speech
//!    that makes the gate open 3 windows (~50 ms) after the model already says "speech", which
//!    delays every start by that much and lets a short first syllable fall through. The gate is
//!    a floor against quiet sounds, so opening at once for a loud one costs nothing: loud
//!    non-speech is the model's and `start_secs`' job.

use std::f64::consts::PI;

/// One biquad in state-space form (transposed direct form II with the `b0` term folded in).
///
/// Why this form: the per-sample recurrence is the cost of the meter, and its critical path is
/// what bounds it (the loop cannot be vectorised across time). Direct form I goes
/// state → add → mul → add (three dependent ops per sample); here each new state is one
/// multiply-add away from the previous one, and the output `y = b0·x + s1` is off the chain.
#[derive(Debug, Clone, Copy)]
struct Biquad {
    b0: f64,
    /// `b1 − a1·b0` and `b2 − a2·b0`: the input taps once `y` is expanded.
    c1: f64,
    c2: f64,
    a1: f64,
    a2: f64,
}

impl Biquad {
    fn new(b: [f64; 3], a0: f64, a1: f64, a2: f64) -> Self {
        let (b0, b1, b2, a1, a2) = (b[0] / a0, b[1] / a0, b[2] / a0, a1 / a0, a2 / a0);
        Self { b0, c1: b1 - a1 * b0, c2: b2 - a2 * b0, a1, a2 }
    }
    /// One sample through the filter with state `s`; returns the output.
    #[inline(always)]
    fn run(&self, s: &mut [f64; 2], x: f64) -> f64 {
        let s1 = s[0];
        // s1' = b1·x − a1·y + s2 and s2' = b2·x − a2·y with y expanded: each new state depends
        // on the old ones through one multiply-add.
        // Grouped so the chain through s1 is one multiply and one add (the input terms and s2 are
        // ready early); floats are not reassociated by the compiler, so the order is spelled out.
        s[0] = (self.c1 * x + s[1]) - self.a1 * s1;
        s[1] = self.c2 * x - self.a2 * s1;
        self.b0 * x + s1
    }
}

fn high_shelf(rate: f64) -> Biquad {
    let (g, q, fc) = (3.999_843_853_973_347, 0.707_175_236_955_419_3, 1_681.974_450_955_532);
    let a = 10f64.powf(g / 40.0);
    let w0 = 2.0 * PI * fc / rate;
    let alpha = w0.sin() / (2.0 * q);
    let c = w0.cos();
    let sa = 2.0 * a.sqrt() * alpha;
    Biquad::new(
        [
            a * ((a + 1.0) + (a - 1.0) * c + sa),
            -2.0 * a * ((a - 1.0) + (a + 1.0) * c),
            a * ((a + 1.0) + (a - 1.0) * c - sa),
        ],
        (a + 1.0) - (a - 1.0) * c + sa,
        2.0 * ((a - 1.0) - (a + 1.0) * c),
        (a + 1.0) - (a - 1.0) * c - sa,
    )
}

fn high_pass(rate: f64) -> Biquad {
    let (q, fc) = (0.500_327_037_325_395_3, 38.135_470_876_139_82);
    let w0 = 2.0 * PI * fc / rate;
    let alpha = w0.sin() / (2.0 * q);
    let c = w0.cos();
    Biquad::new([(1.0 + c) / 2.0, -(1.0 + c), (1.0 + c) / 2.0], 1.0 + alpha, -2.0 * c, 1.0 - alpha)
}

/// Smoothed, normalised loudness of a stream, updated once per analysis window.
///
/// Cost: the two K-weighting biquads per sample (the only per-sample work, in registers) and a
/// sum over the 0.4 s ring once per window; no allocation after construction.
#[derive(Debug, Clone)]
pub struct VolumeMeter {
    shelf: Biquad,
    hp: Biquad,
    shelf_state: [f64; 2],
    hp_state: [f64; 2],
    /// Sum of squares (at int16 scale) of each of the last windows: a ring covering 0.4 s.
    ring: Vec<f64>,
    ring_samples: Vec<u32>,
    /// Samples in the ring, kept as a running count (integers, so it never drifts).
    ring_count: u64,
    next: usize,
    smoothed: f32,
    smoothing: f32,
}

impl VolumeMeter {
    /// A meter for `rate` Hz audio analysed in windows of `window` samples.
    #[must_use]
    pub fn new(rate: u32, window: usize) -> Self {
        let rate_f = f64::from(rate.max(1));
        let windows = ((0.4 * rate_f) / window.max(1) as f64).round().max(1.0) as usize;
        Self {
            shelf: high_shelf(rate_f),
            hp: high_pass(rate_f),
            shelf_state: [0.0; 2],
            hp_state: [0.0; 2],
            ring: vec![0.0; windows],
            ring_samples: vec![0; windows],
            ring_count: 0,
            next: 0,
            smoothed: 0.0,
            smoothing: 0.2,
        }
    }

    /// Feed one analysis window; returns the smoothed volume in 0..1.
    pub fn push(&mut self, window: &[i16]) -> f32 {
        // Filter at int16 scale and scale the mean square once at the end: the filters are
        // linear, so this only saves a multiply per sample.
        const INV_FULL_SCALE_SQ: f64 = 1.0 / (32768.0 * 32768.0);
        let (shelf, hp) = (self.shelf, self.hp);
        let (mut s1, mut s2) = (self.shelf_state, self.hp_state);
        let mut sum = 0.0;
        for &x in window {
            let y = hp.run(&mut s2, shelf.run(&mut s1, f64::from(x)));
            sum += y * y;
        }
        self.shelf_state = s1;
        self.hp_state = s2;
        let len = u32::try_from(window.len()).unwrap_or(u32::MAX);
        self.ring_count = self.ring_count - u64::from(self.ring_samples[self.next]) + u64::from(len);
        self.ring[self.next] = sum;
        self.ring_samples[self.next] = len;
        self.next = (self.next + 1) % self.ring.len();
        // A fresh sum of the ~25 window sums rather than a running one: it costs ~25 adds and a
        // running float sum would leave a residue after a loud window leaves the ring.
        let ms = self.ring.iter().sum::<f64>() * INV_FULL_SCALE_SQ / self.ring_count.max(1) as f64;
        let lufs = if ms > 0.0 { -0.691 + 10.0 * ms.log10() } else { f64::NEG_INFINITY };
        let v = normalise_lufs(lufs);
        if v >= self.smoothed {
            self.smoothed = v;
        } else {
            self.smoothed += self.smoothing * (v - self.smoothed);
        }
        self.smoothed
    }

    /// The current smoothed volume.
    #[must_use]
    pub fn volume(&self) -> f32 {
        self.smoothed
    }

    /// Forget the history (a new stream).
    pub fn reset(&mut self) {
        self.shelf_state = [0.0; 2];
        self.hp_state = [0.0; 2];
        self.ring.fill(0.0);
        self.ring_samples.fill(0);
        self.ring_count = 0;
        self.smoothed = 0.0;
    }
}

/// Full-scale LUFS → Pipecat's 0..1 volume scale (see the module docs).
#[must_use]
pub fn normalise_lufs(lufs: f64) -> f32 {
    const INT16_OFFSET_DB: f64 = 90.309; // 20·log10(32768)
    (((lufs + INT16_OFFSET_DB) + 20.0) / 100.0).clamp(0.0, 1.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_997_hz_full_scale_sine_reads_about_minus_3_lufs() {
        let mut m = VolumeMeter::new(16_000, 256);
        let sine: Vec<i16> =
            (0..16_000).map(|i| ((2.0 * PI * 997.0 * i as f64 / 16_000.0).sin() * 32767.0) as i16).collect();
        for w in sine.chunks_exact(256) {
            m.push(w);
        }
        // BS.1770 calibration: a 0 dBFS 997 Hz sine is -3.01 LUFS, i.e. volume ~0.97.
        let expected = normalise_lufs(-3.01);
        assert!((m.volume() - expected).abs() < 0.01, "{} vs {}", m.volume(), expected);
        let mut quiet = VolumeMeter::new(16_000, 256);
        let silence = [0i16; 256];
        for _ in 0..50 {
            quiet.push(&silence);
        }
        assert_eq!(quiet.volume(), 0.0);
    }
}
