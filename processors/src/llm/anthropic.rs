//! Anthropic Messages streaming (`POST {base}/v1/messages`).
//!
//! Consumes `LlmRun`; produces the same frames as the OpenAI service through the shared
//! [`LlmService`] plumbing, so a config switch ([`super::LlmProviderSettings`]) changes provider.
//!
//! Mapping from the provider-neutral context: system messages become the top-level `system`
//! field; tool results become `tool_result` blocks in a *user* message placed right after the
//! assistant message holding the matching `tool_use` blocks (consecutive same-role messages are
//! merged, so results come first, before any user text that followed); empty text is never
//! sent (a 400); a conversation that opens with the bot speaking gets a short user marker first.
//! Streamed `tool_use` input is assembled per block index from `input_json_delta` and parsed at
//! `content_block_stop`. An in-stream `overloaded_error` (like HTTP 529) is retried when nothing
//! was forwarded yet.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use voxline_pipeline::{LlmContext, Role, ToolCall};

use super::service::{
    LlmProvider, LlmService, LlmServiceSettings, StreamError, StreamItem, StreamParser, ToolChoice, check_base_url,
    resolve_key,
};
use super::sse::SseEvent;
use crate::service::{ApiKey, ServiceConfigError};

/// Default base URL.
pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// Default model.
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";
/// Default environment variable holding the key.
pub const DEFAULT_ANTHROPIC_KEY_ENV: &str = "ANTHROPIC_API_KEY";
/// The API version this client is written and tested against.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
/// Default output-token cap (required by the API); short, since replies are spoken.
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u32 = 1024;
/// User text inserted when a conversation opens with the assistant (the API wants a user first).
pub const CONVERSATION_START_MARKER: &str = "(call connected)";

/// Settings of an [`AnthropicLlm`].
#[derive(Debug, Clone)]
pub struct AnthropicSettings {
    /// Base URL; the request goes to `{base_url}/v1/messages`.
    pub base_url: String,
    /// Model id.
    pub model: String,
    /// The key; when `None` it is read from `api_key_env` at construction.
    pub api_key: Option<ApiKey>,
    /// Environment variable holding the key.
    pub api_key_env: String,
    /// `anthropic-version` header.
    pub version: String,
    /// Output-token cap.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Tool choice (sent only when tools are offered).
    pub tool_choice: ToolChoice,
    /// Extra headers (e.g. `anthropic-beta`).
    pub extra_headers: Vec<(String, String)>,
    /// Shared plumbing settings.
    pub service: LlmServiceSettings,
}

impl Default for AnthropicSettings {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_ANTHROPIC_BASE_URL.into(),
            model: DEFAULT_ANTHROPIC_MODEL.into(),
            api_key: None,
            api_key_env: DEFAULT_ANTHROPIC_KEY_ENV.into(),
            version: DEFAULT_ANTHROPIC_VERSION.into(),
            max_tokens: DEFAULT_ANTHROPIC_MAX_TOKENS,
            temperature: None,
            tool_choice: ToolChoice::Auto,
            extra_headers: Vec::new(),
            service: LlmServiceSettings::default(),
        }
    }
}

