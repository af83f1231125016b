//! Voice activity detection: a model behind [`VadAnalyzer`], and the engine's start/stop state
//! machine ([`VadSegmenter`]) and processor ([`VadProcessor`]).
//!
//! The split follows Pipecat's: the model only scores windows; turning scores into "the user
//! started / stopped speaking" is the engine's job, with the same parameters and meaning
//! (`confidence`, `start_secs`, `stop_secs`, `min_volume`). A window counts as speech when the
//! model's probability ≥ `confidence` **and** the smoothed loudness ([`volume`]) ≥ `min_volume`.
//! States QUIET → STARTING → SPEAKING → STOPPING → QUIET; `start_secs` / `stop_secs` are
//! turned into counts of consecutive windows (rounded, at least one). A single non-speech window
//! while STARTING goes back to QUIET; a single speech window while STOPPING goes back to SPEAKING.
//!
//! One deliberate difference: **hysteresis on the model score**. Entering speech needs
//! probability ≥ `confidence`; once STARTING or SPEAKING, a window still counts as speech down to
//! `confidence − release_margin` (0.15, Silero's own `neg_threshold` convention). Without it the
//! score dipping to 0.6 for one 16 ms window at a plosive inside the first word resets the start
//! count, and a sentence beginning "Actually, ..." is detected 0.3 s late.
//!
//! The default model is earshot 1.2.2's network ([`EarshotVad`], with its features computed on
//! rustfft): pure Rust, 256-sample (16 ms) windows at 16 kHz, ~7 KiB of state per stream (3 KiB of
//! it the tone check's past spectra), no native or model-file dependency. The model is skipped on windows too quiet to count as speech (see
//! [`VadSegmenter`]), which on a quiet line is a fifth or more of them.
//!
//! **Tones, music and clicks are not speech** (`reject_tones`, on by default). Beside the model
//! score, every window gets a class from two cheap checks (details and measurements in
//! `tones.rs`): *tonal* (a pure tone pair, or a spectrum unchanged for ~160 ms: call-progress
//! tones, DTMF, held music notes; judged on the spectrum the model already computed) and *click*
//! (an energy burst shorter than ~30 ms and its tail; judged on the samples). A tonal window is
//! never speech and never part of an onset's reach-back, so it cannot start a segment, move its
//! onset back or keep it going; a click window is neutral (it neither counts as speech nor
//! breaks a start under way). The first windows of a tone or note are not yet known to be tonal,
//! so while STOPPING speech only resumes the segment once [`RESUME_WINDOWS`] windows of it have
//! come (224 ms, longer than a note takes to be seen steady); until then it is pending, and a
//! tonal or click window drops it (it was that sound's attack and does not stretch the end),
//! and 64 ms of silence after it keeps it (a short word after a pause stays in the segment, as
//! without the check); the segment does not stop while speech is pending. Speech over a tone is still found:
//! speech is broadband and moves within ~50 ms, so the mix is neither peaky nor steady.

mod model;
mod network;
mod processor;
mod tones;
pub mod volume;

pub use model::EarshotVad;
pub use processor::{VadProcessor, VadTransition};
pub use volume::VolumeMeter;

use tones::ClickDetector;

use std::time::Duration;

/// A speech-probability model: scores fixed-size windows of 16 kHz (by default) mono i16 audio.
pub trait VadAnalyzer: Send + 'static {
    /// Sample rate the model expects.
    fn sample_rate(&self) -> u32 {
        16_000
    }
    /// Samples per scored window.
    fn window_samples(&self) -> usize;
    /// Speech probability (0..1) of one window of exactly [`window_samples`](Self::window_samples).
    fn speech_probability(&mut self, window: &[i16]) -> f32;
    /// Whether the window just scored was a steady tone or music note rather than speech (see
    /// `reject_tones` in [`VadParams`]). An analyser without a spectrum to judge keeps the
    /// default, `false`: then only clicks are rejected.
    fn tonal(&self) -> bool {
        false
    }
    /// Forget all state (a new stream).
    fn reset(&mut self);
}

