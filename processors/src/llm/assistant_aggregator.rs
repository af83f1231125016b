//! [`AssistantAggregator`] and [`PlayoutTap`]: record the bot's side of the conversation, kept to
//! what the caller actually heard.
//!
//! [`AssistantAggregator`] (right after the LLM) consumes nothing and forwards everything; it
//! watches `LlmResponseStart`/`LlmText`/`ToolCalls`/`LlmResponseEnd` and `Text` lines going
//! downstream and records each response in the [`ConversationContext`] in generation order: the
//! assistant message with its tool calls is stored when the `ToolCalls` frame passes (before the
//! executor sees it, so results always land after it), plain text at `LlmResponseEnd`, a fallback
//! or greeting `Text` line as its own message.
//!
//! [`PlayoutTap`] (between TTS and the output transport) forwards everything; it keeps the word
//! timings of each utterance from `TtsAudio` (downstream) and, on every `PlayedUpTo` (upstream),
//! feeds the words whose start is before the played position — the words the caller heard — to
//! the shared state, which aligns them with the recorded responses.
//!
//! On `Interrupt` every response not fully heard is cut to its heard words (a response the caller
//! heard nothing of disappears, unless it carries tool calls, which stay with empty text). The
//! final `PlayedUpTo` of the cut utterance usually arrives just *after* the interrupt; it still
//! extends the cut message, until the next response starts.
//!
//! Trade-offs: alignment is by normalised word (lowercase alphanumerics) with a small look-ahead,
//! so TTS words that differ in punctuation, or an extra line the recorder never saw (a tool
//! filler), do not derail it. Without a running [`PlayoutTap`] (text-only pipelines), or with a
//! TTS that delivers no word timings, nothing is trimmed: the full response is the record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use voxline_pipeline::{ChatMessage, Context, Direction, Event, FlowResult, Frame, Role, WordTiming};

use super::context::{ConversationContext, MessageId};
use voxline_pipeline::sync::lock;

/// Default number of recorded words a heard word may skip ahead to find its match.
pub const DEFAULT_LOOKAHEAD: usize = 4;
/// Default cap on responses waiting to be heard, and on utterances whose timings are kept.
pub const DEFAULT_MAX_PENDING: usize = 16;

/// Settings of an [`AssistantAggregator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssistantSettings {
    /// How far ahead a heard word may match.
    pub lookahead: usize,
    /// Cap on responses awaiting play-out and on utterances tracked by the tap.
    pub max_pending: usize,
}

impl Default for AssistantSettings {
    fn default() -> Self {
        Self { lookahead: DEFAULT_LOOKAHEAD, max_pending: DEFAULT_MAX_PENDING }
    }
}

#[derive(Debug, Clone)]
struct Word {
    raw: String,
    norm: String,
}

