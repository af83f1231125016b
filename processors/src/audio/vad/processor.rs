//! [`VadProcessor`]: user speaking events and barge-in from caller audio.
//!
//! Consumes PCM16 mono `InputAudio` at 16 kHz, or at 8 kHz (telephone audio): then it upsamples
//! internally, for analysis only, with [`StreamResampler::for_analysis`] (2.5 ms delay, band kept
//! below 2.6 kHz, which keeps μ-law's quantisation noise under loud tones from reading as speech;
//! earshot is trained on 16 kHz, and a 8 kHz stream's empty upper band does not hurt it, see
//! `rust-ecosystem.md` §3.3). Any other format is refused with `NotNegotiated` naming the two
//! accepted ones. Audio passes through unchanged, before or after a decision, so STT downstream
//! loses nothing.
//!
//! Produces `Event::UserStartedSpeaking` / `UserStoppedSpeaking`, `Event::EndOfTurn`, and `Event::Interrupt` when the
//! bot is speaking (tracked from `BotStartedSpeaking` / `BotStoppedSpeaking`), the stream allows
//! interruptions (`StartInfo::allow_interruptions`) and the user's speech has lasted
//! `min_barge_in_secs` since its onset — once per user turn.
//!
//! # End of turn
//! Without an end-of-turn model, every stop is the end of the turn: `EndOfTurn` follows
//! `UserStoppedSpeaking` at once. With one ([`VadProcessor::with_turn_detector`]), the stop sends
//! the turn's audio (16 kHz, full telephone band: a second, full-band upsampler, since the
//! analysis one keeps only the band below 2.6 kHz) to the model and `EndOfTurn` follows its
//! "complete" verdict or the detector's fallback silence. The verdict is polled on every input
//! frame and on a 5 ms engine timer while one is pending — never awaited — so caller audio and
//! barge-in never wait for an inference.
//!
//! Trade-off: decisions are taken per 16 ms analysis window but emitted while processing the
//! input frame that completed the window, so an event is at most one input frame late.

use std::sync::Arc;
use std::time::Duration;

use voxline_pipeline::{Context, Direction, Event, FlowError, FlowResult, Frame, Processor};

use super::{EarshotVad, VadAnalyzer, VadChange, VadParams, VadSegmenter, VadState};
use crate::audio::pcm::{self, AudioCounters};
use crate::audio::resample::StreamResampler;
use crate::audio::turn::{TURN_SAMPLE_RATE, TurnDetector, TurnEnd};

/// How often a pending end-of-turn verdict is polled when no input frame comes to poll it.
const TURN_POLL: Duration = Duration::from_millis(5);

/// The end-of-turn model's side of the VAD: its detector and its own full-band 16 kHz audio.
struct TurnHook {
    detector: TurnDetector,
    upsampler: Option<StreamResampler>,
    scratch: Vec<f32>,
    origin: tokio::time::Instant,
}

impl TurnHook {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn push(&mut self, audio: &[u8], rate: u32) -> FlowResult {
        self.scratch.clear();
        if rate == TURN_SAMPLE_RATE {
            self.scratch.extend(pcm::pcm16_samples(audio).map(|s| f32::from(s) * (1.0 / 32768.0)));
        } else {
            if self.upsampler.as_ref().is_none_or(|u| u.in_rate() != rate) {
                self.upsampler =
                    Some(StreamResampler::new(rate, TURN_SAMPLE_RATE).map_err(|e| FlowError::fatal(e.to_string()))?);
            }
            if let Some(up) = self.upsampler.as_mut() {
                let scratch = &mut self.scratch;
                up.push(pcm::pcm16_samples(audio), |chunk| scratch.extend_from_slice(chunk))?;
            }
        }
        self.detector.push_audio(&self.scratch);
        Ok(())
    }
}

/// A confirmed change, as reported to [`VadProcessor::on_transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VadTransition {
    /// `true` for "started speaking", `false` for "stopped".
    pub speaking: bool,
    /// Estimated speech boundary in stream time (onset for a start, end of speech for a stop).
    pub boundary: Duration,
    /// Stream time analysed when the decision was taken (boundary + confirmation delay).
    pub decided_at: Duration,
    /// `pts` of the input frame whose processing produced the change.
    pub frame_pts: Option<Duration>,
}

type TransitionFn = Box<dyn FnMut(&VadTransition) + Send>;

/// Voice activity detection processor. See the module docs.
pub struct VadProcessor {
    seg: VadSegmenter,
    upsampler: Option<StreamResampler>,
    samples: Vec<i16>,
    bot_speaking: bool,
    barged_in: bool,
    min_barge_in: Duration,
    on_transition: Option<TransitionFn>,
    counters: Arc<AudioCounters>,
    turn: Option<TurnHook>,
    tentative_barge_in: bool,
}