/// Decision parameters, Pipecat's names and defaults except `stop_secs` (see [`DEFAULT_STOP_SECS`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadParams {
    /// Minimum model probability for a window to count as speech.
    pub confidence: f32,
    /// Consecutive speech needed to declare the user started speaking.
    pub start_secs: f32,
    /// Consecutive non-speech needed to declare the user stopped speaking.
    pub stop_secs: f32,
    /// Minimum smoothed loudness (0..1, see [`volume`]) for a window to count as speech.
    pub min_volume: f32,
    /// How long the user must have been speaking (from the onset) before it interrupts a
    /// speaking bot: coughs, "uh-huh" and door slams stay below it.
    pub min_barge_in_secs: f32,
    /// How far below `confidence` the score may fall while speech is already under way.
    pub release_margin: f32,
    /// The model is not run on windows whose smoothed volume is below
    /// `min_volume − model_skip_margin` (its score could not count there: the rule needs
    /// volume ≥ `min_volume`). 1.0 runs the model on every window. See [`VadSegmenter`].
    pub model_skip_margin: f32,
    /// Reject telephone tones, DTMF, held music notes and clicks (see the module docs): they
    /// never start a segment, move its onset or stretch its end. `false` restores the plain
    /// model-and-volume rule.
    pub reject_tones: bool,
}

/// Default `confidence` (Pipecat's).
pub const DEFAULT_CONFIDENCE: f32 = 0.7;
/// Default `start_secs` (Pipecat's).
pub const DEFAULT_START_SECS: f32 = 0.2;
/// Default `stop_secs`: Pipecat's pre-1.0 value 0.8 would hide every pause shorter than 0.8 s
/// (two sentences 0.5 s apart become one turn); Pipecat 1.x uses 0.2 but relies on a separate
/// turn analyzer to avoid ending the turn at every comma. With no turn analyzer downstream, 0.5 s
/// ends a turn half a second after the user goes quiet (responsive) while riding over the
/// 150–400 ms pauses inside a sentence (commas, breaths, hesitations).
pub const DEFAULT_STOP_SECS: f32 = 0.5;
/// Default `min_volume` (Pipecat's).
pub const DEFAULT_MIN_VOLUME: f32 = 0.6;
/// Default `release_margin` (Silero's `threshold - 0.15`).
pub const DEFAULT_RELEASE_MARGIN: f32 = 0.1;
/// Default `min_barge_in_secs`.
pub const DEFAULT_MIN_BARGE_IN_SECS: f32 = 0.3;
/// Default `model_skip_margin`: 0.05 on the volume scale is 5 LU, so the model is skipped below
/// −55 LUFS (digital silence, room tone, a quiet line's noise floor) and runs live over the last
/// few LU under the gate, where rising speech is about to open it. Measured on the W2 call: the
/// margin hardly matters (0 → 785 of 3897 windows skipped, 0.1 → 729), because the replay already
/// shows the model the lead-in.
pub const DEFAULT_MODEL_SKIP_MARGIN: f32 = 0.05;
/// Skipped windows replayed into the model before it scores again (8 × 16 ms = 128 ms). A gap up
/// to this long is replayed in full, so the model's state is exactly the unskipped one. After a
/// longer gap the model continues from its state at the last window it saw (quiet audio: the
/// volume only falls under the gate 0.4 s after speech) and the replay refreshes its 48 ms
/// feature context and recurrent memory with the latest audio.
///
/// Why not reset the model after a long gap, as Pipecat resets Silero after quiet: measured on
/// the W2 call, earshot's zero state is far from its state on quiet audio, and a reset model
/// warmed up on even 32 windows (0.5 s) missed 4 of the 10 sentence onsets; without the reset all
/// 10 are found at any replay length from 3 to 32 windows.
const REPLAY_WINDOWS: usize = 8;
/// Speech windows (not necessarily in a row: speech has dips) that resume a STOPPING segment
/// when tones are rejected (224 ms).
/// A music note is known to be tonal after 9–10 windows (48–64 ms until the window it is
/// compared with holds it, then `tones::STEADY_WINDOWS`), so its attack can never resume a
/// segment, with 4 windows to spare (measured: sox plucked notes turn tonal at the 10th); a pure
/// tone pair is known after 2.
pub const RESUME_WINDOWS: u32 = 8 + tones::STEADY_WINDOWS;
/// Windows of silence after pending speech that settle it as speech (64 ms): a tone's attack
/// turns tonal (or its tail) without a silence in between, so speech that falls silent was not one.
const SETTLE_WINDOWS: u64 = 4;

