//! [`UserAggregator`]: turns transcripts and VAD events into user turns and `LlmRun`s.
//!
//! Consumes `Transcript` frames (downstream; interim and final), `UserStartedSpeaking` /
//! `UserStoppedSpeaking` / `EndOfTurn` (VAD and its end-of-turn model) and `BotStartedSpeaking`
//! / `BotStoppedSpeaking` events. Produces
//! `LlmRun(snapshot)` downstream once per user turn, after appending the user message to the
//! shared [`ConversationContext`]. Other frames are forwarded; transcripts are consumed.
//!
//! # When a turn ends
//! No fixed grace window: every millisecond here is a millisecond the caller waits. Once the VAD
//! says the turn is over (`EndOfTurn`: a short stop judged complete by the end-of-turn model, or
//! the stop itself without one) the turn is committed **as soon as all of it is final text that
//! reads as complete**; a stop alone (`UserStoppedSpeaking`) only starts the clocks below, since
//! the model may yet say the caller is thinking:
//! - a final transcript is in and no newer interim hypothesis is pending → commit now (the STT
//!   is asked to finalize at the VAD stop, so its final trails the stop by ~100 ms);
//! - an interim is pending → wait for its final (it is on its way), committing it the moment it
//!   arrives; after [`DEFAULT_FINAL_TRANSCRIPT_TIMEOUT`] without one, the interim text is used,
//!   so a stalled STT never leaves the caller unanswered;
//! - the text reads as unfinished (it ends on a filler, a conjunction, an article, a
//!   preposition or a comma: "my order number is… uh…") → wait up to
//!   [`DEFAULT_INCOMPLETE_TIMEOUT`] for the caller to go on; speech resuming cancels the commit.
//!   This is a cheap textual guard against cutting in on a thinking caller, complementary to an
//!   acoustic end-of-turn model.
//!
//! Without a VAD (text clients) a final transcript ends the turn by the same rules.
//! # False interruptions
//! With `false_interruption_timeout` set (and the VAD barging in tentatively, see
//! `VadProcessor::with_tentative_barge_in`), a barge-in is only a pause until words confirm it:
//! on `InterruptPending` the output goes silent; the first transcript that is more than a
//! backchannel ("mm-hmm", "yeah", "okay", "right"…, [`is_backchannel`]) confirms it with
//! `Interrupt`; no words within the timeout after the caller stops, or only a backchannel,
//! withdraws it (`InterruptWithdrawn`): the bot resumes where the caller stopped hearing it, and
//! the backchannel is not taken as a turn.
//!
//! # Speculation
//! With `speculative` set, the LLM is asked before the turn is confirmed: as soon as the caller
//! has paused (`UserStoppedSpeaking`) and the turn's text is all final and reads complete, an
//! `LlmRun` goes out with that text (the context itself is not touched) after
//! `Event::Speculation(Started)`, and a [`SpeculationGate`](super::SpeculationGate) after the LLM
//! holds its output. `EndOfTurn` with the same text confirms it (the user message is recorded,
//! the gate releases the response); speech resuming cancels it (`Cancelled`, then an `Interrupt`
//! that aborts the request). The LLM's time to first token then overlaps the end-of-turn model's
//! inference and fallback. Counted in [`SpeculationStats`].
//!
//! The waits run on the engine's timer ([`Context::wake_at`]), so the commit is pushed from the
//! aggregator's own call in the current epoch: nothing to refresh after an interruption.
//! Optionally (`interrupt_on_transcript`) a transcript heard while the bot speaks emits
//! `Interrupt`, for setups where the VAD does not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use voxline_pipeline::{Context, Direction, Event, FlowResult, Frame, Processor, Speculation};

use super::context::ConversationContext;

/// Default wait for any final transcript after the VAD stopped, before using interim text.
pub const DEFAULT_FINAL_TRANSCRIPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Default wait for the caller to go on when the turn's text reads as unfinished.
pub const DEFAULT_INCOMPLETE_TIMEOUT: Duration = Duration::from_millis(900);
/// A sensible `false_interruption_timeout`: after the caller stops, how long a pending barge-in
/// waits for words before the bot resumes (an STT final trails the speech by ~0.1–0.5 s).
pub const DEFAULT_FALSE_INTERRUPTION_TIMEOUT: Duration = Duration::from_millis(1000);

