//! OpenAI Chat Completions emulator (`POST /v1/chat/completions`, SSE streaming).
//!
//! Checks `Authorization: Bearer <key>` (401 `invalid_api_key` when configured and wrong),
//! validates the body like the real API does for the mistakes a voice engine makes (bad
//! JSON, missing `model`/`messages`, an assistant `tool_calls` message not followed by a
//! `tool` message per id), then streams `chat.completion.chunk` objects as `data:` lines
//! ending with `data: [DONE]`: a role chunk, content pieces, tool-call deltas keyed by
//! `index` (header with id/type/name and empty arguments, then argument fragments),
//! a finish chunk (`stop` / `tool_calls`) and, with `stream_options.include_usage`, a usage
//! chunk with `choices: []`. Non-streaming requests get a `chat.completion` object.
//!
//! Responses come from the script queue, then from the [`Responder`], then a fixed
//! fallback sentence.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::{Recorder, Server, header_pairs, header_str, token_id, unix_secs};
use crate::llm::{Frame, LastTurn, apply_stream_fault, call_center_decision, pump, summary_answer};
pub use crate::llm::{LlmFault, RecordedRequest, Responder, Scripted, ScriptedToolCall, ToolCallStyle};
use voxline_pipeline::sync::lock;

/// Emulator configuration (shared with the Anthropic emulator).
pub type OpenAiConfig = crate::llm::LlmEmulatorConfig;
struct Inner {
    cfg: OpenAiConfig,
    queue: Mutex<VecDeque<Scripted>>,
    rec: Recorder<Vec<RecordedRequest>>,
    cancel: CancellationToken,
}

/// A running OpenAI-compatible emulator.
pub struct OpenAiEmulator {
    inner: Arc<Inner>,
    server: Server,
}

impl std::fmt::Debug for OpenAiEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmulator").field("addr", &self.server.addr()).finish()
    }
}

impl OpenAiEmulator {
    /// Binds 127.0.0.1:0 and serves `/v1/chat/completions`.
    pub fn start(cfg: OpenAiConfig) -> io::Result<Self> {
        let cancel = CancellationToken::new();
        let queue = Mutex::new(cfg.script.iter().cloned().collect());
        let inner = Arc::new(Inner { cfg, queue, rec: Recorder::new(Vec::new()), cancel: cancel.clone() });
        let router = Router::new()
            .route("/v1/chat/completions", post(completions))
            .fallback(not_found)
            .with_state(inner.clone());
        let server = Server::start("openai", router, cancel)?;
        Ok(Self { inner, server })
    }

    /// `http://127.0.0.1:PORT/v1`; clients post to `{base}/chat/completions`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.server.addr())
    }

    /// The bound address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.rec.snapshot()
    }

    /// Waits until `pred` holds on the received requests, or `timeout` passes.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&[RecordedRequest]) -> bool,
        timeout: Duration,
    ) -> Option<Vec<RecordedRequest>> {
        self.inner.rec.wait_for(|r| pred(r), timeout).await
    }

    /// Appends a response to the script queue.
    pub fn enqueue(&self, scripted: Scripted) {
        lock(&self.inner.queue).push_back(scripted);
    }

    /// Responses still queued.
    pub fn pending(&self) -> usize {
        lock(&self.inner.queue).len()
    }

    /// Stops the server and ends open streams.
    pub async fn shutdown(mut self) {
        self.server.shutdown().await;
    }
}