impl Default for VadParams {
    fn default() -> Self {
        Self {
            confidence: DEFAULT_CONFIDENCE,
            start_secs: DEFAULT_START_SECS,
            stop_secs: DEFAULT_STOP_SECS,
            min_volume: DEFAULT_MIN_VOLUME,
            min_barge_in_secs: DEFAULT_MIN_BARGE_IN_SECS,
            release_margin: DEFAULT_RELEASE_MARGIN,
            model_skip_margin: DEFAULT_MODEL_SKIP_MARGIN,
            reject_tones: true,
        }
    }
}

impl VadParams {
    /// Check every field is finite and in range; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let unit = [
            ("confidence", self.confidence),
            ("min_volume", self.min_volume),
            ("release_margin", self.release_margin),
            ("model_skip_margin", self.model_skip_margin),
        ];
        for (name, v) in unit {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("vad.{name} must be within 0..=1, got {v}"));
            }
        }
        let secs = [
            ("start_secs", self.start_secs),
            ("stop_secs", self.stop_secs),
            ("min_barge_in_secs", self.min_barge_in_secs),
        ];
        for (name, v) in secs {
            if !v.is_finite() || !(0.0..=30.0).contains(&v) {
                return Err(format!("vad.{name} must be within 0..=30 seconds, got {v}"));
            }
        }
        Ok(())
    }
}

/// Where the state machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadState {
    /// No speech.
    Quiet,
    /// Speech heard, not yet long enough to count.
    Starting,
    /// The user is speaking.
    Speaking,
    /// Silence heard during speech, not yet long enough to count.
    Stopping,
}

/// A confirmed change of the user's speaking state, from [`VadSegmenter::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadChange {
    /// The user started speaking; `onset` is the estimated start of the speech.
    Started {
        /// Stream time at which this speech began (the first window of the run of windows above
        /// the hold threshold that led into it).
        onset: Duration,
    },
    /// The user stopped speaking; `offset` is the stream time the last speech window ended.
    Stopped {
        /// Stream time at which the last speech window ended.
        offset: Duration,
    },
}

/// The engine's VAD state machine over any [`VadAnalyzer`]: feed samples, get confirmed changes.
///
/// **Model skipping.** The loudness meter runs first (cheap); when the smoothed volume is below
/// `min_volume − model_skip_margin` the model is not run: its score cannot make the window speech
/// (the rule needs volume ≥ `min_volume`), and the model is ~90% of the VAD's cost. Skipped
/// windows are kept (the last 128 ms) and replayed into the model before it scores again, so
/// after a short gap its state is exactly the unskipped one, and after a long gap it is its last
/// quiet-audio state refreshed with the latest audio. A skipped window reports probability 0.
pub struct VadSegmenter {
    analyzer: Box<dyn VadAnalyzer>,
    params: VadParams,
    window: Vec<i16>,
    meter: VolumeMeter,
    state: VadState,
    run: u32,
    start_windows: u32,
    stop_windows: u32,
    windows_done: u64,
    onset_window: u64,
    entry_window: u64,
    /// First window of the current run of windows above the hold threshold (see `push`).
    soft_run_start: Option<u64>,
    last_speech_window: u64,
    last_probability: f32,
    /// Volume below which the model is skipped.
    skip_below: f32,
    /// Windows skipped since the model last ran.
    skipped: u64,
    /// The last skipped windows, `REPLAY_WINDOWS` slots of one window each (a ring).
    replay: Vec<i16>,
    replay_next: usize,
    model_runs: u64,
    model_skips: u64,
    clicks: ClickDetector,
    /// Speech windows seen while STOPPING, not yet enough to resume (see `analyse_window`),
    /// and the last of them.
    pending: u32,
    pending_last: u64,
    /// Windows a run of speech needs to resume a STOPPING segment (1 without tone rejection).
    resume_windows: u32,
}