/// Words a caller says to show they are listening, not to take the turn.
const BACKCHANNEL_WORDS: &[&str] = &[
    "ah", "aha", "alright", "got", "huh", "i", "it", "mhm", "mm", "mm-hmm", "mmhmm", "mmm", "ok", "okay", "right",
    "see", "sure", "uh", "uh-huh", "uhhuh", "um", "yeah", "yep", "yes", "yup",
];

/// Whether `text` is only a backchannel ("mm-hmm", "yeah, okay", "right", "I see", "got it").
#[must_use]
pub fn is_backchannel(text: &str) -> bool {
    let mut any = false;
    for w in text.split_whitespace() {
        let w: String = w.chars().filter(|c| c.is_alphanumeric() || *c == '-').collect::<String>().to_lowercase();
        if w.is_empty() {
            continue;
        }
        if BACKCHANNEL_WORDS.binary_search(&w.as_str()).is_err() {
            return false;
        }
        any = true;
    }
    any
}

/// Settings of a [`UserAggregator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAggregatorSettings {
    /// Wait for a final after the VAD stopped while an interim is pending (or nothing is final)
    /// before falling back to interim text.
    pub final_transcript_timeout: Duration,
    /// Wait for more speech when the final text reads as unfinished (see the module docs).
    /// `Duration::ZERO` turns the textual check off.
    pub incomplete_timeout: Duration,
    /// Emit `Interrupt` when a transcript arrives while the bot is speaking (if the stream allows
    /// interruptions).
    pub interrupt_on_transcript: bool,
    /// Confirm or withdraw tentative barge-ins (`InterruptPending`, see the module docs): after
    /// the caller stops, wait this long for words before resuming the bot. `Duration::ZERO`
    /// (the default) leaves barge-in to the VAD alone.
    pub false_interruption_timeout: Duration,
    /// Ask the LLM at the pause, before the turn is confirmed (see the module docs; needs a
    /// [`SpeculationGate`](super::SpeculationGate) right after the LLM).
    pub speculative: bool,
}

impl Default for UserAggregatorSettings {
    fn default() -> Self {
        Self {
            final_transcript_timeout: DEFAULT_FINAL_TRANSCRIPT_TIMEOUT,
            incomplete_timeout: DEFAULT_INCOMPLETE_TIMEOUT,
            interrupt_on_transcript: false,
            false_interruption_timeout: Duration::ZERO,
            speculative: false,
        }
    }
}

/// Words a complete sentence rarely ends on: fillers, conjunctions (subordinating ones too:
/// "the problem started when…"), articles, prepositions, copulas and possessives. A turn ending on one is probably a caller thinking mid-sentence.
const CONTINUATION_WORDS: &[&str] = &[
    "a", "about", "although", "an", "and", "are", "as", "at", "because", "but", "by", "er", "erm", "for", "from",
    "hmm", "if", "in", "into", "is", "like", "my", "of", "on", "or", "our", "so", "than", "that", "the", "then", "to",
    "uh", "um", "umm", "unless", "until", "was", "were", "when", "whether", "which", "while", "with", "your",
];

/// Whether `text` reads as an unfinished sentence: it ends on a word that needs more after it
/// (a conjunction, preposition, article, filler or subordinating conjunction: "my order is
/// for the…", "the problem started when…").
#[must_use]
pub fn reads_unfinished(text: &str) -> bool {
    let t = text.trim_end();
    if t.ends_with(',') || t.ends_with("...") || t.ends_with('…') || t.ends_with('-') {
        return true;
    }
    let Some(last) = t.split_whitespace().next_back() else { return false };
    let word: String = last.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>().to_lowercase();
    CONTINUATION_WORDS.binary_search(&word.as_str()).is_ok()
}

/// Speculative LLM requests of one aggregator: started, used (confirmed), cancelled.
#[derive(Debug, Default)]
pub struct SpeculationStats {
    /// Requests sent before the turn was confirmed.
    pub started: AtomicU64,
    /// Speculations the end of turn confirmed: their response was the answer.
    pub used: AtomicU64,
    /// Speculations dropped because the caller went on (or was interrupted).
    pub cancelled: AtomicU64,
}

impl SpeculationStats {
    /// `(started, used, cancelled)`.
    #[must_use]
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.started.load(Ordering::Relaxed),
            self.used.load(Ordering::Relaxed),
            self.cancelled.load(Ordering::Relaxed),
        )
    }
}

