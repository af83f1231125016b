//! [`UserAggregator`]: turns transcripts and VAD events into user turns and `LlmRun`s.
//!
//! Consumes `Transcript` frames (downstream; interim and final), `UserStartedSpeaking` /
//! `UserStoppedSpeaking` (VAD) and `BotStartedSpeaking` / `BotStoppedSpeaking` events. Produces
//! `LlmRun(snapshot)` downstream once per user turn, after appending the user message to the
//! shared [`ConversationContext`]. Other frames are forwarded; transcripts are consumed.
//!
//! When a turn ends: the VAD said the user stopped *and* a final transcript is in, plus a grace
//! window ([`DEFAULT_GRACE`]) for late finals (STT finals often trail the VAD by 100–300 ms).
//! Without a VAD (text clients), a final transcript ends the turn after the same grace. If the
//! VAD stopped and no final arrives within [`DEFAULT_FINAL_TRANSCRIPT_TIMEOUT`], the last interim
//! text is used, so a stalled STT never leaves the caller unanswered.
//!
//! Trade-offs: the timer is a spawned task (a processor only runs when a frame or event arrives)
//! that commits through the shared state and pushes with a [`voxline_pipeline::FrameSender`]; a
//! generation counter makes a superseded timer a no-op, so no lock is held across an await.
//! Optionally (`interrupt_on_transcript`) a transcript heard while the bot speaks emits
//! `Interrupt`, for setups where the VAD does not.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use voxline_pipeline::{Context, Direction, Event, FlowResult, Frame, FrameSender, Processor};

use super::context::ConversationContext;

/// Default wait after the end of speech for late final transcripts.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(300);
/// Default wait for any final transcript after the VAD stopped, before using interim text.
pub const DEFAULT_FINAL_TRANSCRIPT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Settings of a [`UserAggregator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAggregatorSettings {
    /// Wait for late finals after the turn looks complete.
    pub grace: Duration,
    /// Wait for a first final after the VAD stopped before falling back to interim text.
    pub final_transcript_timeout: Duration,
    /// Emit `Interrupt` when a transcript arrives while the bot is speaking (if the stream allows
    /// interruptions).
    pub interrupt_on_transcript: bool,
}

impl Default for UserAggregatorSettings {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            final_transcript_timeout: DEFAULT_FINAL_TRANSCRIPT_TIMEOUT,
            interrupt_on_transcript: false,
        }
    }
}

#[derive(Debug, Default)]
struct Turn {
    finals: Vec<String>,
    interim: Option<String>,
    user_speaking: bool,
    /// Bumped whenever a pending commit must be superseded.
    generation: u64,
}

impl Turn {
    fn take_text(&mut self, use_interim: bool) -> Option<String> {
        let mut text = self.finals.join(" ");
        if text.trim().is_empty() && use_interim {
            text = self.interim.take().unwrap_or_default();
        }
        self.finals.clear();
        self.interim = None;
        let text = text.trim().to_string();
        if text.is_empty() { None } else { Some(text) }
    }
}

/// Aggregates a user turn. See the module docs.
pub struct UserAggregator {
    settings: UserAggregatorSettings,
    ctx: ConversationContext,
    turn: Arc<Mutex<Turn>>,
    timer: Option<tokio::task::JoinHandle<()>>,
    /// How the pending timer commits (`true`: may use interim text).
    armed: Option<bool>,
    bot_speaking: bool,
}

impl std::fmt::Debug for UserAggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserAggregator").field("settings", &self.settings).finish_non_exhaustive()
    }
}

fn lock(t: &Mutex<Turn>) -> MutexGuard<'_, Turn> {
    match t.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl UserAggregator {
    /// An aggregator writing user turns into `ctx`.
    #[must_use]
    pub fn new(ctx: ConversationContext, settings: UserAggregatorSettings) -> Self {
        Self { settings, ctx, turn: Arc::default(), timer: None, armed: None, bot_speaking: false }
    }

    /// The shared context.
    #[must_use]
    pub fn context(&self) -> &ConversationContext {
        &self.ctx
    }

    fn cancel_timer(&mut self) {
        self.armed = None;
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }

    /// (Re)arm the commit timer: after `delay`, commit the turn unless something superseded it.
    fn arm(&mut self, delay: Duration, use_interim: bool, sender: FrameSender) {
        self.cancel_timer();
        self.armed = Some(use_interim);
        let generation = {
            let mut t = lock(&self.turn);
            t.generation += 1;
            t.generation
        };
        let turn = self.turn.clone();
        let ctx = self.ctx.clone();
        self.timer = Some(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let text = {
                let mut t = lock(&turn);
                if t.generation != generation || t.user_speaking {
                    return;
                }
                t.take_text(use_interim)
            };
            let Some(text) = text else { return };
            tracing::debug!(chars = text.len(), "user turn committed");
            ctx.add_user_text(&text);
            sender.push(Frame::LlmRun(ctx.snapshot()), Direction::Downstream);
        }));
    }

    fn on_transcript(&mut self, t: &voxline_pipeline::Transcript, cx: &mut Context) {
        let text = t.text.trim();
        if text.is_empty() {
            return;
        }
        if self.settings.interrupt_on_transcript
            && self.bot_speaking
            && cx.start_info().is_none_or(|s| s.allow_interruptions)
        {
            self.bot_speaking = false;
            cx.interrupt();
        }
        let speaking = {
            let mut turn = lock(&self.turn);
            if t.is_final {
                turn.finals.push(text.to_string());
                turn.interim = None;
            } else {
                turn.interim = Some(text.to_string());
            }
            turn.user_speaking
        };
        if t.is_final && !speaking {
            self.arm(self.settings.grace, false, cx.sender());
        }
    }
}

impl Processor for UserAggregator {
    fn name(&self) -> &str {
        "user_aggregator"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        match frame {
            Frame::Transcript(t) if direction == Direction::Downstream => self.on_transcript(&t, cx),
            other => cx.push(other, direction).await,
        }
        Ok(())
    }

    fn on_event(&mut self, event: &Event, cx: &mut Context) -> FlowResult {
        match event {
            Event::UserStartedSpeaking => {
                self.cancel_timer();
                let mut t = lock(&self.turn);
                t.user_speaking = true;
                t.generation += 1;
            }
            Event::UserStoppedSpeaking => {
                let has_final = {
                    let mut t = lock(&self.turn);
                    t.user_speaking = false;
                    !t.finals.is_empty()
                };
                if has_final {
                    self.arm(self.settings.grace, false, cx.sender());
                } else {
                    self.arm(self.settings.final_transcript_timeout, true, cx.sender());
                }
            }
            Event::Interrupt => {
                // A pending commit holds a sender stamped with the old epoch, so its `LlmRun`
                // would be dropped as stale: re-arm with a fresh one.
                let pending = self.timer.as_ref().is_some_and(|t| !t.is_finished());
                if let (true, Some(use_interim)) = (pending, self.armed) {
                    let delay = if use_interim { self.settings.final_transcript_timeout } else { self.settings.grace };
                    self.arm(delay, use_interim, cx.sender());
                }
            }
            Event::BotStartedSpeaking => self.bot_speaking = true,
            Event::BotStoppedSpeaking => self.bot_speaking = false,
            _ => {}
        }
        Ok(())
    }

    async fn stop(&mut self, _cx: &mut Context) -> FlowResult {
        self.cancel_timer();
        Ok(())
    }
}
