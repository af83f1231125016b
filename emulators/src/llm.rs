//! Scripting types shared by the OpenAI and Anthropic emulators.
//!
//! A [`Scripted`] response is provider-neutral: text pieces and/or tool calls, timing and an
//! optional [`LlmFault`]. Each emulator renders it in its own wire format. When an
//! emulator's script queue is empty it asks its [`Responder`] (if any), which sees the raw
//! request JSON.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Builds a response from the raw request body when the script queue is empty.
pub type Responder = Arc<dyn Fn(&Value) -> Scripted + Send + Sync>;

/// One tool call the "model" makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedToolCall {
    /// Call id; generated (`call_…` / `toolu_…`) when `None`.
    pub id: Option<String>,
    /// Function / tool name.
    pub name: String,
    /// JSON-encoded arguments exactly as they should go on the wire (may be invalid on purpose).
    pub arguments: String,
}

impl ScriptedToolCall {
    /// A call with a generated id.
    pub fn new(name: impl Into<String>, arguments: &Value) -> Self {
        Self { id: None, name: name.into(), arguments: arguments.to_string() }
    }

    /// Sets an explicit id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// How parallel OpenAI tool-call deltas are laid out (Anthropic blocks are always sequential).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolCallStyle {
    /// One call after another, as OpenAI does: header then argument fragments per call.
    #[default]
    Sequential,
    /// All headers first, then argument fragments round-robin across indexes.
    Interleaved,
    /// Like `Interleaved` but each chunk carries one entry per call in its `tool_calls` array.
    Batched,
}

/// Misbehaviour for one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmFault {
    /// HTTP 500 (`server_error` / `api_error`).
    ServerError,
    /// HTTP 429 with a `retry-after` header.
    RateLimited {
        /// Seconds for `retry-after`.
        retry_after_secs: u64,
    },
    /// Overloaded: HTTP 503 for OpenAI, HTTP 529 `overloaded_error` for Anthropic.
    Overloaded,
    /// Any status with the provider's error body.
    HttpStatus {
        /// HTTP status.
        status: u16,
        /// Error message.
        message: String,
    },
    /// 200, then the connection is cut after this many SSE events (no terminator).
    CloseMidStream {
        /// Events sent before the cut.
        after_events: usize,
    },
    /// 200, then a `data:` line with broken JSON after this many events, then the rest.
    MalformedData {
        /// Events sent before the bad line.
        after_events: usize,
    },
    /// 200, then an in-stream error after this many events (OpenAI `data: {"error":…}`,
    /// Anthropic `event: error` with `overloaded_error`), then the stream ends.
    StreamError {
        /// Events sent before the error.
        after_events: usize,
    },
    /// 200, then silence (connection kept open) after this many events.
    Stall {
        /// Events sent before stalling.
        after_events: usize,
    },
    /// Tool-call arguments are cut in half, so their JSON does not parse.
    TruncatedToolArguments,
    /// The request is accepted and never answered (no status line).
    NeverAnswer,
}

/// One scripted model response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scripted {
    /// Text pieces, each streamed as one delta.
    pub text: Vec<String>,
    /// Tool calls, after the text.
    pub tool_calls: Vec<ScriptedToolCall>,
    /// Delay before the first event (time to first token).
    pub ttft: Duration,
    /// Delay between subsequent events.
    pub token_delay: Duration,
    /// Optional fault.
    pub fault: Option<LlmFault>,
    /// Layout of parallel OpenAI tool-call deltas.
    pub tool_call_style: ToolCallStyle,
    /// Characters per tool-argument fragment.
    pub argument_fragment_len: usize,
    /// Overrides the finish/stop reason (`length`, `max_tokens`, …).
    pub stop_reason: Option<String>,
}

impl Default for Scripted {
    fn default() -> Self {
        Self {
            text: Vec::new(),
            tool_calls: Vec::new(),
            ttft: Duration::ZERO,
            token_delay: Duration::ZERO,
            fault: None,
            tool_call_style: ToolCallStyle::Sequential,
            argument_fragment_len: 8,
            stop_reason: None,
        }
    }
}

impl Scripted {
    /// A text answer split into word-sized tokens (`"Sure, one moment."` → `"Sure,"`,
    /// `" one"`, `" moment."`).
    pub fn text(text: &str) -> Self {
        Self { text: split_tokens(text), ..Self::default() }
    }

    /// A text answer with explicit pieces.
    pub fn tokens<I, S>(pieces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { text: pieces.into_iter().map(Into::into).collect(), ..Self::default() }
    }

