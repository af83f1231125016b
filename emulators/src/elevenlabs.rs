//! ElevenLabs TTS emulator: multi-context WebSocket, single-context WebSocket and HTTP
//! streaming, all on one port.
//!
//! - `GET /v1/text-to-speech/{voice_id}/multi-stream-input?model_id=…&output_format=…`
//!   (multi-context: `context_id` in, `contextId` out, `flush`, `close_context`,
//!   `close_socket`, keepalive `{"text":"","context_id":…}`, at most
//!   [`ElevenLabsConfig::max_contexts`] open contexts with the real
//!   `max_active_conversations` error, settings only in a context's first message);
//! - `GET /v1/text-to-speech/{voice_id}/stream-input?…` (single context, `{"text":""}` = EOS);
//! - `POST /v1/text-to-speech/{voice_id}/stream?output_format=…` (raw audio bytes, chunked),
//!   `POST …/stream/with-timestamps` (newline-delimited JSON) and `POST …/{voice_id}`.
//!
//! Audio is a deterministic per-character tone ([`crate::audio::ToneVoice`]),
//! [`ElevenLabsConfig::ms_per_char`] long per character, encoded in the requested
//! `output_format` (`pcm_*`, `ulaw_8000`, `alaw_8000`). Each audio message carries
//! `alignment`/`normalizedAlignment` (`chars`, `charStartTimesMs` relative to that chunk,
//! `charDurationsMs`) matching exactly the bytes in `audio`.
//!
//! Generation happens on `flush`, at the `chunk_length_schedule` thresholds, or (with
//! `auto_mode=true`) at sentence ends. `close_context` drops the context's unsent audio and
//! answers `{"isFinal":true,"contextId":…}`.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audio::{OutputFormat, ToneVoice};
use crate::common::{
    Outbox, Recorder, Server, header_pairs, header_str, parse_query, query_bool, query_get, sleep_until_opt, uuid_like,
};

/// Misbehaviour for one WebSocket connection or one HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TtsFault {
    /// Behave normally.
    #[default]
    None,
    /// WebSocket: refuse the handshake with this HTTP status. HTTP: answer with this status
    /// and a `{"detail":{"status":…,"message":…}}` body (e.g. 429 `too_many_concurrent_requests`).
    Status(u16),
    /// WebSocket: on the first text message send `{"message":…,"error":…,"code":1008}` and
    /// close 1008. HTTP: 400 with `{"detail":{"status":error,"message":…}}`.
    Error {
        /// The `error` code, e.g. `quota_exceeded`.
        error: String,
        /// Human-readable message.
        message: String,
    },
    /// Cut the connection (no close frame / truncated HTTP body) after this many audio chunks.
    CloseMidStream {
        /// Audio chunks delivered before the cut.
        after_chunks: usize,
    },
    /// Accept text but never produce audio (WebSocket) or never respond (HTTP).
    NeverAnswer,
}

/// Emulator configuration.
#[derive(Debug, Clone)]
pub struct ElevenLabsConfig {
    /// Expected `xi-api-key`; `None` accepts anything.
    pub api_key: Option<String>,
    /// Audio duration per input character.
    pub ms_per_char: u64,
    /// Characters per audio message / HTTP chunk.
    pub chars_per_chunk: usize,
    /// Delay from generation trigger to the first audio of that generation (TTFB).
    pub first_audio_delay: Duration,
    /// Delay between successive audio chunks of one generation.
    pub chunk_delay: Duration,
    /// Simultaneous contexts per multi-context socket (ElevenLabs: 5).
    pub max_contexts: usize,
    /// How long a closed context still counts toward the cap (ElevenLabs frees them
    /// asynchronously, which makes rapid barge-ins hit the cap).
    pub context_release_delay: Duration,
    /// Send `{"isFinal":true,"contextId":…}` after a flushed generation's audio, not only
    /// after `close_context`.
    pub final_after_flush: bool,
    /// Inactivity timeout when the client sets no `inactivity_timeout` (ElevenLabs: 20 s).
    pub inactivity_timeout: Duration,
    /// Per-WebSocket-connection faults, by accept order.
    pub faults: Vec<TtsFault>,
    /// Per-HTTP-request faults, by arrival order.
    pub http_faults: Vec<TtsFault>,
}