impl AnthropicSettings {
    /// Anthropic with `model`.
    #[must_use]
    pub fn new(model: impl Into<String>) -> Self {
        Self { model: model.into(), ..Self::default() }
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

/// The Anthropic provider; [`AnthropicLlm::new`] gives the processor.
#[derive(Debug)]
pub struct AnthropicLlm {
    settings: AnthropicSettings,
    url: String,
    key: ApiKey,
}

impl AnthropicLlm {
    /// Build the LLM processor. Fails when the key is missing (naming the environment variable)
    /// or the base URL is invalid.
    // The provider only ever runs inside the shared service, so `new` hands out the processor.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(settings: AnthropicSettings) -> Result<LlmService, ServiceConfigError> {
        let key = resolve_key(settings.api_key.as_ref(), &settings.api_key_env, true)?
            .ok_or_else(|| ServiceConfigError::MissingApiKey { env_var: settings.api_key_env.clone() })?;
        let url = format!("{}/v1/messages", check_base_url(&settings.base_url)?);
        let service = settings.service.clone();
        LlmService::with_provider(Arc::new(Self { settings, url, key }), service)
    }

    /// The request body for `ctx` (public for tests).
    #[must_use]
    pub fn request_body(&self, ctx: &LlmContext) -> Value {
        let s = &self.settings;
        let mut system = Vec::new();
        // (role, blocks) with consecutive same-role messages merged.
        let mut msgs: Vec<(&'static str, Vec<Value>)> = Vec::new();
        let mut push = |role: &'static str, block: Value| match msgs.last_mut() {
            Some((r, blocks)) if *r == role => blocks.push(block),
            _ => msgs.push((role, vec![block])),
        };
        for m in &ctx.messages {
            match m.role {
                Role::System => {
                    if !m.content.trim().is_empty() {
                        system.push(m.content.trim().to_string());
                    }
                }
                Role::User => {
                    if !m.content.trim().is_empty() {
                        push("user", json!({"type": "text", "text": m.content.trim()}));
                    }
                }
                Role::Tool => push(
                    "user",
                    json!({"type": "tool_result", "tool_use_id": m.tool_call_id.as_deref().unwrap_or(""), "content": m.content}),
                ),
                Role::Assistant => {
                    // A trailing space in the last assistant text is a 400 (prefill rule).
                    if !m.content.trim().is_empty() {
                        push("assistant", json!({"type": "text", "text": m.content.trim()}));
                    }
                    for c in &m.tool_calls {
                        let input = match serde_json::from_str::<Value>(&c.arguments) {
                            Ok(v @ Value::Object(_)) => v,
                            _ => json!({}),
                        };
                        push("assistant", json!({"type": "tool_use", "id": &*c.id, "name": &*c.name, "input": input}));
                    }
                }
            }
        }
        if msgs.first().is_some_and(|(r, _)| *r == "assistant") {
            msgs.insert(0, ("user", vec![json!({"type": "text", "text": CONVERSATION_START_MARKER})]));
        }
        if msgs.is_empty() {
            msgs.push(("user", vec![json!({"type": "text", "text": CONVERSATION_START_MARKER})]));
        }
        let messages: Vec<Value> =
            msgs.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
        let mut body = Map::new();
        body.insert("model".into(), json!(s.model));
        body.insert("max_tokens".into(), json!(s.max_tokens));
        body.insert("stream".into(), json!(true));
        if !system.is_empty() {
            body.insert("system".into(), json!(system.join("\n\n")));
        }
        body.insert("messages".into(), Value::Array(messages));
        if !ctx.tools.is_empty() {
            let tools: Vec<Value> = ctx
                .tools
                .iter()
                .map(|t| json!({"name": &*t.name, "description": &*t.description, "input_schema": *t.parameters}))
                .collect();
            body.insert("tools".into(), Value::Array(tools));
            body.insert(
                "tool_choice".into(),
                match &s.tool_choice {
                    ToolChoice::Auto => json!({"type": "auto"}),
                    ToolChoice::None => json!({"type": "none"}),
                    ToolChoice::Required => json!({"type": "any"}),
                    ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
                },
            );
        }
        if let Some(t) = s.temperature {
            body.insert("temperature".into(), json!(t));
        }
        Value::Object(body)
    }
}

impl LlmProvider for AnthropicLlm {
    fn name(&self) -> &'static str {
        "anthropic_llm"
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
            .header("x-api-key", self.key.expose())
            .header("anthropic-version", self.settings.version.as_str())
            .body(body);
        for (k, v) in &self.settings.extra_headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req
    }

    fn parser(&self) -> Box<dyn StreamParser> {
        Box::new(AnthropicStreamParser::default())
    }
}

#[derive(Debug, Default)]
struct ToolBlock {
    id: String,
    name: String,
    json: String,
}

/// Parses Messages stream events (public for benchmarks).
#[derive(Debug, Default)]
pub struct AnthropicStreamParser {
    blocks: BTreeMap<u64, ToolBlock>,
    calls: Vec<ToolCall>,
    input_tokens: u64,
    output_tokens: u64,
}

fn malformed(what: &str) -> StreamError {
    StreamError::Malformed(what.to_string())
}

