//! [`TurnDetector`]: the end-of-turn decision that sits behind a VAD.
//!
//! The VAD answers "is the caller making sound?"; this answers "has the caller finished?". At
//! each VAD stop (a short one, ~200 ms) the detector sends the turn's audio so far (up to the
//! last 8 s, with a little audio from before the first onset) to a [`TurnModel`] and waits for
//! its verdict without blocking the audio path:
//! - probability above the threshold → the turn is complete;
//! - below → the caller is probably thinking: keep listening. Speech resuming continues the same
//!   turn (and the next stop asks again with the longer audio); `fallback` of silence after the
//!   stop ends the turn anyway, so a caller the model misjudges is answered late, never ignored;
//! - the model failing (queue full, worker gone, inference error) → complete at once: an
//!   answer a little early beats a caller left waiting.
//!
//! This is Pipecat's `BaseSmartTurn` semantics (stop_secs fallback, pre-speech padding, 8 s
//! window) with one difference that matters on a phone: the verdict is polled, never awaited, so
//! caller audio keeps flowing through the VAD while the model runs on its worker thread.
//!
//! The detector is clock-agnostic: callers pass "now" as a `Duration` on their own clock (the
//! VAD processor passes wall time since it started; the W6 benchmark passes stream time), which
//! keeps it deterministic under test.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{COMPLETE_THRESHOLD, TurnError};

/// Sample rate of the audio a [`TurnModel`] takes.
pub const TURN_SAMPLE_RATE: u32 = 16_000;
/// Default silence after a VAD stop that ends the turn whatever the model said.
pub const DEFAULT_FALLBACK: Duration = Duration::from_secs(2);
/// Default audio kept from before the turn's first onset (the VAD confirms speech late).
pub const DEFAULT_PRE_SPEECH: Duration = Duration::from_millis(500);
/// Default (and the smart-turn model's) window: the last 8 s of the turn.
pub const DEFAULT_MAX_AUDIO: Duration = Duration::from_secs(8);

/// The answer to one [`TurnModel::submit`]: the probability that the turn is complete.
pub type TurnAnswer = oneshot::Receiver<Result<f32, TurnError>>;

/// An end-of-turn model that answers asynchronously (e.g. a shared inference worker).
pub trait TurnModel: Send + Sync + 'static {
    /// Queue an inference on `audio_16k` (16 kHz mono, −1..1, oldest first) without waiting.
    /// Dropping the returned receiver tells the model nobody wants the answer.
    fn submit(&self, audio_16k: Vec<f32>) -> Result<TurnAnswer, TurnError>;
}

/// A model shared by many calls' detectors (one worker pool per process).
impl<T: TurnModel + ?Sized> TurnModel for std::sync::Arc<T> {
    fn submit(&self, audio_16k: Vec<f32>) -> Result<TurnAnswer, TurnError> {
        (**self).submit(audio_16k)
    }
}

/// Settings of a [`TurnDetector`].
#[derive(Debug, Clone, PartialEq)]
pub struct TurnParams {
    /// Probability above which the turn is complete (Pipecat's 0.5).
    pub threshold: f32,
    /// Silence after a VAD stop that ends the turn even when the model said "incomplete".
    pub fallback: Duration,
    /// Audio kept from before the turn's first onset.
    pub pre_speech: Duration,
    /// Most recent audio sent to the model.
    pub max_audio: Duration,
}

impl Default for TurnParams {
    fn default() -> Self {
        Self {
            threshold: COMPLETE_THRESHOLD,
            fallback: DEFAULT_FALLBACK,
            pre_speech: DEFAULT_PRE_SPEECH,
            max_audio: DEFAULT_MAX_AUDIO,
        }
    }
}

impl TurnParams {
    /// Check the bounds; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(format!("turn threshold must be in (0, 1), got {}", self.threshold));
        }
        if self.fallback < Duration::from_millis(100) || self.fallback > Duration::from_secs(10) {
            return Err(format!("turn fallback must be 100 ms..10 s, got {:?}", self.fallback));
        }
        if self.pre_speech > Duration::from_secs(2) {
            return Err(format!("turn pre_speech must be at most 2 s, got {:?}", self.pre_speech));
        }
        if self.max_audio < Duration::from_secs(1) || self.max_audio > Duration::from_secs(16) {
            return Err(format!("turn max_audio must be 1..16 s, got {:?}", self.max_audio));
        }
        Ok(())
    }
}

