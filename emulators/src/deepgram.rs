//! Deepgram live streaming STT emulator (`GET /v1/listen`, WebSocket).
//!
//! Wire behaviour follows Deepgram's live API: `Authorization: Token <key>` (or `Bearer`, or
//! the `Sec-WebSocket-Protocol: token, <key>` form) is checked at the handshake and a bad
//! key gets HTTP 401 with `dg-request-id`/`dg-error` headers and no upgrade. Binary frames
//! are audio; text frames are `KeepAlive`, `Finalize`, `CloseStream` and `Configure`.
//! Responses are `Results` (with `is_final`, `speech_final`, `from_finalize`, words with
//! timings), `SpeechStarted` (with `vad_events=true`), `UtteranceEnd` (with
//! `interim_results=true` and `utterance_end_ms`), `Metadata` on close, and `Error` for
//! unparseable client JSON. An idle socket is closed with 1011 `NET-0001`.
//!
//! Query values Deepgram would refuse get HTTP 400 at the handshake: `endpointing` must be
//! milliseconds or `true`/`false`, `utterance_end_ms` milliseconds, `vad_events` and
//! `interim_results` booleans. With `endpointing=false` an utterance that fires on audio is final
//! but never `speech_final` (no endpointing ran); `UtteranceEnd` is word-timing based and still
//! comes.
//!
//! A `Finalize` with nothing scripted to flush gets an empty `from_finalize` result when audio
//! arrived since the last result, unless [`DeepgramConfig::empty_finalize_reply`] is off: Deepgram
//! documents the `from_finalize` response as what "typically occurs when there is a noticeable
//! amount of audio buffered", and after its own endpoint with only silence since it often sends
//! nothing at all. Clients must treat both as normal.
//!
//! What gets "recognized" is scripted: each connection walks a queue of
//! [`TranscriptScript`] utterances. An utterance fires on audio volume since the previous
//! utterance ([`Trigger::AudioBytes`], [`Trigger::AudioMs`]), on the client's `Finalize`
//! ([`Trigger::Finalize`], producing `from_finalize: true`), or whichever comes first
//! ([`Trigger::FinalizeOrAudioMs`], the simulation default built by
//! [`DeepgramConfig::with_utterances`]).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::common::{Outbox, Recorder, Server, header_str, parse_query, query_bool, query_get, uuid_like};

/// Default audio per utterance for [`DeepgramConfig::with_utterances`].
pub const DEFAULT_UTTERANCE_AUDIO_MS: u64 = 3000;

/// When a scripted utterance is emitted, measured from the end of the previous utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// After this many audio bytes since the previous utterance; `speech_final` via endpointing.
    AudioBytes(u64),
    /// After this many milliseconds of audio (converted with the connection's
    /// `encoding`/`sample_rate`/`channels`) since the previous utterance.
    AudioMs(u64),
    /// Only when the client sends `Finalize`; the result carries `from_finalize: true`.
    Finalize,
    /// On `Finalize` (`from_finalize: true`) or after this much audio, whichever is first.
    FinalizeOrAudioMs(u64),
}

/// One recognized word with timings relative to the start of its utterance window.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedWord {
    /// Normalized word (lowercase, no punctuation), the `word` field.
    pub word: String,
    /// Display form, the `punctuated_word` field.
    pub punctuated_word: String,
    /// Start in seconds from the utterance window start.
    pub start: f64,
    /// End in seconds from the utterance window start.
    pub end: f64,
    /// Word confidence 0..1.
    pub confidence: f64,
}

/// One scripted utterance: what is "heard", when it is emitted, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptScript {
    /// What makes this utterance fire.
    pub trigger: Trigger,
    /// Words of the final transcript (the transcript string joins the punctuated forms).
    pub words: Vec<ScriptedWord>,
    /// Interim (`is_final: false`) results before the final, showing growing word prefixes.
    /// Sent only when the client asked for `interim_results=true`, spread evenly over the
    /// trigger's audio (or every [`DeepgramConfig::interim_interval_ms`] for `Finalize`).
    pub interims: usize,
    /// `is_final` on the closing result (false scripts a lone interim).
    pub is_final: bool,
    /// `speech_final` on the closing result.
    pub speech_final: bool,
    /// Delay between the trigger and the closing result; `None` uses the config's.
    pub delay: Option<Duration>,
}

