//! The Twilio Media Streams session: the accepted socket and the output stage that writes to it.
//!
//! [`accept`] reads `connected` and `start` from a freshly upgraded socket (checking the media
//! format and the per-call stream token) and gives a [`TwilioSession`]. The application builds its
//! pipeline around [`TwilioSession::output`], then hands both to
//! [`serve_call`](super::serve::serve_call), which serves the call to its end.
//!
//! Output: the engine's paced [`AudioOutput`] writing into a [`TwilioSink`]: 20 ms μ-law chunks
//! as `media` messages, a `mark` after each utterance, `clear` on interruption. The sink reports
//! play-out itself (`reports_playout() == true`): when Twilio echoes a mark, everything before it
//! was heard, so `serve_call` pushes `PlayedUpTo { complete: true }` upstream into the output
//! stage, which announces `BotStoppedSpeaking` when it confirms the last utterance written (the
//! output clock is the one owner of "bot speaking"; this transport emits no speaking events).
//! Marks pending at a `clear` are forgotten first, since Twilio echoes them at once with no
//! "interrupted" flag.
//!
//! Outbound messages go through an unbounded channel to a writer task; see [`TwilioSink`] for why
//! that is bounded in practice.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use tokio::sync::mpsc;
use voxline_pipeline::clock::{AudioOutput, AudioSink, OutputParams};
use voxline_pipeline::{AudioEncoding, AudioFormat, FlowResult};

use super::rest::TwilioRest;
use super::serializer::{self, Inbound, StreamStart};
use super::signature;

/// Settings of a Twilio session.
#[derive(Debug, Clone)]
pub struct TwilioParams {
    /// Largest inbound text frame accepted (bytes).
    pub max_message_bytes: usize,
    /// How long to wait for `start` after the socket opens.
    pub start_timeout: Duration,
    /// Consecutive undecodable messages tolerated before the call is dropped as broken.
    pub max_consecutive_errors: u32,
    /// Output pacing.
    pub output: OutputParams,
    /// When the pipeline ends, how long to wait for pending marks (the goodbye being heard)
    /// before hanging up.
    pub drain_timeout: Duration,
    /// When the caller leaves, how long the pipeline may take to drain `End` through every stage
    /// (a provider finishing a request, a recorder flushing) before it is cancelled.
    pub end_timeout: Duration,
    /// If set, `start.customParameters.token` must be the [`signature::stream_token`] for the
    /// call, derived with this auth token.
    pub stream_token_secret: Option<String>,
    /// If set, hang the call up through REST when the pipeline ends first.
    pub rest: Option<TwilioRest>,
}

impl Default for TwilioParams {
    fn default() -> Self {
        Self {
            max_message_bytes: serializer::DEFAULT_MAX_MESSAGE_BYTES,
            start_timeout: Duration::from_secs(10),
            max_consecutive_errors: 20,
            output: OutputParams::default(),
            drain_timeout: Duration::from_secs(15),
            end_timeout: Duration::from_secs(5),
            stream_token_secret: None,
            rest: None,
        }
    }
}

/// Why a session could not start or ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum TwilioError {
    /// No `start` within the timeout.
    #[error("no start message within {0:?}")]
    StartTimeout(Duration),
    /// The socket closed before `start`.
    #[error("socket closed before start")]
    ClosedBeforeStart,
    /// An oversized message before `start`, or too many undecodable ones in a row.
    #[error("bad message before start: {0}")]
    Protocol(#[from] serializer::SerializerError),
    /// The stream token did not match the call.
    #[error("stream token missing or invalid for call {0}")]
    BadToken(String),
    /// The media format is not μ-law 8 kHz mono.
    #[error("unsupported media format {0}")]
    UnsupportedFormat(String),
    /// Websocket failure.
    #[error("websocket: {0}")]
    Socket(String),
}

/// A message for the socket writer.
pub(super) enum Out {
    Text(String),
    Close(u16, String),
}

/// A mark sent and not yet echoed.
pub(super) struct PendingMark {
    pub(super) name: String,
    /// The utterance it closes; `None` for the transport's own drain mark (audio written outside
    /// any utterance, e.g. plain `OutputAudio`).
    pub(super) context_id: Option<Arc<str>>,
    /// Length of the audio it closes.
    pub(super) position: Duration,
}

