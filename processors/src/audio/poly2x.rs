//! Exact 2× sample-rate conversion (8↔16 kHz, 24↔48 kHz, …) with a polyphase FIR.
//!
//! Why not rubato here: telephone audio is upsampled 8→16 kHz on every caller frame of every call,
//! and rubato's FFT resampler (a forward and an inverse FFT per 5 ms block, FFT plans per
//! instance) cost ~24k instructions per 20 ms frame in callgrind on the W4 workload — as much as
//! the rest of the engine's per-frame path apart from the VAD. A 2× polyphase FIR needs no FFT:
//! 80 multiply-adds per input sample, computed eight outputs at a time with the accumulators in
//! registers (the loop is written so that LLVM vectorises it with the baseline SSE2 of every
//! x86-64, NEON on aarch64), with coefficients shared by every stream and ~320 bytes of state
//! per stream. Every other ratio still goes through rubato.
//!
//! Design: a 77-tap Kaiser-windowed sinc (β = 8, ≈ 80 dB stopband) at the higher rate, cut off
//! at [`CUTOFF`] of the lower rate's Nyquist frequency ([`NARROW_CUTOFF`] for [`Band::Narrow`]).
//! Linear phase, 38 samples of delay at the higher rate: 2.375 ms both ways at 8/16 kHz, a whole number of samples at both rates, so an
//! up-then-down round trip lines up on the original grid. The cutoff keeps the telephone band
//! (flat to 3 kHz at 8 kHz) and reaches the stopband before the lower Nyquist frequency, so
//! nothing images into (up) or aliases from (down) the band above it; see the tests for the
//! measured response.

use std::sync::OnceLock;

/// Prototype length: odd, so the centre is a whole sample and so is the delay; and its centre
/// even, so the delay is whole at the lower rate too. Its branches have 39 and 38 taps.
const LEN: usize = 77;
/// Centre of the prototype = delay in samples at the higher rate.
const DELAY: usize = LEN / 2;
/// Taps per upsampling branch: the longer branch (39 taps) rounded up to a multiple of 8.
const UP_LANES: usize = 40;
/// Lanes for downsampling: the whole prototype, rounded up to a multiple of 8.
const DOWN_LANES: usize = 80;
/// Outputs per upsampling block: one SIMD register pair's worth, kept in registers over the taps.
const BLOCK: usize = 8;
/// −6 dB point as a fraction of the lower rate's Nyquist frequency.
pub(crate) const CUTOFF: f64 = 0.85;
/// The narrower cutoff for analysis-only paths (the VAD): 2.6 kHz at 8 kHz. See [`Band::Narrow`].
pub(crate) const NARROW_CUTOFF: f64 = 0.65;
const KAISER_BETA: f64 = 8.0;

/// Which passband a [`Poly2x`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Band {
    /// Flat to 0.75 of the lower Nyquist frequency (3 kHz at 8 kHz), −6 dB at [`CUTOFF`]: audio
    /// that people or STT will hear.
    Full,
    /// −6 dB at [`NARROW_CUTOFF`] (2.6 kHz at 8 kHz): what the VAD analyses. Why: μ-law's
    /// quantisation noise is broadband and follows the signal, so a loud tonal sound (hold music)
    /// on a phone line carries a noise texture up to 4 kHz that earshot reads as speech; below
    /// 2.6 kHz, where the first two formants of speech live, it does not (measured in
    /// `tests/audio_vad.rs`: `tonal_music_is_not_speech` fails with [`Band::Full`]).
    Narrow,
}