fn normalize(w: &str) -> String {
    w.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// One response (or spoken line) waiting to be heard.
#[derive(Debug, Default)]
struct Spoken {
    msg: Option<MessageId>,
    text: String,
    words: Vec<Word>,
    heard: usize,
    /// Byte offset in `text` up to which `words` are parsed.
    parsed: usize,
    open: bool,
    interrupted: bool,
}

impl Spoken {
    fn set_text(&mut self, text: String) {
        self.words = text.split_whitespace().map(|w| Word { raw: w.to_string(), norm: normalize(w) }).collect();
        self.parsed = text.len();
        self.text = text;
    }
    /// Append streamed text; words become matchable once whitespace closes them, so the caller
    /// can be heard (and cut) while the response is still streaming.
    fn append(&mut self, piece: &str) {
        self.text.push_str(piece);
        let tail = &self.text[self.parsed..];
        if let Some(ws) = tail.rfind(char::is_whitespace) {
            let done = &tail[..ws];
            self.words.extend(done.split_whitespace().map(|w| Word { raw: w.to_string(), norm: normalize(w) }));
            self.parsed += ws;
        }
    }
    fn heard_text(&self) -> String {
        self.words[..self.heard].iter().map(|w| w.raw.as_str()).collect::<Vec<_>>().join(" ")
    }
    fn fully_heard(&self) -> bool {
        !self.open && self.heard >= self.words.len()
    }
}

#[derive(Debug, Default)]
struct Utterance {
    id: Arc<str>,
    words: Vec<WordTiming>,
    fed: usize,
}

#[derive(Debug)]
struct State {
    ctx: ConversationContext,
    settings: AssistantSettings,
    pending: VecDeque<Spoken>,
    utterances: VecDeque<Utterance>,
}

impl State {
    fn current_open(&mut self) -> Option<&mut Spoken> {
        self.pending.back_mut().filter(|s| s.open)
    }

    fn push_spoken(&mut self, s: Spoken) {
        self.pending.push_back(s);
        while self.pending.len() > self.settings.max_pending {
            self.pending.pop_front();
        }
    }

    /// A new response starts: responses cut by an earlier interruption are final now.
    fn begin_response(&mut self) {
        self.pending.retain(|s| !s.interrupted);
        self.push_spoken(Spoken { open: true, ..Spoken::default() });
    }

    fn feed(&mut self, word: &str) {
        let w = normalize(word);
        if w.is_empty() {
            return;
        }
        let look = self.settings.lookahead.max(1);
        let mut matched = None;
        for (ei, s) in self.pending.iter_mut().enumerate().take(2) {
            let start = s.heard.min(s.words.len());
            if let Some(k) = s.words[start..].iter().take(look).position(|x| x.norm == w) {
                s.heard = start + k + 1;
                matched = Some(ei);
                break;
            }
        }
        match matched {
            // The head was spoken but its tail never matched: consider it done.
            Some(1) => {
                if let Some(head) = self.pending.pop_front() {
                    self.settle(head, true);
                }
            }
            Some(_) => {}
            None => return,
        }
        if let Some(head) = self.pending.front()
            && head.interrupted
        {
            let text = head.heard_text();
            // The interrupt may have cut this response to nothing (the play-out report for the
            // same interruption arrives just after it), which removes its message: re-add it.
            let gone = head.msg.is_some_and(|id| !self.ctx.set_content(id, &text));
            match head.msg {
                Some(_) if !gone => {}
                _ if head.heard > 0 => {
                    let id = self.ctx.push(ChatMessage::text(Role::Assistant, text));
                    if let Some(h) = self.pending.front_mut() {
                        h.msg = Some(id);
                    }
                }
                _ => {}
            }
        }
        while self.pending.front().is_some_and(Spoken::fully_heard) {
            if let Some(done) = self.pending.pop_front() {
                self.settle(done, false);
            }
        }
    }

    /// A response leaves the queue. An interrupted one that turned out to be heard in full gets
    /// its full text back.
    fn settle(&mut self, s: Spoken, assume_heard: bool) {
        if s.interrupted
            && (assume_heard || s.heard >= s.words.len())
            && let Some(id) = s.msg
        {
            self.ctx.set_content(id, &s.text);
        }
    }

    fn interrupt(&mut self) {
        for s in &mut self.pending {
            if s.interrupted || s.fully_heard() {
                continue;
            }
            s.open = false;
            s.interrupted = true;
            let heard = s.heard_text();
            match s.msg {
                Some(id) => {
                    self.ctx.set_content(id, &heard);
                }
                None if !heard.is_empty() => s.msg = Some(self.ctx.push(ChatMessage::text(Role::Assistant, heard))),
                None => {}
            }
        }
        tracing::debug!(pending = self.pending.len(), "assistant turn cut to heard words");
    }

    fn add_words(&mut self, id: &Arc<str>, words: &[WordTiming]) {
        if let Some(u) = self.utterances.iter_mut().find(|u| u.id == *id) {
            u.words.extend_from_slice(words);
            return;
        }
        self.utterances.push_back(Utterance { id: id.clone(), words: words.to_vec(), fed: 0 });
        while self.utterances.len() > self.settings.max_pending {
            self.utterances.pop_front();
        }
    }

    fn played(&mut self, id: &str, position: Duration, complete: bool) {
        let Some(ui) = self.utterances.iter().position(|u| &*u.id == id) else { return };
        let heard: Vec<Arc<str>> = {
            let u = &mut self.utterances[ui];
            let mut out = Vec::new();
            while let Some(w) = u.words.get(u.fed) {
                if !complete && w.start >= position {
                    break;
                }
                out.push(w.word.clone());
                u.fed += 1;
            }
            out
        };
        if complete {
            self.utterances.remove(ui);
        }
        for w in heard {
            self.feed(&w);
        }
    }
}

struct Shared {
    state: Mutex<State>,
    tap_running: AtomicBool,
    /// TTS has delivered word timings; without them nothing can be trimmed reliably.
    words_seen: AtomicBool,
}

/// Records the bot's responses in the shared context. See the module docs.
pub struct AssistantAggregator {
    shared: Arc<Shared>,
    ctx: ConversationContext,
}

/// Feeds the words the caller heard to its [`AssistantAggregator`]. See the module docs.
pub struct PlayoutTap {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AssistantAggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssistantAggregator").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PlayoutTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlayoutTap").finish_non_exhaustive()
    }
}

