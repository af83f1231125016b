//! Anthropic Messages emulator (`POST /v1/messages`, SSE streaming).
//!
//! Checks `x-api-key` (401 `authentication_error` when configured and wrong) and requires
//! `anthropic-version` (400 otherwise), validates the body (bad JSON, missing
//! `max_tokens`/`messages`, roles other than user/assistant, empty text blocks, a
//! `tool_use` without a matching `tool_result` in the next user message), then streams
//! the real event sequence with `event:` + `data:` lines: `message_start`, `ping`,
//! `content_block_start` (text, or tool_use with `input: {}`), `content_block_delta`
//! (`text_delta` / `input_json_delta`), `content_block_stop`, `message_delta` (stop_reason,
//! cumulative usage), `message_stop`. Non-streaming requests get a `message` object.

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

use crate::common::{Recorder, Server, header_pairs, header_str, token_id};
use crate::llm::{Frame, LastTurn, apply_stream_fault, call_center_decision, pump, summary_answer};
pub use crate::llm::{LlmFault, RecordedRequest, Responder, Scripted, ScriptedToolCall, ToolCallStyle};
use voxline_pipeline::sync::lock;

/// Emulator configuration (shared with the OpenAI-compatible emulator).
pub type AnthropicConfig = crate::llm::LlmEmulatorConfig;

struct Inner {
    cfg: AnthropicConfig,
    queue: Mutex<VecDeque<Scripted>>,
    rec: Recorder<Vec<RecordedRequest>>,
    cancel: CancellationToken,
}

/// A running Anthropic Messages emulator.
pub struct AnthropicEmulator {
    inner: Arc<Inner>,
    server: Server,
}

impl std::fmt::Debug for AnthropicEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicEmulator").field("addr", &self.server.addr()).finish()
    }
}

impl AnthropicEmulator {
    /// Binds 127.0.0.1:0 and serves `/v1/messages`.
    pub fn start(cfg: AnthropicConfig) -> io::Result<Self> {
        let cancel = CancellationToken::new();
        let queue = Mutex::new(cfg.script.iter().cloned().collect());
        let inner = Arc::new(Inner { cfg, queue, rec: Recorder::new(Vec::new()), cancel: cancel.clone() });
        let router = Router::new().route("/v1/messages", post(messages)).fallback(not_found).with_state(inner.clone());
        let server = Server::start("anthropic", router, cancel)?;
        Ok(Self { inner, server })
    }

    /// `http://127.0.0.1:PORT`; clients post to `{base}/v1/messages`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr())
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

fn error_response(status: StatusCode, ty: &str, message: &str) -> Response {
    let request_id = format!("req_{}", token_id(24));
    let body = json!({"type": "error", "error": {"type": ty, "message": message}, "request_id": request_id});
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    if let Ok(v) = request_id.parse() {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

async fn not_found(uri: Uri) -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found_error", &format!("Not found: {}", uri.path()))
}

fn blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    }
}

fn validate(messages: &[Value]) -> Option<String> {
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Some(format!("messages.{i}.role: Input should be 'user' or 'assistant'"));
        }
        if let Some(Value::String(s)) = m.get("content")
            && s.is_empty()
            && i + 1 != messages.len()
        {
            return Some(format!(
                "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
            ));
        }
        for (j, b) in blocks(m.get("content")).iter().enumerate() {
            if b.get("type").and_then(Value::as_str) == Some("text")
                && b.get("text").and_then(Value::as_str) == Some("")
            {
                return Some(format!("messages.{i}.content.{j}.text: text content blocks must be non-empty"));
            }
        }
        if role != "assistant" {
            continue;
        }
        let ids: Vec<String> = blocks(m.get("content"))
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
            .filter_map(|b| b.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        if ids.is_empty() {
            continue;
        }
        let next = messages.get(i + 1).map(|n| blocks(n.get("content"))).unwrap_or_default();
        let answered: Vec<&str> = next
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .filter_map(|b| b.get("tool_use_id").and_then(Value::as_str))
            .collect();
        let missing: Vec<&String> = ids.iter().filter(|id| !answered.contains(&id.as_str())).collect();
        if !missing.is_empty() {
            let list = missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            return Some(format!(
                "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {list}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                i + 1
            ));
        }
    }
    None
}