impl TranscriptScript {
    /// An utterance of `text` with evenly spaced word timings (0.35 s per word).
    pub fn new(text: &str, trigger: Trigger) -> Self {
        let words = text
            .split_whitespace()
            .enumerate()
            .map(|(i, w)| {
                let start = 0.1 + i as f64 * 0.35;
                ScriptedWord {
                    word: w
                        .chars()
                        .filter(|c| c.is_alphanumeric() || *c == '\'' || *c == '-')
                        .collect::<String>()
                        .to_lowercase(),
                    punctuated_word: w.to_string(),
                    start,
                    end: start + 0.3,
                    confidence: 0.98,
                }
            })
            .collect();
        Self { trigger, words, interims: 0, is_final: true, speech_final: true, delay: None }
    }

    /// Sets the number of interim results before the final.
    pub fn with_interims(mut self, n: usize) -> Self {
        self.interims = n;
        self
    }

    /// Sets `speech_final` on the final result.
    pub fn with_speech_final(mut self, speech_final: bool) -> Self {
        self.speech_final = speech_final;
        self
    }

    /// Sets the delay between trigger and final result.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Replaces the words (explicit timings and confidences).
    pub fn with_words(mut self, words: Vec<ScriptedWord>) -> Self {
        self.words = words;
        self
    }

    /// The transcript string this utterance produces.
    pub fn transcript(&self) -> String {
        join_words(&self.words)
    }
}

fn join_words(words: &[ScriptedWord]) -> String {
    words.iter().map(|w| w.punctuated_word.as_str()).collect::<Vec<_>>().join(" ")
}

/// Misbehaviour injected into one connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeepgramFault {
    /// Behave normally.
    #[default]
    None,
    /// Drop the TCP connection without a close frame once this many audio bytes arrived.
    DropAfterBytes(u64),
    /// Send a close frame with this code and reason once this many audio bytes arrived.
    CloseAfterBytes {
        /// Audio bytes before closing.
        bytes: u64,
        /// Close code, e.g. 1011.
        code: u16,
        /// Close reason, e.g. `NET-0000`.
        reason: String,
    },
    /// Send a message with an unknown `type` right after the connection opens.
    UnknownMessage,
    /// Send a text frame that is not valid JSON right after the connection opens.
    MalformedJson,
    /// Accept everything and never send anything (not even on `CloseStream`).
    NeverAnswer,
    /// Refuse the WebSocket handshake with this HTTP status (e.g. 429, 402, 500).
    RejectHandshake(u16),
}

/// Emulator configuration. `Default` recognizes nothing; see [`DeepgramConfig::with_utterances`].
#[derive(Debug, Clone)]
pub struct DeepgramConfig {
    /// Expected API key; `None` accepts any (or no) credentials.
    pub api_key: Option<String>,
    /// Utterance queue given to every connection (fresh copy per connection).
    pub script: Vec<TranscriptScript>,
    /// Per-connection override: connection `i` (0-based, in accept order) uses
    /// `connection_scripts[i]` instead of `script` when present.
    pub connection_scripts: Vec<Vec<TranscriptScript>>,
    /// Per-connection faults: connection `i` gets `faults[i]` (missing = none).
    pub faults: Vec<DeepgramFault>,
    /// Delay between a trigger and its result, unless the utterance overrides it.
    pub result_delay: Duration,
    /// Audio spacing of interims for `Finalize`-triggered utterances (Deepgram sends about
    /// one interim per second).
    pub interim_interval_ms: u64,
    /// Close with 1011 `NET-0001` after this long without any client frame (Deepgram: ~10 s).
    pub idle_timeout: Option<Duration>,
    /// Model name reported in `metadata.model_info`.
    pub model_name: String,
    /// Answer a `Finalize` that has no scripted utterance to flush, but audio since the last
    /// result, with an empty `from_finalize: true` final (`true`); `false` sends nothing, as
    /// Deepgram does when what it buffered since its own endpoint is only silence.
    pub empty_finalize_reply: bool,
}

