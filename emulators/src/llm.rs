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
    /// The latest message carries a tool result.
    ToolResult {
        /// The tool's name, when the assistant message that made the call declares it.
        name: Option<String>,
        /// The result content as sent.
        content: String,
    },
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
        LastTurn::ToolResult { name, content } => Scripted::text(&describe_tool_result(name.as_deref(), &content)),
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

/// A natural sentence about a tool result, in either the phone bot's shape
/// (`{"success": true, "data": {…}}` / `{"success": false, "error": "…"}`) or the plain one
/// (the data object itself, or `{"error": "…"}`).
pub(crate) fn describe_tool_result(name: Option<&str>, content: &str) -> String {
    const MORE: &str = "Is there anything else I can help you with?";
    let Ok(v) = serde_json::from_str::<Value>(content) else {
        let text = content.trim().trim_end_matches('.');
        return if text.is_empty() { format!("All done. {MORE}") } else { format!("{text}. {MORE}") };
    };
    let error = match v.get("success").and_then(Value::as_bool) {
        Some(false) => Some(v.get("error").map_or_else(|| "something went wrong".to_string(), scalar_text)),
        _ => v.get("error").filter(|e| !e.is_null()).map(scalar_text),
    };
    if let Some(err) = error {
        let err = err.trim_end_matches('.');
        return match name {
            Some("check_order_status") => format!("Sorry, I couldn't find that order: {err}."),
            Some("transfer_to_human") => format!("Sorry, I couldn't transfer you: {err}. {MORE}"),
            _ => format!("Sorry, that didn't work: {err}. {MORE}"),
        };
    }
    let data = match v.get("success") {
        Some(_) => v.get("data").cloned().unwrap_or(Value::Null),
        None => v.clone(),
    };
    let field = |k: &str| data.get(k).filter(|x| !x.is_null()).map(scalar_text).filter(|s| !s.is_empty());
    if let Some(status) = field("status") {
        let mut s = match field("order_id") {
            Some(id) => format!("Your order {id} is {status}."),
            None => format!("The order is {status}."),
        };
        if let Some(eta) = field("eta").or_else(|| field("estimated_delivery")) {
            s.push_str(&format!(" It should arrive {eta}."));
        }
        s.push(' ');
        s.push_str(MORE);
        return s;
    }
    if let Some(id) = field("ticket_id") {
        return format!("I've opened support ticket {id} for you. {MORE}");
    }
    if let Some(time) = field("time").or_else(|| field("preferred_time")) {
        let to = field("phone").map(|p| format!(" at {p}")).unwrap_or_default();
        return format!("I've scheduled a callback for {time}{to}. {MORE}");
    }
    if field("transferred_to").is_some() {
        return "Connecting you to a member of our team now.".to_string();
    }
    if let Some(name) = field("name") {
        return format!("Thanks, {name}, I found your account. How can I help you today?");
    }
    format!("All done. {MORE}")
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The system prompt of the phone bot's post-call summary request starts like this (see
/// `examples/phone-bot/src/fleet/workflow.rs`); both spellings are accepted.
const SUMMARY_MARKERS: [&str; 2] = ["summarise customer-service phone calls", "summarize customer-service phone calls"];

/// Answers the phone bot's post-call summary request (recognised by its system prompt) with the
/// JSON the workflow expects: `{"summary", "sentiment", "resolved"}`, derived from the
/// transcript the request carries (`role: text` lines).
pub(crate) fn summary_answer(system: &str, transcript: &str) -> Option<Scripted> {
    let lower = system.to_lowercase();
    if !SUMMARY_MARKERS.iter().any(|m| lower.contains(m)) {
        return None;
    }
    let lines: Vec<(&str, &str)> =
        transcript.lines().filter_map(|l| l.split_once(':')).map(|(r, t)| (r.trim(), t.trim())).collect();
    let user: Vec<&str> = lines.iter().filter(|(r, _)| *r == "user").map(|(_, t)| *t).collect();
    let bot: Vec<&str> = lines.iter().filter(|(r, _)| *r != "user").map(|(_, t)| *t).collect();
    let all_user = user.join(" ").to_lowercase();
    let all_bot = bot.join(" ").to_lowercase();
    let order = find_order_number(&user.join(" "));
    let summary = match (user.first(), &order) {
        (None, _) => "The caller did not say anything. No action was taken.".to_string(),
        (Some(_), Some(id)) => {
            let outcome = bot
                .iter()
                .find(|t| t.contains(id.as_str()))
                .map_or_else(|| "The agent looked it up.".to_string(), |t| format!("The agent said: \"{t}\""));
            format!("The caller asked about order {id}. {outcome}")
        }
        (Some(first), None) => format!("The caller said: \"{first}\". The agent assisted."),
    };
    let negative = ["angry", "terrible", "awful", "ridiculous", "frustrat", "complain", "worst"];
    let positive = ["thank", "great", "perfect", "awesome", "appreciate", "wonderful"];
    let score = positive.iter().filter(|w| all_user.contains(*w)).count() as i64
        - negative.iter().filter(|w| all_user.contains(*w)).count() as i64;
    let sentiment = match score {
        s if s > 0 => "positive",
        0 => "neutral",
        _ => "negative",
    };
    let unresolved = ["couldn't", "could not", "sorry", "transfer", "connecting you"];
    let resolved = !user.is_empty() && !unresolved.iter().any(|w| all_bot.contains(w));
    let answer = serde_json::json!({"summary": summary, "sentiment": sentiment, "resolved": resolved});
    Some(Scripted::tokens([answer.to_string()]))
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
    fn tool_results_in_both_shapes() {
        let bot = r#"{"success":true,"data":{"order_id":"12345","status":"shipped","eta":"tomorrow"}}"#;
        let plain = r#"{"order_id":"12345","status":"shipped","eta":"tomorrow"}"#;
        let want =
            "Your order 12345 is shipped. It should arrive tomorrow. Is there anything else I can help you with?";
        assert_eq!(describe_tool_result(Some("check_order_status"), bot), want);
        assert_eq!(describe_tool_result(None, plain), want);
        let failed = r#"{"success":false,"error":"no order 00000 was found"}"#;
        assert_eq!(
            describe_tool_result(Some("check_order_status"), failed),
            "Sorry, I couldn't find that order: no order 00000 was found."
        );
        let plain_err = r#"{"error":"timed out after 5s"}"#;
        assert!(
            describe_tool_result(Some("lookup_customer"), plain_err).starts_with("Sorry, that didn't work: timed out")
        );
        let ticket = r#"{"success":true,"data":{"ticket_id":"T-9","priority":"high"}}"#;
        assert!(describe_tool_result(Some("create_support_ticket"), ticket).contains("ticket T-9"));
        let cb = r#"{"success":true,"data":{"callback_id":"CB-1","phone":"+1555","time":"3pm"}}"#;
        assert!(describe_tool_result(None, cb).contains("callback for 3pm at +1555"));
        let who = r#"{"success":true,"data":{"customer_id":"C-1","name":"Dana"}}"#;
        assert!(describe_tool_result(None, who).starts_with("Thanks, Dana"));
        for odd in ["", "not json", "[1,2]", "null", r#"{"success":true}"#] {
            let s = describe_tool_result(None, odd);
            assert!(!s.contains('{') && s.ends_with('?'), "{odd:?} -> {s}");
        }
    }

    #[test]
    fn summary_request_gets_workflow_json() {
        let system = "You summarise customer-service phone calls. Answer with JSON only: {...}";
        let transcript = "bot: Hello.\nuser: My order number is 1 2 3 4 5.\nbot: Your order 12345 is shipped.\nuser: Thank you, goodbye.";
        let s = summary_answer(system, transcript).map(|s| s.full_text()).unwrap_or_default();
        let v: Value = serde_json::from_str(&s).unwrap_or(Value::Null);
        assert!(v["summary"].as_str().is_some_and(|t| t.contains("12345")), "{v}");
        assert_eq!(v["sentiment"], "positive");
        assert_eq!(v["resolved"], true);
        assert!(summary_answer("You are Ava, a phone agent.", transcript).is_none());
        let empty = summary_answer(system, "").map(|s| s.full_text()).unwrap_or_default();
        assert!(serde_json::from_str::<Value>(&empty).is_ok_and(|v| v["resolved"] == false));
    }

    #[test]
    fn order_numbers() {
        assert_eq!(find_order_number("my order is 12345 please").as_deref(), Some("12345"));
        assert_eq!(find_order_number("order A-1234.").as_deref(), Some("A-1234"));
        assert_eq!(find_order_number("it's 4 5 6 7 thanks").as_deref(), Some("4567"));
        assert_eq!(find_order_number("hello there"), None);
    }
}

/// Configuration of the OpenAI-compatible and Anthropic emulators (one shape: they differ only
/// in wire format, not in what can be scripted).
#[derive(Clone)]
pub struct LlmEmulatorConfig {
    /// Expected API key (`Authorization: Bearer` for OpenAI, `x-api-key` for Anthropic); `None`
    /// accepts anything.
    pub api_key: Option<String>,
    /// Responses served in order, one per request.
    pub script: Vec<Scripted>,
    /// Used when the script queue is empty.
    pub responder: Option<Responder>,
    /// Reject histories the real API rejects (unanswered tool calls; for Anthropic also empty
    /// text blocks), with 400.
    pub validate_history: bool,
    /// Answer when neither the queue nor a responder has one.
    pub fallback_text: String,
}

impl Default for LlmEmulatorConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            script: Vec::new(),
            responder: None,
            validate_history: true,
            fallback_text: "This is a simulated response.".to_string(),
        }
    }
}

impl std::fmt::Debug for LlmEmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmEmulatorConfig")
            .field("api_key", &self.api_key)
            .field("script", &self.script)
            .field("responder", &self.responder.as_ref().map(|_| "<fn>"))
            .field("validate_history", &self.validate_history)
            .finish()
    }
}

impl LlmEmulatorConfig {
    /// Config serving `script` in order.
    pub fn with_script(script: Vec<Scripted>) -> Self {
        Self { script, ..Self::default() }
    }

    /// Sets the expected API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the responder used when the queue is empty.
    pub fn with_responder(mut self, responder: impl Fn(&Value) -> Scripted + Send + Sync + 'static) -> Self {
        self.responder = Some(Arc::new(responder));
        self
    }
}