/// The prototype at the higher rate, normalised to unity DC gain, zero-padded to `DOWN_LANES`.
fn prototype(cutoff: f64) -> [f64; DOWN_LANES] {
    let i0_beta = bessel_i0(KAISER_BETA);
    // The normalised cutoff at the higher rate (Nyquist there = 1): half the lower rate's.
    let fc = cutoff / 2.0;
    let mut h = [0.0f64; DOWN_LANES];
    for (n, tap) in h.iter_mut().enumerate().take(LEN) {
        let d = n as f64 - DELAY as f64;
        let sinc = if d == 0.0 { fc } else { (std::f64::consts::PI * fc * d).sin() / (std::f64::consts::PI * d) };
        let r = d / DELAY as f64;
        *tap = sinc * bessel_i0(KAISER_BETA * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
    }
    let sum: f64 = h.iter().sum();
    for t in &mut h {
        *t /= sum;
    }
    h
}

struct Tables {
    /// Relative cutoff the tables were made for.
    cutoff: f64,
    /// Upsampling branches, gain 2, reversed so that they run over the window oldest-first:
    /// `up[0]` makes the output on the input grid, `up[1]` the one half a period later.
    up: [[f32; UP_LANES]; 2],
    /// Downsampling: lane `l` weighs x[2m − (DOWN_LANES − 1 − l)], so the padding comes first.
    down: [f32; DOWN_LANES],
}

fn tables(band: Band) -> &'static Tables {
    static FULL: OnceLock<Tables> = OnceLock::new();
    static NARROW: OnceLock<Tables> = OnceLock::new();
    let (cell, cutoff) = match band {
        Band::Full => (&FULL, CUTOFF),
        Band::Narrow => (&NARROW, NARROW_CUTOFF),
    };
    cell.get_or_init(|| {
        let h = prototype(cutoff);
        let mut up = [[0.0f32; UP_LANES]; 2];
        // Output y[2k + p] = 2·Σ_i h[2i + p']·x[k − i]: with the window holding x[k − UP_LANES + 1
        // ..= k] oldest-first, lane `l` carries x[k − (UP_LANES − 1 − l)].
        for (p, branch) in up.iter_mut().enumerate() {
            for (l, c) in branch.iter_mut().enumerate() {
                let i = UP_LANES - 1 - l;
                let n = 2 * i + p;
                if n < LEN {
                    *c = (2.0 * h[n]) as f32;
                }
            }
        }
        let mut down = [0.0f32; DOWN_LANES];
        for (l, d) in down.iter_mut().enumerate() {
            *d = h[DOWN_LANES - 1 - l] as f32;
        }
        Tables { cutoff, up, down }
    })
}

/// Modified Bessel function of the first kind, order 0 (power series; converges fast for β ≤ 20).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term, q) = (1.0, 1.0, x * x / 4.0);
    for k in 1..64 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

/// `acc + a·b`, fused when the target has FMA (one instruction, one rounding), else a multiply
/// and an add: `f32::mul_add` without hardware FMA is a libm call, far slower than the two.
#[inline(always)]
fn madd(acc: f32, a: f32, b: f32) -> f32 {
    if cfg!(target_feature = "fma") { a.mul_add(b, acc) } else { acc + a * b }
}

/// Dot product over `N` lanes, accumulated in 8 independent lanes so that LLVM vectorises it
/// with the baseline SSE2 of every x86-64 (and NEON on aarch64).
#[inline(always)]
fn dot<const N: usize>(x: &[f32], h: &[f32; N]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (xc, hc) in x[..N].chunks_exact(8).zip(h.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] = madd(acc[l], xc[l], hc[l]);
        }
    }
    acc.iter().sum()
}

/// Eight input positions at once: `x` starts at the oldest sample of the first window; `out`
/// receives the interleaved (even, odd) output pairs.
#[inline(always)]
fn up_block(x: &[f32], even: &[f32; UP_LANES], odd: &[f32; UP_LANES], out: &mut [f32]) {
    // One slice of the exact length lets LLVM drop every bounds check in the loop.
    let x = &x[..UP_LANES + BLOCK - 1];
    let (mut ae, mut ao) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
    for j in 0..UP_LANES {
        let (ce, co) = (even[j], odd[j]);
        for l in 0..BLOCK {
            ae[l] = madd(ae[l], ce, x[j + l]);
            ao[l] = madd(ao[l], co, x[j + l]);
        }
    }
    for (pair, (e, o)) in out.chunks_exact_mut(2).zip(ae.iter().zip(&ao)) {
        pair[0] = *e;
        pair[1] = *o;
    }
}