async fn messages(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let idx = inner.rec.update(|r| {
        r.push(RecordedRequest {
            path: "/v1/messages".into(),
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
    tracing::debug!(status, "anthropic emulator answered");
    resp
}

async fn handle(inner: &Arc<Inner>, headers: &HeaderMap, parsed: Option<Value>) -> Response {
    if let Some(expected) = &inner.cfg.api_key
        && header_str(headers, "x-api-key") != Some(expected.as_str())
    {
        return error_response(StatusCode::UNAUTHORIZED, "authentication_error", "invalid x-api-key");
    }
    if header_str(headers, "anthropic-version").is_none() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let Some(req) = parsed.filter(Value::is_object) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "There was an error parsing the body of your request. Please check that it is valid JSON.",
        );
    };
    if req.get("model").and_then(Value::as_str).is_none() {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", "model: Field required");
    }
    if req.get("max_tokens").and_then(Value::as_u64).is_none() {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", "max_tokens: Field required");
    }
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", "messages: Field required");
    };
    if messages.is_empty() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "messages: at least one message is required",
        );
    }
    if inner.cfg.validate_history
        && let Some(msg) = validate(messages)
    {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &msg);
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
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "api_error", "shutting down");
        }
        Some(LlmFault::ServerError) => {
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "Internal server error");
        }
        Some(LlmFault::RateLimited { retry_after_secs }) => {
            let mut resp = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization. Please try again later.",
            );
            if let Ok(v) = retry_after_secs.to_string().parse() {
                resp.headers_mut().insert("retry-after", v);
            }
            resp.headers_mut().insert("anthropic-ratelimit-requests-remaining", header::HeaderValue::from_static("0"));
            return resp;
        }
        Some(LlmFault::Overloaded) => {
            let status = StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return error_response(status, "overloaded_error", "Overloaded");
        }
        Some(LlmFault::HttpStatus { status, message }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let ty = match status.as_u16() {
                400 => "invalid_request_error",
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            return error_response(status, ty, message);
        }
        _ => {}
    }

    let r = Render {
        id: format!("msg_{}", token_id(24)),
        model: req.get("model").and_then(Value::as_str).unwrap_or("claude-emulator").to_string(),
        input_tokens: (messages.iter().map(|m| m.to_string().len()).sum::<usize>() / 4).max(1) as u64,
    };
    if !req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r.whole(&scripted).to_string())
            .into_response();
    }
    let frames = apply_stream_fault(
        r.frames(&scripted),
        scripted.fault.as_ref(),
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"bro\n\n",
        event("error", &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
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
        h.insert("request-id", v);
    }
    resp
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

struct Render {
    id: String,
    model: String,
    input_tokens: u64,
}

impl Render {
    fn output_tokens(s: &Scripted) -> u64 {
        (s.text.len() + s.tool_calls.iter().map(|c| s.fragments(&c.arguments).len() + 1).sum::<usize>()).max(1) as u64
    }

    fn stop_reason(s: &Scripted) -> String {
        s.stop_reason
            .clone()
            .unwrap_or_else(|| if s.tool_calls.is_empty() { "end_turn" } else { "tool_use" }.to_string())
    }

    fn ids(calls: &[ScriptedToolCall]) -> Vec<String> {
        calls.iter().map(|c| c.id.clone().unwrap_or_else(|| format!("toolu_{}", token_id(24)))).collect()
    }

    fn frames(&self, s: &Scripted) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut push = |name: &str, v: Value| out.push(Frame::Data(event(name, &v)));
        push(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1},
            }}),
        );
        let mut index = 0usize;
        let mut pinged = false;
        if !s.text.is_empty() {
            push(
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
            );
            // Anthropic sends its first ping right after the first block opens.
            push("ping", json!({"type": "ping"}));
            pinged = true;
            for piece in &s.text {
                push(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}),
                );
            }
            push("content_block_stop", json!({"type": "content_block_stop", "index": index}));
            index += 1;
        }
        let calls = s.effective_tool_calls();
        let ids = Self::ids(&calls);
        for (call, id) in calls.iter().zip(&ids) {
            push(
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": id, "name": call.name, "input": {}}}),
            );
            if !pinged {
                push("ping", json!({"type": "ping"}));
                pinged = true;
            }
            push(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            );
            for f in s.fragments(&call.arguments) {
                push(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": f}}),
                );
            }
            push("content_block_stop", json!({"type": "content_block_stop", "index": index}));
            index += 1;
        }
        if !pinged {
            push("ping", json!({"type": "ping"}));
        }
        push(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": Self::stop_reason(s), "stop_sequence": null}, "usage": {"output_tokens": Self::output_tokens(s)}}),
        );
        push("message_stop", json!({"type": "message_stop"}));
        out
    }

    fn whole(&self, s: &Scripted) -> Value {
        let mut content = Vec::new();
        if !s.text.is_empty() {
            content.push(json!({"type": "text", "text": s.full_text()}));
        }
        let calls = s.effective_tool_calls();
        for (c, id) in calls.iter().zip(Self::ids(&calls)) {
            let input: Value = serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
            content.push(json!({"type": "tool_use", "id": id, "name": c.name, "input": input}));
        }
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": content, "stop_reason": Self::stop_reason(s), "stop_sequence": null,
            "usage": {"input_tokens": self.input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": Self::output_tokens(s)},
        })
    }
}