impl std::fmt::Debug for VadSegmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VadSegmenter").finish_non_exhaustive()
    }
}

/// What one window is, for the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowClass {
    Speech,
    /// Not speech: too quiet or a low score.
    Silence,
    /// A steady tone or note (never speech).
    Tone,
    /// Part of a click (neutral: neither speech nor a break in it).
    Click,
}

impl VadSegmenter {
    /// A segmenter over `analyzer` with `params` (validated).
    pub fn new(analyzer: Box<dyn VadAnalyzer>, params: VadParams) -> Result<Self, String> {
        params.validate()?;
        Ok(Self::build(analyzer, params))
    }

    fn build(analyzer: Box<dyn VadAnalyzer>, params: VadParams) -> Self {
        let n = analyzer.window_samples().max(1);
        let rate = analyzer.sample_rate().max(1);
        let win_secs = n as f32 / rate as f32;
        let count = |secs: f32| ((secs / win_secs).round() as u32).max(1);
        Self {
            meter: VolumeMeter::new(rate, n),
            window: Vec::with_capacity(n),
            start_windows: count(params.start_secs),
            stop_windows: count(params.stop_secs),
            analyzer,
            params,
            state: VadState::Quiet,
            run: 0,
            windows_done: 0,
            onset_window: 0,
            entry_window: 0,
            soft_run_start: None,
            last_speech_window: 0,
            last_probability: 0.0,
            skip_below: params.min_volume - params.model_skip_margin,
            skipped: 0,
            replay: vec![0; n * REPLAY_WINDOWS],
            replay_next: 0,
            model_runs: 0,
            model_skips: 0,
            clicks: ClickDetector::default(),
            pending: 0,
            pending_last: 0,
            resume_windows: if params.reject_tones { RESUME_WINDOWS } else { 1 },
        }
    }

    /// How many windows the model scored (replays included) and how many it skipped, since
    /// construction: the skip ratio is the saving on this stream.
    #[must_use]
    pub fn model_stats(&self) -> (u64, u64) {
        (self.model_runs, self.model_skips)
    }

    /// The parameters in use.
    #[must_use]
    pub fn params(&self) -> &VadParams {
        &self.params
    }

    /// Current state.
    #[must_use]
    pub fn state(&self) -> VadState {
        self.state
    }

    /// The analyser's sample rate.
    #[must_use]
    pub fn sample_rate(&self) -> u32 {
        self.analyzer.sample_rate()
    }

    /// The start confirmation delay actually applied (whole windows).
    #[must_use]
    pub fn start_delay(&self) -> Duration {
        self.windows_to_time(u64::from(self.start_windows))
    }

    /// The stop confirmation delay actually applied (whole windows).
    #[must_use]
    pub fn stop_delay(&self) -> Duration {
        self.windows_to_time(u64::from(self.stop_windows))
    }

    /// Audio analysed so far.
    #[must_use]
    pub fn position(&self) -> Duration {
        self.windows_to_time(self.windows_done)
    }

    /// How long the current speech has lasted since its onset (zero when quiet).
    #[must_use]
    pub fn speaking_for(&self) -> Duration {
        match self.state {
            VadState::Quiet => Duration::ZERO,
            _ => self.windows_to_time(self.windows_done.saturating_sub(self.entry_window)),
        }
    }

    /// The last window's model probability and smoothed volume, for diagnostics.
    #[must_use]
    pub fn last_scores(&self) -> (f32, f32) {
        (self.last_probability, self.meter.volume())
    }

    fn windows_to_time(&self, w: u64) -> Duration {
        let n = self.analyzer.window_samples() as u64;
        Duration::from_nanos(w * n * 1_000_000_000 / u64::from(self.analyzer.sample_rate().max(1)))
    }

    /// Forget everything (a new stream).
    pub fn reset(&mut self) {
        self.analyzer.reset();
        self.meter.reset();
        self.window.clear();
        self.state = VadState::Quiet;
        self.run = 0;
        self.windows_done = 0;
        self.skipped = 0;
        self.soft_run_start = None;
        self.last_probability = 0.0;
        self.clicks.reset();
        self.pending = 0;
    }

