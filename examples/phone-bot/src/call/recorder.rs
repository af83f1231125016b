//! Per-call record: transcript with timestamps, tool calls, per-turn latency, interruptions.
//!
//! Fed from three places: tap processors in the pipeline (final transcripts after STT; bot text
//! and the first bot audio of a turn before the output), the task's event stream (VAD turn
//! boundaries, TTFB metrics, interruptions, errors) and the skill wrapper (tool calls with their
//! arguments and results). A turn's latency is "user stopped speaking → first bot audio reaches
//! the output stage", split into STT, LLM TTFB and TTS TTFB from the `Metrics` events seen
//! inside that turn.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use voxline::pipeline::{Direction, Event, Frame, MetricsEvent, Processor, processor_fn};

/// A line printer for live output (the simulation prints the transcript as it happens).
pub type LiveFn = Arc<dyn Fn(&str) + Send + Sync>;

/// One line of the transcript.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub(crate) struct TranscriptLine {
    /// `user` or `bot`.
    pub(crate) role: String,
    /// What was said: the final transcript, or the text sent to TTS.
    pub(crate) text: String,
    /// Milliseconds since the call started.
    pub(crate) t_ms: u64,
    /// For the bot: cut off by the caller.
    pub(crate) interrupted: bool,
}

/// One settled tool call, as the model asked for it and as it ended.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub(crate) struct ToolCallLine {
    pub(crate) name: String,
    pub(crate) arguments: Value,
    /// Normalized: `{"success": true, "data": …}` or `{"success": false, "error": …}`.
    pub(crate) result: Value,
    /// When the result landed, in ms since the call started.
    pub(crate) t_ms: u64,
    pub(crate) duration_ms: u64,
}

/// Where one turn's time went, in milliseconds (`None`: the stage reported nothing).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub(crate) struct TurnLatency {
    /// 1-based turn number.
    pub(crate) turn: u32,
    /// User stopped speaking → first bot audio at the output.
    pub(crate) total_ms: Option<f64>,
    pub(crate) stt_ms: Option<f64>,
    pub(crate) llm_ttfb_ms: Option<f64>,
    pub(crate) tts_ttfb_ms: Option<f64>,
}

/// The record is stored as JSON and read back by the post-call job (possibly on another instance).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub(crate) struct CallRecord {
    pub(crate) call_sid: String,
    /// The caller's number.
    pub(crate) from: String,
    /// Epoch milliseconds.
    pub(crate) started_ms: i64,
    pub(crate) transcript: Vec<TranscriptLine>,
    pub(crate) tool_calls: Vec<ToolCallLine>,
    pub(crate) turns: Vec<TurnLatency>,
    /// Times the caller barged in: an `Interrupt` after the caller started speaking over the bot
    /// (a cancelled speculation's, or the transport's when the caller hung up, does not count).
    pub(crate) interruptions: u32,
    /// Speculative LLM requests: `[started, used, cancelled]`.
    pub(crate) speculations: [u32; 3],
    /// DTMF digits the caller pressed, in order.
    pub(crate) dtmf: String,
    /// Pipeline errors, `processor: message`, at most 100.
    pub(crate) errors: Vec<String>,
    /// The bot spoke before the caller did (the greeting came first).
    pub(crate) greeting_first: bool,
    /// Bot audio chunks that reached the output.
    pub(crate) bot_audio_frames: u64,
}

struct State {
    rec: CallRecord,
    t0: Instant,
    /// Open turn: when the user stopped speaking, and whether first audio was seen yet.
    turn_start: Option<Instant>,
    turn_first_audio: bool,
    bot_speaking_line: Option<usize>,
    /// A speculation was just cancelled: the `Interrupt` that follows aborts its request; it is
    /// not the caller barging in.
    speculation_cancelled: bool,
    /// The caller started speaking since the bot last started: only then is an `Interrupt` a
    /// barge-in (the transport also interrupts a bot answering a caller who hung up).
    caller_over_bot: bool,
    user_spoke: bool,
    live: Option<LiveFn>,
}

/// Shared recorder of one call.
#[derive(Clone)]
pub(crate) struct Recorder {
    st: Arc<Mutex<State>>,
}

