//! OpenAI Chat Completions streaming, and every server that speaks it (Azure OpenAI, Groq,
//! Together, Ollama, vLLM, llama.cpp): pick the server with [`OpenAiSettings::base_url`].
//!
//! Consumes `LlmRun`; produces `LlmResponseStart`, `LlmText`, `ToolCalls`, `LlmResponseEnd`
//! through the shared [`LlmService`] plumbing (retries, timeouts, fallback, metrics).
//!
//! Trade-offs: the request always streams with `stream_options.include_usage` (usage is then
//! lost when a stream is cut, which is acceptable for metrics). Tool calls are assembled by
//! `index` ([`ToolCallAccumulator`]) and released at `finish_reason`/`[DONE]`; a stream that
//! ends after `finish_reason` but without `[DONE]` is accepted, since some compatible servers
//! omit it. Only `choices[0]` is read (we never ask for `n > 1`).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use voxline_pipeline::{ChatMessage, LlmContext, Role};

use super::service::{
    LlmProvider, LlmService, LlmServiceSettings, StreamError, StreamItem, StreamParser, ToolChoice, check_base_url,
    resolve_key,
};
use super::sse::SseEvent;
use super::tool_calls::ToolCallAccumulator;
use crate::service::{ApiKey, ServiceConfigError};

/// Default base URL.
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Default model.
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4.1-mini";
/// Default environment variable holding the key.
pub const DEFAULT_OPENAI_KEY_ENV: &str = "OPENAI_API_KEY";
/// Default path appended to the base URL.
pub const DEFAULT_OPENAI_PATH: &str = "/chat/completions";

/// How the key is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OpenAiAuth {
    /// `Authorization: Bearer <key>` (OpenAI and most compatibles).
    #[default]
    Bearer,
    /// `api-key: <key>` (Azure OpenAI with resource keys).
    ApiKeyHeader,
}

/// Which body field carries the output-token cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenLimitField {
    /// `max_tokens`: understood by every compatible server.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`: required by OpenAI reasoning models.
    MaxCompletionTokens,
}

/// Settings of an [`OpenAiLlm`].
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// Base URL; the request goes to `{base_url}{path}`.
    pub base_url: String,
    /// Path after the base URL.
    pub path: String,
    /// Query parameters (Azure's `api-version`).
    pub query: Vec<(String, String)>,
    /// Model name (Azure classic ignores it; the deployment decides).
    pub model: String,
    /// The key; when `None` it is read from `api_key_env` at construction.
    pub api_key: Option<ApiKey>,
    /// Environment variable holding the key.
    pub api_key_env: String,
    /// Fail at construction without a key (off for local servers such as Ollama).
    pub require_api_key: bool,
    /// How the key is sent.
    pub auth: OpenAiAuth,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Output-token cap.
    pub max_tokens: Option<u32>,
    /// Which field carries `max_tokens`.
    pub max_tokens_field: TokenLimitField,
    /// Tool choice (sent only when tools are offered).
    pub tool_choice: ToolChoice,
    /// `parallel_tool_calls` (sent only when set and tools are offered).
    pub parallel_tool_calls: Option<bool>,
    /// Ask for a final usage chunk.
    pub include_usage: bool,
    /// Extra headers (e.g. `OpenAI-Project`).
    pub extra_headers: Vec<(String, String)>,
    /// Extra top-level body fields for server-specific options.
    pub extra_body: Map<String, Value>,
    /// Shared plumbing settings.
    pub service: LlmServiceSettings,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_OPENAI_BASE_URL.into(),
            path: DEFAULT_OPENAI_PATH.into(),
            query: Vec::new(),
            model: DEFAULT_OPENAI_MODEL.into(),
            api_key: None,
            api_key_env: DEFAULT_OPENAI_KEY_ENV.into(),
            require_api_key: true,
            auth: OpenAiAuth::Bearer,
            temperature: None,
            max_tokens: None,
            max_tokens_field: TokenLimitField::MaxTokens,
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: None,
            include_usage: true,
            extra_headers: Vec::new(),
            extra_body: Map::new(),
            service: LlmServiceSettings::default(),
        }
    }
}

impl OpenAiSettings {
    /// OpenAI itself with `model`.
    #[must_use]
    pub fn new(model: impl Into<String>) -> Self {
        Self { model: model.into(), ..Self::default() }
    }

    /// An OpenAI-compatible server (Groq, Together, Ollama, vLLM, llama.cpp) at `base_url`; the
    /// key is optional (read from `OPENAI_API_KEY` if set).
    #[must_use]
    pub fn compatible(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self { base_url: base_url.into(), model: model.into(), require_api_key: false, ..Self::default() }
    }