/// What the aggregator's engine timer is armed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Commit the turn; `true` uses interim text too (a stalled STT).
    Commit(bool),
    /// Withdraw a pending barge-in no words confirmed.
    Withdraw,
    /// Push the run of a turn committed in the call that also interrupted (see `interrupted_now`).
    Deferred,
}

/// Aggregates a user turn. See the module docs.
#[derive(Debug)]
pub struct UserAggregator {
    settings: UserAggregatorSettings,
    ctx: ConversationContext,
    finals: Vec<String>,
    interim: Option<String>,
    user_speaking: bool,
    /// Speech started and its `EndOfTurn` has not come yet: nothing may be committed.
    awaiting_end: bool,
    /// When the VAD last said the caller stopped (the turn is waiting to be committed).
    stopped_at: Option<Instant>,
    /// What the armed timer does.
    armed: Option<Timer>,
    /// A tentative barge-in awaits its confirmation or withdrawal.
    barge_pending: bool,
    /// This call emitted `Interrupt`: the bot's record is cut to its heard words only when the
    /// runner delivers it, after this call, so a run committed now is sent from the next timer
    /// call with a snapshot taken then (`Timer::Deferred`).
    interrupted_now: bool,
    /// The text of the speculative request in flight, if any.
    speculation: Option<String>,
    stats: Arc<SpeculationStats>,

    bot_speaking: bool,
}

impl UserAggregator {
    /// An aggregator writing user turns into `ctx`.
    #[must_use]
    pub fn new(ctx: ConversationContext, settings: UserAggregatorSettings) -> Self {
        Self {
            settings,
            ctx,
            finals: Vec::new(),
            interim: None,
            user_speaking: false,
            awaiting_end: false,
            stopped_at: None,
            armed: None,
            barge_pending: false,
            interrupted_now: false,
            speculation: None,
            stats: Arc::default(),
            bot_speaking: false,
        }
    }

    /// The shared context.
    #[must_use]
    pub fn context(&self) -> &ConversationContext {
        &self.ctx
    }

    /// Counters of speculative requests (shared; read them while the pipeline runs).
    #[must_use]
    pub fn speculation_stats(&self) -> Arc<SpeculationStats> {
        self.stats.clone()
    }

    /// Ask the LLM now if the caller has paused and the text so far is final and complete.
    fn maybe_speculate(&mut self) -> Option<Frame> {
        let ready = self.settings.speculative
            && self.awaiting_end
            && !self.user_speaking
            && self.stopped_at.is_some()
            && !self.barge_pending
            && !self.bot_speaking
            && self.speculation.is_none()
            && self.interim.is_none()
            && self.finals.last().is_some_and(|t| !reads_unfinished(t));
        if !ready {
            return None;
        }
        let text = self.finals.join(" ");
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        tracing::debug!(chars = text.len(), "speculative LLM request");
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        let run = Frame::LlmRun(self.ctx.snapshot_with_user(text));
        self.speculation = Some(text.to_string());
        Some(run)
    }

    /// The caller went on (or the text changed): drop the speculation and abort its request.
    fn cancel_speculation(&mut self, cx: &mut Context) {
        if self.speculation.take().is_some() {
            tracing::debug!("speculation cancelled");
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            cx.emit(Event::Speculation(Speculation::Cancelled));
            self.interrupted_now = true;
            cx.interrupt();
        }
    }

    fn arm(&mut self, at: Instant, use_interim: bool, cx: &mut Context) {
        self.armed = Some(Timer::Commit(use_interim));
        cx.wake_at(at);
    }

    /// The pending barge-in was a cough or a backchannel: resume the bot, forget the sound.
    fn withdraw(&mut self, cx: &mut Context) {
        tracing::debug!("false interruption: the bot resumes");
        self.barge_pending = false;
        self.disarm(cx);
        self.finals.clear();
        self.interim = None;
        self.stopped_at = None;
        cx.emit(Event::InterruptWithdrawn);
    }

    /// Words while a barge-in is pending: a backchannel keeps it pending, anything else confirms.
    fn confirm_if_words(&mut self, text: &str, cx: &mut Context) {
        if self.barge_pending && !is_backchannel(text) {
            tracing::debug!("barge-in confirmed by words");
            self.barge_pending = false;
            self.disarm(cx);
            self.interrupted_now = true;
            cx.interrupt();
        }
    }