impl Recorder {
    /// A fresh record; `live` prints transcript lines as they happen.
    pub(crate) fn new(call_sid: &str, from: &str, live: Option<LiveFn>) -> Self {
        let rec = CallRecord {
            call_sid: call_sid.to_string(),
            from: from.to_string(),
            started_ms: crate::fleet::store::now_ms(),
            ..CallRecord::default()
        };
        Self {
            st: Arc::new(Mutex::new(State {
                rec,
                t0: Instant::now(),
                turn_start: None,
                turn_first_audio: false,
                bot_speaking_line: None,
                speculation_cancelled: false,
                caller_over_bot: false,
                user_spoke: false,
                live,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        voxline::pipeline::sync::lock(&self.st)
    }

    /// User turns so far (the turn number of log lines and spans).
    pub(crate) fn turns(&self) -> usize {
        self.lock().rec.turns.len()
    }

    /// A copy of the record so far.
    pub(crate) fn snapshot(&self) -> CallRecord {
        self.lock().rec.clone()
    }

    fn say(st: &State, line: &str) {
        if let Some(live) = &st.live {
            live(line);
        }
    }

    /// A final transcript of the caller.
    pub(crate) fn user_text(&self, text: &str) {
        let mut st = self.lock();
        let t_ms = ms(st.t0);
        st.user_spoke = true;
        st.rec.transcript.push(TranscriptLine {
            role: "user".into(),
            text: text.to_string(),
            t_ms,
            interrupted: false,
        });
        Self::say(&st, &format!("[{:>6.2}s] caller: {text}", t_ms as f64 / 1e3));
    }

    /// A chunk of bot speech text (sentence) sent to TTS.
    pub(crate) fn bot_text(&self, text: &str) {
        let mut st = self.lock();
        let t_ms = ms(st.t0);
        if !st.user_spoke && st.rec.transcript.is_empty() {
            st.rec.greeting_first = true;
        }
        match st.bot_speaking_line {
            Some(i) if i + 1 == st.rec.transcript.len() => {
                if let Some(l) = st.rec.transcript.get_mut(i) {
                    l.text.push(' ');
                    l.text.push_str(text.trim());
                }
            }
            _ => {
                st.rec.transcript.push(TranscriptLine {
                    role: "bot".into(),
                    text: text.trim().to_string(),
                    t_ms,
                    interrupted: false,
                });
                st.bot_speaking_line = Some(st.rec.transcript.len() - 1);
            }
        }
    }

    /// The utterance finished (or was cut): print it as one line.
    fn bot_done(&self) {
        let mut st = self.lock();
        let Some(i) = st.bot_speaking_line.take() else { return };
        if let Some(l) = st.rec.transcript.get(i) {
            let cut = if l.interrupted { " [cut off]" } else { "" };
            Self::say(&st, &format!("[{:>6.2}s] bot:    {}{cut}", l.t_ms as f64 / 1e3, l.text));
        }
    }

    /// A settled tool call (also counted in metrics and traced as a `tool_execution` span).
    pub(crate) fn tool_call(&self, name: &str, arguments: Value, result: Value, started: Instant) {
        let mut st = self.lock();
        let t_ms = ms(st.t0);
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(0);
        Self::say(&st, &format!("[{:>6.2}s] tool:   {name}({arguments}) -> {result}", t_ms as f64 / 1e3));
        let outcome = crate::observability::tool_outcome(&result);
        crate::observability::metrics().tool_call(name, outcome);
        // The executor is not ours to instrument, so the span is emitted when the result lands,
        // carrying the measured duration.
        let span =
            tracing::info_span!("tool_execution", tool = name, outcome, duration_ms, call_sid = %st.rec.call_sid);
        span.in_scope(|| tracing::info!(tool = name, outcome, duration_ms, "tool executed"));
        st.rec.tool_calls.push(ToolCallLine { name: name.to_string(), arguments, result, t_ms, duration_ms });
    }

    /// An error outside the pipeline's events (kept up to 100).
    pub(crate) fn error(&self, msg: String) {
        let mut st = self.lock();
        if st.rec.errors.len() < 100 {
            st.rec.errors.push(msg);
        }
    }

    fn first_audio(&self) {
        let mut st = self.lock();
        st.rec.bot_audio_frames += 1;
        if st.turn_first_audio {
            return;
        }
        let Some(t) = st.turn_start else { return };
        st.turn_first_audio = true;
        let total = t.elapsed().as_secs_f64() * 1e3;
        let turn = {
            let Some(turn) = st.rec.turns.last_mut() else { return };
            turn.total_ms = Some(total);
            turn.clone()
        };
        Self::say(
            &st,
            &format!(
                "           latency turn {}: {:.0} ms to first audio (stt {}, llm ttfb {}, tts ttfb {})",
                turn.turn,
                total,
                fmt_ms(turn.stt_ms),
                fmt_ms(turn.llm_ttfb_ms),
                fmt_ms(turn.tts_ttfb_ms)
            ),
        );
    }

    /// Apply one pipeline event.
    pub(crate) fn event(&self, ev: &Event) {
        let mut st = self.lock();
        match ev {
            Event::UserStoppedSpeaking => {
                // A caller who pauses mid-sentence gives the (short-stop) VAD several segments
                // for one turn, and the bot answers only after the last: until the bot's first
                // audio, a new stop continues the open turn and re-times it from this stop.
                let open = !st.turn_first_audio && st.rec.turns.last().is_some_and(|t| t.total_ms.is_none());
                st.turn_start = Some(Instant::now());
                st.turn_first_audio = false;
                if !open {
                    let turn = u32::try_from(st.rec.turns.len() + 1).unwrap_or(u32::MAX);
                    st.rec.turns.push(TurnLatency { turn, ..TurnLatency::default() });
                }
            }
            Event::BotStartedSpeaking => st.caller_over_bot = false,
            Event::UserStartedSpeaking => st.caller_over_bot = true,
            Event::Interrupt if std::mem::take(&mut st.speculation_cancelled) => {}
            Event::Interrupt => {
                // Cut either way (the caller did not hear the rest); counted only as a barge-in.
                if std::mem::take(&mut st.caller_over_bot) {
                    st.rec.interruptions += 1;
                    Self::say(&st, &format!("[{:>6.2}s] -- caller barged in --", ms(st.t0) as f64 / 1e3));
                }
                if let Some(i) = st.bot_speaking_line
                    && let Some(l) = st.rec.transcript.get_mut(i)
                {
                    l.interrupted = true;
                }
                drop(st);
                self.bot_done();
            }
            Event::Speculation(s) => {
                let i = match s {
                    voxline::pipeline::Speculation::Started => 0,
                    voxline::pipeline::Speculation::Confirmed => 1,
                    voxline::pipeline::Speculation::Cancelled => 2,
                };
                st.rec.speculations[i] += 1;
                st.speculation_cancelled = i == 2;
            }
            Event::Metrics(MetricsEvent::Ttfb { processor, value }) => {
                let v = value.as_secs_f64() * 1e3;
                let name = processor.to_lowercase();
                if let Some(turn) = st.rec.turns.last_mut() {
                    let slot = if name.contains("stt") || name.contains("deepgram") {
                        &mut turn.stt_ms
                    } else if name.contains("llm") || name.contains("openai") || name.contains("anthropic") {
                        &mut turn.llm_ttfb_ms
                    } else if name.contains("tts") || name.contains("eleven") {
                        &mut turn.tts_ttfb_ms
                    } else {
                        return;
                    };
                    if slot.is_none() {
                        *slot = Some(v);
                    }
                }
            }
            Event::Error(e) => {
                let msg = format!("{}: {}", e.processor, e.message);
                if st.rec.errors.len() < 100 {
                    st.rec.errors.push(msg);
                }
            }
            _ => {}
        }
    }

    /// Tap after STT: final transcripts and DTMF.
    pub(crate) fn input_tap(&self) -> impl Processor {
        let rec = self.clone();
        processor_fn("record_input", move |frame, dir, cx| {
            if dir == Direction::Downstream {
                match &frame {
                    Frame::Transcript(t) if t.is_final && !t.text.trim().is_empty() => rec.user_text(&t.text),
                    Frame::Dtmf(d) => {
                        rec.lock().rec.dtmf.push(*d);
                        let st = rec.lock();
                        Self::say(&st, &format!("[{:>6.2}s] dtmf:   {d}", ms(st.t0) as f64 / 1e3));
                    }
                    _ => {}
                }
            }
            cx.push_now(frame, dir);
            Ok(())
        })
    }

    /// Tap before the output: bot text and audio.
    pub(crate) fn output_tap(&self) -> impl Processor {
        let rec = self.clone();
        processor_fn("record_output", move |frame, dir, cx| {
            if dir == Direction::Downstream {
                match &frame {
                    Frame::TtsText { text, .. } if !text.trim().is_empty() => rec.bot_text(text),
                    Frame::TtsAudio(_) | Frame::OutputAudio(_) => rec.first_audio(),
                    Frame::TtsStopped { .. } => rec.bot_done(),
                    _ => {}
                }
            }
            cx.push_now(frame, dir);
            Ok(())
        })
    }
}

fn ms(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A barge-in is an `Interrupt` after the caller started over the bot; the one the transport
    /// sends when the caller hangs up mid-answer (or a cancelled speculation's) is not.
    #[test]
    fn only_an_interrupt_over_the_bot_counts_as_a_barge_in() {
        let rec = Recorder::new("CA1", "+1", None);
        for ev in [Event::UserStartedSpeaking, Event::UserStoppedSpeaking, Event::BotStartedSpeaking, Event::Interrupt]
        {
            rec.event(&ev);
        }
        assert_eq!(rec.snapshot().interruptions, 0, "a hang-up mid-answer is not a barge-in");
        for ev in [Event::BotStartedSpeaking, Event::UserStartedSpeaking, Event::Interrupt] {
            rec.event(&ev);
        }
        assert_eq!(rec.snapshot().interruptions, 1);
        rec.event(&Event::Interrupt);
        assert_eq!(rec.snapshot().interruptions, 1, "one barge-in, one count");
    }
}
