//! [`LlmService`]: the provider-independent LLM processor (request, retries, streaming, frames,
//! metrics, fallback). Providers ([`super::openai`], [`super::anthropic`]) only build the HTTP
//! request and turn SSE events into [`StreamItem`]s.
//!
//! Consumes `LlmRun(context)` (either direction); produces downstream `LlmResponseStart`,
//! `LlmText` per streamed piece, at most one `ToolCalls` batch, `LlmResponseEnd`; emits
//! `Metrics(Ttfb)` (request → first token, retries included: that is what the caller waits),
//! `Metrics(LlmUsage)`, and `Error` events. Every other frame is forwarded.
//!
//! Failure policy:
//! - connect errors, 408/409/429/5xx/529 and in-stream `overloaded` errors are retried with
//!   exponential backoff (jittered, `retry-after`/`retry-after-ms` honoured up to a cap, then
//!   give up rather than keep a caller in silence) *only before anything was forwarded*; after
//!   the first token a failure ends the turn;
//! - a turn that cannot be answered (retries exhausted, 4xx, timeout, cut stream, malformed
//!   data, tool-call arguments that are not JSON) emits one `Error` event, closes the response
//!   (`LlmResponseEnd` if it had started) and pushes the configured fallback line as
//!   `Frame::Text`, which TTS speaks. The pipeline keeps running.
//!
//! Cancel safety: all per-turn state (response, decoder, tool-call accumulator, retry counter)
//! lives inside the `process` future; when the runner drops it on barge-in, the HTTP response
//! and its connection are dropped with it (which is how the provider learns to stop generating)
//! and nothing is left half-recorded. Tool calls are pushed only once the stream has completed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tokio::time::Instant;
use tracing::Instrument;
use voxline_pipeline::{
    Context, Direction, ErrorEvent, Event, FlowResult, Frame, LlmContext, MetricsEvent, Processor, ToolCall,
};

use super::sse::{SseDecoder, SseEvent};
use crate::service::{ApiKey, ServiceConfigError, exponential_delay};

/// Default time allowed from sending the request to the first token, per attempt.
pub const DEFAULT_FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default longest silence allowed inside a stream once it has started.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default TCP/TLS connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of retries before the first token.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Default first backoff delay (doubled per retry).
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Default cap on one backoff delay.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Default longest `retry-after` a voice call is willing to wait; longer means give up now.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Default line spoken when a turn cannot be answered.
pub const DEFAULT_FALLBACK_TEXT: &str = "Sorry, I'm having trouble right now. Could you say that again?";

/// Which tools the model may (or must) call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// This tool.
    Tool(String),
}

/// Retry policy before the first token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff delay; doubled per retry.
    pub initial_backoff: Duration,
    /// Cap on one backoff delay.
    pub max_backoff: Duration,
    /// Longest `retry-after` honoured; a longer one fails the turn at once.
    pub max_retry_after: Duration,
    /// Also retry when the first-token timeout fires (off: a caller already waited that long).
    pub retry_on_timeout: bool,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_MAX_RETRIES,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            retry_on_timeout: false,
        }
    }
}

/// Provider-independent settings of an [`LlmService`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmServiceSettings {
    /// Time from request to first token, per attempt.
    pub first_token_timeout: Duration,
    /// Longest silence inside a started stream.
    pub idle_timeout: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Retry policy.
    pub retry: RetrySettings,
    /// Line pushed as `Frame::Text` when a turn cannot be answered; `None` to stay silent.
    pub fallback_text: Option<String>,
}

impl Default for LlmServiceSettings {
    fn default() -> Self {
        Self {
            first_token_timeout: DEFAULT_FIRST_TOKEN_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry: RetrySettings::default(),
            fallback_text: Some(DEFAULT_FALLBACK_TEXT.to_string()),
        }
    }
}

/// Resolve a key: explicit value, else the environment variable, else an error if required.
pub(crate) fn resolve_key(
    explicit: Option<&ApiKey>,
    env: &str,
    required: bool,
) -> Result<Option<ApiKey>, ServiceConfigError> {
    if let Some(k) = explicit.filter(|k| !k.is_blank()) {
        return Ok(Some(k.clone()));
    }
    match ApiKey::from_env(env) {
        Some(k) => Ok(Some(k)),
        None if required => Err(ServiceConfigError::MissingApiKey { env_var: env.to_string() }),
        None => Ok(None),
    }
}

fn invalid_base_url(url: &str, reason: &str) -> ServiceConfigError {
    ServiceConfigError::InvalidSetting { field: "base_url", reason: format!("{url:?}: {reason}") }
}