/// How a turn was judged complete.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TurnEnd {
    /// The model's probability was above the threshold.
    Model {
        /// The probability.
        probability: f32,
    },
    /// The model said incomplete (or had not answered) and `fallback` of silence passed.
    Fallback,
    /// The model could not answer; the turn ends at once rather than leaving the caller waiting.
    ModelFailed,
}

/// One model verdict, reported for metrics and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inference {
    /// When the audio was submitted (on the caller's clock).
    pub submitted: Duration,
    /// When the answer was taken (on the caller's clock).
    pub answered: Duration,
    /// The probability, `None` when the model failed.
    pub probability: Option<f32>,
}

enum Waiting {
    /// Not waiting: in speech, or no turn open.
    No,
    /// The model has the audio; its answer is pending.
    Answer { rx: TurnAnswer, submitted: Duration, deadline: Duration },
    /// The model said "incomplete": waiting for speech or the fallback.
    Silence { deadline: Duration },
}

/// The end-of-turn state machine. See the module docs.
pub struct TurnDetector {
    model: Box<dyn TurnModel>,
    params: TurnParams,
    audio: VecDeque<f32>,
    pre_cap: usize,
    max_cap: usize,
    in_turn: bool,
    waiting: Waiting,
    last_inference: Option<Inference>,
}

impl std::fmt::Debug for TurnDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnDetector")
            .field("params", &self.params)
            .field("in_turn", &self.in_turn)
            .field("buffered", &self.audio.len())
            .finish_non_exhaustive()
    }
}

fn samples(d: Duration) -> usize {
    (d.as_secs_f64() * f64::from(TURN_SAMPLE_RATE)).round() as usize
}

impl TurnDetector {
    /// A detector asking `model`; `params` are validated (the error names the field).
    pub fn new(model: Box<dyn TurnModel>, params: TurnParams) -> Result<Self, String> {
        params.validate()?;
        let pre_cap = samples(params.pre_speech);
        let max_cap = samples(params.max_audio);
        Ok(Self {
            model,
            params,
            // Grown on demand: a call holds the 8 s window (512 KB) only while a long turn
            // is open, not for its whole life.
            audio: VecDeque::with_capacity(pre_cap),
            pre_cap,
            max_cap,
            in_turn: false,
            waiting: Waiting::No,
            last_inference: None,
        })
    }

    /// The settings.
    #[must_use]
    pub fn params(&self) -> &TurnParams {
        &self.params
    }

    /// Whether a turn is open (speech heard and not yet judged complete).
    #[must_use]
    pub fn in_turn(&self) -> bool {
        self.in_turn
    }

    /// Whether a verdict or the fallback is awaited (the caller should poll).
    #[must_use]
    pub fn waiting(&self) -> bool {
        !matches!(self.waiting, Waiting::No)
    }

    /// The most recent model answer (taken by the caller for metrics).
    pub fn take_inference(&mut self) -> Option<Inference> {
        self.last_inference.take()
    }

    /// Append caller audio (16 kHz). Outside a turn only the last `pre_speech` is kept.
    pub fn push_audio(&mut self, samples_16k: &[f32]) {
        let cap = if self.in_turn { self.max_cap } else { self.pre_cap };
        if samples_16k.len() >= cap {
            self.audio.clear();
            self.audio.extend(&samples_16k[samples_16k.len() - cap..]);
            return;
        }
        let excess = (self.audio.len() + samples_16k.len()).saturating_sub(cap);
        self.audio.drain(..excess.min(self.audio.len()));
        self.audio.extend(samples_16k);
    }

    /// The VAD confirmed speech: open a turn, or continue the open one (an outstanding verdict
    /// is dropped: the caller went on, so its question is moot).
    pub fn on_speech_started(&mut self) {
        self.in_turn = true;
        self.waiting = Waiting::No;
    }