    /// Feed samples at the analyser's rate; `on_change` is called for each confirmed change.
    pub fn push(&mut self, samples: &[i16], mut on_change: impl FnMut(VadChange)) {
        let n = self.analyzer.window_samples().max(1);
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (n - self.window.len()).min(rest.len());
            self.window.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.window.len() == n {
                if let Some(change) = self.analyse_window() {
                    on_change(change);
                }
                self.window.clear();
            }
        }
    }

    /// Score the current window, or skip the model when the window is too quiet to matter;
    /// returns the score and whether the model ran.
    fn score_window(&mut self, volume: f32) -> (f32, bool) {
        let n = self.window.len();
        if volume < self.skip_below {
            // Keep the window for a replay when the model resumes.
            let slot = self.replay_next * n;
            self.replay[slot..slot + n].copy_from_slice(&self.window);
            self.replay_next = (self.replay_next + 1) % REPLAY_WINDOWS;
            self.skipped += 1;
            self.model_skips += 1;
            return (0.0, false);
        }
        if self.skipped > 0 {
            let m = self.skipped.min(REPLAY_WINDOWS as u64) as usize;
            for i in 0..m {
                let slot = (self.replay_next + REPLAY_WINDOWS - m + i) % REPLAY_WINDOWS * n;
                self.analyzer.speech_probability(&self.replay[slot..slot + n]);
            }
            self.model_runs += m as u64;
            self.skipped = 0;
        }
        self.model_runs += 1;
        (self.analyzer.speech_probability(&self.window), true)
    }

    fn analyse_window(&mut self) -> Option<VadChange> {
        let volume = self.meter.push(&self.window);
        let reject = self.params.reject_tones;
        let click = reject && self.clicks.push(&self.window);
        let (p, ran) = self.score_window(volume);
        // A skipped window scored 0: its (stale) tonal verdict cannot matter.
        let tonal = reject && ran && self.analyzer.tonal();
        self.last_probability = p;
        let threshold = match self.state {
            VadState::Quiet => self.params.confidence,
            _ => self.params.confidence - self.params.release_margin,
        };
        let loud = volume >= self.params.min_volume;
        let class = if tonal {
            WindowClass::Tone
        } else if click {
            WindowClass::Click
        } else if p >= threshold && loud {
            WindowClass::Speech
        } else {
            WindowClass::Silence
        };
        let w = self.windows_done;
        self.windows_done += 1;
        // The reported onset reaches back over the windows just before the entry that already
        // scored above the hold threshold: breathy onsets ("h", "f") score 0.4-0.7 for ~100 ms
        // before the vowel. Only the reported boundary moves; detection and barge-in do not.
        // A tone breaks the run (a tone just before a sentence is not its onset); a click leaves
        // it as it is (a plosive's burst can look like one).
        let soft = p >= self.params.confidence - self.params.release_margin && loud;
        match class {
            WindowClass::Click => {}
            WindowClass::Tone => self.soft_run_start = None,
            WindowClass::Speech | WindowClass::Silence if soft => {
                self.soft_run_start.get_or_insert(w);
            }
            WindowClass::Speech | WindowClass::Silence => self.soft_run_start = None,
        }
        let mut change = None;
        match (self.state, class) {
            (VadState::Quiet, WindowClass::Speech) => {
                self.state = VadState::Starting;
                self.run = 1;
                self.entry_window = w;
                self.last_speech_window = w;
                self.onset_window = self.soft_run_start.unwrap_or(w);
            }
            (VadState::Starting, WindowClass::Speech) => {
                self.run += 1;
                self.last_speech_window = w;
            }
            (VadState::Starting, WindowClass::Silence | WindowClass::Tone) => {
                self.state = VadState::Quiet;
                self.run = 0;
            }
            (VadState::Speaking, WindowClass::Speech) => self.last_speech_window = w,
            (VadState::Speaking, WindowClass::Silence | WindowClass::Tone) => {
                self.state = VadState::Stopping;
                self.run = 1;
                self.pending = 0;
            }
            (VadState::Stopping, WindowClass::Speech) => {
                // Speech resumes the segment once there is enough of it not to be a tone's or
                // note's attack (those turn tonal within `RESUME_WINDOWS`); until then it is
                // pending and the stop timer keeps running.
                self.pending += 1;
                self.pending_last = w;
                self.run += 1;
                if self.pending >= self.resume_windows {
                    self.state = VadState::Speaking;
                    self.run = 0;
                    self.pending = 0;
                    self.last_speech_window = w;
                }
            }
            (VadState::Stopping, WindowClass::Silence) => {
                self.run += 1;
                if self.pending > 0 && w - self.pending_last >= SETTLE_WINDOWS {
                    // Speech that ended in silence, not in a tone or click (a short word after a
                    // pause): it belongs to the segment, which now ends a stop delay after it,
                    // as without the check.
                    self.last_speech_window = self.pending_last;
                    self.run = u32::try_from(w - self.pending_last).unwrap_or(u32::MAX);
                    self.pending = 0;
                }
            }
            (VadState::Stopping, WindowClass::Tone | WindowClass::Click) => {
                // What looked like speech was the attack of this tone or click.
                self.pending = 0;
                self.run += 1;
            }
            (VadState::Quiet, _) | (VadState::Starting | VadState::Speaking, WindowClass::Click) => {}
        }
        if self.state == VadState::Starting && self.run >= self.start_windows {
            self.state = VadState::Speaking;
            self.run = 0;
            change = Some(VadChange::Started { onset: self.windows_to_time(self.onset_window) });
        } else if self.state == VadState::Stopping && self.pending == 0 && self.run >= self.stop_windows {
            // Not while speech is pending: it is settled (kept, dropped or resuming) first.
            self.state = VadState::Quiet;
            self.run = 0;
            change = Some(VadChange::Stopped { offset: self.windows_to_time(self.last_speech_window + 1) });
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert!(VadParams::default().validate().is_ok());
        let bad = VadParams { confidence: f32::NAN, ..VadParams::default() };
        assert!(matches!(bad.validate(), Err(m) if m.contains("confidence")));
        let bad = VadParams { model_skip_margin: 2.0, ..VadParams::default() };
        assert!(matches!(bad.validate(), Err(m) if m.contains("model_skip_margin")));
    }

    /// Counts calls and records every window the model sees, to check skipping and replay.
    struct Probe(std::sync::Arc<std::sync::Mutex<Vec<i16>>>);
    impl VadAnalyzer for Probe {
        fn window_samples(&self) -> usize {
            256
        }
        fn speech_probability(&mut self, window: &[i16]) -> f32 {
            // Tag = first sample, so the test can read the order the windows were seen in.
            self.0.lock().map(|mut v| v.push(window[0])).ok();
            1.0
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn quiet_windows_skip_the_model_and_are_replayed_in_order() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut seg = VadSegmenter::new(Box::new(Probe(seen.clone())), VadParams::default()).unwrap();
        // 20 near-silent windows (tag = index + 1, far below the gate), then loud ones.
        for i in 0..20i16 {
            let mut w = [0i16; 256];
            w[0] = i + 1;
            seg.push(&w, |_| {});
        }
        assert_eq!(seg.model_stats(), (0, 20));
        let loud: Vec<i16> = (0..256).map(|i| if i % 2 == 0 { 8000 } else { -8000 }).collect();
        seg.push(&loud, |_| {});
        let seen = seen.lock().unwrap().clone();
        // The last 8 skipped windows, oldest first, then the live one.
        assert_eq!(seen, vec![13, 14, 15, 16, 17, 18, 19, 20, 8000]);
        assert_eq!(seg.model_stats(), (9, 20));
        // A margin of 1 disables skipping.
        let all = VadParams { model_skip_margin: 1.0, ..VadParams::default() };
        let count = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut seg = VadSegmenter::new(Box::new(Probe(count)), all).unwrap();
        seg.push(&[0i16; 2560], |_| {});
        assert_eq!(seg.model_stats(), (10, 0));
    }
}
