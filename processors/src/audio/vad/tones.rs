//! Telephone tones, hold music and clicks are not speech: a cheap check beside the VAD model.
//!
//! Why it is needed: earshot scores speech-*likeness* from 40 log-mel bands, and a steady tone
//! (ringback 440+480 Hz, busy 480+620 Hz, dial 350+440 Hz, a DTMF pair, a held music note) or a
//! click lights some of them up enough to score above the hold threshold. Then a tone just before
//! a sentence becomes part of its onset (the soft run reaches back over it), a tone or click after
//! a sentence stretches its end, and a ringback cadence can start a segment of its own.
//!
//! What tells them apart, per 16 ms window, on the power spectrum the model already computed
//! (62.5 Hz–4 kHz, 256 bins of 15.6 Hz; no second FFT):
//!
//! - **Peakiness**: the share of the band's energy within ±3 bins of its two strongest peaks. A
//!   pair of sines (every call-progress tone and DTMF digit) puts ≥ 0.98 of its energy there;
//!   voiced speech spreads it over many harmonics and formants (measured on eight espeak-ng
//!   voices at 8 kHz μ-law: at most 0.90 in a single window, never two windows in a row ≥ 0.95).
//! - **Stationarity**: the share of the band's energy already present, bin by bin, 48 ms earlier
//!   (`Σ min(P_now, P_then) / Σ P_now`, three windows back so the two analysis windows share no
//!   samples). A tone or held note keeps it at ~1 for hundreds of ms (a decaying note too: the
//!   minimum is the newer, smaller value); speech formants and pitch move within ~50 ms (the same
//!   voices: never more than 4 windows in a row ≥ 0.85). White noise reads ~0.5.
//!
//! A window is **tonal** when the peakiness has been ≥ 0.92 for [`PEAK_WINDOWS`] windows in a row
//! or the stationarity ≥ 0.80 for [`STEADY_WINDOWS`] in a row, and stays tonal while either share
//! holds above a lower bar (0.80 / 0.70). The bars were 0.95 / 0.85 with no hold until the W6
//! corpus put the tones under 10–30 dB of line noise: a busy tone 10 dB above the noise reads
//! 0.94 peakiness and 0.88 (p10 0.81) stationarity, so its runs kept breaking and the model
//! heard it as speech (11 tone-started segments → 7, the rest hold music; speech onsets on the
//! corpus, the W2 call's 10/10 and the 50-trial barge-in timing unchanged). Runs, not single windows: one
//! tonal verdict inside a speech onset would reset it. The price is that a tone's first windows
//! (and a new music note's first ~10) are not yet known to be tonal; the segmenter covers them
//! by not letting a short run of speech windows resume a stopping segment (see `VadSegmenter`),
//! and `start_secs` (13 windows) is longer than the ~10 windows needed to see a note is steady.
//!
//! Clicks are judged in the time domain by [`ClickDetector`], for any analyser.
//!
//! Cost per scored window, no allocation, state 3 KiB per stream (three past spectra): one fused
//! 256-bin pass, eight lanes wide (energy, the minimum against the spectrum 48 ms back, the
//! strongest bin, and storing the spectrum in place of that old one). The peak search runs only
//! when fourteen times the strongest bin could reach the peak share (two peaks are at most 14
//! bins), so not on broadband windows: then a maximum over the bins outside the first peak and
//! two early-exit searches for where the maxima are (1 935 of W2's 3 485 scored windows).
//! Measured with callgrind on `bench w2`: ~670 instructions per scored window, 2.3 M in all; the
//! first version, three scalar `argmax` passes over iterator adapters, took ~11 k per window.
//! The click check adds ~190 per window (0.8 M over W2's 4 209 windows; was 3.2 M).
//!
//! Known limits: a tone much louder than speech over it (≥ 85% of the band's energy) hides the
//! speech while it lasts; steady music whose notes change faster than every ~160 ms, or with
//! vibrato, is not recognised as tonal (the model and `start_secs` are then the only guard).