fn error_response(status: StatusCode, message: &str, ty: &str, param: Option<&str>, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": ty, "param": param, "code": code}});
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    if let Ok(v) = format!("req_{}", token_id(24)).parse() {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn not_found(uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("Invalid URL (POST {})", uri.path()),
        "invalid_request_error",
        None,
        None,
    )
}

/// Finds the first assistant `tool_calls` id with no `tool` answer before the next
/// user/assistant message.
fn unanswered_tool_call(messages: &[Value]) -> Option<(usize, String)> {
    for (i, m) in messages.iter().enumerate() {
        if m.get("role").and_then(Value::as_str) != Some("assistant") {
            continue;
        }
        let Some(calls) = m.get("tool_calls").and_then(Value::as_array) else {
            continue;
        };
        let answered: Vec<&str> = messages[i + 1..]
            .iter()
            .take_while(|n| n.get("role").and_then(Value::as_str) == Some("tool"))
            .filter_map(|n| n.get("tool_call_id").and_then(Value::as_str))
            .collect();
        for c in calls {
            let id = c.get("id").and_then(Value::as_str).unwrap_or("");
            if !answered.contains(&id) {
                return Some((i, id.to_string()));
            }
        }
    }
    None
}

async fn completions(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let idx = inner.rec.update(|r| {
        r.push(RecordedRequest {
            path: "/v1/chat/completions".into(),
            headers: header_pairs(&headers),
            body: parsed.clone().unwrap_or(Value::Null),
            status: 0,
        });
        r.len() - 1
    });
    let resp = handle(&inner, &headers, parsed).await;
    let status = resp.status().as_u16();
    inner.rec.update(|r| {
        if let Some(req) = r.get_mut(idx) {
            req.status = status;
        }
    });
    tracing::debug!(status, "openai emulator answered");
    resp
}

async fn handle(inner: &Arc<Inner>, headers: &HeaderMap, parsed: Option<Value>) -> Response {
    if let Some(expected) = &inner.cfg.api_key {
        let presented = header_str(headers, "authorization").and_then(|a| a.strip_prefix("Bearer ")).map(str::trim);
        if presented != Some(expected.as_str()) {
            let msg = match presented {
                None => "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".to_string(),
                Some(k) => {
                    let tail: String = k.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
                    format!("Incorrect API key provided: sk-...{tail}. You can find your API key at https://platform.openai.com/account/api-keys.")
                }
            };
            let code = presented.map(|_| "invalid_api_key");
            return error_response(StatusCode::UNAUTHORIZED, &msg, "invalid_request_error", None, code);
        }
    }
    let Some(req) = parsed.filter(Value::is_object) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            "invalid_request_error",
            None,
            None,
        );
    };
    if req.get("model").and_then(Value::as_str).is_none() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            "invalid_request_error",
            None,
            None,
        );
    }
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'messages'.",
            "invalid_request_error",
            Some("messages"),
            Some("missing_required_parameter"),
        );
    };
    if messages.is_empty() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "invalid_request_error",
            Some("messages"),
            Some("empty_array"),
        );
    }
    if inner.cfg.validate_history
        && let Some((i, id)) = unanswered_tool_call(messages)
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            &format!(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {id}"
            ),
            "invalid_request_error",
            Some(&format!("messages.[{}].role", i + 1)),
            None,
        );
    }

    let scripted = {
        let next = lock(&inner.queue).pop_front();
        match (next, &inner.cfg.responder) {
            (Some(s), _) => s,
            (None, Some(r)) => r(&req),
            (None, None) => Scripted::text(&inner.cfg.fallback_text),
        }
    };

    match &scripted.fault {
        Some(LlmFault::NeverAnswer) => {
            inner.cancel.cancelled().await;
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down", "server_error", None, None);
        }
        Some(LlmFault::ServerError) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            );
        }
        Some(LlmFault::RateLimited { retry_after_secs }) => {
            let mut resp = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests. Please try again later.",
                "requests",
                Some("requests"),
                Some("rate_limit_exceeded"),
            );
            let h = resp.headers_mut();
            if let Ok(v) = retry_after_secs.to_string().parse() {
                h.insert("retry-after", v);
            }
            if let Ok(v) = (retry_after_secs * 1000).to_string().parse() {
                h.insert("retry-after-ms", v);
            }
            h.insert("x-ratelimit-remaining-requests", header::HeaderValue::from_static("0"));
            return resp;
        }
        Some(LlmFault::Overloaded) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
                None,
            );
        }
        Some(LlmFault::HttpStatus { status, message }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let ty = if status.is_server_error() { "server_error" } else { "invalid_request_error" };
            return error_response(status, message, ty, None, None);
        }
        _ => {}
    }

    let model = req.get("model").and_then(Value::as_str).unwrap_or("gpt-emulator").to_string();
    let prompt_tokens = (req.get("messages").map(|m| m.to_string().len()).unwrap_or(0) / 4).max(1) as u64;
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = req.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let r =
        Render { id: format!("chatcmpl-{}", token_id(29)), created: unix_secs(), model, include_usage, prompt_tokens };
    if !stream {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r.whole(&scripted).to_string())
            .into_response();
    }
    let frames = apply_stream_fault(
        r.frames(&scripted),
        scripted.fault.as_ref(),
        "data: {\"id\":\"chatcmpl-broken\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"bro\n\n",
        sse(
            &json!({"error": {"message": "The server had an error while processing your request. Sorry about that!", "type": "server_error", "param": null, "code": null}}),
        ),
    );
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(pump(frames, scripted.ttft, scripted.token_delay, tx, inner.cancel.clone()));
    let body =
        Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    if let Ok(v) = format!("req_{}", token_id(24)).parse() {
        h.insert("x-request-id", v);
    }
    resp
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