pub(crate) fn check_base_url(url: &str) -> Result<String, ServiceConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(url.trim_end_matches('/').to_string()),
        Ok(u) => Err(invalid_base_url(url, &format!("scheme {} (want http or https)", u.scheme()))),
        Err(e) => Err(invalid_base_url(url, &e.to_string())),
    }
}

/// A provider-neutral piece of a streamed response.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// Text to forward.
    Text(String),
    /// The complete, validated tool calls of the response (all of them, in provider order).
    ToolCalls(Vec<ToolCall>),
    /// Token usage.
    Usage {
        /// Prompt (input) tokens, cache reads included.
        prompt_tokens: u64,
        /// Completion (output) tokens.
        completion_tokens: u64,
    },
    /// The response is complete.
    Done,
}

/// Why a stream could not be turned into a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// Data that does not parse as the provider's event format.
    #[error("malformed stream data: {0}")]
    Malformed(String),
    /// A tool call's arguments are not a JSON object (typically truncated).
    #[error("tool call `{name}` has arguments that are not valid JSON (truncated?)")]
    InvalidToolArguments {
        /// Tool name.
        name: String,
    },
    /// The provider reported an error inside the stream.
    #[error("provider error ({kind}): {message}")]
    Provider {
        /// Provider error type.
        kind: String,
        /// Provider message.
        message: String,
        /// Whether a retry may help (overloaded / server error).
        retryable: bool,
    },
}

/// Turns one provider's SSE events into [`StreamItem`]s. One parser per response.
pub trait StreamParser: Send {
    /// Handle one event, appending what it yields to `out`.
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamItem>) -> Result<(), StreamError>;
    /// The body ended without the provider's terminator: return `true` (after appending the
    /// final items, including `Done`) if the response is nevertheless complete.
    fn on_eof(&mut self, out: &mut Vec<StreamItem>) -> Result<bool, StreamError>;
}

/// What a provider adds to the shared plumbing: the request, and the stream format.
pub trait LlmProvider: Send + Sync + 'static {
    /// Processor name (`openai_llm`, `anthropic_llm`).
    fn name(&self) -> &'static str;
    /// Environment variable the key comes from, named in authentication errors.
    fn key_env(&self) -> &str;
    /// The JSON request body for `ctx` (built once per turn, reused by retries).
    fn body(&self, ctx: &LlmContext) -> Bytes;
    /// The streaming POST carrying `body`.
    fn request(&self, client: &reqwest::Client, body: Bytes) -> reqwest::RequestBuilder;
    /// A parser for one response.
    fn parser(&self) -> Box<dyn StreamParser>;
}

/// The LLM processor. Build it with [`OpenAiLlm::new`](super::OpenAiLlm::new),
/// [`AnthropicLlm::new`](super::AnthropicLlm::new) or [`LlmService::from_settings`].
pub struct LlmService {
    provider: Arc<dyn LlmProvider>,
    settings: LlmServiceSettings,
    client: reqwest::Client,
}

impl std::fmt::Debug for LlmService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmService").field("provider", &self.provider.name()).field("settings", &self.settings).finish()
    }
}

/// Provider choice for [`LlmService::from_settings`]: a config switch changes provider.
#[derive(Debug, Clone)]
pub enum LlmProviderSettings {
    /// OpenAI or an OpenAI-compatible server (Azure, Groq, Together, Ollama, vLLM, llama.cpp).
    #[cfg(feature = "openai")]
    OpenAi(super::OpenAiSettings),
    /// Anthropic Messages.
    #[cfg(feature = "anthropic")]
    Anthropic(super::AnthropicSettings),
}

enum Failure {
    Retryable { reason: String, retry_after: Option<Duration> },
    Final(String),
}

impl Failure {
    fn message(self) -> String {
        match self {
            Self::Retryable { reason, .. } | Self::Final(reason) => reason,
        }
    }
}

impl LlmService {
    /// Build the service for whichever provider `settings` names.
    pub fn from_settings(settings: LlmProviderSettings) -> Result<Self, ServiceConfigError> {
        match settings {
            #[cfg(feature = "openai")]
            LlmProviderSettings::OpenAi(s) => super::OpenAiLlm::new(s),
            #[cfg(feature = "anthropic")]
            LlmProviderSettings::Anthropic(s) => super::AnthropicLlm::new(s),
        }
    }