/// First bin of the band looked at (62.5 Hz: below is hum and the DC of μ-law).
const LO: usize = 4;
/// Bins looked at: 62.5 Hz – 4.06 kHz, where every call-progress tone, DTMF digit and the
/// telephone band's speech lie. A multiple of 8 so the sums run eight lanes wide.
pub(super) const BINS: usize = 256;
/// Windows back the stationarity compares with: 3 × 16 ms = the 48 ms analysis window.
const LAG: usize = 3;
/// Share of the energy already there 48 ms ago for a window to count as steady.
const STEADY_SHARE: f32 = 0.80;
/// Steady windows in a row that make a tone (96 ms, ~150 ms of unchanged spectrum with the
/// lag): speech never stayed steady for more than 4 in the measurements of the module docs.
pub(super) const STEADY_WINDOWS: u32 = 6;
/// Share of the energy in the two strongest peaks for a window to count as a pure tone (pair).
const PEAK_SHARE: f32 = 0.92;
/// Once a tone is recognised, the shares that keep it going (hysteresis): line noise under a
/// tone lowers both a little, and one window below the entry thresholds would otherwise hand
/// the tone back to the model mid-tone (measured on the W6 corpus at 10–30 dB SNR: busy and
/// ringback windows dip to 0.93 peak share and 0.88 steadiness).
const PEAK_HOLD_SHARE: f32 = 0.80;
/// See [`PEAK_HOLD_SHARE`].
const STEADY_HOLD_SHARE: f32 = 0.70;
/// Peak windows in a row that make a tone (64 ms). Not fewer: a nasal onset ("m", "n") puts
/// nearly all its energy in its first two harmonics for a few windows, and judging those tonal
/// moved a barge-in's onset ~100 ms late (the 50-trial phone-bot test). A DTMF digit lasts
/// ≥ 40 ms by ITU-T Q.24 and 70–100 ms in practice; its first windows are covered like a tone's.
const PEAK_WINDOWS: u32 = 4;
/// Half-width of a peak: a 768-sample Hann main lobe is ±2.7 bins of the 1024-point FFT.
const PEAK_HALF_WIDTH: usize = 3;
/// Windows after a tone that bring nothing new are still the tone's (up to 128 ms):
/// earshot's score stays up for ~80 ms after a DTMF digit ends, from its context and memory.
const TAIL_WINDOWS: u32 = 8;
/// Share of the tone's band energy under which new energy still leaves its tail (−15 dB).
const TAIL_SHARE: f32 = 0.03;
/// Band energy (full scale² summed over bins) below which a window is not judged (silence: the
/// ratios mean nothing there, and the volume gate already keeps it out of speech).
const MIN_ENERGY: f32 = 1e-9;

/// The spectral half of the check: peakiness and stationarity runs over the model's spectrum.
pub(super) struct ToneDetector {
    /// The last `LAG` band spectra, a ring indexed by `next`.
    history: Box<[[f32; BINS]; LAG]>,
    next: usize,
    steady_run: u32,
    peak_run: u32,
    tonal: bool,
    /// Band energy of the last tonal window, and windows since it (see `TAIL_WINDOWS`).
    tone_energy: f32,
    tail: u32,
}

impl ToneDetector {
    pub(super) fn new() -> Self {
        Self {
            history: Box::new([[0.0; BINS]; LAG]),
            next: 0,
            steady_run: 0,
            peak_run: 0,
            tonal: false,
            tone_energy: 0.0,
            tail: TAIL_WINDOWS,
        }
    }

    /// Whether the last window pushed was tonal.
    pub(super) fn tonal(&self) -> bool {
        self.tonal
    }

    pub(super) fn reset(&mut self) {
        self.history.fill([0.0; BINS]);
        self.next = 0;
        self.steady_run = 0;
        self.peak_run = 0;
        self.tonal = false;
        self.tone_energy = 0.0;
        self.tail = TAIL_WINDOWS;
    }