impl Default for DeepgramConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            script: Vec::new(),
            connection_scripts: Vec::new(),
            faults: Vec::new(),
            result_delay: Duration::ZERO,
            interim_interval_ms: 1000,
            idle_timeout: Some(Duration::from_secs(10)),
            model_name: "general-nova-3".to_string(),
            empty_finalize_reply: true,
        }
    }
}

impl DeepgramConfig {
    /// Simulation preset: each connection hears `utterances` in order, each emitted as a
    /// final (`speech_final: true`) when `Finalize` arrives or after
    /// [`DEFAULT_UTTERANCE_AUDIO_MS`] of audio.
    pub fn with_utterances<I, S>(utterances: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            script: utterances
                .into_iter()
                .map(|u| TranscriptScript::new(u.as_ref(), Trigger::FinalizeOrAudioMs(DEFAULT_UTTERANCE_AUDIO_MS)))
                .collect(),
            ..Self::default()
        }
    }

    /// Sets the expected API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
}

/// A text control message received from the client, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlMessage {
    /// `{"type":"KeepAlive"}`.
    KeepAlive,
    /// `{"type":"Finalize"}`.
    Finalize,
    /// `{"type":"CloseStream"}` (also recorded for a zero-length binary frame).
    CloseStream,
    /// `{"type":"Configure",…}` with the whole message.
    Configure(Value),
    /// Any other text frame, raw.
    Other(String),
}

/// What one accepted connection received.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepgramConnection {
    /// 0-based accept order.
    pub index: usize,
    /// The `dg-request-id` given to this connection.
    pub request_id: String,
    /// Query parameters in order (repeated keys kept).
    pub query: Vec<(String, String)>,
    /// Raw `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Total audio bytes received.
    pub audio_bytes: u64,
    /// Number of non-empty binary frames received.
    pub audio_frames: u64,
    /// Text control messages in arrival order.
    pub controls: Vec<ControlMessage>,
    /// Transcripts of the finals sent so far.
    pub finals_sent: Vec<String>,
    /// True once the socket is gone.
    pub closed: bool,
}

impl DeepgramConnection {
    /// First value of query parameter `key`.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        query_get(&self.query, key)
    }

    /// Count of control messages matching `pred`.
    pub fn count_controls(&self, pred: impl Fn(&ControlMessage) -> bool) -> usize {
        self.controls.iter().filter(|c| pred(c)).count()
    }
}

/// A handshake the emulator refused.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedHandshake {
    /// HTTP status returned.
    pub status: u16,
    /// Raw `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Query parameters.
    pub query: Vec<(String, String)>,
    /// The `dg-error` reason.
    pub reason: String,
}

/// Snapshot of everything the emulator received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeepgramReceived {
    /// Accepted connections, in accept order.
    pub connections: Vec<DeepgramConnection>,
    /// Refused handshakes.
    pub rejected: Vec<RejectedHandshake>,
}

impl DeepgramReceived {
    /// Number of accepted connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Audio bytes over all connections.
    pub fn total_audio_bytes(&self) -> u64 {
        self.connections.iter().map(|c| c.audio_bytes).sum()
    }
}

struct Inner {
    cfg: DeepgramConfig,
    rec: Recorder<DeepgramReceived>,
    cancel: CancellationToken,
}

/// A running Deepgram live-STT emulator.
pub struct DeepgramEmulator {
    inner: Arc<Inner>,
    server: Server,
}

impl std::fmt::Debug for DeepgramEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeepgramEmulator").field("addr", &self.server.addr()).finish()
    }
}

impl DeepgramEmulator {
    /// Binds 127.0.0.1:0 and starts serving `/v1/listen`.
    pub fn start(cfg: DeepgramConfig) -> io::Result<Self> {
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner { cfg, rec: Recorder::new(DeepgramReceived::default()), cancel: cancel.clone() });
        let router = Router::new().route("/v1/listen", get(listen)).with_state(inner.clone());
        let server = Server::start("deepgram", router, cancel)?;
        Ok(Self { inner, server })
    }

    /// `ws://127.0.0.1:PORT`; clients append `/v1/listen?…`.
    pub fn base_url(&self) -> String {
        format!("ws://{}", self.server.addr())
    }

    /// The bound address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// Snapshot of what every connection received so far.
    pub fn received(&self) -> DeepgramReceived {
        self.inner.rec.snapshot()
    }

    /// Waits until `pred` holds on the received state, or `timeout` passes (`None`).
    pub async fn wait_for(
        &self,
        pred: impl Fn(&DeepgramReceived) -> bool,
        timeout: Duration,
    ) -> Option<DeepgramReceived> {
        self.inner.rec.wait_for(pred, timeout).await
    }

    /// Stops the server and closes open connections (1001).
    pub async fn shutdown(mut self) {
        self.server.shutdown().await;
    }
}