    /// Azure OpenAI (classic deployments): `{endpoint}/openai/deployments/{deployment}/chat/completions
    /// ?api-version=…` with an `api-key` header read from `AZURE_OPENAI_API_KEY`.
    #[must_use]
    pub fn azure(endpoint: impl Into<String>, deployment: &str, api_version: &str) -> Self {
        Self {
            base_url: endpoint.into(),
            path: format!("/openai/deployments/{deployment}/chat/completions"),
            query: vec![("api-version".into(), api_version.into())],
            model: deployment.into(),
            api_key_env: "AZURE_OPENAI_API_KEY".into(),
            auth: OpenAiAuth::ApiKeyHeader,
            ..Self::default()
        }
    }

    /// Set the key explicitly.
    #[must_use]
    pub fn with_api_key(mut self, key: impl Into<ApiKey>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Set the base URL.
    #[must_use]
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }
}

/// The OpenAI provider; [`OpenAiLlm::new`] gives the processor.
#[derive(Debug)]
pub struct OpenAiLlm {
    settings: OpenAiSettings,
    url: String,
    key: Option<ApiKey>,
}

impl OpenAiLlm {
    /// Build the LLM processor. Fails when the key is required and missing (naming the
    /// environment variable) or the base URL is invalid.
    // The provider only ever runs inside the shared service, so `new` hands out the processor.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(settings: OpenAiSettings) -> Result<LlmService, ServiceConfigError> {
        let key = resolve_key(settings.api_key.as_ref(), &settings.api_key_env, settings.require_api_key)?;
        let base = check_base_url(&settings.base_url)?;
        let url = format!("{base}{}", settings.path);
        let service = settings.service.clone();
        LlmService::with_provider(Arc::new(Self { settings, url, key }), service)
    }

    /// The request body for `ctx` (public for benchmarks and tests).
    #[must_use]
    pub fn request_body(&self, ctx: &LlmContext) -> Value {
        let s = &self.settings;
        let mut body = Map::new();
        body.insert("model".into(), json!(s.model));
        body.insert("stream".into(), json!(true));
        if s.include_usage {
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        body.insert("messages".into(), Value::Array(ctx.messages.iter().map(message).collect()));
        if !ctx.tools.is_empty() {
            let tools: Vec<Value> = ctx
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": &*t.name, "description": &*t.description, "parameters": *t.parameters}})
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
            body.insert(
                "tool_choice".into(),
                match &s.tool_choice {
                    ToolChoice::Auto => json!("auto"),
                    ToolChoice::None => json!("none"),
                    ToolChoice::Required => json!("required"),
                    ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
                },
            );
            if let Some(p) = s.parallel_tool_calls {
                body.insert("parallel_tool_calls".into(), json!(p));
            }
        }
        if let Some(t) = s.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(m) = s.max_tokens {
            let field = match s.max_tokens_field {
                TokenLimitField::MaxTokens => "max_tokens",
                TokenLimitField::MaxCompletionTokens => "max_completion_tokens",
            };
            body.insert(field.into(), json!(m));
        }
        for (k, v) in &s.extra_body {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

fn message(m: &ChatMessage) -> Value {
    match m.role {
        Role::System => json!({"role": "system", "content": m.content}),
        Role::User => json!({"role": "user", "content": m.content}),
        Role::Tool => {
            json!({"role": "tool", "tool_call_id": m.tool_call_id.as_deref().unwrap_or(""), "content": m.content})
        }
        Role::Assistant => {
            let content = if m.content.is_empty() { Value::Null } else { json!(m.content) };
            if m.tool_calls.is_empty() {
                json!({"role": "assistant", "content": content})
            } else {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({"id": &*c.id, "type": "function", "function": {"name": &*c.name, "arguments": &*c.arguments}}))
                    .collect();
                json!({"role": "assistant", "content": content, "tool_calls": calls})
            }
        }
    }
}

impl LlmProvider for OpenAiLlm {
    fn name(&self) -> &'static str {
        "openai_llm"
    }

    fn key_env(&self) -> &str {
        &self.settings.api_key_env
    }

    fn body(&self, ctx: &LlmContext) -> Bytes {
        Bytes::from(self.request_body(ctx).to_string())
    }

    fn request(&self, client: &reqwest::Client, body: Bytes) -> reqwest::RequestBuilder {
        let mut req = client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body);
        if !self.settings.query.is_empty() {
            req = req.query(&self.settings.query);
        }
        if let Some(key) = &self.key {
            req = match self.settings.auth {
                OpenAiAuth::Bearer => req.bearer_auth(key.expose()),
                OpenAiAuth::ApiKeyHeader => req.header("api-key", key.expose()),
            };
        }
        for (k, v) in &self.settings.extra_headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req
    }

    fn parser(&self) -> Box<dyn StreamParser> {
        Box::new(OpenAiStreamParser::default())
    }
}