    /// A pending barge-in whose caller has stopped and whose text is all in and only a
    /// backchannel needs no more waiting.
    fn only_backchannel_heard(&self) -> bool {
        self.interim.is_none() && !self.finals.is_empty() && self.finals.iter().all(|t| is_backchannel(t))
    }

    fn disarm(&mut self, cx: &mut Context) {
        // A deferred run is already committed: it goes out whatever the caller does next.
        if self.armed == Some(Timer::Deferred) {
            return;
        }
        if self.armed.take().is_some() {
            cx.cancel_wake();
        }
    }

    /// Decide, now that the caller is silent, whether to commit the turn or wait (and how long).
    /// Returns the `LlmRun` to push when the turn is committed.
    fn evaluate(&mut self, cx: &mut Context) -> Option<Frame> {
        if self.user_speaking || self.awaiting_end {
            return None;
        }
        if self.barge_pending {
            // Nothing is committed until words confirm the barge-in (or it is withdrawn).
            if self.only_backchannel_heard() {
                self.withdraw(cx);
            }
            return None;
        }
        if self.finals.is_empty() && self.interim.is_none() {
            // Nothing recognised yet: after a VAD stop a final may still come; wait for it.
            if let Some(since) = self.stopped_at {
                self.arm(since + self.settings.final_transcript_timeout, true, cx);
            }
            return None;
        }
        let since = *self.stopped_at.get_or_insert_with(Instant::now);
        if self.finals.is_empty() || self.interim.is_some() {
            // The final for the latest words is on its way: commit when it arrives.
            self.arm(since + self.settings.final_transcript_timeout, true, cx);
            return None;
        }
        // How the turn ends is how its last final ends: no need to join the text to judge it.
        let unfinished = self.finals.last().is_some_and(|t| reads_unfinished(t));
        if !self.settings.incomplete_timeout.is_zero() && unfinished {
            let at = since + self.settings.incomplete_timeout;
            if Instant::now() < at {
                self.arm(at, false, cx);
                return None;
            }
        }
        self.commit(false, cx)
    }

    fn commit(&mut self, use_interim: bool, cx: &mut Context) -> Option<Frame> {
        self.disarm(cx);
        self.stopped_at = None;
        let mut text = self.finals.join(" ");
        if use_interim && let Some(i) = self.interim.take() {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&i);
        }
        self.finals.clear();
        self.interim = None;
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        tracing::debug!(chars = text.len(), "user turn committed");
        self.ctx.add_user_text(text);
        Some(Frame::LlmRun(self.ctx.snapshot()))
    }

    fn on_transcript(&mut self, t: &voxline_pipeline::Transcript, cx: &mut Context) -> Option<Frame> {
        let text = t.text.trim();
        if text.is_empty() {
            if t.is_final {
                // An empty final (e.g. the answer to a Finalize with nothing pending) settles
                // the pending interim as nothing more.
                self.interim = None;
                if self.stopped_at.is_some() {
                    return self.evaluate(cx);
                }
            }
            return None;
        }
        self.confirm_if_words(text, cx);
        if self.settings.interrupt_on_transcript
            && self.bot_speaking
            && cx.start_info().is_none_or(|s| s.allow_interruptions)
        {
            self.bot_speaking = false;
            self.interrupted_now = true;
            cx.interrupt();
        }
        if t.is_final {
            self.finals.push(text.to_string());
            self.interim = None;
            if self.speculation.is_some() {
                // More words than the speculation asked about: it is moot.
                self.cancel_speculation(cx);
            } else if let Some(run) = self.maybe_speculate() {
                cx.emit(Event::Speculation(Speculation::Started));
                return Some(run);
            }
            self.evaluate(cx)
        } else {
            self.interim = Some(text.to_string());
            None
        }
    }
}

impl Processor for UserAggregator {
    fn name(&self) -> &str {
        "user_aggregator"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        match frame {
            Frame::Transcript(t) if direction == Direction::Downstream => {
                self.interrupted_now = false;
                let run = self.on_transcript(&t, cx);
                if let Some(run) = run {
                    if std::mem::take(&mut self.interrupted_now) {
                        // Its snapshot would still hold the bot's unheard words.
                        drop(run);
                        self.armed = Some(Timer::Deferred);
                        cx.wake_at(Instant::now());
                    } else {
                        cx.push(run, Direction::Downstream).await;
                    }
                }
            }
            other => cx.push(other, direction).await,
        }
        Ok(())
    }

