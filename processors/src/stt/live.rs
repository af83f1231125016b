//! Plumbing shared by live (websocket) recognisers: one spawned task per stream that owns the
//! socket, with reconnect, audio replay, keepalive, `Finalize` with a timeout fallback, TTFB,
//! and transcripts that survive barge-in. The provider is a `LiveProtocol`: URL, control
//! messages and message parsing only.
//!
//! Trade-offs:
//! - Audio reaches the task through a bounded queue filled with `try_send`, so a wedged socket
//!   never stalls the pipeline; what does not fit is dropped and counted.
//! - While disconnected, audio goes to a replay buffer bounded by duration (oldest dropped and
//!   counted) and is sent first on the next connection. Audio already sent on a socket that
//!   dropped is not re-sent: we cannot know what the provider transcribed, and duplicated words
//!   are worse for the LLM than a lost fragment.
//! - Transcripts are pushed through a [`StreamSender`]: the recogniser's stream outlives every
//!   bot turn, so its frames take the pipeline's epoch when they are pushed and the processor
//!   never refreshes a sender on `Interrupt`. Transcripts are uninterruptible by default
//!   ([`Frame::uninterruptible_by_default`]), so one already queued when a barge-in lands is
//!   kept too: what the caller said is exactly what a barge-in is about.
//! - After `Finalize`, if no final arrives within the timeout, the best interim is pushed as final
//!   (so the bot is never left mute); with no interim but words still owed, an error event is
//!   emitted instead. Words are owed when an interim is waiting for its final, or when audio went
//!   out after the local VAD heard speech start and no final has come since. Audio alone is not
//!   enough: a phone line streams silence all the time, and after the provider finalized a turn on
//!   its own endpoint a `Finalize` has nothing to flush and may go unanswered (Deepgram documents
//!   its `from_finalize` reply as what "typically occurs when there is a noticeable amount of
//!   audio buffered"). That case is logged at debug level, not reported. Without VAD events
//!   (another turn source), every unanswered audio counts, as before. The price: words that came
//!   after a final, too short for an interim, and then were lost go unreported when VAD events
//!   flow; they would also have been lost silently to a provider that never answers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxline_pipeline::{
    AudioFormat, Direction, ErrorEvent, Event, Frame, MetricsEvent, StreamSender, Transcript, WordTiming,
};

use crate::service::{Backoff, ReconnectPolicy, is_permanent_status};

/// Default gap without audio after which a keepalive is sent (Deepgram closes after ~10 s).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Default wait for a final transcript after `Finalize` before falling back.
pub const DEFAULT_FINALIZE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Default audio kept for replay while the socket is down.
pub const DEFAULT_REPLAY_BUFFER: Duration = Duration::from_secs(5);
/// Default handshake timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on one websocket send: a half-dead TCP peer otherwise blocks sends forever.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Default wait for the provider's last results and close after `CloseStream`.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default audio queue between the processor and the socket task (frames; 256 ≈ 5 s of 20 ms).
pub const DEFAULT_AUDIO_QUEUE: usize = 256;
/// Default for forwarding input audio downstream: off. The recogniser consumes caller audio;
/// forwarding it would carry 50 frames a second through the LLM and TTS stages, where it can
/// only wait behind the bot's own output. Put an audio recorder before the STT, or turn this on.
pub const DEFAULT_PASS_THROUGH_AUDIO: bool = false;

/// Plumbing settings common to live recognisers.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    /// Send a keepalive after this long without audio.
    pub keepalive_interval: Duration,
    /// Wait this long for a final after `Finalize`, then push the best interim as final (or emit
    /// an error event when there is none and words were owed; see the module docs).
    pub finalize_timeout: Duration,
    /// Audio kept while disconnected and replayed on reconnect.
    pub replay_buffer: Duration,
    /// Handshake timeout.
    pub connect_timeout: Duration,
    /// Timeout of one websocket send; expiry counts as a dropped socket.
    pub send_timeout: Duration,
    /// Wait for the provider's last results after the close message.
    pub close_timeout: Duration,
    /// Reconnect backoff.
    pub reconnect: ReconnectPolicy,
    /// Frames queued between the processor and the socket task.
    pub audio_queue: usize,
    /// Forward `InputAudio` downstream after handing it to the recogniser (default off; see
    /// [`DEFAULT_PASS_THROUGH_AUDIO`]).
    pub pass_through_audio: bool,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            finalize_timeout: DEFAULT_FINALIZE_TIMEOUT,
            replay_buffer: DEFAULT_REPLAY_BUFFER,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            reconnect: ReconnectPolicy::default(),
            audio_queue: DEFAULT_AUDIO_QUEUE,
            pass_through_audio: DEFAULT_PASS_THROUGH_AUDIO,
        }
    }
}