fn reject(status: StatusCode, request_id: &str, reason: &str) -> Response {
    let err_code = match status {
        StatusCode::UNAUTHORIZED => "INVALID_AUTH",
        StatusCode::PAYMENT_REQUIRED => "ASR_PAYMENT_REQUIRED",
        StatusCode::FORBIDDEN => "INSUFFICIENT_PERMISSIONS",
        StatusCode::TOO_MANY_REQUESTS => "TOO_MANY_REQUESTS",
        StatusCode::BAD_REQUEST => "Bad Request",
        _ => "INTERNAL_SERVER_ERROR",
    };
    let body = json!({"err_code": err_code, "err_msg": reason, "request_id": request_id});
    let mut resp = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("dg-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(reason) {
        resp.headers_mut().insert("dg-error", v);
    }
    resp
}

const KNOWN_ENCODINGS: &[&str] =
    &["linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex", "g729"];

async fn listen(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let query = parse_query(raw.as_deref());
    let request_id = uuid_like();
    let authorization = header_str(&headers, "authorization").map(str::to_string);
    let protocols = header_str(&headers, "sec-websocket-protocol").unwrap_or("");
    let proto_key = {
        let parts: Vec<&str> = protocols.split(',').map(str::trim).collect();
        match parts.as_slice() {
            ["token", key, ..] => Some((*key).to_string()),
            _ => None,
        }
    };
    let presented = authorization
        .as_deref()
        .and_then(|a| {
            a.strip_prefix("Token ").or_else(|| a.strip_prefix("token ")).or_else(|| a.strip_prefix("Bearer "))
        })
        .map(|k| k.trim().to_string())
        .or(proto_key.clone());

    let record_reject = |status: u16, reason: &str| {
        inner.rec.update(|r| {
            r.rejected.push(RejectedHandshake {
                status,
                authorization: authorization.clone(),
                query: query.clone(),
                reason: reason.to_string(),
            })
        });
        tracing::info!(status, reason, "deepgram emulator refused handshake");
    };

    if let Some(expected) = &inner.cfg.api_key
        && presented.as_deref() != Some(expected.as_str())
    {
        let reason = "Invalid credentials.";
        record_reject(401, reason);
        return reject(StatusCode::UNAUTHORIZED, &request_id, reason);
    }
    if let Some(enc) = query_get(&query, "encoding") {
        if !KNOWN_ENCODINGS.contains(&enc) {
            let reason = format!("Bad Request: encoding `{enc}` is not supported.");
            record_reject(400, &reason);
            return reject(StatusCode::BAD_REQUEST, &request_id, &reason);
        }
        if matches!(enc, "linear16" | "linear32" | "mulaw" | "alaw") && query_get(&query, "sample_rate").is_none() {
            let reason = "Bad Request: sample_rate must be specified for raw (headerless) audio.";
            record_reject(400, reason);
            return reject(StatusCode::BAD_REQUEST, &request_id, reason);
        }
    }

    if let Some(reason) = bad_query_value(&query) {
        record_reject(400, &reason);
        return reject(StatusCode::BAD_REQUEST, &request_id, &reason);
    }

    let index = inner.rec.read(|r| r.connections.len() + r.rejected.len());
    let fault = inner.cfg.faults.get(index).cloned().unwrap_or_default();
    if let DeepgramFault::RejectHandshake(status) = fault {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let reason = status.canonical_reason().unwrap_or("error").to_string();
        record_reject(status.as_u16(), &reason);
        return reject(status, &request_id, &reason);
    }

    let index = inner.rec.update(|r| {
        r.connections.push(DeepgramConnection {
            index: r.connections.len(),
            request_id: request_id.clone(),
            query: query.clone(),
            authorization: authorization.clone(),
            audio_bytes: 0,
            audio_frames: 0,
            controls: Vec::new(),
            finals_sent: Vec::new(),
            closed: false,
        });
        r.connections.len() - 1
    });
    let script = inner.cfg.connection_scripts.get(index).cloned().unwrap_or_else(|| inner.cfg.script.clone());
    let conn = Conn::new(inner.clone(), index, request_id.clone(), &query, script, fault);
    tracing::debug!(index, request_id, "deepgram emulator accepted connection");

    let ws = if proto_key.is_some() { ws.protocols(["token"]) } else { ws };
    let mut resp = ws.on_upgrade(move |socket| run_connection(socket, conn));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("dg-request-id", v);
    }
    resp
}