    /// Judge one window from its power spectrum (bin 0 = DC, 15.6 Hz per bin, at least
    /// `LO + BINS` bins); returns whether it is tonal.
    ///
    /// Out of line on purpose: the model's feature code keeps the codegen it had before this
    /// check, and the check's cost stays on a line of its own in a profile.
    #[inline(never)]
    pub(super) fn push(&mut self, power: &[f32]) -> bool {
        let Some(band) = power.get(LO..LO + BINS).and_then(|b| <&[f32; BINS]>::try_from(b).ok()) else {
            return false;
        };
        let (total, kept, top) = self.compare_and_store(band);
        let judged = total >= MIN_ENERGY; // false for NaN too
        // Two peaks of at most 2·PEAK_HALF_WIDTH + 1 bins each hold at most 14 times the
        // strongest bin (15 leaves room for rounding): below the share, the search cannot change
        // the verdict and is skipped (broadband windows: noise, most of speech).
        // Inside a recognised tone (not its tail) the thresholds drop to the hold shares.
        let in_tone = self.tonal && self.tail == 0;
        let (peak_share, steady_share) =
            if in_tone { (PEAK_HOLD_SHARE, STEADY_HOLD_SHARE) } else { (PEAK_SHARE, STEADY_SHARE) };
        let peaky = judged
            && (2 * (2 * PEAK_HALF_WIDTH + 1) + 1) as f32 * top >= peak_share * total
            && two_peaks(band, top) >= peak_share * total;
        let new = total - kept;
        let steady = judged && kept >= steady_share * total;
        self.steady_run = if steady { self.steady_run + 1 } else { 0 };
        self.peak_run = if peaky { self.peak_run + 1 } else { 0 };
        if (in_tone && (peaky || steady)) || self.steady_run >= STEADY_WINDOWS || self.peak_run >= PEAK_WINDOWS {
            self.tonal = true;
            self.tone_energy = total;
            self.tail = 0;
        } else if self.tail < TAIL_WINDOWS && !(new >= TAIL_SHARE * self.tone_energy && new >= 0.5 * total) {
            // The tone just ended and nothing new came after it: what the model still hears
            // is the tone, in its 48 ms context and its recurrent memory. "New" is energy not
            // in the window 48 ms back, and it must be most of the window (the cut-off tone
            // itself splatters ~10% into new bins) and no more than 15 dB under the tone.
            // Speech after a tone is new; from there on the tail is over.
            self.tonal = true;
            self.tail += 1;
        } else {
            self.tonal = false;
            self.tail = TAIL_WINDOWS;
        }
        self.tonal
    }

    /// One pass over the band: its energy, the part of it already there `LAG` windows back
    /// (`Σ min(P_now, P_then)`), and its strongest bin's value; the band then replaces that old
    /// spectrum.
    ///
    /// Eight lanes of partial sums: the compiler keeps float sums in order, so a single running
    /// sum would be one add per bin on the critical path instead of one per eight. Minimum and
    /// maximum are selects so that each is one instruction (`f32::min`/`max` add a NaN fix-up;
    /// a NaN bin makes the total NaN and the window is not judged anyway).
    fn compare_and_store(&mut self, band: &[f32; BINS]) -> (f32, f32, f32) {
        let old = &mut self.history[self.next];
        self.next = (self.next + 1) % LAG;
        let (mut total, mut kept, mut top) = ([0.0f32; LANES], [0.0f32; LANES], [f32::NEG_INFINITY; LANES]);
        for (now, then) in band.chunks_exact(LANES).zip(old.chunks_exact_mut(LANES)) {
            for ((((t, k), m), &n), o) in total.iter_mut().zip(&mut kept).zip(&mut top).zip(now).zip(then) {
                *t += n;
                *k += if *o < n { *o } else { n };
                *m = greater(n, *m);
                *o = n;
            }
        }
        (total.iter().sum(), kept.iter().sum(), top.iter().fold(f32::NEG_INFINITY, |m, &p| greater(p, m)))
    }
}

/// Lanes the passes over the band are written for: eight f32, one AVX register.
const LANES: usize = 8;