impl std::fmt::Debug for VadProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VadProcessor").finish_non_exhaustive()
    }
}

impl VadProcessor {
    /// The default VAD: earshot with [`VadParams::default`].
    #[must_use]
    pub fn new() -> Self {
        // The defaults are constants inside every bound (a unit test pins it): no validation.
        Self::build(VadSegmenter::build(Box::new(EarshotVad::new()), VadParams::default()))
    }

    /// Earshot with custom parameters (validated; the error names the field).
    pub fn with_params(params: VadParams) -> Result<Self, FlowError> {
        Self::with_analyzer(Box::new(EarshotVad::new()), params)
    }

    /// Any analyser with custom parameters.
    pub fn with_analyzer(analyzer: Box<dyn VadAnalyzer>, params: VadParams) -> Result<Self, FlowError> {
        Ok(Self::build(VadSegmenter::new(analyzer, params).map_err(FlowError::fatal)?))
    }

    fn build(seg: VadSegmenter) -> Self {
        let min_barge_in = Duration::from_secs_f32(seg.params().min_barge_in_secs);
        Self {
            seg,
            upsampler: None,
            samples: Vec::with_capacity(640),
            bot_speaking: false,
            barged_in: false,
            min_barge_in,
            on_transition: None,
            counters: Arc::default(),
            turn: None,
            tentative_barge_in: false,
        }
    }

    /// Barge in tentatively: at `min_barge_in_secs` emit `Event::InterruptPending` (the output
    /// goes silent and keeps its place) instead of interrupting, and leave the confirmation
    /// (`Interrupt`) or withdrawal (`InterruptWithdrawn`) to a stage that knows the words — the
    /// user aggregator with `UserAggregatorSettings::false_interruption_timeout` set. A cough or
    /// an "mm-hmm" then costs the caller a short gap instead of the bot's answer.
    #[must_use]
    pub fn with_tentative_barge_in(mut self, on: bool) -> Self {
        self.tentative_barge_in = on;
        self
    }

    /// Put an end-of-turn model behind the VAD (see the module docs, "End of turn"). Pair it
    /// with a short `stop_secs` (~0.2 s): the model, not the silence, decides the turn.
    #[must_use]
    pub fn with_turn_detector(mut self, detector: TurnDetector) -> Self {
        self.turn = Some(TurnHook {
            detector,
            upsampler: None,
            scratch: Vec::with_capacity(640),
            origin: tokio::time::Instant::now(),
        });
        self
    }

    /// Check a pending end-of-turn verdict; emit `EndOfTurn` when the turn just ended, keep
    /// polling while one is awaited.
    fn poll_turn(&mut self, cx: &mut Context) {
        let Some(hook) = self.turn.as_mut() else { return };
        if !hook.detector.waiting() {
            return;
        }
        let now = hook.now();
        if let Some(end) = hook.detector.poll(now) {
            Self::turn_ended(end, cx);
        } else {
            cx.wake_at(tokio::time::Instant::now() + TURN_POLL);
        }
    }

    fn turn_ended(end: TurnEnd, cx: &mut Context) {
        tracing::debug!(?end, "end of turn");
        cx.emit(Event::EndOfTurn);
    }

    /// Call `f` for every confirmed change (for logs, metrics, benchmarks), in stream order.
    #[must_use]
    pub fn on_transition(mut self, f: impl FnMut(&VadTransition) + Send + 'static) -> Self {
        self.on_transition = Some(Box::new(f));
        self
    }

    /// The start confirmation delay actually applied.
    #[must_use]
    pub fn start_delay(&self) -> Duration {
        self.seg.start_delay()
    }

    /// The stop confirmation delay actually applied.
    #[must_use]
    pub fn stop_delay(&self) -> Duration {
        self.seg.stop_delay()
    }

    /// Current state.
    #[must_use]
    pub fn state(&self) -> VadState {
        self.seg.state()
    }

    /// Shared counters.
    #[must_use]
    pub fn counters(&self) -> Arc<AudioCounters> {
        self.counters.clone()
    }