/// Why Deepgram would refuse the query's turn-taking values, if it would.
fn bad_query_value(query: &[(String, String)]) -> Option<String> {
    let is_bool = |v: &str| v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false");
    let is_ms = |v: &str| v.parse::<u32>().is_ok();
    let check = |key: &str, ok: &dyn Fn(&str) -> bool, want: &str| {
        query_get(query, key).filter(|v| !ok(v)).map(|v| format!("Bad Request: `{key}` must be {want}, got `{v}`."))
    };
    check("endpointing", &|v| is_ms(v) || is_bool(v), "milliseconds or a boolean")
        .or_else(|| check("utterance_end_ms", &is_ms, "milliseconds"))
        .or_else(|| check("vad_events", &is_bool, "a boolean"))
        .or_else(|| check("interim_results", &is_bool, "a boolean"))
}

enum Action {
    Text(String),
    Close(u16, String),
    Drop,
}

struct Conn {
    inner: Arc<Inner>,
    index: usize,
    request_id: String,
    bytes_per_ms: f64,
    channels: u32,
    interim_results: bool,
    vad_events: bool,
    utterance_end: bool,
    /// `endpointing=false`: nothing turns a final into `speech_final` on its own.
    endpointing_off: bool,
    queue: VecDeque<TranscriptScript>,
    fault: DeepgramFault,
    total_bytes: u64,
    window_start: u64,
    /// `total_bytes` at the end of the last frame that was not digital silence: `CloseStream`
    /// flushes words only from audio that had sound in it, as Deepgram transcribes nothing from
    /// a caller who never spoke.
    sound_until: u64,
    /// The stream's `encoding` query value (`linear16` when absent), to tell sound from silence.
    encoding: String,
    last_result_at: u64,
    interims_sent: usize,
    speech_started_sent: bool,
    out: Outbox<Action>,
    last_due: Instant,
    finished: bool,
}

impl Conn {
    fn new(
        inner: Arc<Inner>,
        index: usize,
        request_id: String,
        query: &[(String, String)],
        script: Vec<TranscriptScript>,
        fault: DeepgramFault,
    ) -> Self {
        let rate: f64 = query_get(query, "sample_rate").and_then(|v| v.parse().ok()).unwrap_or(16000.0);
        let channels: u32 = query_get(query, "channels").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
        let bytes_per_sample = match query_get(query, "encoding") {
            Some("mulaw" | "alaw") => 1.0,
            Some("linear32") => 4.0,
            _ => 2.0,
        };
        Self {
            inner,
            index,
            request_id,
            bytes_per_ms: rate * bytes_per_sample * f64::from(channels) / 1000.0,
            channels,
            interim_results: query_bool(query, "interim_results"),
            vad_events: query_bool(query, "vad_events"),
            utterance_end: query_bool(query, "interim_results") && query_get(query, "utterance_end_ms").is_some(),
            endpointing_off: query_get(query, "endpointing").is_some_and(|v| v.eq_ignore_ascii_case("false")),
            queue: script.into(),
            fault,
            total_bytes: 0,
            window_start: 0,
            sound_until: 0,
            encoding: query_get(query, "encoding").unwrap_or("linear16").to_string(),
            last_result_at: 0,
            interims_sent: 0,
            speech_started_sent: false,
            out: Outbox::new(),
            last_due: Instant::now(),
            finished: false,
        }
    }

    fn secs(&self, bytes: u64) -> f64 {
        let s = bytes as f64 / self.bytes_per_ms / 1000.0;
        (s * 1000.0).round() / 1000.0
    }

    fn ms_to_bytes(&self, ms: u64) -> u64 {
        (ms as f64 * self.bytes_per_ms).round() as u64
    }