fn text_of(content: Option<&Value>) -> String {
    blocks(content)
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Demo responder for the phone-bot simulation, reading an Anthropic Messages request.
///
/// Same behaviour as [`crate::openai::call_center_responder`]: a trailing user message with
/// `tool_result` blocks → a sentence built from the (first) result; a user mentioning an
/// order number with `check_order_status` among `tools` → a `tool_use` of
/// `check_order_status` with `{"order_id": "…"}`; goodbye → `end_call` if declared, else a
/// goodbye sentence; otherwise a greeting or a prompt for the order number.
pub fn call_center_responder() -> Responder {
    Arc::new(|req: &Value| {
        let messages = req.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
        let tools: Vec<String> = req
            .get("tools")
            .and_then(Value::as_array)
            .map(|ts| ts.iter().filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_string)).collect())
            .unwrap_or_default();
        let system = match req.get("system") {
            Some(Value::String(s)) => s.clone(),
            other => text_of(other),
        };
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| text_of(m.get("content")))
            .unwrap_or_default();
        if let Some(answer) = summary_answer(&system, &last_user) {
            return answer;
        }
        let user_turns = messages
            .iter()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some("user") && !text_of(m.get("content")).is_empty())
            .count();
        let last = match messages.last() {
            Some(m) if m.get("role").and_then(Value::as_str) == Some("user") => {
                let result = blocks(m.get("content"))
                    .into_iter()
                    .find(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"));
                match result {
                    Some(r) => {
                        let content = match r.get("content") {
                            Some(Value::String(s)) => s.clone(),
                            other => text_of(other),
                        };
                        let id = r.get("tool_use_id").and_then(Value::as_str).unwrap_or_default();
                        let name = messages
                            .iter()
                            .flat_map(|a| blocks(a.get("content")))
                            .find(|b| {
                                b.get("type").and_then(Value::as_str) == Some("tool_use")
                                    && b.get("id").and_then(Value::as_str) == Some(id)
                            })
                            .and_then(|b| b.get("name").and_then(Value::as_str).map(str::to_string));
                        LastTurn::ToolResult { name, content }
                    }
                    None => LastTurn::User(text_of(m.get("content"))),
                }
            }
            _ => LastTurn::Nothing,
        };
        call_center_decision(last, &tools, user_turns)
    })
}