/// `max` as a select (`vmaxps`): `b` unless `a` is larger, so a NaN `a` is ignored.
#[inline(always)]
fn greater(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// Energy within ±`PEAK_HALF_WIDTH` bins of the strongest bin (whose value `top` is), plus the
/// same around the strongest bin outside that first peak. Ties go to the lowest bin.
///
/// Maxima first (eight lanes, no index to carry), then the first bin equal to the maximum: a
/// search that stops early, at the low bins where tones and voices have their strongest peaks.
fn two_peaks(band: &[f32; BINS], top: f32) -> f32 {
    let Some(first) = first_equal(band, top) else {
        return 0.0; // only NaN bins (the window is not judged)
    };
    let around = |k: usize| (k.saturating_sub(PEAK_HALF_WIDTH), (k + PEAK_HALF_WIDTH + 1).min(BINS));
    let (lo, hi) = around(first);
    let (left, right) = (&band[..lo], &band[hi..]);
    let (top_left, top_right) = (strongest(left), strongest(right));
    let second =
        if top_left >= top_right { first_equal(left, top_left) } else { first_equal(right, top_right).map(|k| hi + k) };
    let mut sum: f32 = band[lo..hi].iter().sum();
    if let Some(second) = second {
        // Only the part of the second peak that does not overlap the first.
        let (a, b) = around(second);
        sum += band[a..b].iter().enumerate().filter(|&(i, _)| a + i < lo || a + i >= hi).map(|(_, p)| p).sum::<f32>();
    }
    sum
}

/// The largest value in `bins` (`-∞` when empty), eight lanes at a time.
fn strongest(bins: &[f32]) -> f32 {
    let chunks = bins.chunks_exact(LANES);
    let rest = chunks.remainder();
    let mut top = [f32::NEG_INFINITY; LANES];
    for chunk in chunks {
        for (m, &p) in top.iter_mut().zip(chunk) {
            *m = greater(p, *m);
        }
    }
    top.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &p| greater(p, m))
}

/// Index of the first bin equal to `value` (a maximum found before): eight compared at a time,
/// then the one within the chunk that has it.
fn first_equal(bins: &[f32], value: f32) -> Option<usize> {
    if value == f32::NEG_INFINITY {
        return None; // empty range (no power is −∞)
    }
    let chunks = bins.chunks_exact(LANES);
    let rest = chunks.remainder();
    let at = chunks.clone().position(|chunk| chunk.iter().fold(false, |hit, &p| hit | (p == value)));
    let (from, bins) = match at {
        Some(c) => (c * LANES, &bins[c * LANES..(c + 1) * LANES]),
        None => (bins.len() - rest.len(), rest),
    };
    bins.iter().position(|&p| p == value).map(|j| from + j)
}

/// Windows after an impulsive one during which quiet windows are still the click's: the model
/// sees the click for its 48 ms analysis context and its recurrent memory a little longer.
const CLICK_SHADOW: u32 = 5;
/// A click window is at least this much louder than the window before it (9 dB).
const CLICK_RISE: f32 = 8.0;
/// A click's energy sits within 4 ms of its window (two adjacent eighths of 2 ms at 16 kHz).
const CLICK_CONCENTRATION: f32 = 0.8;
/// After a click, windows below this share of its energy (−10 dB) are still its tail.
const CLICK_TAIL: f32 = 0.1;

/// The time-domain half: an energy burst shorter than ~30 ms is a click, not speech.
///
/// A window is *impulsive* when ≥ 80% of its energy lies within 4 ms and it is ≥ 9 dB louder
/// than the window before (a click out of a quieter background). It and up to
/// [`CLICK_SHADOW`] following windows that stay ≥ 10 dB below it are click windows. A plosive
/// at a speech onset can look the same for a window or two; the vowel after it is loud enough to
/// end the shadow, so an onset loses at most a few tens of ms.
#[derive(Debug, Clone, Default)]
pub(super) struct ClickDetector {
    previous: f32,
    burst: f32,
    since_burst: u32,
}

impl ClickDetector {
    pub(super) fn reset(&mut self) {
        *self = Self::default();
    }