    async fn on_timer(&mut self, cx: &mut Context) -> FlowResult {
        let Some(timer) = self.armed.take() else { return Ok(()) };
        let silent = !self.user_speaking;
        match timer {
            // The turn is in the context already; the snapshot now has the bot's turn cut.
            Timer::Deferred => cx.push(Frame::LlmRun(self.ctx.snapshot()), Direction::Downstream).await,
            Timer::Withdraw if silent && self.barge_pending => self.withdraw(cx),
            Timer::Commit(use_interim) if silent && !self.awaiting_end && !self.barge_pending => {
                if let Some(run) = self.commit(use_interim, cx) {
                    cx.push(run, Direction::Downstream).await;
                }
            }
            Timer::Withdraw | Timer::Commit(_) => {}
        }
        Ok(())
    }

    fn on_event(&mut self, event: &Event, cx: &mut Context) -> FlowResult {
        match event {
            Event::UserStartedSpeaking => {
                self.cancel_speculation(cx);
                self.user_speaking = true;
                self.awaiting_end = true;
                self.stopped_at = None;
                self.disarm(cx);
            }
            Event::UserStoppedSpeaking => {
                // The clocks start at the pause; the decision waits for `EndOfTurn`.
                self.user_speaking = false;
                let now = Instant::now();
                self.stopped_at = Some(now);
                if self.barge_pending {
                    self.armed = Some(Timer::Withdraw);
                    cx.wake_at(now + self.settings.false_interruption_timeout);
                }
                if let Some(run) = self.maybe_speculate() {
                    cx.emit(Event::Speculation(Speculation::Started));
                    // One frame from an event handler: a bounded overshoot of the LLM's inbox.
                    cx.push_now(run, Direction::Downstream);
                }
            }
            Event::InterruptPending if !self.settings.false_interruption_timeout.is_zero() => {
                self.barge_pending = true;
                // Words already heard in this speech confirm it at once.
                if let Some(t) = self.interim.clone().or_else(|| self.finals.last().cloned()) {
                    self.confirm_if_words(&t, cx);
                }
            }
            Event::Interrupt | Event::InterruptWithdrawn => {
                self.barge_pending = false;
                if matches!(event, Event::Interrupt) && self.speculation.take().is_some() {
                    // Someone else interrupted: the speculation's response is flushed with it.
                    self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::EndOfTurn => {
                self.user_speaking = false;
                self.awaiting_end = false;
                self.stopped_at.get_or_insert_with(Instant::now);
                if self.speculation.is_some() && self.interim.is_some() {
                    // Words the speculation did not ask about are still being recognised.
                    self.cancel_speculation(cx);
                }
                if let Some(text) = self.speculation.take() {
                    // The turn ended as speculated: record it; the response is already coming.
                    tracing::debug!("speculation used");
                    self.stats.used.fetch_add(1, Ordering::Relaxed);
                    self.disarm(cx);
                    self.finals.clear();
                    self.interim = None;
                    self.stopped_at = None;
                    self.ctx.add_user_text(&text);
                    cx.emit(Event::Speculation(Speculation::Confirmed));
                    return Ok(());
                }
                if let Some(run) = self.evaluate(cx) {
                    // One frame from an event handler: a bounded overshoot of the LLM's inbox.
                    cx.push_now(run, Direction::Downstream);
                }
            }
            Event::BotStartedSpeaking => self.bot_speaking = true,
            Event::BotStoppedSpeaking => self.bot_speaking = false,
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_lists_are_sorted_for_binary_search() {
        assert!(BACKCHANNEL_WORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(CONTINUATION_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn backchannels_are_recognised() {
        for t in ["mm-hmm", "Yeah.", "okay, okay", "Right!", "I see", "got it", "uh-huh", "Yep, sure."] {
            assert!(is_backchannel(t), "{t}");
        }
        for t in ["", "wait", "yeah but what about my order", "no", "stop", "okay so I need", "hold on"] {
            assert!(!is_backchannel(t), "{t}");
        }
    }
}