impl Default for ElevenLabsConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            ms_per_char: 60,
            chars_per_chunk: 10,
            first_audio_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            max_contexts: 5,
            context_release_delay: Duration::ZERO,
            final_after_flush: true,
            inactivity_timeout: Duration::from_secs(20),
            faults: Vec::new(),
            http_faults: Vec::new(),
        }
    }
}

impl ElevenLabsConfig {
    /// Sets the expected API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
}

/// A text message received on a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedText {
    /// `context_id` (`None` on the single-context endpoint).
    pub context_id: Option<String>,
    /// The text (init `" "` and keepalive `""` are not recorded here).
    pub text: String,
}

/// What one WebSocket connection received and sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TtsConnection {
    /// 0-based accept order.
    pub index: usize,
    /// True for `multi-stream-input`.
    pub multi_context: bool,
    /// Voice id from the path.
    pub voice_id: String,
    /// Query parameters in order.
    pub query: Vec<(String, String)>,
    /// `xi-api-key` header, if any.
    pub api_key: Option<String>,
    /// Every client text frame, parsed (`Value::String` for non-JSON frames).
    pub messages: Vec<Value>,
    /// Contexts opened, in order.
    pub contexts_opened: Vec<String>,
    /// Contexts closed by `close_context`, in order.
    pub contexts_closed: Vec<String>,
    /// Text received.
    pub texts: Vec<ReceivedText>,
    /// Flushes, by context (`None` on the single-context endpoint).
    pub flushes: Vec<Option<String>>,
    /// Keepalive messages received.
    pub keepalives: usize,
    /// True once `close_socket` (or EOS on single-context) arrived.
    pub close_socket: bool,
    /// Audio messages sent.
    pub audio_messages_sent: usize,
    /// Decoded audio bytes sent.
    pub audio_bytes_sent: u64,
    /// `isFinal` messages sent, by context.
    pub finals_sent: Vec<Option<String>>,
    /// Error messages sent.
    pub errors_sent: Vec<Value>,
    /// True once the socket is gone.
    pub closed: bool,
}

/// One HTTP synthesis request.
#[derive(Debug, Clone, PartialEq)]
pub struct TtsHttpRequest {
    /// Request path.
    pub path: String,
    /// Voice id from the path.
    pub voice_id: String,
    /// Query parameters.
    pub query: Vec<(String, String)>,
    /// Headers as lowercase pairs.
    pub headers: Vec<(String, String)>,
    /// Parsed JSON body (`Null` if not JSON).
    pub body: Value,
    /// HTTP status answered (0 if never answered).
    pub status: u16,
}

/// Snapshot of everything the emulator received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ElevenLabsReceived {
    /// Accepted WebSocket connections.
    pub connections: Vec<TtsConnection>,
    /// HTTP requests.
    pub http_requests: Vec<TtsHttpRequest>,
    /// HTTP statuses of refused WebSocket handshakes.
    pub rejected_handshakes: Vec<u16>,
}

struct Inner {
    cfg: ElevenLabsConfig,
    rec: Recorder<ElevenLabsReceived>,
    cancel: CancellationToken,
}

/// A running ElevenLabs emulator.
pub struct ElevenLabsEmulator {
    inner: Arc<Inner>,
    server: Server,
}

impl std::fmt::Debug for ElevenLabsEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElevenLabsEmulator").field("addr", &self.server.addr()).finish()
    }
}

impl ElevenLabsEmulator {
    /// Binds 127.0.0.1:0 and serves the WebSocket and HTTP endpoints.
    pub fn start(cfg: ElevenLabsConfig) -> io::Result<Self> {
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner { cfg, rec: Recorder::new(ElevenLabsReceived::default()), cancel: cancel.clone() });
        let router = Router::new()
            .route("/v1/text-to-speech/{voice_id}/multi-stream-input", get(ws_multi))
            .route("/v1/text-to-speech/{voice_id}/stream-input", get(ws_single))
            .route("/v1/text-to-speech/{voice_id}/stream", post(http_stream))
            .route("/v1/text-to-speech/{voice_id}/stream/with-timestamps", post(http_stream_timestamps))
            .route("/v1/text-to-speech/{voice_id}", post(http_whole))
            .with_state(inner.clone());
        let server = Server::start("elevenlabs", router, cancel)?;
        Ok(Self { inner, server })
    }

    /// `ws://127.0.0.1:PORT`; clients append `/v1/text-to-speech/{voice_id}/multi-stream-input?…`.
    pub fn base_url(&self) -> String {
        format!("ws://{}", self.server.addr())
    }

    /// `http://127.0.0.1:PORT`; clients post to `/v1/text-to-speech/{voice_id}/stream?…`.
    pub fn http_base_url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The bound address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// Snapshot of everything received so far.
    pub fn received(&self) -> ElevenLabsReceived {
        self.inner.rec.snapshot()
    }

    /// Waits until `pred` holds on the received state, or `timeout` passes.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&ElevenLabsReceived) -> bool,
        timeout: Duration,
    ) -> Option<ElevenLabsReceived> {
        self.inner.rec.wait_for(pred, timeout).await
    }

    /// Stops the server and closes open sockets.
    pub async fn shutdown(mut self) {
        self.server.shutdown().await;
    }
}