    /// The VAD confirmed silence at `now`: ask the model about the turn so far.
    /// Returns `Some` when the turn ends at once (the model could not be asked).
    pub fn on_speech_stopped(&mut self, now: Duration) -> Option<TurnEnd> {
        if !self.in_turn {
            return None;
        }
        let deadline = now + self.params.fallback;
        let audio: Vec<f32> = self.audio.iter().copied().collect();
        match self.model.submit(audio) {
            Ok(rx) => {
                self.waiting = Waiting::Answer { rx, submitted: now, deadline };
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "end-of-turn model unavailable; ending the turn at the VAD stop");
                self.last_inference = Some(Inference { submitted: now, answered: now, probability: None });
                Some(self.end(TurnEnd::ModelFailed))
            }
        }
    }

    /// Check for the model's answer and the fallback; `Some` when the turn just ended.
    pub fn poll(&mut self, now: Duration) -> Option<TurnEnd> {
        match &mut self.waiting {
            Waiting::No => None,
            Waiting::Answer { rx, submitted, deadline } => {
                let (submitted, deadline) = (*submitted, *deadline);
                match rx.try_recv() {
                    Ok(Ok(p)) => {
                        self.last_inference = Some(Inference { submitted, answered: now, probability: Some(p) });
                        if p > self.params.threshold {
                            Some(self.end(TurnEnd::Model { probability: p }))
                        } else if now >= deadline {
                            Some(self.end(TurnEnd::Fallback))
                        } else {
                            self.waiting = Waiting::Silence { deadline };
                            None
                        }
                    }
                    Err(oneshot::error::TryRecvError::Empty) if now >= deadline => Some(self.end(TurnEnd::Fallback)),
                    Err(oneshot::error::TryRecvError::Empty) => None,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "end-of-turn inference failed; ending the turn");
                        self.last_inference = Some(Inference { submitted, answered: now, probability: None });
                        Some(self.end(TurnEnd::ModelFailed))
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {
                        tracing::warn!("end-of-turn model dropped the request; ending the turn");
                        self.last_inference = Some(Inference { submitted, answered: now, probability: None });
                        Some(self.end(TurnEnd::ModelFailed))
                    }
                }
            }
            Waiting::Silence { deadline } => (now >= *deadline).then(|| self.end(TurnEnd::Fallback)),
        }
    }

    /// When the caller should poll next at the latest (the fallback deadline), if waiting.
    #[must_use]
    pub fn deadline(&self) -> Option<Duration> {
        match &self.waiting {
            Waiting::No => None,
            Waiting::Answer { deadline, .. } | Waiting::Silence { deadline } => Some(*deadline),
        }
    }

    /// Forget the open turn (barge-in handled elsewhere, call reset).
    pub fn reset(&mut self) {
        self.in_turn = false;
        self.waiting = Waiting::No;
        self.audio.clear();
    }

    fn end(&mut self, how: TurnEnd) -> TurnEnd {
        self.in_turn = false;
        self.waiting = Waiting::No;
        // The next turn starts from a fresh pre-speech window; the turn's memory is returned.
        let keep = self.audio.len().min(self.pre_cap);
        self.audio.drain(..self.audio.len() - keep);
        self.audio.shrink_to(self.pre_cap);
        how
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Reply = oneshot::Sender<Result<f32, TurnError>>;

    /// A model whose answers the test hands out: `submit` records the audio length and parks
    /// the reply sender for the test to answer.
    #[derive(Clone, Default)]
    struct Manual {
        sent: Arc<Mutex<Vec<(usize, Reply)>>>,
        fail: bool,
    }

    impl TurnModel for Manual {
        fn submit(&self, audio_16k: Vec<f32>) -> Result<TurnAnswer, TurnError> {
            if self.fail {
                return Err(TurnError::WorkerGone);
            }
            let (tx, rx) = oneshot::channel();
            self.sent.lock().unwrap().push((audio_16k.len(), tx));
            Ok(rx)
        }
    }

    impl Manual {
        fn answer(&self, p: f32) -> usize {
            let (len, tx) = self.sent.lock().unwrap().remove(0);
            let _ = tx.send(Ok(p));
            len
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn detector(model: &Manual) -> TurnDetector {
        TurnDetector::new(Box::new(model.clone()), TurnParams::default()).unwrap()
    }

    #[test]
    fn complete_verdict_ends_the_turn_when_polled() {
        let m = Manual::default();
        let mut d = detector(&m);
        d.push_audio(&[0.0; 16_000]); // 1 s before speech: only 0.5 s kept
        d.on_speech_started();
        d.push_audio(&[0.1; 32_000]);
        assert_eq!(d.on_speech_stopped(ms(2000)), None);
        assert_eq!(d.poll(ms(2010)), None, "no answer yet");
        assert_eq!(m.answer(0.9), 8_000 + 32_000, "pre-speech + turn audio sent");
        assert_eq!(d.poll(ms(2040)), Some(TurnEnd::Model { probability: 0.9 }));
        assert!(!d.in_turn());
        let inf = d.take_inference().unwrap();
        assert_eq!((inf.submitted, inf.answered), (ms(2000), ms(2040)));
    }

    #[test]
    fn incomplete_waits_for_speech_and_asks_again_with_the_longer_turn() {
        let m = Manual::default();
        let mut d = detector(&m);
        d.on_speech_started();
        d.push_audio(&[0.1; 16_000]);
        d.on_speech_stopped(ms(1000));
        m.answer(0.2);
        assert_eq!(d.poll(ms(1050)), None);
        assert!(d.waiting());
        d.push_audio(&[0.0; 8_000]);
        assert_eq!(d.poll(ms(1500)), None);
        d.on_speech_started();
        assert!(!d.waiting(), "speech resumed: the turn goes on");
        d.push_audio(&[0.1; 16_000]);
        d.on_speech_stopped(ms(3000));
        assert_eq!(m.answer(0.8), 40_000, "the whole turn so far, pause included");
        assert_eq!(d.poll(ms(3030)), Some(TurnEnd::Model { probability: 0.8 }));
    }

    #[test]
    fn incomplete_ends_by_fallback_after_silence() {
        let m = Manual::default();
        let mut d = detector(&m);
        d.on_speech_started();
        d.on_speech_stopped(ms(1000));
        m.answer(0.1);
        assert_eq!(d.poll(ms(1040)), None);
        assert_eq!(d.deadline(), Some(ms(3000)));
        assert_eq!(d.poll(ms(2999)), None);
        assert_eq!(d.poll(ms(3000)), Some(TurnEnd::Fallback));
    }

    #[test]
    fn a_late_answer_past_the_fallback_ends_the_turn() {
        let m = Manual::default();
        let mut d = detector(&m);
        d.on_speech_started();
        d.on_speech_stopped(ms(0));
        assert_eq!(d.poll(ms(2500)), Some(TurnEnd::Fallback), "model too slow: fallback");
    }

    #[test]
    fn a_failing_model_ends_the_turn_at_once() {
        let m = Manual { fail: true, ..Manual::default() };
        let mut d = detector(&m);
        d.on_speech_started();
        assert_eq!(d.on_speech_stopped(ms(500)), Some(TurnEnd::ModelFailed));
        let m = Manual::default();
        let mut d = detector(&m);
        d.on_speech_started();
        d.on_speech_stopped(ms(500));
        m.sent.lock().unwrap().clear(); // the worker dropped the request
        assert_eq!(d.poll(ms(510)), Some(TurnEnd::ModelFailed));
    }

    #[test]
    fn window_is_bounded_to_max_audio() {
        let m = Manual::default();
        let mut d = detector(&m);
        d.on_speech_started();
        for _ in 0..20 {
            d.push_audio(&[0.1; 16_000]);
        }
        d.on_speech_stopped(ms(20_000));
        assert_eq!(m.answer(0.9), 128_000);
    }

    #[test]
    fn stop_without_a_turn_is_ignored_and_bad_params_are_named() {
        let m = Manual::default();
        let mut d = detector(&m);
        assert_eq!(d.on_speech_stopped(ms(10)), None);
        assert!(!d.waiting());
        let bad = TurnParams { threshold: 1.5, ..TurnParams::default() };
        assert!(TurnDetector::new(Box::new(m), bad).unwrap_err().contains("threshold"));
    }
}