    /// A single tool call.
    pub fn tool_call(name: &str, arguments: &Value) -> Self {
        Self { tool_calls: vec![ScriptedToolCall::new(name, arguments)], ..Self::default() }
    }

    /// Several (parallel) tool calls.
    pub fn tool_calls(calls: Vec<ScriptedToolCall>) -> Self {
        Self { tool_calls: calls, ..Self::default() }
    }

    /// A response that is only a fault.
    pub fn fault(fault: LlmFault) -> Self {
        Self { fault: Some(fault), ..Self::text("This text should not be delivered.") }
    }

    /// Adds a fault.
    pub fn with_fault(mut self, fault: LlmFault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Adds tool calls after the text.
    pub fn with_tool_calls(mut self, calls: Vec<ScriptedToolCall>) -> Self {
        self.tool_calls.extend(calls);
        self
    }

    /// Sets the time to first token.
    pub fn with_ttft(mut self, ttft: Duration) -> Self {
        self.ttft = ttft;
        self
    }

    /// Sets the delay between events.
    pub fn with_token_delay(mut self, delay: Duration) -> Self {
        self.token_delay = delay;
        self
    }

    /// Sets the parallel tool-call layout.
    pub fn with_tool_call_style(mut self, style: ToolCallStyle) -> Self {
        self.tool_call_style = style;
        self
    }

    /// Overrides the finish/stop reason.
    pub fn with_stop_reason(mut self, reason: impl Into<String>) -> Self {
        self.stop_reason = Some(reason.into());
        self
    }

    /// The full text.
    pub fn full_text(&self) -> String {
        self.text.concat()
    }

    pub(crate) fn effective_tool_calls(&self) -> Vec<ScriptedToolCall> {
        let truncate = self.fault == Some(LlmFault::TruncatedToolArguments);
        self.tool_calls
            .iter()
            .map(|c| {
                let mut c = c.clone();
                if truncate {
                    let cut: String = c.arguments.chars().take(c.arguments.chars().count() / 2).collect();
                    c.arguments = cut;
                }
                c
            })
            .collect()
    }

    pub(crate) fn fragments(&self, arguments: &str) -> Vec<String> {
        let n = self.argument_fragment_len.max(1);
        let chars: Vec<char> = arguments.chars().collect();
        chars.chunks(n).map(|c| c.iter().collect()).collect()
    }
}

fn split_tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_whitespace() && !cur.trim().is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A request an LLM emulator received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// Request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Headers as lowercase (name, value) pairs.
    pub headers: Vec<(String, String)>,
    /// Parsed body (`Value::Null` if it was not JSON).
    pub body: Value,
    /// HTTP status the emulator answered with (0 while still streaming or never answered).
    pub status: u16,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// One SSE event to send, already framed.
pub(crate) enum Frame {
    Data(String),
    /// Abort the HTTP body (the client sees a cut connection).
    Cut,
    /// Stop sending but keep the connection open until shutdown.
    Stall,
}

/// Streams framed events with the scripted timing into an HTTP body channel.
pub(crate) async fn pump(
    frames: Vec<Frame>,
    ttft: Duration,
    token_delay: Duration,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    cancel: CancellationToken,
) {
    for (i, frame) in frames.into_iter().enumerate() {
        let delay = if i == 0 { ttft } else { token_delay };
        if !delay.is_zero() && crate::common::or_cancelled(&cancel, tokio::time::sleep(delay)).await.is_none() {
            return;
        }
        match frame {
            Frame::Data(s) => {
                if tx.send(Ok(Bytes::from(s))).await.is_err() {
                    tracing::debug!("llm emulator: client went away mid-stream");
                    return;
                }
            }
            Frame::Cut => {
                // Let hyper flush what was already sent, so the client sees a cut after data.
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "emulated cut"))).await;
                return;
            }
            Frame::Stall => {
                cancel.cancelled().await;
                return;
            }
        }
    }
}

/// Applies the mid-stream faults to a list of framed events.
pub(crate) fn apply_stream_fault(
    mut frames: Vec<Frame>,
    fault: Option<&LlmFault>,
    malformed: &str,
    error_frame: String,
) -> Vec<Frame> {
    match fault {
        Some(LlmFault::CloseMidStream { after_events }) => {
            frames.truncate(*after_events);
            frames.push(Frame::Cut);
        }
        Some(LlmFault::MalformedData { after_events }) => {
            let at = (*after_events).min(frames.len());
            frames.insert(at, Frame::Data(malformed.to_string()));
        }
        Some(LlmFault::StreamError { after_events }) => {
            frames.truncate(*after_events);
            frames.push(Frame::Data(error_frame));
        }
        Some(LlmFault::Stall { after_events }) => {
            frames.truncate(*after_events);
            frames.push(Frame::Stall);
        }
        _ => {}
    }
    frames
}