/// One piece of synthesized audio with its alignment.
struct SynthChunk {
    chars: Vec<String>,
    /// Start of each char relative to the chunk.
    starts: Vec<u64>,
    durations: Vec<u64>,
    /// Absolute start of the chunk on the context's timeline.
    abs_start_ms: u64,
    audio: Vec<u8>,
}

/// Renders `text` starting at `start_ms` of a timeline; returns the chunks and the new end.
fn synthesize(
    text: &str,
    fmt: OutputFormat,
    voice: &mut ToneVoice,
    cfg: &ElevenLabsConfig,
    start_ms: u64,
) -> (Vec<SynthChunk>, u64) {
    let chars: Vec<char> = text.chars().collect();
    let ms = cfg.ms_per_char.max(1);
    let mut t = start_ms;
    let mut chunks = Vec::new();
    for group in chars.chunks(cfg.chars_per_chunk.max(1)) {
        let abs_start_ms = t;
        let mut samples = Vec::new();
        let mut starts = Vec::new();
        for &c in group {
            starts.push(t - abs_start_ms);
            let n = fmt.samples_at_ms(t + ms) - fmt.samples_at_ms(t);
            samples.extend(voice.render_char(c, n as usize));
            t += ms;
        }
        chunks.push(SynthChunk {
            chars: group.iter().map(|c| c.to_string()).collect(),
            durations: vec![ms; group.len()],
            starts,
            abs_start_ms,
            audio: fmt.encode(&samples),
        });
    }
    (chunks, t)
}

fn ws_error_json(error: &str, message: &str) -> Value {
    json!({"message": message, "error": error, "code": 1008})
}

// ---------------------------------------------------------------------------------------
// WebSocket endpoints
// ---------------------------------------------------------------------------------------

async fn ws_multi(
    state: State<Arc<Inner>>,
    path: Path<String>,
    headers: HeaderMap,
    query: RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    ws_common(state, path, headers, query, ws, true).await
}

async fn ws_single(
    state: State<Arc<Inner>>,
    path: Path<String>,
    headers: HeaderMap,
    query: RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    ws_common(state, path, headers, query, ws, false).await
}