impl AssistantAggregator {
    /// The aggregator (place it right after the LLM) and its tap (place it between TTS and the
    /// output transport), recording into `ctx`.
    #[must_use]
    pub fn new(ctx: ConversationContext, settings: AssistantSettings) -> (Self, PlayoutTap) {
        let state = State { ctx: ctx.clone(), settings, pending: VecDeque::new(), utterances: VecDeque::new() };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            tap_running: AtomicBool::new(false),
            words_seen: AtomicBool::new(false),
        });
        (Self { shared: shared.clone(), ctx }, PlayoutTap { shared })
    }

    /// The shared context.
    #[must_use]
    pub fn context(&self) -> &ConversationContext {
        &self.ctx
    }

    fn tracking(&self) -> bool {
        self.shared.tap_running.load(Ordering::Acquire)
    }

    fn observe(&mut self, frame: &Frame) {
        let tracking = self.tracking();
        let mut st = lock(&self.shared.state);
        match frame {
            Frame::LlmResponseStart => st.begin_response(),
            Frame::LlmText(t) => {
                if st.current_open().is_none() {
                    st.begin_response();
                }
                if let Some(s) = st.current_open() {
                    s.append(t);
                }
            }
            Frame::ToolCalls(calls) => {
                let text = st.current_open().map(|s| s.text.clone()).unwrap_or_default();
                let id = self.ctx.record_tool_calls(&text, calls);
                match st.current_open() {
                    Some(s) => s.msg = Some(id),
                    None => st.push_spoken(Spoken { msg: Some(id), ..Spoken::default() }),
                }
            }
            Frame::LlmResponseEnd => {
                let Some(mut s) = st.pending.pop_back() else { return };
                if !s.open {
                    st.pending.push_back(s);
                    return;
                }
                s.open = false;
                let text = std::mem::take(&mut s.text);
                match s.msg {
                    Some(id) => {
                        // Text after the tool calls in the same response (Anthropic allows it).
                        let trimmed = text.trim();
                        if self.ctx.content(id).is_some_and(|c| c.trim() != trimmed) {
                            self.ctx.set_content(id, trimmed);
                        }
                    }
                    None if !text.trim().is_empty() => {
                        s.msg = Some(self.ctx.push(ChatMessage::text(Role::Assistant, text.trim())));
                    }
                    None => {}
                }
                s.set_text(text.trim().to_string());
                if tracking && !s.fully_heard() {
                    st.pending.push_back(s);
                }
            }
            Frame::Text(line) => {
                let text = line.trim();
                if text.is_empty() {
                    return;
                }
                let id = self.ctx.push(ChatMessage::text(Role::Assistant, text));
                if tracking {
                    let mut s = Spoken { msg: Some(id), ..Spoken::default() };
                    s.set_text(text.to_string());
                    st.push_spoken(s);
                }
            }
            _ => {}
        }
        if !tracking {
            st.pending.retain(|s| s.open);
        }
    }
}