/// What the demo responders look at: the tail of the conversation, provider-neutral.
pub(crate) enum LastTurn {
    /// The latest message carries a tool result with this content.
    ToolResult(String),
    /// The latest message is the user speaking.
    User(String),
    /// Nothing to go on (no messages, or an assistant message last).
    Nothing,
}

/// Shared call-center logic behind `openai::call_center_responder` and
/// `anthropic::call_center_responder`.
pub(crate) fn call_center_decision(last: LastTurn, declared_tools: &[String], user_turns: usize) -> Scripted {
    let has_tool = |name: &str| declared_tools.iter().any(|t| t == name);
    match last {
        LastTurn::ToolResult(content) => Scripted::text(&describe_tool_result(&content)),
        LastTurn::User(text) => {
            let lower = text.to_lowercase();
            if ["bye", "goodbye", "that's all", "thats all", "hang up"].iter().any(|w| lower.contains(w)) {
                if has_tool("end_call") {
                    return Scripted::tool_call("end_call", &serde_json::json!({"reason": "caller said goodbye"}));
                }
                return Scripted::text("Thank you for calling. Goodbye!");
            }
            if let Some(order_id) = find_order_number(&text) {
                if has_tool("check_order_status") {
                    return Scripted::tool_call("check_order_status", &serde_json::json!({"order_id": order_id}));
                }
                return Scripted::text(&format!("I can't look up order {order_id} right now, sorry."));
            }
            if user_turns <= 1
                && ["hello", "hi", "hey"].iter().any(|w| lower.split(|c: char| !c.is_alphanumeric()).any(|t| t == *w))
            {
                return Scripted::text("Hello, thanks for calling. How can I help you today?");
            }
            Scripted::text("I can help you check the status of an order. What is your order number?")
        }
        LastTurn::Nothing => Scripted::text("Hello, thanks for calling. How can I help you today?"),
    }
}

/// Finds an order number: a token with at least three digits (letters and dashes allowed),
/// or a run of spoken digits split by spaces ("1 2 3 4").
pub(crate) fn find_order_number(text: &str) -> Option<String> {
    let tokens: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '.' || c == '?' || c == '!' || c == '#' || c == ':')
        .map(|t| t.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(t) = tokens.iter().find(|t| t.chars().filter(char::is_ascii_digit).count() >= 3) {
        return Some(t.to_uppercase());
    }
    // Speech recognizers often produce digits one by one: join consecutive single digits.
    let mut run = String::new();
    for t in &tokens {
        if t.len() == 1 && t.chars().all(|c| c.is_ascii_digit()) {
            run.push_str(t);
        } else if run.len() >= 3 {
            return Some(run);
        } else {
            run.clear();
        }
    }
    (run.len() >= 3).then_some(run)
}

fn describe_tool_result(content: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(content) else {
        return format!("Here is what I found: {}.", content.trim().trim_end_matches('.'));
    };
    let field =
        |k: &str| v.get(k).and_then(|x| x.as_str().map(str::to_string).or_else(|| x.as_i64().map(|n| n.to_string())));
    if let Some(err) = field("error") {
        return format!("Sorry, I couldn't find that order: {err}.");
    }
    match (field("order_id"), field("status")) {
        (Some(id), Some(status)) => {
            let mut s = format!("Your order {id} is {status}.");
            if let Some(eta) = field("eta").or_else(|| field("estimated_delivery")) {
                s.push_str(&format!(" It should arrive {eta}."));
            }
            s.push_str(" Is there anything else I can help you with?");
            s
        }
        (None, Some(status)) => {
            format!("The order is {status}. Is there anything else I can help you with?")
        }
        _ => format!("Here is what I found: {v}."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_spaces() {
        assert_eq!(split_tokens("Sure, one moment."), vec!["Sure,", " one", " moment."]);
        assert_eq!(Scripted::text("a b").full_text(), "a b");
    }

    #[test]
    fn order_numbers() {
        assert_eq!(find_order_number("my order is 12345 please").as_deref(), Some("12345"));
        assert_eq!(find_order_number("order A-1234.").as_deref(), Some("A-1234"));
        assert_eq!(find_order_number("it's 4 5 6 7 thanks").as_deref(), Some("4567"));
        assert_eq!(find_order_number("hello there"), None);
    }
}