struct Render {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    prompt_tokens: u64,
}

impl Render {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_emulator",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        sse(&v)
    }

    fn completion_tokens(s: &Scripted) -> u64 {
        (s.text.len() + s.tool_calls.iter().map(|c| s.fragments(&c.arguments).len() + 1).sum::<usize>()).max(1) as u64
    }

    fn usage(&self, s: &Scripted) -> Value {
        let completion = Self::completion_tokens(s);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        })
    }

    fn finish_reason(s: &Scripted) -> String {
        s.stop_reason.clone().unwrap_or_else(|| if s.tool_calls.is_empty() { "stop" } else { "tool_calls" }.to_string())
    }

    fn call_ids(calls: &[ScriptedToolCall]) -> Vec<String> {
        calls.iter().map(|c| c.id.clone().unwrap_or_else(|| format!("call_{}", token_id(24)))).collect()
    }

    fn frames(&self, s: &Scripted) -> Vec<Frame> {
        let mut out = Vec::new();
        let calls = s.effective_tool_calls();
        let ids = Self::call_ids(&calls);
        let header = |i: usize| json!({"index": i, "id": ids[i], "type": "function", "function": {"name": calls[i].name, "arguments": ""}});
        let frag = |i: usize, f: &str| json!({"index": i, "function": {"arguments": f}});
        let mut first_header_in_role = false;
        if s.text.is_empty() && !calls.is_empty() && s.tool_call_style == ToolCallStyle::Sequential {
            // OpenAI puts the first call's header in the role chunk when there is no text.
            out.push(Frame::Data(self.chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [header(0)], "refusal": null}),
                None,
            )));
            first_header_in_role = true;
        } else {
            out.push(Frame::Data(self.chunk(json!({"role": "assistant", "content": "", "refusal": null}), None)));
        }
        for piece in &s.text {
            out.push(Frame::Data(self.chunk(json!({"content": piece}), None)));
        }
        let frags: Vec<Vec<String>> = calls.iter().map(|c| s.fragments(&c.arguments)).collect();
        match s.tool_call_style {
            ToolCallStyle::Sequential => {
                for (i, call_frags) in frags.iter().enumerate() {
                    if !(i == 0 && first_header_in_role) {
                        out.push(Frame::Data(self.chunk(json!({"tool_calls": [header(i)]}), None)));
                    }
                    for f in call_frags {
                        out.push(Frame::Data(self.chunk(json!({"tool_calls": [frag(i, f)]}), None)));
                    }
                }
            }
            ToolCallStyle::Interleaved => {
                for i in 0..calls.len() {
                    out.push(Frame::Data(self.chunk(json!({"tool_calls": [header(i)]}), None)));
                }
                let rounds = frags.iter().map(Vec::len).max().unwrap_or(0);
                for r in 0..rounds {
                    for (i, f) in frags.iter().enumerate() {
                        if let Some(f) = f.get(r) {
                            out.push(Frame::Data(self.chunk(json!({"tool_calls": [frag(i, f)]}), None)));
                        }
                    }
                }
            }
            ToolCallStyle::Batched => {
                if !calls.is_empty() {
                    let headers: Vec<Value> = (0..calls.len()).map(header).collect();
                    out.push(Frame::Data(self.chunk(json!({"tool_calls": headers}), None)));
                }
                let rounds = frags.iter().map(Vec::len).max().unwrap_or(0);
                for r in 0..rounds {
                    let entries: Vec<Value> =
                        frags.iter().enumerate().filter_map(|(i, f)| f.get(r).map(|f| frag(i, f))).collect();
                    out.push(Frame::Data(self.chunk(json!({"tool_calls": entries}), None)));
                }
            }
        }
        out.push(Frame::Data(self.chunk(json!({}), Some(&Self::finish_reason(s)))));
        if self.include_usage {
            let v = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": "fp_emulator",
                "choices": [],
                "usage": self.usage(s),
            });
            out.push(Frame::Data(sse(&v)));
        }
        out.push(Frame::Data("data: [DONE]\n\n".to_string()));
        out
    }

    fn whole(&self, s: &Scripted) -> Value {
        let calls = s.effective_tool_calls();
        let ids = Self::call_ids(&calls);
        let mut message = json!({"role": "assistant", "content": if s.text.is_empty() { Value::Null } else { Value::String(s.full_text()) }, "refusal": null});
        if !calls.is_empty() {
            message["tool_calls"] = calls
                .iter()
                .zip(&ids)
                .map(|(c, id)| json!({"id": id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect();
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_emulator",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": Self::finish_reason(s)}],
            "usage": self.usage(s),
        })
    }
}