/// Which way a [`Poly2x`] converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ratio {
    /// Twice as many samples out as in.
    Up,
    /// Half as many samples out as in.
    Down,
}

/// A streaming 2× up- or down-sampler. See the module docs.
pub(crate) struct Poly2x {
    ratio: Ratio,
    t: &'static Tables,
    /// The input history the filter still needs, followed by the current block.
    buf: Vec<f32>,
}

impl Poly2x {
    pub(crate) fn new(ratio: Ratio, band: Band) -> Self {
        let mut s = Self { ratio, t: tables(band), buf: Vec::with_capacity(DOWN_LANES + 1024) };
        s.reset();
        s
    }

    /// −6 dB point as a fraction of the lower rate's Nyquist frequency.
    pub(crate) fn cutoff(&self) -> f64 {
        self.t.cutoff
    }

    /// Filter delay in output samples.
    pub(crate) fn delay_samples(&self) -> usize {
        match self.ratio {
            Ratio::Up => DELAY,
            Ratio::Down => DELAY / 2,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        let history = match self.ratio {
            Ratio::Up => UP_LANES - 1,
            Ratio::Down => DOWN_LANES - 1,
        };
        self.buf.resize(history, 0.0);
    }

    /// Convert `input` (samples in [-1, 1]), appending to `out`.
    #[cfg(test)]
    pub(crate) fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.process_iter(input.iter().copied(), out);
    }