#[derive(Default)]
pub(super) struct Playout {
    pub(super) pending: VecDeque<PendingMark>,
    /// Audio written since the last mark or clear: the length of the utterance being sent.
    pub(super) written: Duration,
    pub(super) marks_sent: u64,
}

impl Playout {
    /// Queue a mark for everything written since the last one; returns its name.
    pub(super) fn mark(&mut self, context_id: Option<Arc<str>>) -> String {
        self.marks_sent += 1;
        let name = match &context_id {
            Some(id) => format!("{id}#{}", self.marks_sent),
            None => format!("drain#{}", self.marks_sent),
        };
        let position = std::mem::take(&mut self.written);
        self.pending.push_back(PendingMark { name: name.clone(), context_id, position });
        name
    }
}

/// State shared by the sink (written from the pipeline) and `serve_call` (the socket side).
pub(super) struct Shared {
    pub(super) stream_sid: Arc<str>,
    pub(super) out: mpsc::UnboundedSender<Out>,
    pub(super) playout: Mutex<Playout>,
    pub(super) media_out: AtomicU64,
    pub(super) clears: AtomicU64,
}

impl Shared {
    pub(super) fn playout(&self) -> std::sync::MutexGuard<'_, Playout> {
        voxline_pipeline::sync::lock(&self.playout)
    }
}

/// The [`AudioSink`] that turns paced chunks into Twilio `media`, `mark` and `clear` messages.
///
/// The outbound channel is unbounded on purpose: `clear` must never wait (it is sent from
/// `on_event`), and its volume is bounded by the pacing clock upstream (one 20 ms chunk per chunk
/// period plus the send-ahead), so it cannot grow unless the socket writer itself stalls, in which
/// case the call is already lost.
#[derive(Clone)]
pub struct TwilioSink {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TwilioSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioSink").finish_non_exhaustive()
    }
}

impl TwilioSink {
    /// Media messages sent so far.
    #[must_use]
    pub fn media_sent(&self) -> u64 {
        self.shared.media_out.load(Ordering::Relaxed)
    }

    /// `clear` messages sent so far.
    #[must_use]
    pub fn clears_sent(&self) -> u64 {
        self.shared.clears.load(Ordering::Relaxed)
    }
}

impl AudioSink for TwilioSink {
    async fn write(&mut self, chunk: Bytes, format: AudioFormat) -> FlowResult {
        let mulaw = match (format.encoding, format.sample_rate, format.channels) {
            (AudioEncoding::Mulaw, 8000, 1) => chunk,
            (AudioEncoding::Pcm16, 8000, 1) => voxline_pipeline::g711::encode_mulaw(&chunk),
            _ => {
                return Err(voxline_pipeline::FlowError::NotNegotiated {
                    processor: "twilio_sink",
                    expected: "μ-law or PCM16 at 8 kHz mono".into(),
                    got: format.to_string(),
                });
            }
        };
        let dur = AudioFormat::mulaw_8k().duration_of(mulaw.len()).unwrap_or_default();
        self.shared.playout().written += dur;
        // A closed writer means the socket is gone; the session is ending, so the chunk is moot.
        if self.shared.out.send(Out::Text(serializer::encode_media(&self.shared.stream_sid, &mulaw))).is_ok() {
            self.shared.media_out.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn clear(&mut self) {
        {
            let mut p = self.shared.playout();
            p.pending.clear();
            p.written = Duration::ZERO;
        }
        self.shared.clears.fetch_add(1, Ordering::Relaxed);
        let _ = self.shared.out.send(Out::Text(serializer::encode_clear(&self.shared.stream_sid)));
    }

    fn utterance_done(&mut self, context_id: &Arc<str>) {
        let name = self.shared.playout().mark(Some(context_id.clone()));
        tracing::debug!(mark = %name, "utterance sent, mark queued");
        let _ = self.shared.out.send(Out::Text(serializer::encode_mark(&self.shared.stream_sid, &name)));
    }

    fn reports_playout(&self) -> bool {
        true
    }
}

/// A media stream whose `start` has arrived: build the pipeline around [`output`](Self::output),
/// then hand both to [`serve_call`](super::serve::serve_call).
pub struct TwilioSession {
    pub(super) socket: WebSocket,
    pub(super) start: StreamStart,
    pub(super) params: TwilioParams,
    pub(super) shared: Arc<Shared>,
    pub(super) out_rx: mpsc::UnboundedReceiver<Out>,
}

impl std::fmt::Debug for TwilioSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioSession").field("start", &self.start).finish_non_exhaustive()
    }
}