impl StreamParser for AnthropicStreamParser {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamItem>) -> Result<(), StreamError> {
        let v: Value = serde_json::from_str(&event.data).map_err(|e| {
            let head: String = event.data.chars().take(80).collect();
            StreamError::Malformed(format!("{e} in {head:?}"))
        })?;
        let ty = v.get("type").and_then(Value::as_str).or(event.event.as_deref()).unwrap_or("");
        match ty {
            "message_start" => {
                if let Some(u) = v.pointer("/message/usage") {
                    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
                    self.input_tokens =
                        n("input_tokens") + n("cache_read_input_tokens") + n("cache_creation_input_tokens");
                    self.output_tokens = n("output_tokens");
                }
            }
            "content_block_start" => {
                let index = v.get("index").and_then(Value::as_u64).ok_or_else(|| malformed("block without index"))?;
                let block = v.get("content_block");
                if block.and_then(|b| b.get("type")).and_then(Value::as_str) == Some("tool_use") {
                    let field =
                        |k: &str| block.and_then(|b| b.get(k)).and_then(Value::as_str).unwrap_or("").to_string();
                    self.blocks.insert(index, ToolBlock { id: field("id"), name: field("name"), json: String::new() });
                }
            }
            "content_block_delta" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = v.get("delta").ok_or_else(|| malformed("delta missing"))?;
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        if let Some(t) = delta.get("text").and_then(Value::as_str) {
                            out.push(StreamItem::Text(t.to_string()));
                        }
                    }
                    Some("input_json_delta") => {
                        let part = delta.get("partial_json").and_then(Value::as_str).unwrap_or("");
                        match self.blocks.get_mut(&index) {
                            Some(b) => b.json.push_str(part),
                            None => return Err(malformed("input_json_delta for a block that is not tool_use")),
                        }
                    }
                    // thinking, signature and citations deltas are not spoken.
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(b) = self.blocks.remove(&index) {
                    let arguments = if b.json.trim().is_empty() { "{}".to_string() } else { b.json };
                    if !matches!(serde_json::from_str::<Value>(&arguments), Ok(Value::Object(_))) {
                        return Err(StreamError::InvalidToolArguments { name: b.name });
                    }
                    if b.id.is_empty() || b.name.is_empty() {
                        return Err(malformed("tool_use block without id or name"));
                    }
                    self.calls.push(ToolCall { id: b.id.into(), name: b.name.into(), arguments: arguments.into() });
                }
            }
            "message_delta" => {
                if let Some(n) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    // Cumulative, not incremental.
                    self.output_tokens = n;
                }
            }
            "message_stop" => {
                if !self.blocks.is_empty() {
                    return Err(malformed("message ended inside a tool_use block"));
                }
                if !self.calls.is_empty() {
                    out.push(StreamItem::ToolCalls(std::mem::take(&mut self.calls)));
                }
                out.push(StreamItem::Usage { prompt_tokens: self.input_tokens, completion_tokens: self.output_tokens });
                out.push(StreamItem::Done);
            }
            "error" => {
                let kind = v.pointer("/error/type").and_then(Value::as_str).unwrap_or("error").to_string();
                let message =
                    v.pointer("/error/message").and_then(Value::as_str).unwrap_or("unknown error").to_string();
                let retryable =
                    matches!(kind.as_str(), "overloaded_error" | "api_error" | "rate_limit_error" | "timeout_error");
                return Err(StreamError::Provider { kind, message, retryable });
            }
            _ => {}
        }
        Ok(())
    }

    fn on_eof(&mut self, _out: &mut Vec<StreamItem>) -> Result<bool, StreamError> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxline_pipeline::ChatMessage;

    #[test]
    fn tool_results_follow_their_tool_use_as_user_blocks() {
        let llm = AnthropicLlm { settings: AnthropicSettings::default(), url: String::new(), key: ApiKey::new("k") };
        let call = |id: &str| ToolCall { id: id.into(), name: "f".into(), arguments: "{\"a\":1}".into() };
        let ctx = LlmContext {
            messages: vec![
                ChatMessage::text(Role::System, "sys"),
                ChatMessage::text(Role::Assistant, "Hello! "),
                ChatMessage::text(Role::User, "check"),
                ChatMessage {
                    tool_calls: vec![call("t1"), call("t2")],
                    ..ChatMessage::text(Role::Assistant, "One moment.")
                },
                ChatMessage { tool_call_id: Some("t1".into()), ..ChatMessage::text(Role::Tool, "A") },
                ChatMessage { tool_call_id: Some("t2".into()), ..ChatMessage::text(Role::Tool, "B") },
                ChatMessage::text(Role::User, "and?"),
            ],
            tools: Vec::new(),
        };
        let b = llm.request_body(&ctx);
        assert_eq!(b["system"], "sys");
        let m = b["messages"].as_array().unwrap();
        let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert_eq!(m[0]["content"][0]["text"], CONVERSATION_START_MARKER);
        assert_eq!(m[1]["content"][0]["text"], "Hello!");
        assert_eq!(m[3]["content"][1]["type"], "tool_use");
        assert_eq!(m[3]["content"][1]["input"]["a"], 1);
        assert_eq!(m[4]["content"][0]["tool_use_id"], "t1");
        assert_eq!(m[4]["content"][1]["tool_use_id"], "t2");
        assert_eq!(m[4]["content"][2]["type"], "text");
    }
}