impl voxline_pipeline::Processor for AssistantAggregator {
    fn name(&self) -> &str {
        "assistant_aggregator"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        if direction == Direction::Downstream {
            self.observe(&frame);
        }
        cx.push(frame, direction).await;
        Ok(())
    }

    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        if matches!(event, Event::Interrupt) {
            let tracking = self.tracking() && self.shared.words_seen.load(Ordering::Acquire);
            let mut st = lock(&self.shared.state);
            if tracking {
                st.interrupt();
            } else {
                // Without play-out reports or word timings the best record is what was generated.
                let open: Vec<Spoken> = st.pending.drain(..).filter(|s| s.open).collect();
                drop(st);
                for s in open {
                    if s.msg.is_none() && !s.text.trim().is_empty() {
                        self.ctx.push(ChatMessage::text(Role::Assistant, s.text.trim()));
                    }
                }
            }
        }
        Ok(())
    }
}

impl voxline_pipeline::Processor for PlayoutTap {
    fn name(&self) -> &str {
        "playout_tap"
    }

    async fn start(&mut self, _cx: &mut Context) -> FlowResult {
        self.shared.tap_running.store(true, Ordering::Release);
        Ok(())
    }

    async fn stop(&mut self, _cx: &mut Context) -> FlowResult {
        self.shared.tap_running.store(false, Ordering::Release);
        Ok(())
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        match (&frame, direction) {
            (Frame::TtsAudio(a), Direction::Downstream) if !a.words.is_empty() => {
                self.shared.words_seen.store(true, Ordering::Release);
                lock(&self.shared.state).add_words(&a.context_id, &a.words);
            }
            (Frame::PlayedUpTo { context_id, position, complete }, Direction::Upstream) => {
                lock(&self.shared.state).played(context_id, *position, *complete);
            }
            _ => {}
        }
        cx.push(frame, direction).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            ctx: ConversationContext::default(),
            settings: AssistantSettings::default(),
            pending: VecDeque::new(),
            utterances: VecDeque::new(),
        }
    }

    fn record(st: &mut State, text: &str) {
        let id = st.ctx.push(ChatMessage::text(Role::Assistant, text));
        let mut s = Spoken { msg: Some(id), ..Spoken::default() };
        s.set_text(text.to_string());
        st.pending.push_back(s);
    }

    #[test]
    fn alignment_tolerates_punctuation_and_foreign_words() {
        let mut st = state();
        record(&mut st, "Your order, ORD-12, has shipped. Anything else?");
        for w in ["um", "your", "Order", "ord-12", "has"] {
            st.feed(w);
        }
        assert_eq!(st.pending[0].heard, 4);
        st.interrupt();
        assert_eq!(st.ctx.messages()[0].content, "Your order, ORD-12, has");
        // A late report extends the cut message.
        st.feed("shipped.");
        assert_eq!(st.ctx.messages()[0].content, "Your order, ORD-12, has shipped.");
    }

    #[test]
    fn fully_heard_responses_leave_the_queue_and_unheard_ones_vanish() {
        let mut st = state();
        record(&mut st, "Hello there.");
        record(&mut st, "How can I help?");
        st.feed("hello");
        st.feed("there");
        assert_eq!(st.pending.len(), 1);
        st.interrupt();
        let msgs = st.ctx.messages();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].content, "Hello there.");
    }

    #[test]
    fn heard_words_reported_after_the_interrupt_are_kept() {
        // The output reports what was played just *after* the interrupt reached this stage: the
        // cut-to-nothing message must come back with the words the caller did hear.
        let mut st = state();
        record(&mut st, "Thanks for calling Acme, how can I help you today?");
        st.interrupt();
        assert!(st.ctx.messages().is_empty(), "nothing heard yet");
        for w in ["thanks", "for", "calling"] {
            st.feed(w);
        }
        let msgs = st.ctx.messages();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].content, "Thanks for calling");
    }
}