fn is_role(m: &Value, role: &str) -> bool {
    m.get("role").and_then(Value::as_str) == Some(role)
}

fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

/// Demo responder for the phone-bot simulation, reading an OpenAI chat request:
///
/// - the phone bot's post-call summary request (recognised by its system prompt) → the JSON the
///   workflow expects, `{"summary", "sentiment", "resolved"}`, derived from the transcript;
/// - last message is a `tool` result, in the bot's `{"success": true, "data": {…}}` shape or the
///   plain one → speaks a sentence built from it (e.g. order `12345`, status `shipped`, eta
///   `tomorrow` → "Your order 12345 is shipped. It should arrive tomorrow. Is there anything else
///   I can help you with?"; a failure → "Sorry, …");
/// - last message is the user mentioning an order number (a token with ≥ 3 digits, or
///   spoken digits "1 2 3 4") and `check_order_status` is among `tools` → calls
///   `check_order_status` with `{"order_id": "…"}`;
/// - the user says goodbye → calls `end_call` if declared, else says goodbye;
/// - a greeting on the first turn → greets; anything else → asks for the order number.
pub fn call_center_responder() -> Responder {
    Arc::new(|req: &Value| {
        let messages = req.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
        let tools: Vec<String> = req
            .get("tools")
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let system = messages
            .iter()
            .filter(|m| matches!(m.get("role").and_then(Value::as_str), Some("system" | "developer")))
            .map(|m| content_text(m.get("content")))
            .collect::<Vec<_>>()
            .join("\n");
        let user_text = |m: &Value| content_text(m.get("content"));
        if let Some(answer) = summary_answer(
            &system,
            &messages.iter().rev().find(|m| is_role(m, "user")).map(user_text).unwrap_or_default(),
        ) {
            return answer;
        }
        let user_turns = messages.iter().filter(|m| is_role(m, "user")).count();
        let last = match messages.last() {
            Some(m) if is_role(m, "tool") => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or_default();
                let name = messages
                    .iter()
                    .filter_map(|a| a.get("tool_calls").and_then(Value::as_array))
                    .flatten()
                    .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
                    .and_then(|c| c.pointer("/function/name").and_then(Value::as_str))
                    .map(str::to_string);
                LastTurn::ToolResult { name, content: user_text(m) }
            }
            Some(m) if is_role(m, "user") => LastTurn::User(user_text(m)),
            _ => LastTurn::Nothing,
        };
        call_center_decision(last, &tools, user_turns)
    })
}