    /// Judge one analysis window (any length; split into eight parts).
    pub(super) fn push(&mut self, window: &[i16]) -> bool {
        let eighths = eighths(window);
        let energy: f32 = eighths.iter().sum();
        let densest = eighths.windows(2).map(|w| w[0] + w[1]).fold(0.0f32, f32::max);
        let impulsive = energy > 0.0 && densest >= CLICK_CONCENTRATION * energy && energy >= CLICK_RISE * self.previous;
        self.previous = energy;
        if impulsive {
            self.burst = energy;
            self.since_burst = 0;
            true
        } else if self.since_burst < CLICK_SHADOW && energy < CLICK_TAIL * self.burst {
            self.since_burst += 1;
            true
        } else {
            self.since_burst = CLICK_SHADOW;
            false
        }
    }
}

/// Energy (sum of squares, exact) of each eighth of `window`.
fn eighths(window: &[i16]) -> [f32; 8] {
    match <&[i16; 8 * EARSHOT_EIGHTH]>::try_from(window) {
        Ok(window) => earshot_eighths(window),
        Err(_) => any_eighths(window),
    }
}

/// An eighth of earshot's 256-sample window (2 ms at 16 kHz).
const EARSHOT_EIGHTH: usize = 32;

/// [`any_eighths`] for earshot's window, ~3× fewer instructions (callgrind on W2: the click
/// check 3.2 M → 0.8 M): squares in pairs summed in u32 (at most 2 · 32 768² = 2³¹, so exact;
/// one `vpmaddwd` per sixteen samples), then each eighth's sixteen pairs summed in u64. The
/// general form widened every square to 64 bits and paid a loop set-up per eighth.
fn earshot_eighths(window: &[i16; 8 * EARSHOT_EIGHTH]) -> [f32; 8] {
    let square = |x: i16| (i32::from(x) * i32::from(x)) as u32;
    let mut pairs = [0u32; 4 * EARSHOT_EIGHTH];
    for (p, two) in pairs.iter_mut().zip(window.as_chunks::<2>().0) {
        *p = square(two[0]) + square(two[1]);
    }
    let mut eighths = [0.0f32; 8];
    for (e, part) in eighths.iter_mut().zip(pairs.as_chunks::<{ EARSHOT_EIGHTH / 2 }>().0) {
        *e = part.iter().map(|&p| u64::from(p)).sum::<u64>() as f32;
    }
    eighths
}