    /// Keeps results in order even when delays differ between them.
    fn schedule(&mut self, delay: Duration, action: Action) {
        let due = (Instant::now() + delay).max(self.last_due);
        self.last_due = due;
        self.out.push(due, action);
    }

    fn send_json(&mut self, delay: Duration, v: Value) {
        self.schedule(delay, Action::Text(v.to_string()));
    }

    fn on_open(&mut self) {
        match self.fault {
            DeepgramFault::UnknownMessage => self.send_json(
                Duration::ZERO,
                json!({"type": "EmulatorFutureEvent", "request_id": self.request_id, "detail": "unknown message type"}),
            ),
            DeepgramFault::MalformedJson => self
                .schedule(Duration::ZERO, Action::Text("{\"type\":\"Results\",\"channel\":{\"alternatives\":[".into())),
            _ => {}
        }
    }

    fn metadata(&self) -> Value {
        json!({
            "request_id": self.request_id,
            "model_info": {"name": self.inner.cfg.model_name, "version": "2024-emulator", "arch": "nova-3"},
            "model_uuid": "00000000-0000-4000-8000-000000000000",
        })
    }

    fn results(&self, words: &[ScriptedWord], is_final: bool, speech_final: bool, from_finalize: bool) -> Value {
        let start = self.secs(self.window_start);
        let duration = self.secs(self.total_bytes.saturating_sub(self.window_start));
        let words_json: Vec<Value> = words
            .iter()
            .map(|w| {
                json!({
                    "word": w.word,
                    "start": round3(start + w.start),
                    "end": round3(start + w.end),
                    "confidence": w.confidence,
                    "punctuated_word": w.punctuated_word,
                })
            })
            .collect();
        let confidence =
            if words.is_empty() { 0.0 } else { words.iter().map(|w| w.confidence).sum::<f64>() / words.len() as f64 };
        json!({
            "type": "Results",
            "channel_index": [0, self.channels],
            "duration": duration,
            "start": start,
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{
                "transcript": join_words(words),
                "confidence": round3(confidence),
                "words": words_json,
            }]},
            "metadata": self.metadata(),
        })
    }

    fn on_audio(&mut self, n: u64) {
        self.total_bytes += n;
        self.inner.rec.update(|r| {
            if let Some(c) = r.connections.get_mut(self.index) {
                c.audio_bytes += n;
                c.audio_frames += 1;
            }
        });
        match &self.fault {
            DeepgramFault::DropAfterBytes(limit) if self.total_bytes >= *limit => {
                self.out.push(Instant::now(), Action::Drop);
                self.finished = true;
                return;
            }
            DeepgramFault::CloseAfterBytes { bytes, code, reason } if self.total_bytes >= *bytes => {
                let (code, reason) = (*code, reason.clone());
                self.schedule(Duration::ZERO, Action::Close(code, reason));
                self.finished = true;
                return;
            }
            DeepgramFault::NeverAnswer => return,
            _ => {}
        }
        let Some(head) = self.queue.front().cloned() else {
            return;
        };
        let window = self.total_bytes - self.window_start;
        if self.vad_events && !self.speech_started_sent {
            self.speech_started_sent = true;
            let ts = self.secs(self.window_start);
            self.send_json(
                Duration::ZERO,
                json!({"type": "SpeechStarted", "channel": [0, self.channels], "timestamp": ts}),
            );
        }
        let trigger_bytes = match head.trigger {
            Trigger::AudioBytes(b) => Some(b),
            Trigger::AudioMs(ms) | Trigger::FinalizeOrAudioMs(ms) => Some(self.ms_to_bytes(ms)),
            Trigger::Finalize => None,
        };
        if self.interim_results && head.interims > 0 {
            let spacing = match trigger_bytes {
                Some(b) => b / (head.interims as u64 + 1),
                None => self.ms_to_bytes(self.inner.cfg.interim_interval_ms),
            }
            .max(1);
            while self.interims_sent < head.interims && window >= spacing * (self.interims_sent as u64 + 1) {
                self.interims_sent += 1;
                let shown = (head.words.len() * self.interims_sent).div_ceil(head.interims + 1).max(1);
                let words = &head.words[..shown.min(head.words.len())];
                let v = self.results(words, false, false, false);
                let delay = self.inner.cfg.result_delay;
                self.send_json(delay, v);
            }
        }
        if let Some(b) = trigger_bytes
            && window >= b
        {
            self.emit_head(false);
        }
    }

    fn emit_head(&mut self, from_finalize: bool) {
        let Some(head) = self.queue.pop_front() else {
            return;
        };
        // Endpointing is what sets speech_final on a result the server finalized by itself.
        let endpointed = from_finalize || !self.endpointing_off;
        let v =
            self.results(&head.words, head.is_final, head.is_final && head.speech_final && endpointed, from_finalize);
        let delay = head.delay.unwrap_or(self.inner.cfg.result_delay);
        self.send_json(delay, v);
        if head.is_final {
            let transcript = head.transcript();
            self.inner.rec.update(|r| {
                if let Some(c) = r.connections.get_mut(self.index) {
                    c.finals_sent.push(transcript);
                }
            });
        }
        if head.speech_final && self.utterance_end {
            let last_word_end = head.words.last().map(|w| round3(self.secs(self.window_start) + w.end));
            let last_word_end = last_word_end.unwrap_or_else(|| self.secs(self.total_bytes));
            self.send_json(
                delay,
                json!({"type": "UtteranceEnd", "channel": [0, self.channels], "last_word_end": last_word_end}),
            );
        }
        self.window_start = self.total_bytes;
        self.last_result_at = self.total_bytes;
        self.interims_sent = 0;
        self.speech_started_sent = false;
    }

    fn on_finalize(&mut self) {
        if self.fault == DeepgramFault::NeverAnswer {
            return;
        }
        let finalize_triggered =
            self.queue.front().is_some_and(|h| matches!(h.trigger, Trigger::Finalize | Trigger::FinalizeOrAudioMs(_)));
        if finalize_triggered {
            self.emit_head(true);
        } else if self.total_bytes > self.last_result_at && self.inner.cfg.empty_finalize_reply {
            // Deepgram answers a Finalize with a (possibly empty) from_finalize result only
            // when there was audio left to flush (and, with only silence left, not always).
            let v = self.results(&[], true, false, true);
            let delay = self.inner.cfg.result_delay;
            self.send_json(delay, v);
            self.last_result_at = self.total_bytes;
        }
    }

    /// Whether an audio frame is louder than digital silence: |sample| above ~1% of full scale
    /// (G.711: segment 3 and up, the exponent in bits 4–6 once μ-law's inversion or A-law's
    /// 0x55 mask is undone). Other encodings count as sound.
    fn has_sound(&self, audio: &[u8]) -> bool {
        match self.encoding.as_str() {
            "mulaw" => audio.iter().any(|b| ((!b & 0x70) >> 4) >= 3),
            "alaw" => audio.iter().any(|b| (((b ^ 0x55) & 0x70) >> 4) >= 3),
            "linear16" => audio.chunks_exact(2).any(|c| i16::from_le_bytes([c[0], c[1]]).unsigned_abs() > 300),
            _ => true,
        }
    }

    fn on_close_stream(&mut self) {
        if self.fault == DeepgramFault::NeverAnswer {
            return;
        }
        let flushable = self.sound_until > self.window_start
            && self
                .queue
                .front()
                .is_some_and(|h| matches!(h.trigger, Trigger::Finalize | Trigger::FinalizeOrAudioMs(_)));
        if flushable {
            self.emit_head(false);
        }
        let meta = json!({
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": format!("{:064x}", self.total_bytes),
            "created": "2025-01-01T00:00:00.000Z",
            "duration": self.secs(self.total_bytes),
            "channels": self.channels,
            "models": ["00000000-0000-4000-8000-000000000000"],
            "model_info": {"00000000-0000-4000-8000-000000000000": {"name": self.inner.cfg.model_name, "version": "2024-emulator", "arch": "nova-3"}},
        });
        let delay = self.inner.cfg.result_delay;
        self.send_json(delay, meta);
        self.schedule(Duration::ZERO, Action::Close(1000, String::new()));
        self.finished = true;
    }

    fn record_control(&self, c: ControlMessage) {
        self.inner.rec.update(|r| {
            if let Some(conn) = r.connections.get_mut(self.index) {
                conn.controls.push(c);
            }
        });
    }

    fn on_text(&mut self, text: &str) {
        let parsed: Option<Value> = serde_json::from_str(text).ok();
        let ty = parsed.as_ref().and_then(|v| v.get("type")).and_then(Value::as_str).map(str::to_string);
        match ty.as_deref() {
            Some("KeepAlive") => self.record_control(ControlMessage::KeepAlive),
            Some("Finalize") => {
                self.record_control(ControlMessage::Finalize);
                self.on_finalize();
            }
            Some("CloseStream") => {
                self.record_control(ControlMessage::CloseStream);
                self.on_close_stream();
            }
            Some("Configure") => {
                let msg = parsed.clone().unwrap_or(Value::Null);
                self.record_control(ControlMessage::Configure(msg.clone()));
                if self.fault != DeepgramFault::NeverAnswer {
                    let keyterms = msg.get("keyterms").cloned().unwrap_or_else(|| json!([]));
                    self.send_json(
                        Duration::ZERO,
                        json!({"type": "ConfigureSuccess", "request_id": self.request_id, "keyterms": keyterms}),
                    );
                }
            }
            _ => {
                self.record_control(ControlMessage::Other(text.to_string()));
                if self.fault != DeepgramFault::NeverAnswer {
                    let description = match parsed {
                        None => "Failed to parse client message as JSON.".to_string(),
                        Some(_) => format!("Unknown message type: {}", ty.as_deref().unwrap_or("<missing>")),
                    };
                    self.send_json(
                        Duration::ZERO,
                        json!({"type": "Error", "variant": "SchemaError", "description": description, "message": text.chars().take(200).collect::<String>()}),
                    );
                }
            }
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn close_and_drain(ws: &mut WebSocket, code: u16, reason: String) {
    let _ = ws.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    // Give the client a moment to answer the close so it sees a clean handshake.
    let _ = tokio::time::timeout(Duration::from_secs(1), async { while let Some(Ok(_)) = ws.recv().await {} }).await;
}

async fn run_connection(mut ws: WebSocket, mut conn: Conn) {
    let cancel = conn.inner.cancel.clone();
    let idle = conn.inner.cfg.idle_timeout;
    let mut last_activity = Instant::now();
    conn.on_open();
    'outer: loop {
        let now = Instant::now();
        while let Some(action) = conn.out.pop_due(now) {
            match action {
                Action::Text(t) => {
                    if ws.send(Message::Text(t.into())).await.is_err() {
                        break 'outer;
                    }
                }
                Action::Close(code, reason) => {
                    close_and_drain(&mut ws, code, reason).await;
                    break 'outer;
                }
                Action::Drop => break 'outer,
            }
        }
        let idle_deadline = idle.filter(|_| !conn.finished).map(|d| last_activity + d);
        tokio::select! {
            _ = cancel.cancelled() => {
                close_and_drain(&mut ws, 1001, "server shutting down".into()).await;
                break;
            }
            _ = crate::common::sleep_until_opt(conn.out.next_due()) => {}
            _ = crate::common::sleep_until_opt(idle_deadline) => {
                tracing::info!(index = conn.index, "deepgram emulator closing idle socket (NET-0001)");
                close_and_drain(&mut ws, 1011, "Deepgram did not receive audio data or a text message within the timeout window. See https://dpgr.am/net0001".into()).await;
                break;
            }
            msg = ws.recv() => {
                last_activity = Instant::now();
                match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Binary(b))) if conn.finished => { let _ = b; }
                    Some(Ok(Message::Binary(b))) => {
                        if b.is_empty() {
                            // A zero-length binary frame is Deepgram's legacy end-of-stream.
                            conn.record_control(ControlMessage::CloseStream);
                            conn.on_close_stream();
                        } else {
                            if conn.has_sound(&b) {
                                conn.sound_until = conn.total_bytes + b.len() as u64;
                            }
                            conn.on_audio(b.len() as u64);
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        if !conn.finished {
                            conn.on_text(t.as_str());
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    conn.inner.rec.update(|r| {
        if let Some(c) = r.connections.get_mut(conn.index) {
            c.closed = true;
        }
    });
    tracing::debug!(index = conn.index, "deepgram emulator connection ended");
}