/// Live counters of one recogniser, readable while the pipeline runs.
#[derive(Debug, Default)]
pub struct SttStats {
    connections: AtomicU64,
    reconnects: AtomicU64,
    audio_bytes_sent: AtomicU64,
    audio_bytes_replayed: AtomicU64,
    audio_bytes_dropped: AtomicU64,
    keepalives_sent: AtomicU64,
    finalizes_sent: AtomicU64,
    finalize_timeouts: AtomicU64,
    interims_promoted: AtomicU64,
    unknown_messages: AtomicU64,
    malformed_messages: AtomicU64,
}

/// A snapshot of [`SttStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SttCounters {
    /// Sockets opened.
    pub connections: u64,
    /// Sockets opened after a drop.
    pub reconnects: u64,
    /// Audio bytes sent (replay included).
    pub audio_bytes_sent: u64,
    /// Audio bytes sent from the replay buffer after a reconnect.
    pub audio_bytes_replayed: u64,
    /// Audio bytes lost: replay buffer overflow or a full queue to the socket task.
    pub audio_bytes_dropped: u64,
    /// Keepalives sent.
    pub keepalives_sent: u64,
    /// `Finalize` messages sent.
    pub finalizes_sent: u64,
    /// Finalize waits that timed out.
    pub finalize_timeouts: u64,
    /// Interims pushed as finals by the timeout fallback.
    pub interims_promoted: u64,
    /// Server messages of a type we do not know (ignored).
    pub unknown_messages: u64,
    /// Server messages that did not parse.
    pub malformed_messages: u64,
}

impl SttStats {
    /// Current values.
    #[must_use]
    pub fn snapshot(&self) -> SttCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SttCounters {
            connections: g(&self.connections),
            reconnects: g(&self.reconnects),
            audio_bytes_sent: g(&self.audio_bytes_sent),
            audio_bytes_replayed: g(&self.audio_bytes_replayed),
            audio_bytes_dropped: g(&self.audio_bytes_dropped),
            keepalives_sent: g(&self.keepalives_sent),
            finalizes_sent: g(&self.finalizes_sent),
            finalize_timeouts: g(&self.finalize_timeouts),
            interims_promoted: g(&self.interims_promoted),
            unknown_messages: g(&self.unknown_messages),
            malformed_messages: g(&self.malformed_messages),
        }
    }

    pub(crate) fn add_dropped(&self, n: usize) {
        bump(&self.audio_bytes_dropped, n as u64);
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// A word with timings relative to the current connection's stream start.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawWord {
    pub(crate) word: Arc<str>,
    pub(crate) start: Duration,
    pub(crate) end: Duration,
}

/// A recognition result as the provider reported it (connection-relative times).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawTranscript {
    pub(crate) text: String,
    pub(crate) is_final: bool,
    pub(crate) speech_final: bool,
    pub(crate) from_finalize: bool,
    pub(crate) confidence: f32,
    pub(crate) words: Vec<RawWord>,
    pub(crate) start: Duration,
    pub(crate) duration: Duration,
    pub(crate) language: Option<Arc<str>>,
}

/// A server message, provider-neutral.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ServerEvent {
    Transcript(RawTranscript),
    SpeechStarted,
    UtteranceEnd,
    Metadata {
        request_id: Option<String>,
    },
    ProviderError(String),
    /// A message type we do not know: providers add types over time.
    Other(String),
    Malformed(String),
}

/// What a live provider maps; everything else is plumbing.
pub(crate) trait LiveProtocol: Send + Sync + 'static {
    /// Handshake request (URL and auth headers) for audio in `format`.
    fn request(&self, format: AudioFormat) -> Result<Request, String>;
    /// Text message that keeps an idle socket open.
    fn keepalive(&self) -> &'static str;
    /// Text message that flushes buffered audio into a final.
    fn finalize(&self) -> &'static str;
    /// Text message that ends the stream gracefully.
    fn close_stream(&self) -> &'static str;
    /// Maps one server text frame.
    fn parse(&self, text: &str) -> ServerEvent;
}