    /// Wrap a provider with the shared plumbing.
    pub fn with_provider(
        provider: Arc<dyn LlmProvider>,
        settings: LlmServiceSettings,
    ) -> Result<Self, ServiceConfigError> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| ServiceConfigError::Client(e.to_string()))?;
        Ok(Self { provider, settings, client })
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &LlmServiceSettings {
        &self.settings
    }

    async fn run(&mut self, ctx: Arc<LlmContext>, cx: &mut Context) {
        let body = self.provider.body(&ctx);
        cx.ttfb_start();
        let mut started = false;
        let mut attempt = 0u32;
        let outcome = loop {
            let failure = match self.attempt(body.clone(), cx, &mut started).await {
                Ok(()) => break Ok(()),
                Err(f) => f,
            };
            let retry = &self.settings.retry;
            match failure {
                Failure::Retryable { reason, retry_after } if !started && attempt < retry.max_retries => {
                    let delay = match retry_after {
                        Some(d) if d > retry.max_retry_after => {
                            break Err(format!(
                                "{reason}; server asked to retry after {d:?}, longer than a caller can wait"
                            ));
                        }
                        Some(d) => d,
                        None => backoff(retry, attempt),
                    };
                    attempt += 1;
                    tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, %reason, "llm request failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                f => {
                    let msg = f.message();
                    break Err(if attempt > 0 { format!("{msg} (after {} attempts)", attempt + 1) } else { msg });
                }
            }
        };
        if let Err(message) = outcome {
            tracing::warn!(provider = self.provider.name(), %message, "llm turn failed");
            cx.emit(Event::Error(ErrorEvent {
                processor: cx.name().clone(),
                message: Arc::from(format!("LLM turn failed: {message}")),
                fatal: false,
            }));
            if started {
                cx.push(Frame::LlmResponseEnd, Direction::Downstream).await;
            }
            if let Some(line) = &self.settings.fallback_text {
                cx.push(Frame::Text(Arc::from(line.as_str())), Direction::Downstream).await;
            }
        }
    }

    async fn begin(cx: &mut Context, started: &mut bool) {
        if !*started {
            *started = true;
            cx.ttfb_stop();
            cx.push(Frame::LlmResponseStart, Direction::Downstream).await;
        }
    }

    async fn attempt(&self, body: Bytes, cx: &mut Context, started: &mut bool) -> Result<(), Failure> {
        let timeout = self.settings.first_token_timeout;
        let deadline = Instant::now() + timeout;
        let timed_out = || {
            let reason = format!("no response within {timeout:?}");
            if self.settings.retry.retry_on_timeout {
                Failure::Retryable { reason, retry_after: None }
            } else {
                Failure::Final(reason)
            }
        };
        let request = self.provider.request(&self.client, body);
        let response = match tokio::time::timeout_at(deadline, request.send()).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => {
                let reason = format!("request failed: {}", error_chain(&e));
                return Err(if e.is_builder() {
                    Failure::Final(reason)
                } else {
                    Failure::Retryable { reason, retry_after: None }
                });
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = match tokio::time::timeout_at(deadline, response.bytes()).await {
                Ok(Ok(b)) => b,
                _ => Bytes::new(),
            };
            return Err(classify(status, &headers, &body, self.provider.key_env()));
        }
        let mut stream = response.bytes_stream();
        let mut decoder = SseDecoder::default();
        let mut parser = self.provider.parser();
        let mut events: Vec<SseEvent> = Vec::new();
        let mut items: Vec<StreamItem> = Vec::new();
        let mut calls: Option<Vec<ToolCall>> = None;
        loop {
            let wait_until = if *started { Instant::now() + self.settings.idle_timeout } else { deadline };
            let chunk = match tokio::time::timeout_at(wait_until, stream.next()).await {
                Err(_) if *started => {
                    return Err(Failure::Final(format!(
                        "stream stalled: no data for {:?}",
                        self.settings.idle_timeout
                    )));
                }
                Err(_) => return Err(timed_out()),
                Ok(Some(Err(e))) => {
                    return Err(Failure::Retryable {
                        reason: format!("connection lost mid-stream: {}", error_chain(&e)),
                        retry_after: None,
                    });
                }
                Ok(Some(Ok(bytes))) => Some(bytes),
                Ok(None) => None,
            };
            let eof = chunk.is_none();
            if let Some(bytes) = chunk {
                decoder
                    .feed(&bytes, |ev| events.push(ev))
                    .map_err(|e| Failure::Final(format!("malformed stream: {e}")))?;
                for ev in events.drain(..) {
                    parser.on_event(&ev, &mut items).map_err(stream_failure)?;
                }
            } else {
                let complete = parser.on_eof(&mut items).map_err(stream_failure)?;
                if !complete {
                    // Items of a cut stream are not forwarded: text already out stays, the rest is lost.
                    return Err(Failure::Retryable {
                        reason: "connection closed before the response was complete".into(),
                        retry_after: None,
                    });
                }
            }
            for item in items.drain(..) {
                match item {
                    StreamItem::Text(t) if t.is_empty() => {}
                    StreamItem::Text(t) => {
                        Self::begin(cx, started).await;
                        cx.push(Frame::LlmText(Arc::from(t)), Direction::Downstream).await;
                    }
                    StreamItem::ToolCalls(batch) => {
                        if !batch.is_empty() {
                            Self::begin(cx, started).await;
                            calls.get_or_insert_with(Vec::new).extend(batch);
                        }
                    }
                    StreamItem::Usage { prompt_tokens, completion_tokens } => {
                        cx.emit(Event::Metrics(MetricsEvent::LlmUsage {
                            processor: cx.name().clone(),
                            prompt_tokens,
                            completion_tokens,
                        }));
                    }
                    StreamItem::Done => {
                        Self::begin(cx, started).await;
                        if let Some(batch) = calls.take() {
                            tracing::debug!(calls = batch.len(), "llm tool calls");
                            cx.push(Frame::ToolCalls(batch.into()), Direction::Downstream).await;
                        }
                        cx.push(Frame::LlmResponseEnd, Direction::Downstream).await;
                        return Ok(());
                    }
                }
            }
            if eof {
                return Err(Failure::Final("stream ended without a terminator".into()));
            }
        }
    }
}

