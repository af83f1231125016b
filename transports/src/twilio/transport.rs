//! The Twilio Media Streams transport: one websocket, one pipeline.
//!
//! Input: a reader loop decodes each text frame with the [`serializer`](super::serializer) and
//! pushes caller audio through [`PipelineHandle::push_input_audio`] (lossy, never waits: Twilio
//! discards audio and warns when the reader stalls). DTMF and play-out reports go through a small
//! bounded forwarder so the reader never awaits the pipeline either.
//!
//! Output: the engine's paced [`AudioOutput`] writing into a [`TwilioSink`]: 20 ms μ-law chunks
//! as `media` messages, a `mark` after each utterance, `clear` on interruption. The sink reports
//! play-out itself (`reports_playout() == true`): when Twilio echoes a mark, everything before it
//! was heard, so the transport pushes `PlayedUpTo { complete: true }` upstream into the output
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
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use voxline_pipeline::clock::{AudioOutput, AudioSink, OutputParams};
use voxline_pipeline::{AudioEncoding, AudioFormat, CancellationToken, FlowResult, Frame, PipelineHandle};

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
    /// A message before `start` could not be decoded.
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

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Twilio sent `stop` (caller hung up, or the call was redirected).
    Stopped,
    /// The socket closed or failed without `stop`.
    Disconnected,
    /// The pipeline finished first (e.g. the bot ended the call).
    PipelineEnded,
    /// Too many undecodable messages, or an oversized one.
    ProtocolViolation(String),
}

/// What a finished session reports.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// Why it ended.
    pub reason: EndReason,
    /// Media messages received.
    pub media_in: u64,
    /// Media messages sent.
    pub media_out: u64,
    /// Messages that could not be decoded (and were skipped).
    pub bad_messages: u64,
    /// Inbound frames dropped by the pipeline's lossy input lane.
    pub input_audio_dropped: u64,
    /// Whether a REST hang-up was sent.
    pub hung_up: bool,
}

enum Out {
    Text(String),
    Close(u16, String),
}

struct PendingMark {
    name: String,
    context_id: Arc<str>,
    position: Duration,
}

#[derive(Default)]
struct Playout {
    pending: VecDeque<PendingMark>,
    /// Audio written since the last mark or clear: the length of the utterance being sent.
    written: Duration,
    marks_sent: u64,
}

struct Shared {
    stream_sid: Arc<str>,
    out: mpsc::UnboundedSender<Out>,
    playout: Mutex<Playout>,
    media_out: AtomicU64,
    clears: AtomicU64,
}

impl Shared {
    fn playout(&self) -> std::sync::MutexGuard<'_, Playout> {
        match self.playout.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
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
        let name = {
            let mut p = self.shared.playout();
            p.marks_sent += 1;
            let name = format!("{}#{}", context_id, p.marks_sent);
            let position = std::mem::take(&mut p.written);
            p.pending.push_back(PendingMark { name: name.clone(), context_id: context_id.clone(), position });
            tracing::debug!(mark = %name, ?position, "utterance sent, mark queued");
            name
        };
        let _ = self.shared.out.send(Out::Text(serializer::encode_mark(&self.shared.stream_sid, &name)));
    }

    fn reports_playout(&self) -> bool {
        true
    }
}