fn detail(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"detail": {"status": code, "message": message}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn ws_common(
    State(inner): State<Arc<Inner>>,
    Path(voice_id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    ws: WebSocketUpgrade,
    multi: bool,
) -> Response {
    let query = parse_query(raw.as_deref());
    let header_key = header_str(&headers, "xi-api-key").map(str::to_string);
    if let (Some(expected), Some(k)) = (&inner.cfg.api_key, &header_key)
        && k != expected
    {
        inner.rec.update(|r| r.rejected_handshakes.push(401));
        tracing::info!("elevenlabs emulator refused handshake: bad xi-api-key");
        return detail(StatusCode::UNAUTHORIZED, "invalid_api_key", "Invalid API key");
    }
    let index = inner.rec.read(|r| r.connections.len() + r.rejected_handshakes.len());
    let fault = inner.cfg.faults.get(index).cloned().unwrap_or_default();
    if let TtsFault::Status(s) = fault {
        let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        inner.rec.update(|r| r.rejected_handshakes.push(status.as_u16()));
        return detail(status, "emulated_failure", status.canonical_reason().unwrap_or("error"));
    }
    let index = inner.rec.update(|r| {
        r.connections.push(TtsConnection {
            index: r.connections.len(),
            multi_context: multi,
            voice_id,
            query: query.clone(),
            api_key: header_key.clone(),
            ..TtsConnection::default()
        });
        r.connections.len() - 1
    });
    let needs_msg_auth = inner.cfg.api_key.is_some() && header_key.is_none();
    let conn = TtsConn::new(inner, index, multi, &query, fault, needs_msg_auth);
    ws.max_message_size(16 << 20).on_upgrade(move |socket| run_ws(socket, conn))
}

enum Action {
    /// A JSON message; `ctx` tags it so `close_context` can drop it, `audio_bytes` counts audio.
    Send {
        ctx: Option<String>,
        json: String,
        audio_bytes: usize,
    },
    Close(u16, String),
}

struct Ctx {
    buffer: String,
    timeline_ms: u64,
    voice: ToneVoice,
    generations: usize,
    schedule: Vec<usize>,
}

struct TtsConn {
    inner: Arc<Inner>,
    index: usize,
    multi: bool,
    format: Result<OutputFormat, String>,
    auto_mode: bool,
    inactivity: Duration,
    fault: TtsFault,
    needs_msg_auth: bool,
    contexts: HashMap<String, Ctx>,
    releasing: Vec<Instant>,
    out: Outbox<Action>,
    first_message: bool,
    finished: bool,
    audio_chunks_sent: usize,
    socket_schedule: Option<Vec<usize>>,
}

const SINGLE: &str = "";

impl TtsConn {
    fn new(
        inner: Arc<Inner>,
        index: usize,
        multi: bool,
        query: &[(String, String)],
        fault: TtsFault,
        needs_msg_auth: bool,
    ) -> Self {
        let format = match query_get(query, "output_format") {
            Some(name) => OutputFormat::parse(name).ok_or_else(|| name.to_string()),
            None => Err("mp3_44100_128".to_string()),
        };
        let inactivity = query_get(query, "inactivity_timeout")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(180)))
            .unwrap_or(inner.cfg.inactivity_timeout);
        Self {
            inner,
            index,
            multi,
            format,
            auto_mode: query_bool(query, "auto_mode"),
            inactivity,
            fault,
            needs_msg_auth,
            contexts: HashMap::new(),
            releasing: Vec::new(),
            out: Outbox::new(),
            first_message: true,
            finished: false,
            audio_chunks_sent: 0,
            socket_schedule: None,
        }
    }

    fn record(&self, f: impl FnOnce(&mut TtsConnection)) {
        self.inner.rec.update(|r| {
            if let Some(c) = r.connections.get_mut(self.index) {
                f(c);
            }
        });
    }

    fn fail(&mut self, error: &str, message: &str) {
        let v = ws_error_json(error, message);
        self.record(|c| c.errors_sent.push(v.clone()));
        let now = Instant::now();
        self.out.push(now, Action::Send { ctx: None, json: v.to_string(), audio_bytes: 0 });
        // Close reasons are capped at 123 bytes; the JSON above carries the full text.
        let reason: String = message.chars().take(100).collect();
        self.out.push(now, Action::Close(1008, reason));
        self.finished = true;
    }

    fn open_count(&mut self) -> usize {
        let now = Instant::now();
        self.releasing.retain(|t| *t > now);
        self.contexts.len() + self.releasing.len()
    }

    fn ctx_key(&self, msg: &Value) -> Option<String> {
        if !self.multi {
            return Some(SINGLE.to_string());
        }
        msg.get("context_id").and_then(Value::as_str).map(str::to_string)
    }

    fn wire_ctx(&self, key: &str) -> Option<String> {
        self.multi.then(|| key.to_string())
    }

    fn schedule_of(msg: &Value) -> Option<Vec<usize>> {
        msg.pointer("/generation_config/chunk_length_schedule")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).map(|n| n as usize).collect::<Vec<_>>())
            .filter(|v| !v.is_empty())
    }

    fn on_text_frame(&mut self, text: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            self.record(|c| c.messages.push(Value::String(text.to_string())));
            self.fail("invalid_message", "Could not parse the message as JSON.");
            return;
        };
        self.record(|c| c.messages.push(msg.clone()));
        if !msg.is_object() {
            self.fail("invalid_message", "Messages must be JSON objects.");
            return;
        }
        let first = std::mem::replace(&mut self.first_message, false);
        if first && self.needs_msg_auth {
            let key = msg.get("xi_api_key").and_then(Value::as_str);
            if key != self.inner.cfg.api_key.as_deref() {
                self.fail(
                    "invalid_api_key",
                    "Invalid API key. Send the xi-api-key header or xi_api_key in the first message.",
                );
                return;
            }
        }
        if let Err(name) = &self.format {
            let m = format!(
                "Unsupported output_format `{name}`: the emulator produces pcm_*, ulaw_8000 and alaw_8000 only."
            );
            self.fail("invalid_output_format", &m);
            return;
        }
        if let TtsFault::Error { error, message } = self.fault.clone() {
            self.fail(&error, &message);
            return;
        }
        if msg.get("close_socket").and_then(Value::as_bool) == Some(true) {
            self.record(|c| c.close_socket = true);
            self.close_after_pending();
            return;
        }
        let key = self.ctx_key(&msg);
        if msg.get("close_context").and_then(Value::as_bool) == Some(true) {
            if let Some(k) = key {
                self.close_context(&k);
            }
            return;
        }
        let text_field = msg.get("text").and_then(Value::as_str);
        let flush = msg.get("flush").and_then(Value::as_bool) == Some(true);
        let has_settings = msg.get("voice_settings").is_some() || msg.get("generation_config").is_some();
        let Some(key) = key else {
            // A context-less blank text is the socket-level keepalive; real text without a
            // context lands in the default context.
            match text_field {
                Some("") | Some(" ") if !flush => {
                    self.record(|c| c.keepalives += 1);
                    return;
                }
                _ => {
                    let mut m = msg.clone();
                    m["context_id"] = json!("default");
                    return self.on_context_message(&m, "default".to_string(), text_field, flush, has_settings);
                }
            }
        };
        self.on_context_message(&msg, key, text_field, flush, has_settings);
    }

    fn on_context_message(&mut self, msg: &Value, key: String, text: Option<&str>, flush: bool, has_settings: bool) {
        if !self.contexts.contains_key(&key) {
            if self.multi && self.open_count() >= self.inner.cfg.max_contexts {
                let max = self.inner.cfg.max_contexts;
                self.fail(
                    "max_active_conversations",
                    &format!("Maximum simultaneous contexts per WebSocket connection exceeded ({max}). Please close unused contexts before opening new ones."),
                );
                return;
            }
            let rate = self.format.as_ref().map(|f| f.sample_rate).unwrap_or(16000);
            let schedule = Self::schedule_of(msg)
                .or_else(|| self.socket_schedule.clone())
                .unwrap_or_else(|| vec![120, 160, 250, 290]);
            self.contexts.insert(
                key.clone(),
                Ctx { buffer: String::new(), timeline_ms: 0, voice: ToneVoice::new(rate), generations: 0, schedule },
            );
            if !self.multi {
                self.socket_schedule = Self::schedule_of(msg);
            }
            let wire = self.wire_ctx(&key);
            if let Some(id) = wire {
                self.record(|c| c.contexts_opened.push(id));
            } else {
                self.record(|c| c.contexts_opened.push(String::new()));
            }
        } else if has_settings {
            self.fail(
                "invalid_request",
                "voice_settings and generation_config can only be provided in the first message of a context.",
            );
            return;
        }
        match text {
            Some("") if !self.multi => {
                // Single-context EOS: flush what is buffered, send the final, close.
                self.record(|c| c.close_socket = true);
                self.generate(&key, true);
                self.close_after_pending();
                return;
            }
            Some("") if !flush => {
                self.record(|c| c.keepalives += 1);
                return;
            }
            Some(" ") if !flush => {
                // The init message's " " (and the single-context keepalive) is not speech.
                return;
            }
            Some(t) if !t.is_empty() => {
                let wire = self.wire_ctx(&key);
                self.record(|c| c.texts.push(ReceivedText { context_id: wire, text: t.to_string() }));
                if let Some(ctx) = self.contexts.get_mut(&key) {
                    ctx.buffer.push_str(t);
                }
            }
            _ => {}
        }
        if flush {
            let wire = self.wire_ctx(&key);
            self.record(|c| c.flushes.push(wire));
            let final_after = self.inner.cfg.final_after_flush && self.multi;
            self.generate(&key, final_after);
        } else {
            self.maybe_generate(&key);
        }
    }

    fn maybe_generate(&mut self, key: &str) {
        let auto = self.auto_mode;
        let Some(ctx) = self.contexts.get_mut(key) else {
            return;
        };
        if auto {
            // auto_mode: speak up to the last sentence end, keep the rest buffered.
            let cut = ctx.buffer.char_indices().rev().find_map(|(i, c)| {
                if !matches!(c, '.' | '!' | '?') {
                    return None;
                }
                let after = i + c.len_utf8();
                let ws = ctx.buffer[after..].chars().next().filter(|n| n.is_whitespace())?;
                Some(after + ws.len_utf8())
            });
            if let Some(cut) = cut {
                let rest = ctx.buffer.split_off(cut);
                let now_text = std::mem::replace(&mut ctx.buffer, rest);
                self.emit(key, &now_text, false);
            }
            return;
        }
        let threshold = ctx.schedule.get(ctx.generations).or(ctx.schedule.last()).copied().unwrap_or(120);
        if ctx.buffer.chars().count() >= threshold {
            self.generate(key, false);
        }
    }

    fn generate(&mut self, key: &str, send_final: bool) {
        let Some(ctx) = self.contexts.get_mut(key) else {
            return;
        };
        let text = std::mem::take(&mut ctx.buffer);
        self.emit(key, &text, send_final);
    }

    fn emit(&mut self, key: &str, text: &str, send_final: bool) {
        let Ok(fmt) = self.format.clone() else { return };
        if self.fault == TtsFault::NeverAnswer {
            return;
        }
        let cfg = self.inner.cfg.clone();
        let wire = self.wire_ctx(key);
        let tag = Some(key.to_string());
        let last = self.out.last_due_where(|a| matches!(a, Action::Send { ctx, .. } if *ctx == tag));
        let mut due = (Instant::now() + cfg.first_audio_delay).max(last.unwrap_or_else(Instant::now));
        let Some(ctx) = self.contexts.get_mut(key) else {
            return;
        };
        let (chunks, end) = synthesize(text, fmt, &mut ctx.voice, &cfg, ctx.timeline_ms);
        ctx.timeline_ms = end;
        if !text.is_empty() {
            ctx.generations += 1;
        }
        for (i, ch) in chunks.into_iter().enumerate() {
            if i > 0 {
                due += cfg.chunk_delay;
            }
            let alignment = json!({"chars": ch.chars, "charStartTimesMs": ch.starts, "charDurationsMs": ch.durations});
            let mut v =
                json!({"audio": B64.encode(&ch.audio), "alignment": alignment, "normalizedAlignment": alignment});
            match &wire {
                Some(id) => v["contextId"] = json!(id),
                None => v["isFinal"] = Value::Null,
            }
            self.out.push(due, Action::Send { ctx: tag.clone(), json: v.to_string(), audio_bytes: ch.audio.len() });
        }
        if send_final {
            let mut v = json!({"isFinal": true});
            if let Some(id) = &wire {
                v["contextId"] = json!(id);
            }
            self.out.push(due, Action::Send { ctx: tag, json: v.to_string(), audio_bytes: 0 });
        }
    }

    fn close_context(&mut self, key: &str) {
        self.record(|c| c.contexts_closed.push(key.to_string()));
        if self.contexts.remove(key).is_none() {
            return;
        }
        let tag = Some(key.to_string());
        // Barge-in semantics: audio not yet sent for this context is dropped.
        self.out.retain(|a| !matches!(a, Action::Send { ctx, .. } if *ctx == tag));
        let v = json!({"isFinal": true, "contextId": key});
        self.out.push(Instant::now(), Action::Send { ctx: None, json: v.to_string(), audio_bytes: 0 });
        let release = Instant::now() + self.inner.cfg.context_release_delay;
        if release > Instant::now() {
            self.releasing.push(release);
        }
    }

    fn close_after_pending(&mut self) {
        let due = self.out.last_due_where(|_| true).unwrap_or_else(Instant::now).max(Instant::now());
        self.out.push(due, Action::Close(1000, String::new()));
        self.finished = true;
    }
}

