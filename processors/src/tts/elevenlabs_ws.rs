//! The ElevenLabs multi-context socket task: one socket, one context per bot turn.
//!
//! The processor talks to it through an unbounded command channel (`on_event` cannot wait; the
//! rate is bounded by LLM sentence output plus one message per turn). The task owns the socket,
//! maps audio messages to frames and pushes them with the turn-scoped sender captured when the
//! context was opened ([`FrameSender`]): an utterance belongs to one bot turn, so after an
//! interruption the runner drops anything it pushes, and the task also drops audio of closed
//! contexts explicitly (audio can trail a `close_context`). Errors and metrics of the socket
//! itself, which outlives turns, go through a [`StreamSender`].
//!
//! Trade-offs:
//! - ElevenLabs only sends `isFinal` for a flushed context after `close_context`, so a flushed
//!   context is also considered done after `stop_timeout` without audio; either way the task
//!   then sends `close_context` to free the slot.
//! - Closed contexts are freed asynchronously by the provider, so they count toward the cap for
//!   `context_release_grace`. When the cap would be exceeded a fresh socket is opened (the old
//!   one only carries closed contexts by then, or a finished one whose tail is cut short).
//! - A dropped socket ends its live utterances (`TtsStopped`); the next text reconnects with
//!   backoff and opens its context anew, so the rest of a turn is still spoken.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxline_pipeline::{
    AudioFormat, AudioFrame, Direction, ErrorEvent, Event, Frame, FrameSender, MetricsEvent, StreamSender, TtsAudio,
};

use super::alignment::{WordAligner, words_text};
use super::elevenlabs_protocol as proto;
use super::elevenlabs_protocol::ElevenLabsSettings;
use crate::service::{ApiKey, Backoff};

/// Audio this long without a new chunk, after the flush, before an utterance that never
/// started is given up on.
const NO_AUDIO_FACTOR: u32 = 4;
/// Interrupted context ids remembered so text queued behind the interrupt is not spoken.
const CANCELLED_MEMORY: usize = 32;

/// Counters of one TTS processor, readable while the pipeline runs.
#[derive(Debug, Default)]
pub struct TtsStats {
    pub(crate) connections: AtomicU64,
    pub(crate) contexts_opened: AtomicU64,
    pub(crate) contexts_cancelled: AtomicU64,
    pub(crate) stale_audio_dropped: AtomicU64,
    pub(crate) cap_reconnects: AtomicU64,
    pub(crate) requests: AtomicU64,
}

/// A snapshot of [`TtsStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TtsCounters {
    /// Websocket connections opened.
    pub connections: u64,
    /// Contexts (utterances) opened on a socket.
    pub contexts_opened: u64,
    /// Contexts closed by an interruption.
    pub contexts_cancelled: u64,
    /// Audio messages dropped because their context was closed.
    pub stale_audio_dropped: u64,
    /// Fresh sockets opened because the open-context cap was reached.
    pub cap_reconnects: u64,
    /// HTTP synthesis requests (fallback mode).
    pub requests: u64,
}

impl TtsStats {
    /// Current values.
    #[must_use]
    pub fn snapshot(&self) -> TtsCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TtsCounters {
            connections: g(&self.connections),
            contexts_opened: g(&self.contexts_opened),
            contexts_cancelled: g(&self.contexts_cancelled),
            stale_audio_dropped: g(&self.stale_audio_dropped),
            cap_reconnects: g(&self.cap_reconnects),
            requests: g(&self.requests),
        }
    }
}

pub(crate) fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Commands from the processor.
pub(crate) enum Cmd {
    /// Speak `text` in context `ctx` (opened on first use with `sender`'s epoch).
    Text { ctx: Arc<str>, text: String, sender: FrameSender },
    /// No more text for `ctx`.
    Flush { ctx: Arc<str> },
    /// Barge-in: close every live context.
    Interrupt,
    /// End of stream: `close_socket`, let flushed audio finish, exit.
    Shutdown,
}

/// The processor's side of the socket task.
pub(crate) struct WsHandle {
    /// Unbounded: see the module docs.
    tx: mpsc::UnboundedSender<Cmd>,
    task: Option<JoinHandle<()>>,
}

impl WsHandle {
    pub(crate) fn send(&self, cmd: Cmd) {
        let _ = self.tx.send(cmd);
    }