fn stream_failure(e: StreamError) -> Failure {
    match e {
        StreamError::Provider { retryable: true, .. } => {
            Failure::Retryable { reason: e.to_string(), retry_after: None }
        }
        other => Failure::Final(other.to_string()),
    }
}

fn backoff(retry: &RetrySettings, attempt: u32) -> Duration {
    let base = exponential_delay(retry.initial_backoff, retry.max_backoff, attempt);
    // ±25 % jitter so many calls rate-limited together do not retry in lockstep; the clock's
    // sub-second nanos are random enough for that and avoid a dependency.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    base.mul_f64(factor)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

/// `retry-after-ms`, else `retry-after` in (possibly fractional) seconds.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 86_400.0)
        .map(Duration::from_secs_f64)
}

fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], key_env: &str) -> Failure {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_string());
    let code = err
        .and_then(|e| e.get("code").and_then(|c| c.as_str()).or_else(|| e.get("type").and_then(|t| t.as_str())))
        .unwrap_or("");
    let mut reason = format!("HTTP {}: {message}", status.as_u16());
    if !code.is_empty() {
        reason.push_str(&format!(" ({code})"));
    }
    if matches!(status.as_u16(), 401 | 403) {
        reason.push_str(&format!("; check the API key ({key_env})"));
    }
    let should_retry =
        headers.get("x-should-retry").and_then(|v| v.to_str().ok()).map(|v| v.eq_ignore_ascii_case("true"));
    let retryable = should_retry
        .unwrap_or_else(|| matches!(status.as_u16(), 408 | 409 | 429 | 500..=599) && code != "insufficient_quota");
    if retryable { Failure::Retryable { reason, retry_after: retry_after(headers) } } else { Failure::Final(reason) }
}

impl Processor for LlmService {
    fn name(&self) -> &str {
        self.provider.name()
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        match frame {
            Frame::LlmRun(ctx) => {
                let span =
                    tracing::info_span!("llm_turn", provider = self.provider.name(), messages = ctx.messages.len());
                self.run(ctx, cx).instrument(span).await;
            }
            other => cx.push(other, direction).await,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
    }

    #[test]
    fn classification() {
        let h = HeaderMap::new();
        let body = br#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert!(matches!(classify(StatusCode::TOO_MANY_REQUESTS, &h, body, "K"), Failure::Final(_)));
        assert!(matches!(classify(StatusCode::BAD_GATEWAY, &h, b"oops", "K"), Failure::Retryable { .. }));
        let Failure::Final(m) = classify(StatusCode::UNAUTHORIZED, &h, b"{}", "OPENAI_API_KEY") else { panic!() };
        assert!(m.contains("OPENAI_API_KEY"), "{m}");
        let b = backoff(&RetrySettings::default(), 1);
        assert!(b >= Duration::from_millis(750) && b <= Duration::from_millis(1250), "{b:?}");
    }

    #[test]
    fn missing_key_names_the_variable() {
        let err = resolve_key(None, "VOXLINE_TEST_SURELY_UNSET_KEY", true).unwrap_err();
        assert!(err.to_string().contains("VOXLINE_TEST_SURELY_UNSET_KEY"));
        assert_eq!(resolve_key(None, "VOXLINE_TEST_SURELY_UNSET_KEY", false), Ok(None));
        assert_eq!(resolve_key(Some(&"k".into()), "X", true), Ok(Some(ApiKey::new("k"))));
    }
}