async fn close_and_drain(ws: &mut WebSocket, code: u16, reason: String) {
    let _ = ws.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async { while let Some(Ok(_)) = ws.recv().await {} }).await;
}

async fn run_ws(mut ws: WebSocket, mut conn: TtsConn) {
    let cancel = conn.inner.cancel.clone();
    let mut last_activity = Instant::now();
    'outer: loop {
        let now = Instant::now();
        while let Some(action) = conn.out.pop_due(now) {
            match action {
                Action::Send { ctx, json, audio_bytes } => {
                    let final_ctx = (audio_bytes == 0 && json.contains("\"isFinal\":true")).then(|| {
                        serde_json::from_str::<Value>(&json)
                            .ok()
                            .and_then(|v| v.get("contextId").and_then(Value::as_str).map(str::to_string))
                            .or(ctx)
                    });
                    if ws.send(Message::Text(json.into())).await.is_err() {
                        break 'outer;
                    }
                    if audio_bytes > 0 {
                        conn.audio_chunks_sent += 1;
                        conn.record(|c| {
                            c.audio_messages_sent += 1;
                            c.audio_bytes_sent += audio_bytes as u64;
                        });
                        if let TtsFault::CloseMidStream { after_chunks } = conn.fault
                            && conn.audio_chunks_sent >= after_chunks
                        {
                            tracing::info!(index = conn.index, "elevenlabs emulator cutting the socket (fault)");
                            break 'outer;
                        }
                    } else if let Some(id) = final_ctx {
                        let id = if conn.multi { id } else { None };
                        conn.record(|c| c.finals_sent.push(id));
                    }
                }
                Action::Close(code, reason) => {
                    close_and_drain(&mut ws, code, reason).await;
                    break 'outer;
                }
            }
        }
        let idle_deadline = (!conn.finished).then_some(last_activity + conn.inactivity);
        tokio::select! {
            _ = cancel.cancelled() => {
                close_and_drain(&mut ws, 1001, "server shutting down".into()).await;
                break;
            }
            _ = sleep_until_opt(conn.out.next_due()) => {}
            _ = sleep_until_opt(idle_deadline) => {
                let secs = conn.inactivity.as_secs();
                conn.fail("input_timeout_exceeded", &format!("Have not received a new text input within the timeout of {secs} seconds. Streaming input terminated."));
            }
            msg = ws.recv() => {
                last_activity = Instant::now();
                match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) if !conn.finished => conn.on_text_frame(t.as_str()),
                    Some(Ok(Message::Binary(_))) if !conn.finished => conn.fail("invalid_message", "Binary frames are not supported; send JSON text frames."),
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    conn.record(|c| c.closed = true);
    tracing::debug!(index = conn.index, "elevenlabs emulator connection ended");
}

// ---------------------------------------------------------------------------------------
// HTTP endpoints
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum HttpMode {
    Stream,
    Timestamps,
    Whole,
}

async fn http_stream(
    state: State<Arc<Inner>>,
    path: Path<String>,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    http_common(state, path, headers, query, body, HttpMode::Stream, "stream").await
}

async fn http_stream_timestamps(
    state: State<Arc<Inner>>,
    path: Path<String>,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    http_common(state, path, headers, query, body, HttpMode::Timestamps, "stream/with-timestamps").await
}

async fn http_whole(
    state: State<Arc<Inner>>,
    path: Path<String>,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    http_common(state, path, headers, query, body, HttpMode::Whole, "").await
}

async fn http_common(
    State(inner): State<Arc<Inner>>,
    Path(voice_id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
    mode: HttpMode,
    suffix: &str,
) -> Response {
    let query = parse_query(raw.as_deref());
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let path = if suffix.is_empty() {
        format!("/v1/text-to-speech/{voice_id}")
    } else {
        format!("/v1/text-to-speech/{voice_id}/{suffix}")
    };
    let idx = inner.rec.update(|r| {
        r.http_requests.push(TtsHttpRequest {
            path,
            voice_id,
            query: query.clone(),
            headers: header_pairs(&headers),
            body: parsed.clone().unwrap_or(Value::Null),
            status: 0,
        });
        r.http_requests.len() - 1
    });
    let resp = http_handle(&inner, &headers, &query, parsed, mode, idx).await;
    let status = resp.status().as_u16();
    inner.rec.update(|r| {
        if let Some(req) = r.http_requests.get_mut(idx) {
            req.status = status;
        }
    });
    resp
}

async fn http_handle(
    inner: &Arc<Inner>,
    headers: &HeaderMap,
    query: &[(String, String)],
    parsed: Option<Value>,
    mode: HttpMode,
    idx: usize,
) -> Response {
    if let Some(expected) = &inner.cfg.api_key
        && header_str(headers, "xi-api-key") != Some(expected.as_str())
    {
        return detail(StatusCode::UNAUTHORIZED, "invalid_api_key", "Invalid API key");
    }
    let fault = inner.cfg.http_faults.get(idx).cloned().unwrap_or_default();
    match &fault {
        TtsFault::Status(s) => {
            let status = StatusCode::from_u16(*s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = match s {
                429 => "too_many_concurrent_requests",
                401 => "quota_exceeded",
                _ => "emulated_failure",
            };
            return detail(status, code, status.canonical_reason().unwrap_or("error"));
        }
        TtsFault::Error { error, message } => {
            return detail(StatusCode::BAD_REQUEST, error, message);
        }
        TtsFault::NeverAnswer => {
            inner.cancel.cancelled().await;
            return detail(StatusCode::SERVICE_UNAVAILABLE, "system_busy", "shutting down");
        }
        _ => {}
    }
    let text = parsed.as_ref().and_then(|v| v.get("text")).and_then(Value::as_str).map(str::to_string);
    let Some(text) = text else {
        let body =
            json!({"detail": [{"type": "missing", "loc": ["body", "text"], "msg": "Field required", "input": parsed}]});
        return (StatusCode::UNPROCESSABLE_ENTITY, [(header::CONTENT_TYPE, "application/json")], body.to_string())
            .into_response();
    };
    let format_name = query_get(query, "output_format").unwrap_or("mp3_44100_128");
    let Some(fmt) = OutputFormat::parse(format_name) else {
        return detail(
            StatusCode::BAD_REQUEST,
            "invalid_output_format",
            &format!(
                "Unsupported output_format `{format_name}`: the emulator produces pcm_*, ulaw_8000 and alaw_8000 only."
            ),
        );
    };
    let cfg = inner.cfg.clone();
    let mut voice = ToneVoice::new(fmt.sample_rate);
    let (chunks, _) = synthesize(&text, fmt, &mut voice, &cfg, 0);
    let content_type = match mode {
        HttpMode::Timestamps => "application/json",
        _ => match fmt.encoding {
            crate::audio::Encoding::Pcm16 => "audio/pcm",
            crate::audio::Encoding::Ulaw => "audio/basic",
            crate::audio::Encoding::Alaw => "audio/alaw",
        },
    };
    let pieces: Vec<Bytes> = chunks
        .into_iter()
        .map(|ch| match mode {
            HttpMode::Timestamps => {
                let secs = |ms: u64| ms as f64 / 1000.0;
                let starts: Vec<f64> = ch.starts.iter().map(|s| secs(ch.abs_start_ms + s)).collect();
                let ends: Vec<f64> = ch.starts.iter().zip(&ch.durations).map(|(s, d)| secs(ch.abs_start_ms + s + d)).collect();
                let a = json!({"characters": ch.chars, "character_start_times_seconds": starts, "character_end_times_seconds": ends});
                Bytes::from(format!("{}\n", json!({"audio_base64": B64.encode(&ch.audio), "alignment": a, "normalized_alignment": a})))
            }
            _ => Bytes::from(ch.audio),
        })
        .collect();
    let request_id = uuid_like();
    if mode == HttpMode::Whole {
        let all: Vec<u8> = pieces.iter().flat_map(|b| b.iter().copied()).collect();
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, content_type.to_string()),
                (header::HeaderName::from_static("request-id"), request_id),
            ],
            all,
        )
            .into_response();
    }
    let cut_after = match fault {
        TtsFault::CloseMidStream { after_chunks } => Some(after_chunks),
        _ => None,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(8);
    let cancel = inner.cancel.clone();
    tokio::spawn(async move {
        for (i, piece) in pieces.into_iter().enumerate() {
            if cut_after == Some(i) {
                // Let hyper flush the chunks already sent before the connection is aborted.
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = tx.send(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "emulated cut"))).await;
                return;
            }
            let delay = if i == 0 { cfg.first_audio_delay } else { cfg.chunk_delay };
            if !delay.is_zero() && crate::common::or_cancelled(&cancel, tokio::time::sleep(delay)).await.is_none() {
                return;
            }
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
        }
    });
    let body =
        Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }));
    let mut resp = Response::new(body);
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = request_id.parse() {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}