/// Control messages from the processor to the socket task.
#[derive(Debug)]
pub(crate) enum Control {
    /// The VAD says the user started: audio from here on carries words until a final covers it.
    SpeechStarted,
    /// The VAD says the user stopped: flush, and start the TTFB clock at `at`.
    Finalize { at: Instant },
    /// End of stream: send the close message, wait for the last results, exit.
    Close,
}

/// The processor's side of a running stream.
pub(crate) struct LiveHandle {
    pub(crate) format: AudioFormat,
    audio: mpsc::Sender<Bytes>,
    /// Unbounded because `on_event` cannot wait: it carries one message per VAD transition plus
    /// one close, bounded by how fast a human can start and stop talking.
    control: mpsc::UnboundedSender<Control>,
    task: Option<JoinHandle<()>>,
    stats: Arc<SttStats>,
}

impl LiveHandle {
    /// Hands audio to the socket task without waiting; `false` if it was dropped.
    pub(crate) fn send_audio(&self, data: Bytes) -> bool {
        let n = data.len();
        match self.audio.try_send(data) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.add_dropped(n);
                false
            }
            // The task gave up (e.g. a rejected key); the error was reported when it did.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub(crate) fn control(&self, c: Control) {
        let _ = self.control.send(c);
    }

    /// Asks for a graceful close and waits (bounded) for the task to finish.
    pub(crate) async fn shutdown(mut self, wait: Duration) {
        self.control(Control::Close);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(wait, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// Starts a socket task for audio in `format`.
pub(crate) fn spawn<P: LiveProtocol>(
    proto: Arc<P>,
    format: AudioFormat,
    settings: LiveSettings,
    sender: StreamSender,
    stats: Arc<SttStats>,
    name: Arc<str>,
) -> LiveHandle {
    let (audio_tx, audio_rx) = mpsc::channel(settings.audio_queue.max(1));
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let replay_cap = format.bytes_per_ms(u32::try_from(settings.replay_buffer.as_millis()).unwrap_or(u32::MAX));
    let session = Session {
        proto,
        format,
        backoff: Backoff::new(settings.reconnect),
        settings,
        sender,
        stats: stats.clone(),
        name,
        audio_rx,
        control_rx,
        inputs_open: true,
        replay: VecDeque::new(),
        replay_bytes: 0,
        replay_cap: replay_cap.unwrap_or(0),
        dropped_offline: 0,
        offset: Duration::ZERO,
        conn_audio: Duration::ZERO,
        pending: None,
        ttfb_from: None,
        best_interim: None,
        audio_since_final: false,
        speech_since_final: None,
        closing: false,
        connected_once: false,
    };
    let task = tokio::spawn(session.run());
    LiveHandle { format, audio: audio_tx, control: control_tx, task: Some(task), stats }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum Input {
    Audio(Bytes),
    Control(Control),
    InputsClosed,
    FinalizeTimeout,
}

struct Pending {
    deadline: tokio::time::Instant,
    /// Any result arrived since the `Finalize`.
    answered: bool,
    /// Words were owed when `Finalize` went out (see the module docs): only then is a missing
    /// answer a loss.
    words_owed: bool,
}

struct Session<P> {
    proto: Arc<P>,
    format: AudioFormat,
    settings: LiveSettings,
    backoff: Backoff,
    sender: StreamSender,
    stats: Arc<SttStats>,
    name: Arc<str>,
    audio_rx: mpsc::Receiver<Bytes>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    inputs_open: bool,
    replay: VecDeque<Bytes>,
    replay_bytes: usize,
    replay_cap: usize,
    dropped_offline: usize,
    /// Stream time covered by previous connections: each reconnect restarts the provider's
    /// timeline at zero, and transcripts are reported in call time.
    offset: Duration,
    conn_audio: Duration,
    pending: Option<Pending>,
    ttfb_from: Option<Instant>,
    best_interim: Option<Transcript>,
    /// Audio went out (or was buffered) after the last final.
    audio_since_final: bool,
    /// The VAD heard speech start after the last final that settled speech; `None` until the first
    /// VAD event, when silence cannot be told from speech.
    speech_since_final: Option<bool>,
    closing: bool,
    connected_once: bool,
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl<P: LiveProtocol> Session<P> {
    async fn run(mut self) {
        while !self.closing {
            let Some(ws) = self.connect().await else { break };
            self.stream(ws).await;
            self.offset += std::mem::take(&mut self.conn_audio);
        }
        // Inputs that can no longer be served: a pending Finalize still gets its fallback.
        if self.pending.is_some() {
            self.on_finalize_timeout();
        }
        tracing::debug!(processor = %self.name, "stt session ended");
    }

    async fn next_input(&mut self) -> Input {
        let deadline = self.pending.as_ref().map(|p| p.deadline);
        // Audio first: a Finalize must not overtake the audio queued before it.
        tokio::select! {
            biased;
            a = self.audio_rx.recv(), if self.inputs_open => match a {
                Some(b) => Input::Audio(b),
                None => Input::InputsClosed,
            },
            c = self.control_rx.recv(), if self.inputs_open => match c {
                Some(c) => Input::Control(c),
                None => Input::InputsClosed,
            },
            () = sleep_until_opt(deadline) => Input::FinalizeTimeout,
        }
    }

    /// Handles an input while there is no socket; `false` means stop.
    async fn offline_input(&mut self, input: Input) -> bool {
        match input {
            Input::Audio(b) => {
                self.buffer(b);
                true
            }
            Input::Control(Control::SpeechStarted) => {
                self.speech_since_final = Some(true);
                true
            }
            Input::Control(Control::Finalize { at }) => {
                // Nothing to flush to; the timeout fallback promotes the interim we have.
                self.arm_finalize(at);
                true
            }
            Input::Control(Control::Close) | Input::InputsClosed => {
                self.inputs_open = false;
                self.closing = true;
                false
            }
            Input::FinalizeTimeout => {
                self.on_finalize_timeout();
                true
            }
        }
    }

    fn buffer(&mut self, b: Bytes) {
        self.audio_since_final = true;
        self.replay_bytes += b.len();
        self.replay.push_back(b);
        while self.replay_bytes > self.replay_cap {
            let Some(old) = self.replay.pop_front() else { break };
            self.replay_bytes -= old.len();
            self.dropped_offline += old.len();
            self.offset += self.format.duration_of(old.len()).unwrap_or_default();
            self.stats.add_dropped(old.len());
        }
    }

    fn arm_finalize(&mut self, at: Instant) {
        let words_owed =
            self.best_interim.is_some() || (self.audio_since_final && self.speech_since_final.unwrap_or(true));
        // With nothing owed the turn's final is already out: a later final belongs to the next
        // turn and must not be timed from this stop.
        self.ttfb_from = words_owed.then_some(at);
        self.pending = Some(Pending {
            deadline: tokio::time::Instant::now() + self.settings.finalize_timeout,
            answered: false,
            words_owed,
        });
    }

    async fn connect(&mut self) -> Option<Ws> {
        loop {
            if self.closing {
                return None;
            }
            let req = match self.proto.request(self.format) {
                Ok(r) => r,
                Err(e) => {
                    self.error(format!("cannot build the request: {e}"));
                    return None;
                }
            };
            let attempt = tokio::time::timeout(
                self.settings.connect_timeout,
                // Transcripts are a few KiB at most; tungstenite zero-fills the free part of its
                // read buffer (128 KiB by default) before every socket read.
                tokio_tungstenite::connect_async_with_config(
                    req,
                    Some(WebSocketConfig::default().read_buffer_size(8 * 1024)),
                    true,
                ),
            );
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    r = &mut attempt => break r,
                    input = self.next_input() => if !self.offline_input(input).await { return None },
                }
            };
            let (message, permanent) = match result {
                Ok(Ok((ws, _))) => return Some(ws),
                Ok(Err(WsError::Http(resp))) => {
                    let status = resp.status().as_u16();
                    let reason = resp
                        .headers()
                        .get("dg-error")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                        .or_else(|| resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                        .unwrap_or_default();
                    (format!("handshake rejected with HTTP {status}: {reason}"), is_permanent_status(status))
                }
                Ok(Err(e)) => (format!("connect failed: {e}"), false),
                Err(_) => (format!("connect timed out after {:?}", self.settings.connect_timeout), false),
            };
            if permanent && self.backoff.permanent_failure() {
                self.error(format!("{message}; giving up"));
                return None;
            }
            self.error(message);
            let sleep = tokio::time::sleep(self.backoff.next_delay());
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    input = self.next_input() => if !self.offline_input(input).await { return None },
                }
            }
        }
    }

    async fn send(&self, tx: &mut futures::stream::SplitSink<Ws, Message>, msg: Message) -> bool {
        match tokio::time::timeout(self.settings.send_timeout, tx.send(msg)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(processor = %self.name, error = %e, "stt socket send failed");
                false
            }
            Err(_) => {
                tracing::warn!(processor = %self.name, "stt socket send timed out; treating the socket as dead");
                false
            }
        }
    }

    async fn stream(&mut self, ws: Ws) {
        bump(&self.stats.connections, 1);
        if std::mem::replace(&mut self.connected_once, true) {
            bump(&self.stats.reconnects, 1);
        }
        let (mut tx, mut rx) = ws.split();
        let (replayed, dropped) = (self.replay_bytes, std::mem::take(&mut self.dropped_offline));
        while let Some(chunk) = self.replay.pop_front() {
            let n = chunk.len();
            if !self.send(&mut tx, Message::Binary(chunk.clone())).await {
                self.replay.push_front(chunk);
                return;
            }
            self.replay_bytes -= n;
            self.sent_audio(n);
            bump(&self.stats.audio_bytes_replayed, n as u64);
        }
        if replayed > 0 || dropped > 0 {
            let ms = |n: usize| self.format.duration_of(n).unwrap_or_default().as_millis();
            tracing::info!(processor = %self.name, replayed_ms = ms(replayed), dropped_ms = ms(dropped), "stt reconnected");
        }
        let mut last_sent = tokio::time::Instant::now();
        let mut close_deadline: Option<tokio::time::Instant> = None;
        loop {
            let keepalive_at = last_sent + self.settings.keepalive_interval;
            tokio::select! {
                msg = rx.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        self.backoff.reset();
                        self.on_server_text(t.as_str());
                    }
                    Some(Ok(Message::Close(frame))) => {
                        if !self.closing {
                            let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or_default();
                            self.error(format!("socket closed by the server ({code} {reason}); reconnecting"));
                        }
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        if !self.closing {
                            self.error(format!("socket dropped ({e}); reconnecting"));
                        }
                        return;
                    }
                    None => {
                        if !self.closing {
                            self.error("socket ended; reconnecting".into());
                        }
                        return;
                    }
                },
                input = self.next_input(), if !self.closing => match input {
                    Input::Audio(b) => {
                        let n = b.len();
                        if !self.send(&mut tx, Message::Binary(b.clone())).await {
                            self.buffer(b);
                            return;
                        }
                        self.sent_audio(n);
                        last_sent = tokio::time::Instant::now();
                    }
                    Input::Control(Control::SpeechStarted) => self.speech_since_final = Some(true),
                    Input::Control(Control::Finalize { at }) => {
                        self.arm_finalize(at);
                        if !self.send(&mut tx, Message::text(self.proto.finalize())).await {
                            return;
                        }
                        bump(&self.stats.finalizes_sent, 1);
                        last_sent = tokio::time::Instant::now();
                    }
                    Input::Control(Control::Close) | Input::InputsClosed => {
                        self.inputs_open = false;
                        self.closing = true;
                        if !self.send(&mut tx, Message::text(self.proto.close_stream())).await {
                            return;
                        }
                        close_deadline = Some(tokio::time::Instant::now() + self.settings.close_timeout);
                    }
                    Input::FinalizeTimeout => self.on_finalize_timeout(),
                },
                () = tokio::time::sleep_until(keepalive_at), if !self.closing => {
                    if !self.send(&mut tx, Message::text(self.proto.keepalive())).await {
                        return;
                    }
                    bump(&self.stats.keepalives_sent, 1);
                    last_sent = tokio::time::Instant::now();
                }
                () = sleep_until_opt(close_deadline) => {
                    tracing::debug!(processor = %self.name, "no close from the server after the close message");
                    let _ = tx.close().await;
                    return;
                }
            }
        }
    }

    fn sent_audio(&mut self, n: usize) {
        self.audio_since_final = true;
        self.conn_audio += self.format.duration_of(n).unwrap_or_default();
        bump(&self.stats.audio_bytes_sent, n as u64);
    }

    fn on_server_text(&mut self, text: &str) {
        match self.proto.parse(text) {
            ServerEvent::Transcript(raw) => self.on_transcript(raw),
            ServerEvent::SpeechStarted => tracing::trace!(processor = %self.name, "provider heard speech start"),
            ServerEvent::UtteranceEnd => tracing::trace!(processor = %self.name, "provider utterance end"),
            ServerEvent::Metadata { request_id } => {
                tracing::debug!(processor = %self.name, request_id = request_id.as_deref().unwrap_or(""), "stt metadata");
            }
            ServerEvent::ProviderError(m) => self.error(format!("provider error: {m}")),
            ServerEvent::Other(ty) => {
                bump(&self.stats.unknown_messages, 1);
                tracing::debug!(processor = %self.name, message_type = %ty, "ignoring unknown stt message type");
            }
            ServerEvent::Malformed(e) => {
                bump(&self.stats.malformed_messages, 1);
                self.error(format!("malformed server message: {e}"));
            }
        }
    }

    fn on_transcript(&mut self, raw: RawTranscript) {
        if let Some(p) = self.pending.as_mut() {
            p.answered = true;
        }
        let offset = self.offset;
        let t = Transcript {
            text: Arc::from(raw.text.as_str()),
            is_final: raw.is_final,
            confidence: raw.confidence,
            words: raw
                .words
                .into_iter()
                .map(|w| WordTiming { word: w.word, start: offset + w.start, end: offset + w.end })
                .collect(),
            start: offset + raw.start,
            duration: raw.duration,
            language: raw.language,
        };
        if !raw.is_final {
            if !t.text.is_empty() {
                self.best_interim = Some(t.clone());
                self.push(Frame::from(t));
            }
            return;
        }
        self.best_interim = None;
        // A final fixes the audio up to its end. It settles the speech the VAD heard unless it is
        // an empty chunk the provider closed on its own (silence before the words, which are
        // still to come).
        self.audio_since_final = false;
        if !t.text.is_empty() || raw.speech_final || raw.from_finalize {
            self.speech_since_final = self.speech_since_final.map(|_| false);
        }
        if raw.from_finalize {
            self.pending = None;
            if t.text.is_empty() {
                // The Finalize is answered: there was nothing left, so there is no TTFB to take.
                self.ttfb_from = None;
            }
        }
        if t.text.is_empty() {
            return;
        }
        self.ttfb_stop();
        self.push(Frame::from(t));
    }

    fn on_finalize_timeout(&mut self) {
        let Some(p) = self.pending.take() else { return };
        if let Some(mut t) = self.best_interim.take() {
            bump(&self.stats.finalize_timeouts, 1);
            bump(&self.stats.interims_promoted, 1);
            tracing::warn!(
                processor = %self.name,
                timeout_ms = self.settings.finalize_timeout.as_millis(),
                "no final transcript after Finalize; pushing the last interim as final"
            );
            t.is_final = true;
            self.ttfb_stop();
            self.push(Frame::from(t));
        } else if !p.answered && p.words_owed {
            bump(&self.stats.finalize_timeouts, 1);
            let ms = self.settings.finalize_timeout.as_millis();
            self.error(format!("no transcript within {ms} ms of Finalize; the provider may be stalled"));
        } else if !p.answered {
            // The provider had already finalized the turn on its own endpoint: nothing to flush.
            tracing::debug!(processor = %self.name, "Finalize unanswered with no words owed; nothing was pending");
        }
        self.ttfb_from = None;
    }

    fn ttfb_stop(&mut self) {
        if let Some(at) = self.ttfb_from.take() {
            let value = at.elapsed();
            tracing::debug!(processor = %self.name, ttfb_ms = value.as_secs_f64() * 1e3, "stt ttfb");
            let ev = Event::Metrics(MetricsEvent::Ttfb { processor: self.name.clone(), value });
            self.sender.emit(ev);
        }
    }

    fn push(&self, frame: Frame) {
        self.sender.push(frame, Direction::Downstream);
    }

    fn error(&self, message: String) {
        tracing::warn!(processor = %self.name, %message, "stt error");
        let ev = ErrorEvent { processor: self.name.clone(), message: Arc::from(message), fatal: false };
        self.sender.emit(Event::Error(ev));
    }
}