    /// Analyse one payload; returns the confirmed changes through `on_change`.
    fn analyse(&mut self, audio: &voxline_pipeline::AudioFrame, cx: &mut Context) -> FlowResult {
        let want = self.seg.sample_rate();
        let fmt = audio.format;
        let rate_ok = fmt.sample_rate == want || (fmt.sample_rate == 8000 && want == 16_000);
        if pcm::expect_pcm16_mono("vad", &fmt, None).is_err() || !rate_ok {
            let expected = format!("Pcm16 {want} Hz x1 or Pcm16 8000 Hz x1");
            return Err(pcm::not_negotiated("vad", expected, &fmt));
        }
        pcm::check_whole_samples("vad", audio.data.len(), 2)?;
        self.samples.clear();
        if fmt.sample_rate == want {
            self.samples.extend(pcm::pcm16_samples(&audio.data));
        } else {
            if self.upsampler.as_ref().is_none_or(|u| u.in_rate() != fmt.sample_rate) {
                self.upsampler = Some(
                    StreamResampler::for_analysis(fmt.sample_rate, want)
                        .map_err(|e| FlowError::fatal(e.to_string()))?,
                );
            }
            if let Some(up) = self.upsampler.as_mut() {
                let samples = &mut self.samples;
                up.push(pcm::pcm16_samples(&audio.data), |chunk| {
                    samples.extend(chunk.iter().map(|&x| pcm::f32_to_i16(x)))
                })?;
            }
        }
        if let Some(hook) = self.turn.as_mut() {
            hook.push(&audio.data, fmt.sample_rate)?;
        }
        let mut changes: [Option<VadChange>; 4] = [None; 4];
        let mut n = 0;
        self.seg.push(&self.samples, |c| {
            // A 20 ms frame spans at most two windows; the array bounds what one call can report.
            if n < changes.len() {
                changes[n] = Some(c);
                n += 1;
            }
        });
        let decided_at = self.seg.position();
        for change in changes.into_iter().flatten() {
            let (speaking, boundary) = match change {
                VadChange::Started { onset } => (true, onset),
                VadChange::Stopped { offset } => (false, offset),
            };
            if speaking {
                tracing::debug!(onset_ms = boundary.as_millis() as u64, "user started speaking");
                cx.emit(Event::UserStartedSpeaking);
                if let Some(hook) = self.turn.as_mut() {
                    hook.detector.on_speech_started();
                }
            } else {
                tracing::debug!(offset_ms = boundary.as_millis() as u64, "user stopped speaking");
                self.barged_in = false;
                cx.emit(Event::UserStoppedSpeaking);
                match self.turn.as_mut() {
                    None => cx.emit(Event::EndOfTurn),
                    Some(hook) => {
                        let now = hook.now();
                        if let Some(end) = hook.detector.on_speech_stopped(now) {
                            Self::turn_ended(end, cx);
                        }
                    }
                }
            }
            if let Some(f) = self.on_transition.as_mut() {
                f(&VadTransition { speaking, boundary, decided_at, frame_pts: audio.pts });
            }
        }
        self.maybe_barge_in(cx);
        self.poll_turn(cx);
        Ok(())
    }

    fn inspect(&mut self, frame: &Frame, cx: &mut Context) -> FlowResult {
        if let Frame::InputAudio(audio) = frame {
            if audio.data.is_empty() {
                self.counters.empty();
            } else {
                let r = self.analyse(audio, cx);
                pcm::counted(&self.counters, r)?;
                self.counters.frame();
            }
        }
        Ok(())
    }

    fn maybe_barge_in(&mut self, cx: &mut Context) {
        let speaking = matches!(self.seg.state(), VadState::Speaking | VadState::Stopping);
        if !speaking || !self.bot_speaking || self.barged_in || self.seg.speaking_for() < self.min_barge_in {
            return;
        }
        let allowed = cx.start_info().is_none_or(|s| s.allow_interruptions);
        if allowed {
            tracing::debug!(speaking_ms = self.seg.speaking_for().as_millis() as u64, "barge-in");
            self.barged_in = true;
            if self.tentative_barge_in {
                cx.emit(Event::InterruptPending);
            } else {
                cx.interrupt();
            }
        }
    }
}

impl Default for VadProcessor {
    fn default() -> Self {
        Self::new()
    }
}

impl Processor for VadProcessor {
    fn name(&self) -> &str {
        "vad"
    }

    /// Analysis is synchronous and every frame is forwarded as is (1:1): the fast path always
    /// handles the frame.
    fn process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        self.inspect(&frame, cx)?;
        cx.push_now(frame, direction);
        Ok(None)
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        self.inspect(&frame, cx)?;
        cx.push(frame, direction).await;
        Ok(())
    }

    async fn on_timer(&mut self, cx: &mut Context) -> FlowResult {
        self.poll_turn(cx);
        Ok(())
    }

    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        match event {
            Event::BotStartedSpeaking => self.bot_speaking = true,
            Event::BotStoppedSpeaking => self.bot_speaking = false,
            _ => {}
        }
        Ok(())
    }
}