/// A media stream whose `start` has arrived: build the pipeline around [`output`](Self::output),
/// then [`run`](Self::run) it.
pub struct TwilioSession {
    socket: WebSocket,
    start: StreamStart,
    params: TwilioParams,
    shared: Arc<Shared>,
    out_rx: mpsc::UnboundedReceiver<Out>,
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

async fn read_start(socket: &mut WebSocket, params: &TwilioParams) -> Result<StreamStart, TwilioError> {
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
        match serializer::decode(text.as_str(), params.max_message_bytes)? {
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
            _ => {}
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

    /// Pump the socket until the call or the pipeline ends.
    ///
    /// `pipeline_done` is cancelled by the owner when the pipeline task has finished; the session
    /// then waits (up to `drain_timeout`) for the last marks so the final words are heard, hangs
    /// up through REST if configured, and closes the socket. When the caller side ends first the
    /// pipeline is cancelled through `handle`.
    pub async fn run(self, handle: PipelineHandle, pipeline_done: CancellationToken) -> SessionReport {
        let TwilioSession { socket, start, params, shared, mut out_rx } = self;
        let call_sid = start.call_sid.clone();
        let (mut ws_tx, mut ws_rx) = socket.split();

        let writer = tokio::spawn(async move {
            while let Some(out) = out_rx.recv().await {
                let res = match out {
                    Out::Text(t) => ws_tx.send(Message::Text(t.into())).await,
                    Out::Close(code, reason) => {
                        let _ = ws_tx.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                        break;
                    }
                };
                if res.is_err() {
                    break;
                }
            }
            let _ = ws_tx.close().await;
        });

        // DTMF and play-out reports must reach the pipeline in order, but the reader must not
        // wait on it: a small bounded forwarder absorbs bursts (keys are human-paced, marks one
        // per utterance).
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<Frame>(64);
        let fwd_handle = handle.clone();
        let forwarder = tokio::spawn(async move {
            while let Some(frame) = ctl_rx.recv().await {
                let res = match frame {
                    f @ Frame::PlayedUpTo { .. } => fwd_handle.push_upstream(f).await,
                    f => fwd_handle.push(f).await,
                };
                if res.is_err() {
                    break;
                }
            }
        });

        let mut media_in = 0u64;
        let mut bad = 0u64;
        let mut consecutive_bad = 0u32;
        let reason = {
            loop {
                let msg = tokio::select! {
                    biased;
                    () = pipeline_done.cancelled() => break EndReason::PipelineEnded,
                    m = ws_rx.next() => m,
                };
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => break EndReason::Disconnected,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        // axum reports an over-limit frame as an error: the socket is unusable.
                        tracing::warn!(call_sid = %call_sid, error = %e, "twilio socket error");
                        break EndReason::Disconnected;
                    }
                };
                match serializer::decode(text.as_str(), params.max_message_bytes) {
                    Ok(Inbound::Media { frame, .. }) => {
                        consecutive_bad = 0;
                        media_in += 1;
                        handle.push_input_audio(frame);
                    }
                    Ok(Inbound::Dtmf(frame)) => {
                        consecutive_bad = 0;
                        tracing::info!(call_sid = %call_sid, ?frame, "dtmf");
                        if ctl_tx.try_send(frame).is_err() {
                            tracing::warn!(call_sid = %call_sid, "dtmf dropped: control lane full");
                        }
                    }
                    Ok(Inbound::Mark { name }) => {
                        consecutive_bad = 0;
                        on_mark(&shared, &name, &ctl_tx);
                    }
                    Ok(Inbound::Stop { .. }) => break EndReason::Stopped,
                    Ok(Inbound::Ignored { event }) => {
                        tracing::debug!(call_sid = %call_sid, event, "ignored twilio event");
                    }
                    Ok(Inbound::Connected { .. } | Inbound::Start(_)) => {}
                    Err(e @ serializer::SerializerError::Oversized { .. }) => {
                        bad += 1;
                        tracing::warn!(call_sid = %call_sid, error = %e, "dropping call");
                        let _ = shared.out.send(Out::Close(1009, "message too big".into()));
                        break EndReason::ProtocolViolation(e.to_string());
                    }
                    Err(e) => {
                        bad += 1;
                        consecutive_bad += 1;
                        tracing::warn!(call_sid = %call_sid, error = %e, "undecodable twilio message skipped");
                        if consecutive_bad >= params.max_consecutive_errors {
                            let _ = shared.out.send(Out::Close(1002, "too many bad messages".into()));
                            break EndReason::ProtocolViolation(format!("{consecutive_bad} bad messages in a row"));
                        }
                    }
                }
            }
        };

        let mut hung_up = false;
        if reason == EndReason::PipelineEnded {
            // Let the goodbye finish: keep reading marks until none is pending.
            let deadline = tokio::time::Instant::now() + params.drain_timeout;
            while !shared.playout().pending.is_empty() {
                let msg = tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    m = ws_rx.next() => m,
                };
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(Inbound::Mark { name }) = serializer::decode(t.as_str(), params.max_message_bytes) {
                            on_mark(&shared, &name, &ctl_tx);
                        } else if let Ok(Inbound::Stop { .. }) =
                            serializer::decode(t.as_str(), params.max_message_bytes)
                        {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            if let Some(rest) = &params.rest {
                match rest.hang_up(&call_sid).await {
                    Ok(outcome) => {
                        hung_up = true;
                        tracing::info!(call_sid = %call_sid, ?outcome, "hung up");
                    }
                    Err(e) => tracing::warn!(call_sid = %call_sid, error = %e, "hang-up failed"),
                }
            }
            let _ = shared.out.send(Out::Close(1000, "bye".into()));
        } else {
            // The caller side is gone: stop the pipeline now, nothing more can be heard.
            let _ = handle.cancel();
            let _ = shared.out.send(Out::Close(1000, String::new()));
        }
        drop(ctl_tx);
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        forwarder.abort();
        tracing::info!(call_sid = %call_sid, ?reason, media_in, bad, "twilio session ended");
        SessionReport {
            reason,
            media_in,
            media_out: shared.media_out.load(Ordering::Relaxed),
            bad_messages: bad,
            input_audio_dropped: handle.input_audio_dropped(),
            hung_up,
        }
    }
}

fn on_mark(shared: &Shared, name: &str, ctl: &mpsc::Sender<Frame>) {
    let (done, now_idle) = {
        let mut p = shared.playout();
        // Marks are echoed in order; anything before this one has been played too.
        match p.pending.iter().position(|m| m.name == name) {
            Some(i) => {
                let done: Vec<PendingMark> = p.pending.drain(..=i).collect();
                // Idle only if nothing was written after the last mark either.
                (done, p.pending.is_empty() && p.written.is_zero())
            }
            None => (Vec::new(), false),
        }
    };
    tracing::debug!(mark = name, matched = done.len(), now_idle, "mark echoed");
    for m in &done {
        let frame = Frame::PlayedUpTo { context_id: m.context_id.clone(), position: m.position, complete: true };
        if ctl.try_send(frame).is_err() {
            tracing::warn!("play-out report dropped: control lane full");
        }
    }
    // "Bot speaking" is the output clock's to announce: the reports above tell it what played.
}