    pub(crate) async fn shutdown(mut self, wait: Duration) {
        self.send(Cmd::Shutdown);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(wait, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

pub(crate) fn spawn(
    settings: Arc<ElevenLabsSettings>,
    output_format: String,
    format: AudioFormat,
    events: StreamSender,
    stats: Arc<TtsStats>,
    name: Arc<str>,
) -> WsHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = SocketTask {
        url: proto::ws_url(&settings, &output_format),
        backoff: Backoff::new(settings.reconnect),
        settings,
        format,
        events,
        stats,
        name,
        rx,
        write: None,
        read: None,
        retry_at: None,
        contexts: HashMap::new(),
        releasing: VecDeque::new(),
        cancelled: VecDeque::new(),
        last_sent: tokio::time::Instant::now(),
        shutting_down: false,
    };
    WsHandle { tx, task: Some(tokio::spawn(task.run())) }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Ctx {
    sender: FrameSender,
    started: bool,
    flushed: bool,
    offset: Duration,
    aligner: WordAligner,
    ttfb_from: Option<Instant>,
    last_activity: tokio::time::Instant,
}

struct SocketTask {
    settings: Arc<ElevenLabsSettings>,
    url: String,
    format: AudioFormat,
    events: StreamSender,
    stats: Arc<TtsStats>,
    name: Arc<str>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    write: Option<SplitSink<Ws, Message>>,
    read: Option<SplitStream<Ws>>,
    backoff: Backoff,
    retry_at: Option<tokio::time::Instant>,
    contexts: HashMap<Arc<str>, Ctx>,
    /// Contexts we closed, with when: the provider frees them asynchronously.
    releasing: VecDeque<(Arc<str>, tokio::time::Instant)>,
    cancelled: VecDeque<Arc<str>>,
    last_sent: tokio::time::Instant,
    shutting_down: bool,
}

async fn read_next(read: &mut Option<SplitStream<Ws>>) -> Option<Result<Message, WsError>> {
    match read {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl SocketTask {
    async fn run(mut self) {
        // Connect eagerly so the first turn does not pay for the handshake.
        self.connect().await;
        loop {
            let keepalive_at = (self.write.is_some() && !self.shutting_down)
                .then(|| self.last_sent + self.settings.keepalive_interval);
            let stop_at = self.next_stop_deadline();
            tokio::select! {
                cmd = self.rx.recv(), if !self.shutting_down => match cmd {
                    Some(cmd) => self.on_cmd(cmd).await,
                    None => self.begin_shutdown().await,
                },
                msg = read_next(&mut self.read) => {
                    if !self.on_socket(msg).await && self.shutting_down {
                        break;
                    }
                }
                () = sleep_until_opt(keepalive_at) => {
                    let ctx = self.contexts.keys().next().cloned();
                    self.send(proto::keepalive(ctx.as_deref())).await;
                }
                () = sleep_until_opt(stop_at) => self.on_stop_deadline().await,
            }
            if self.shutting_down && self.read.is_none() {
                break;
            }
        }
        self.end_all_live();
        tracing::debug!(processor = %self.name, "tts socket task ended");
    }

    fn error(&self, message: String) {
        tracing::warn!(processor = %self.name, %message, "tts error");
        let ev = ErrorEvent { processor: self.name.clone(), message: Arc::from(message), fatal: false };
        self.events.emit(Event::Error(ev));
    }

    /// One connection attempt, honouring the backoff of earlier failures.
    async fn connect(&mut self) -> bool {
        if self.write.is_some() {
            return true;
        }
        if let Some(at) = self.retry_at.take() {
            tokio::time::sleep_until(at).await;
        }
        let mut req = match self.url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => {
                self.error(format!("bad ElevenLabs URL: {e}"));
                return false;
            }
        };
        let key = self.settings.api_key.as_ref().map(ApiKey::expose).unwrap_or_default();
        match HeaderValue::from_str(key) {
            Ok(v) => {
                req.headers_mut().insert("xi-api-key", v);
            }
            Err(_) => {
                self.error("the ElevenLabs API key contains characters not allowed in a header".into());
                return false;
            }
        }
        // Audio messages with alignment can be large (Pipecat allows 16 MiB).
        // Read buffer: tungstenite zero-fills the free part of it (128 KiB by default) before
        // every socket read; audio messages of a few KiB to tens of KiB read fine through 32 KiB.
        let config = WebSocketConfig::default().max_message_size(Some(16 << 20)).read_buffer_size(32 * 1024);
        let attempt = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
        match tokio::time::timeout(self.settings.connect_timeout, attempt).await {
            Ok(Ok((ws, _))) => {
                let (w, r) = ws.split();
                self.write = Some(w);
                self.read = Some(r);
                self.last_sent = tokio::time::Instant::now();
                bump(&self.stats.connections);
                true
            }
            Ok(Err(e)) => {
                let msg = match &e {
                    WsError::Http(resp) => {
                        let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
                        format!("handshake rejected with HTTP {}: {}", resp.status().as_u16(), body.unwrap_or_default())
                    }
                    other => format!("connect failed: {other}"),
                };
                self.connect_failed(msg);
                false
            }
            Err(_) => {
                self.connect_failed(format!("connect timed out after {:?}", self.settings.connect_timeout));
                false
            }
        }
    }

    fn connect_failed(&mut self, msg: String) {
        self.error(msg);
        self.retry_at = Some(tokio::time::Instant::now() + self.backoff.next_delay());
    }

    async fn send(&mut self, text: String) -> bool {
        let Some(w) = self.write.as_mut() else { return false };
        match tokio::time::timeout(self.settings.connect_timeout, w.send(Message::text(text))).await {
            Ok(Ok(())) => {
                self.last_sent = tokio::time::Instant::now();
                true
            }
            Ok(Err(e)) => {
                self.socket_lost(format!("send failed: {e}"));
                false
            }
            Err(_) => {
                self.socket_lost("send timed out".into());
                false
            }
        }
    }

    fn open_count(&mut self) -> usize {
        let now = tokio::time::Instant::now();
        let grace = self.settings.context_release_grace;
        self.releasing.retain(|(_, at)| *at + grace > now);
        self.contexts.len() + self.releasing.len()
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Text { ctx, text, sender } => self.on_text(ctx, text, sender).await,
            Cmd::Flush { ctx } => {
                if let Some(c) = self.contexts.get_mut(&ctx) {
                    c.flushed = true;
                    c.last_activity = tokio::time::Instant::now();
                    self.send(proto::flush(&ctx)).await;
                }
            }
            Cmd::Interrupt => {
                let live: Vec<Arc<str>> = self.contexts.keys().cloned().collect();
                for id in live {
                    self.contexts.remove(&id);
                    bump(&self.stats.contexts_cancelled);
                    self.remember_cancelled(id.clone());
                    self.send(proto::close_context(&id)).await;
                    self.releasing.push_back((id, tokio::time::Instant::now()));
                }
            }
            Cmd::Shutdown => self.begin_shutdown().await,
        }
    }

    fn remember_cancelled(&mut self, id: Arc<str>) {
        if self.cancelled.len() >= CANCELLED_MEMORY {
            self.cancelled.pop_front();
        }
        self.cancelled.push_back(id);
    }

    async fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        if self.write.is_some() && self.send(proto::close_socket()).await {
            // The server finishes flushed contexts, then closes; don't wait forever for it.
            let deadline = tokio::time::Instant::now() + self.settings.close_timeout;
            loop {
                let msg = tokio::select! {
                    m = read_next(&mut self.read) => m,
                    () = tokio::time::sleep_until(deadline) => break,
                };
                if !self.on_socket(msg).await {
                    break;
                }
            }
        }
        if let Some(mut w) = self.write.take() {
            let _ = w.close().await;
        }
        self.read = None;
    }

    async fn on_text(&mut self, ctx: Arc<str>, text: String, sender: FrameSender) {
        // Turn-scoped on purpose: text queued behind a barge-in belongs to the interrupted turn,
        // and opening a context for it would only produce audio the runner drops.
        if self.cancelled.contains(&ctx) || !sender.is_current() {
            return;
        }
        if !self.contexts.contains_key(&ctx) && !self.open_context(&ctx, sender).await {
            return;
        }
        let now = tokio::time::Instant::now();
        if let Some(c) = self.contexts.get_mut(&ctx) {
            if !c.started && c.ttfb_from.is_none() {
                c.ttfb_from = Some(Instant::now());
            }
            c.last_activity = now;
        }
        self.send(proto::send_text(&ctx, &text)).await;
    }

    async fn open_context(&mut self, ctx: &Arc<str>, sender: FrameSender) -> bool {
        if self.write.is_some() && self.open_count() >= self.settings.max_open_contexts {
            tracing::info!(processor = %self.name, "open-context cap reached; switching to a fresh socket");
            bump(&self.stats.cap_reconnects);
            if let Some(mut w) = self.write.take() {
                let _ = w.send(Message::text(proto::close_socket())).await;
            }
            self.read = None;
            self.end_all_live();
            self.releasing.clear();
        }
        if !self.connect().await {
            return false;
        }
        self.contexts.insert(
            ctx.clone(),
            Ctx {
                sender,
                started: false,
                flushed: false,
                offset: Duration::ZERO,
                aligner: WordAligner::default(),
                ttfb_from: None,
                last_activity: tokio::time::Instant::now(),
            },
        );
        bump(&self.stats.contexts_opened);
        let init = proto::init_context(&self.settings, ctx);
        self.send(init).await
    }

    /// Handles one socket read; `false` when the socket is gone.
    async fn on_socket(&mut self, msg: Option<Result<Message, WsError>>) -> bool {
        match msg {
            Some(Ok(Message::Text(t))) => {
                self.on_message(t.as_str()).await;
                true
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or_default();
                if !self.shutting_down || code != 1000 {
                    self.socket_lost(format!("socket closed by the server ({code} {reason})"));
                } else {
                    self.write = None;
                    self.read = None;
                }
                false
            }
            Some(Ok(_)) => true,
            Some(Err(e)) => {
                self.socket_lost(format!("socket dropped: {e}"));
                false
            }
            None => {
                if !self.shutting_down {
                    self.socket_lost("socket ended".into());
                }
                self.write = None;
                self.read = None;
                false
            }
        }
    }

    fn socket_lost(&mut self, why: String) {
        if !self.shutting_down {
            self.error(format!("{why}; will reconnect on the next text"));
            self.retry_at = Some(tokio::time::Instant::now() + self.backoff.next_delay());
        }
        self.write = None;
        self.read = None;
        self.end_all_live();
        self.releasing.clear();
    }

    /// Ends every live utterance (its socket is gone): listeners must not wait for it.
    fn end_all_live(&mut self) {
        for (id, mut c) in self.contexts.drain() {
            if c.started {
                if let Some(w) = c.aligner.finish() {
                    c.sender.push(Frame::TtsText { context_id: id.clone(), text: w.word }, Direction::Downstream);
                }
                c.sender.push(Frame::TtsStopped { context_id: id }, Direction::Downstream);
            }
        }
    }

    async fn on_message(&mut self, text: &str) {
        let msg = match proto::parse_server(text) {
            Ok(m) => m,
            Err(e) => {
                self.error(format!("malformed server message: {e}"));
                return;
            }
        };
        if let Some((code, message)) = &msg.error {
            self.error(format!("provider error {code}: {message}"));
        }
        let Some(id) = msg.context_id.as_deref() else { return };
        if let Some(audio) = msg.audio {
            // Audio can trail a close_context: never push audio of a context that is not live.
            let Some(key) = self.contexts.get_key_value(id).map(|(k, _)| k.clone()) else {
                bump(&self.stats.stale_audio_dropped);
                return;
            };
            let Some(c) = self.contexts.get_mut(id) else { return };
            c.last_activity = tokio::time::Instant::now();
            if !c.started {
                c.started = true;
                c.sender.push(Frame::TtsStarted { context_id: key.clone() }, Direction::Downstream);
                if let Some(t0) = c.ttfb_from.take() {
                    let value = t0.elapsed();
                    tracing::debug!(processor = %self.name, ttfb_ms = value.as_secs_f64() * 1e3, "tts ttfb");
                    self.events.emit(Event::Metrics(MetricsEvent::Ttfb { processor: self.name.clone(), value }));
                }
            }
            let words = match &msg.alignment {
                Some(a) => c.aligner.feed(&a.chars, &a.char_start_times_ms, &a.char_durations_ms, c.offset),
                None => Vec::new(),
            };
            if !words.is_empty() {
                c.sender.push(
                    Frame::TtsText { context_id: key.clone(), text: Arc::from(words_text(&words)) },
                    Direction::Downstream,
                );
            }
            let offset = c.offset;
            let frame = AudioFrame { data: Bytes::from(audio), format: self.format, pts: Some(offset) };
            c.offset += frame.duration();
            c.sender.push(
                Frame::from(TtsAudio { audio: frame, context_id: key, words: words.into(), offset }),
                Direction::Downstream,
            );
        }
        if msg.is_final
            && let Some((key, c)) = self.contexts.remove_entry(id)
        {
            self.finish(key, c).await;
        }
    }

    /// A live context is done: last word, `TtsStopped`, and free its slot at the provider.
    async fn finish(&mut self, id: Arc<str>, mut c: Ctx) {
        if c.started {
            if let Some(w) = c.aligner.finish() {
                c.sender.push(Frame::TtsText { context_id: id.clone(), text: w.word }, Direction::Downstream);
            }
            c.sender.push(Frame::TtsStopped { context_id: id.clone() }, Direction::Downstream);
        } else {
            self.error(format!("no audio for utterance {id}"));
        }
        self.send(proto::close_context(&id)).await;
        self.releasing.push_back((id, tokio::time::Instant::now()));
    }

    fn stop_after(&self, c: &Ctx) -> Duration {
        if c.started { self.settings.stop_timeout } else { self.settings.stop_timeout * NO_AUDIO_FACTOR }
    }

    fn next_stop_deadline(&self) -> Option<tokio::time::Instant> {
        self.contexts.values().filter(|c| c.flushed).map(|c| c.last_activity + self.stop_after(c)).min()
    }

    async fn on_stop_deadline(&mut self) {
        let now = tokio::time::Instant::now();
        let done: Vec<Arc<str>> = self
            .contexts
            .iter()
            .filter(|(_, c)| c.flushed && c.last_activity + self.stop_after(c) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for id in done {
            if let Some((key, c)) = self.contexts.remove_entry(&id) {
                self.finish(key, c).await;
            }
        }
    }
}