/// Parses `chat.completion.chunk` events (public for benchmarks).
#[derive(Debug, Default)]
pub struct OpenAiStreamParser {
    calls: ToolCallAccumulator,
    finished: bool,
    calls_emitted: bool,
}

impl OpenAiStreamParser {
    fn release_calls(&mut self, out: &mut Vec<StreamItem>) -> Result<(), StreamError> {
        if !self.calls_emitted && !self.calls.is_empty() {
            self.calls_emitted = true;
            out.push(StreamItem::ToolCalls(self.calls.finish()?));
        }
        Ok(())
    }
}

fn usage_item(u: &Value) -> Option<StreamItem> {
    let prompt_tokens = u.get("prompt_tokens").and_then(Value::as_u64)?;
    let completion_tokens = u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0);
    Some(StreamItem::Usage { prompt_tokens, completion_tokens })
}

impl StreamParser for OpenAiStreamParser {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamItem>) -> Result<(), StreamError> {
        let data = event.data.trim();
        if data.starts_with("[DONE]") {
            self.release_calls(out)?;
            out.push(StreamItem::Done);
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            let head: String = data.chars().take(80).collect();
            StreamError::Malformed(format!("{e} in {head:?}"))
        })?;
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            let kind = err.get("type").and_then(Value::as_str).unwrap_or("error").to_string();
            let message = err.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_string();
            let retryable = matches!(kind.as_str(), "server_error" | "overloaded_error" | "rate_limit_exceeded");
            return Err(StreamError::Provider { kind, message, retryable });
        }
        if let Some(choice) = chunk.get("choices").and_then(Value::as_array).and_then(|c| c.first()) {
            if let Some(delta) = choice.get("delta") {
                if let Some(text) = delta.get("content").and_then(Value::as_str)
                    && !text.is_empty()
                {
                    out.push(StreamItem::Text(text.to_string()));
                }
                if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                    for entry in calls {
                        self.calls.apply(entry);
                    }
                }
            }
            if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                self.finished = true;
                self.release_calls(out)?;
            }
        }
        let usage = chunk.get("usage").filter(|u| !u.is_null()).or_else(|| chunk.pointer("/x_groq/usage"));
        if let Some(item) = usage.and_then(usage_item) {
            out.push(item);
        }
        Ok(())
    }

    fn on_eof(&mut self, out: &mut Vec<StreamItem>) -> Result<bool, StreamError> {
        if self.finished {
            self.release_calls(out)?;
            out.push(StreamItem::Done);
        }
        Ok(self.finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxline_pipeline::{ToolCall, ToolSpec};

    fn ev(data: &str) -> SseEvent {
        SseEvent { data: data.into(), ..SseEvent::default() }
    }

    #[test]
    fn body_shape() {
        let llm = OpenAiLlm { settings: OpenAiSettings::new("m"), url: String::new(), key: None };
        let ctx = LlmContext {
            messages: vec![
                ChatMessage::text(Role::System, "sys"),
                ChatMessage::text(Role::User, "hi"),
                ChatMessage {
                    role: Role::Assistant,
                    content: String::new(),
                    tool_calls: vec![ToolCall { id: "c1".into(), name: "f".into(), arguments: "{}".into() }],
                    tool_call_id: None,
                    name: None,
                },
                ChatMessage { tool_call_id: Some("c1".into()), ..ChatMessage::text(Role::Tool, "{\"ok\":true}") },
            ],
            tools: vec![ToolSpec {
                name: "f".into(),
                description: "d".into(),
                parameters: Arc::new(json!({"type": "object"})),
            }],
        };
        let b = llm.request_body(&ctx);
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["messages"][2]["content"], Value::Null);
        assert_eq!(b["messages"][2]["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(b["messages"][3]["tool_call_id"], "c1");
        assert_eq!(b["tools"][0]["function"]["parameters"]["type"], "object");
        assert_eq!(b["tool_choice"], "auto");
    }

    #[test]
    fn chunks_to_items() {
        let mut p = OpenAiStreamParser::default();
        let mut out = Vec::new();
        for d in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
            "[DONE]",
        ] {
            p.on_event(&ev(d), &mut out).unwrap();
        }
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(out[0], StreamItem::Text("Hi".into()));
        assert!(matches!(&out[1], StreamItem::ToolCalls(c) if c.len() == 1));
        assert_eq!(out[2], StreamItem::Usage { prompt_tokens: 5, completion_tokens: 2 });
        assert_eq!(out[3], StreamItem::Done);
        assert!(matches!(
            p.on_event(&ev("{\"choices\":[{\"delta\":{\"content\":\"bro"), &mut out),
            Err(StreamError::Malformed(_))
        ));
        let err = p.on_event(&ev(r#"{"error":{"type":"server_error","message":"boom"}}"#), &mut out).unwrap_err();
        assert!(matches!(err, StreamError::Provider { retryable: true, .. }));
    }
}