/// Read `connected` and `start` from a freshly upgraded socket.
///
/// On failure the socket is closed with 1008 (policy) or 1002 (protocol) and dropped.
pub async fn accept(mut socket: WebSocket, params: TwilioParams) -> Result<TwilioSession, TwilioError> {
    let start = match tokio::time::timeout(params.start_timeout, read_start(&mut socket, &params)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let code = if matches!(e, TwilioError::BadToken(_)) { 1008 } else { 1002 };
            close(&mut socket, code, &e.to_string()).await;
            return Err(e);
        }
        Err(_) => {
            close(&mut socket, 1008, "no start").await;
            return Err(TwilioError::StartTimeout(params.start_timeout));
        }
    };
    let (out, out_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        stream_sid: Arc::from(start.stream_sid.as_str()),
        out,
        playout: Mutex::new(Playout::default()),
        media_out: AtomicU64::new(0),
        clears: AtomicU64::new(0),
    });
    Ok(TwilioSession { socket, start, params, shared, out_rx })
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame { code, reason: reason.chars().take(100).collect::<String>().into() };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Wait for `start`, skipping what may precede it. A bad message before `start` is logged and
/// skipped like one after it (Twilio may retry, and the start timeout bounds the wait); only an
/// oversized message or `max_consecutive_errors` bad ones in a row refuse the stream.
async fn read_start(socket: &mut WebSocket, params: &TwilioParams) -> Result<StreamStart, TwilioError> {
    let mut consecutive_bad = 0u32;
    loop {
        let msg = match socket.recv().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(TwilioError::Socket(e.to_string())),
            None => return Err(TwilioError::ClosedBeforeStart),
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return Err(TwilioError::ClosedBeforeStart),
            _ => continue,
        };
        let inbound = match serializer::decode(text.as_str(), params.max_message_bytes) {
            Ok(m) => m,
            Err(e @ serializer::SerializerError::Oversized { .. }) => return Err(e.into()),
            Err(e) => {
                consecutive_bad += 1;
                tracing::warn!(error = %e, "undecodable twilio message before start skipped");
                if consecutive_bad >= params.max_consecutive_errors {
                    return Err(e.into());
                }
                continue;
            }
        };
        consecutive_bad = 0;
        match inbound {
            Inbound::Start(s) => {
                if s.encoding != "audio/x-mulaw" || s.sample_rate != 8000 || s.channels != 1 {
                    return Err(TwilioError::UnsupportedFormat(format!(
                        "{} {} Hz x{}",
                        s.encoding, s.sample_rate, s.channels
                    )));
                }
                if let Some(secret) = &params.stream_token_secret {
                    let token = s.custom_parameters.get("token").map(String::as_str).unwrap_or("");
                    if !signature::check_stream_token(secret, &s.call_sid, token) {
                        return Err(TwilioError::BadToken(s.call_sid.clone()));
                    }
                }
                return Ok(*s);
            }
            Inbound::Stop { .. } => return Err(TwilioError::ClosedBeforeStart),
            Inbound::Connected { .. } => {}
            Inbound::Media { .. } | Inbound::Dtmf(_) | Inbound::Mark { .. } => {
                tracing::warn!("twilio message before start dropped: no stream to route it to yet");
            }
            Inbound::Ignored { event } => tracing::debug!(event, "ignored twilio event"),
        }
    }
}

impl TwilioSession {
    /// The `start` message.
    #[must_use]
    pub fn start(&self) -> &StreamStart {
        &self.start
    }

    /// A sink for this stream (all clones share the same marks and socket).
    #[must_use]
    pub fn sink(&self) -> TwilioSink {
        TwilioSink { shared: self.shared.clone() }
    }

    /// The paced output stage to put at the end of the bot's pipeline.
    #[must_use]
    pub fn output(&self) -> AudioOutput<TwilioSink> {
        AudioOutput::new(self.sink(), self.params.output.clone())
    }
}