    /// Convert `input` (samples in [-1, 1]), appending to `out`. Samples go straight into the
    /// filter's history (no staging copy).
    pub(crate) fn process_iter(&mut self, input: impl IntoIterator<Item = f32>, out: &mut Vec<f32>) {
        let before = self.buf.len();
        self.buf.extend(input);
        let n = self.buf.len() - before;
        match self.ratio {
            Ratio::Up => {
                let start = out.len();
                out.resize(start + 2 * n, 0.0);
                let out = &mut out[start..];
                let [even, odd] = &self.t.up;
                let blocks = n / BLOCK;
                for (b, o) in out.chunks_exact_mut(2 * BLOCK).take(blocks).enumerate() {
                    up_block(&self.buf[b * BLOCK..], even, odd, o);
                }
                for k in blocks * BLOCK..n {
                    let w = &self.buf[k..k + UP_LANES];
                    out[2 * k] = dot(w, even);
                    out[2 * k + 1] = dot(w, odd);
                }
                self.buf.drain(..n);
            }
            Ratio::Down => {
                // Output m weighs inputs up to x[2m] (whole delays at both rates). After an odd
                // count the history is one short until the next sample arrives.
                let avail = (self.buf.len() + 1).saturating_sub(DOWN_LANES);
                let outputs = avail.div_ceil(2);
                out.reserve(outputs);
                for m in 0..outputs {
                    out.push(dot(&self.buf[2 * m..2 * m + DOWN_LANES], &self.t.down));
                }
                self.buf.drain(..2 * outputs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: f64, hz: f64, n: usize) -> Vec<f32> {
        (0..n).map(|i| (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / rate).sin()) as f32).collect()
    }

    /// Level of `x` at `hz` in dB relative to full scale (a full-scale sine is 0 dB).
    fn level_db(x: &[f32], rate: f64, hz: f64) -> f64 {
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (i, &v) in x.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * hz * i as f64 / rate;
            re += f64::from(v) * ph.cos();
            im += f64::from(v) * ph.sin();
        }
        let amp = 2.0 * (re * re + im * im).sqrt() / x.len() as f64;
        20.0 * amp.max(1e-12).log10()
    }

    fn upsample(hz: f64) -> Vec<f32> {
        let mut up = Poly2x::new(Ratio::Up, Band::Full);
        let mut out = Vec::new();
        for c in tone(8000.0, hz, 8000).chunks(160) {
            up.process(c, &mut out);
        }
        assert_eq!(out.len(), 16_000);
        out.split_off(800)
    }

    #[test]
    fn dc_gain_is_one_and_the_prototype_is_symmetric() {
        let h = prototype(CUTOFF);
        assert!((h.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for i in 0..LEN {
            assert!((h[i] - h[LEN - 1 - i]).abs() < 1e-12);
        }
        for ratio in [Ratio::Up, Ratio::Down] {
            let mut r = Poly2x::new(ratio, Band::Full);
            let mut out = Vec::new();
            r.process(&[0.25; 400], &mut out);
            let settled = &out[out.len() / 2..];
            assert!(settled.iter().all(|v| (v - 0.25).abs() < 1e-4), "{ratio:?}: {:?}", &settled[..8]);
        }
    }

    #[test]
    fn upsampling_keeps_the_telephone_band_and_images_nothing() {
        // Flat through the band that carries speech on a phone line…
        for hz in [300.0, 1000.0, 2000.0, 3000.0] {
            let out = upsample(hz);
            let (pass, image) = (level_db(&out, 16_000.0, hz), level_db(&out, 16_000.0, 8000.0 - hz));
            assert!((pass + 6.02).abs() < 0.2, "{hz} Hz passes at {pass:.2} dB");
            assert!(pass - image > 70.0, "{hz} Hz: image only {:.1} dB down", pass - image);
        }
        // …rolling off to the lower Nyquist frequency, with the image of what is left below it
        // at least 40 dB down even 100 Hz from 4 kHz.
        let out = upsample(3900.0);
        let (pass, image) = (level_db(&out, 16_000.0, 3900.0), level_db(&out, 16_000.0, 4100.0));
        assert!(image < -46.0 && image < pass, "3.9 kHz: pass {pass:.1} dB, image {image:.1} dB");
    }

    #[test]
    fn downsampling_rejects_what_would_alias() {
        // 6 kHz and 4.3 kHz at 16 kHz would fold to 2 kHz and 3.7 kHz at 8 kHz.
        let mut input = tone(16_000.0, 6000.0, 16_000);
        for ((x, y), z) in input.iter_mut().zip(tone(16_000.0, 1000.0, 16_000)).zip(tone(16_000.0, 4300.0, 16_000)) {
            *x += y + z;
        }
        let mut down = Poly2x::new(Ratio::Down, Band::Full);
        let mut out = Vec::new();
        for c in input.chunks(333) {
            down.process(c, &mut out);
        }
        assert_eq!(out.len(), 8000);
        let body = &out[400..];
        let kept = level_db(body, 8000.0, 1000.0);
        assert!((kept + 6.02).abs() < 0.2, "{kept:.2}");
        for alias_hz in [2000.0, 3700.0] {
            let alias = level_db(body, 8000.0, alias_hz);
            assert!(kept - alias > 60.0, "{alias_hz} Hz alias only {:.1} dB down", kept - alias);
        }
    }

    #[test]
    fn round_trip_lines_up_on_the_original_grid() {
        let input = tone(8000.0, 1000.0, 8000);
        let (mut up, mut down) = (Poly2x::new(Ratio::Up, Band::Full), Poly2x::new(Ratio::Down, Band::Full));
        let (mut mid, mut out) = (Vec::new(), Vec::new());
        for c in input.chunks(160) {
            up.process(c, &mut mid);
        }
        for c in mid.chunks(317) {
            down.process(c, &mut out);
        }
        assert_eq!(out.len(), input.len());
        let delay = up.delay_samples() / 2 + down.delay_samples();
        let (mut sig, mut err) = (0.0f64, 0.0f64);
        for i in 400..out.len() {
            let (x, y) = (f64::from(input[i - delay]), f64::from(out[i]));
            sig += x * x;
            err += (x - y) * (x - y);
        }
        let snr = 10.0 * (sig / err).log10();
        assert!(snr > 70.0, "round-trip SNR {snr:.1} dB");
    }
}