/// Any window length: i32 squares summed in i64 (32 768² × 512 fits easily).
fn any_eighths(window: &[i16]) -> [f32; 8] {
    let mut eighths = [0.0f32; 8];
    for (e, chunk) in eighths.iter_mut().zip(window.chunks((window.len() / 8).max(1))) {
        *e = chunk.iter().map(|&x| i64::from(i32::from(x) * i32::from(x))).sum::<i64>() as f32;
    }
    eighths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_pair_is_tonal_noise_is_not() {
        let mut tone = ToneDetector::new();
        let mut power = [0.0f32; 486];
        // Two Hann main lobes at 440 and 480 Hz (bins 28 and 31).
        for (k, w) in [(27, 0.5), (28, 1.0), (29, 0.5), (30, 0.5), (31, 1.0), (32, 0.5)] {
            power[k] = w;
        }
        // Tonal from the `PEAK_WINDOWS`-th window in a row on.
        let verdicts: Vec<bool> = (0..6).map(|_| tone.push(&power)).collect();
        assert_eq!(verdicts, [false, false, false, true, true, true]);
        tone.reset();
        let mut state = 1u32;
        let mut flat = [false; 20];
        for v in &mut flat {
            for p in power.iter_mut() {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *p = (state >> 8) as f32 / (1u32 << 24) as f32;
            }
            *v = tone.push(&power);
        }
        assert!(flat.iter().all(|&t| !t), "{flat:?}");
    }

    /// The peak search as first written (three scalar `argmax` passes), to pin the fast one to.
    fn two_peaks_reference(band: &[f32; BINS]) -> f32 {
        fn argmax(band: &[f32; BINS], from: usize, to: usize) -> usize {
            let (mut best, mut value) = (BINS, f32::NEG_INFINITY);
            for (i, &p) in band.iter().enumerate().take(to).skip(from) {
                if p > value {
                    (best, value) = (i, p);
                }
            }
            best
        }
        let first = argmax(band, 0, BINS);
        let (lo, hi) = (first.saturating_sub(PEAK_HALF_WIDTH), (first + PEAK_HALF_WIDTH + 1).min(BINS));
        let (left, right) = (argmax(band, 0, lo), argmax(band, hi, BINS));
        let value = |k: usize| band.get(k).copied().unwrap_or(0.0);
        let second = if value(left) >= value(right) { left } else { right };
        let around = |k: usize| (k.saturating_sub(PEAK_HALF_WIDTH), (k + PEAK_HALF_WIDTH + 1).min(BINS));
        let (a, b) = around(first);
        let mut sum: f32 = band[a..b].iter().sum();
        if second < BINS {
            let (a, b) = around(second);
            sum +=
                band[a..b].iter().enumerate().filter(|&(i, _)| a + i < lo || a + i >= hi).map(|(_, p)| p).sum::<f32>();
        }
        sum
    }

    #[test]
    fn the_peak_search_and_its_skip_match_the_scalar_search_bit_for_bit() {
        let mut state = 7u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32
        };
        for trial in 0..4000 {
            // Broadband, sparse (many equal zeros: ties), quantised (ties between peaks), and
            // peaks at both edges and in the chunk remainders left and right of the first.
            let mut band = [0.0f32; BINS];
            for p in band.iter_mut() {
                *p = match trial % 4 {
                    0 => next(),
                    1 => f32::from(u8::from(next() > 0.9)) * next(),
                    2 => (next() * 4.0).floor(),
                    _ => 0.0,
                };
            }
            for _ in 0..(trial % 3) {
                let k = (next() * BINS as f32) as usize % BINS;
                band[k] += 50.0;
            }
            if trial % 7 == 0 {
                band[trial % 2 * (BINS - 1)] = 100.0;
            }
            let top = band.iter().fold(f32::NEG_INFINITY, |m, &p| greater(p, m));
            let want = two_peaks_reference(&band);
            if top > 0.0 {
                assert_eq!(two_peaks(&band, top).to_bits(), want.to_bits(), "trial {trial}");
            }
            // The skip never hides a window that reaches the share.
            let total: f32 = band.iter().sum();
            if 15.0 * top < PEAK_SHARE * total {
                assert!(want < PEAK_SHARE * total, "trial {trial}");
            }
        }
    }

    #[test]
    fn earshot_window_energies_are_the_general_ones_bit_for_bit() {
        let mut state = 11u32;
        for trial in 0..200 {
            let window: [i16; 256] = std::array::from_fn(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                match trial % 3 {
                    0 => (state >> 16) as i16,
                    1 => [i16::MIN, i16::MAX, 0][(state >> 20) as usize % 3],
                    _ => (i as i16 - 128) * 37,
                }
            });
            let (fast, general) = (earshot_eighths(&window), any_eighths(&window));
            assert_eq!(fast.map(f32::to_bits), general.map(f32::to_bits), "trial {trial}");
        }
        assert_eq!(earshot_eighths(&[i16::MIN; 256]), [(32 * (1u64 << 30)) as f32; 8]);
    }

    #[test]
    fn a_click_and_its_tail_are_clicks_a_loud_window_after_is_not() {
        let mut c = ClickDetector::default();
        let quiet = [3i16; 256];
        let mut burst = quiet;
        burst[100..110].fill(20_000);
        let loud: Vec<i16> = (0..256).map(|i| if i % 2 == 0 { 9000 } else { -9000 }).collect();
        assert!(!c.push(&quiet));
        assert!(c.push(&burst));
        assert!(c.push(&quiet));
        assert!(!c.push(&loud));
        assert!(!c.push(&loud));
    }
}
