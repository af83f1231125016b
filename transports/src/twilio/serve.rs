//! Serving one Twilio call, from the accepted stream to the hang-up: [`serve_call`].
//!
//! The application builds a pipeline around [`TwilioSession::output`] and hands the session and
//! the (not yet running) [`PipelineTask`] over; everything a Twilio call needs is done here:
//!
//! - **Caller → pipeline.** A reader decodes each text frame with the
//!   [`serializer`] module. Caller audio goes through
//!   [`PipelineHandle::push_input_audio`] (lossy, never waits: Twilio discards audio and warns when
//!   the reader stalls). DTMF and play-out reports go through a small bounded forwarder so the
//!   reader never awaits the pipeline either.
//! - **Marks → played-up-to.** The [`TwilioSink`](super::TwilioSink) sends a mark after each
//!   utterance; its echo means everything before it was played, so `PlayedUpTo { complete: true }`
//!   is pushed upstream into the output stage (the one owner of "bot speaking").
//! - **Barge-in → `clear`**: the output stage clears the sink, which sends `clear` at once.
//! - **The pipeline ends first** (the bot hung up, an idle timeout, a failure): the socket stays
//!   open until Twilio has played every chunk sent — the last mark is echoed — or
//!   [`TwilioParams::drain_timeout`] passes, so the goodbye is never cut; then the call is hung up
//!   through REST (if [`TwilioParams::rest`] is set) and the socket closed.
//! - **The caller leaves first** (`stop`, or the socket closes): nothing queued for them can be
//!   heard any more, so bot audio still in flight is dropped with an interruption, and the
//!   pipeline ends gracefully with `End` (every stage drains and stops in order: transcripts
//!   flush, recorders close). Past [`TwilioParams::end_timeout`] it is cancelled instead.
//! - **Bad input** (malformed JSON, bad base64, a bad digit) is logged and skipped; the call is
//!   dropped only after [`TwilioParams::max_consecutive_errors`] in a row or one oversized message.
//!
//! Nothing here is shared between calls: each call has its own tasks and channels, and a failing
//! call (even a panicking pipeline) only ends itself.
//!
//! Why the task and not a handle: `serve_call` owns the "pipeline done" signal (the task's join
//! handle), so no caller has to wire one by hand, and the application can still take
//! [`PipelineTask::handle`] first to subscribe to events or queue the greeting.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;
use voxline_pipeline::{Frame, PipelineHandle, PipelineTask, TaskReport};

use super::serializer::{self, Inbound, SerializerError};
use super::transport::{Out, PendingMark, Shared, TwilioParams, TwilioSession};

/// DTMF and play-out reports waiting for the pipeline: keys are human-paced and marks come one
/// per utterance, so a short lane absorbs any burst while the pipeline is busy.
const CONTROL_LANE: usize = 64;

/// How long the writer may take to flush the last messages and the close frame.
const WRITER_FLUSH: Duration = Duration::from_secs(2);

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Twilio sent `stop` (caller hung up, or the call was redirected).
    Stopped,
    /// The socket closed or failed without `stop`.
    Disconnected,
    /// The pipeline finished first (e.g. the bot ended the call); the call was then hung up.
    PipelineEnded,
    /// Too many undecodable messages in a row, or an oversized one.
    ProtocolViolation(String),
}

/// What [`serve_call`] reports when the call is over.
#[derive(Debug, Clone)]
pub struct CallReport {
    /// `start.callSid`.
    pub call_sid: String,
    /// Why the call ended.
    pub reason: EndReason,
    /// From the start of `serve_call` to its return (drain and pipeline shutdown included).
    pub duration: Duration,
    /// `media` messages received from the caller.
    pub media_in: u64,
    /// `media` messages sent to the caller.
    pub media_out: u64,
    /// Key presses received (and forwarded unless the control lane was full).
    pub dtmf_in: u64,
    /// Marks sent (one per utterance, plus a final one when the drain needs it).
    pub marks_sent: u64,
    /// Mark echoes that matched a pending mark.
    pub marks_echoed: u64,
    /// `clear` messages sent (barge-ins).
    pub clears: u64,
    /// Messages that could not be decoded (and were skipped).
    pub bad_messages: u64,
    /// Caller input dropped by the pipeline's overload policy.
    pub input_audio_dropped: u64,
    /// With [`EndReason::PipelineEnded`]: every chunk sent was confirmed played before the socket
    /// closed (`false` if the drain timed out or the caller left during it).
    pub drained: bool,
    /// A REST hang-up was sent and accepted.
    pub hung_up: bool,
    /// The pipeline's own report; `None` only if its task panicked or could not be stopped.
    pub pipeline: Option<TaskReport>,
}

/// Serve one call: run `task` against `session` until one side ends, then end the other side
/// cleanly, and report what happened. See the [module docs](self) for the sequence.
///
/// Build `task`'s pipeline around [`TwilioSession::output`]. Frames pushed on
/// [`PipelineTask::handle`] before the call (a greeting) are processed first; the handle's lane
/// holds [`PipelineParams::input_capacity`](voxline_pipeline::PipelineParams::input_capacity)
/// frames before the task runs. The call runs in a `twilio_call` span (child of the current one)
/// and so does the pipeline.
pub async fn serve_call(session: TwilioSession, task: PipelineTask) -> CallReport {
    let span = tracing::info_span!("twilio_call", call_sid = %session.start.call_sid);
    serve(session, task).instrument(span).await
}

async fn serve(session: TwilioSession, task: PipelineTask) -> CallReport {
    let started = Instant::now();
    let TwilioSession { socket, start, params, shared, out_rx } = session;
    let (ws_tx, mut ws_rx) = socket.split();
    let writer = tokio::spawn(write_out(ws_tx, out_rx).in_current_span());
    let handle = task.handle();
    let mut pipeline = tokio::spawn(task.run().in_current_span());
    let (ctl_tx, ctl_rx) = mpsc::channel::<Frame>(CONTROL_LANE);
    let forwarder = tokio::spawn(forward(handle.clone(), ctl_rx).in_current_span());
    let mut reader =
        Reader { params: &params, shared: &shared, handle: &handle, ctl: ctl_tx, counts: Counts::default() };

    let mut finished: Option<Result<TaskReport, tokio::task::JoinError>> = None;
    let reason = loop {
        let msg = tokio::select! {
            // The pipeline's end is checked first: once it is over, caller input has nowhere to go.
            biased;
            r = &mut pipeline => {
                finished = Some(r);
                break EndReason::PipelineEnded;
            }
            m = ws_rx.next() => m,
        };
        if let Some(reason) = reader.on_socket(msg) {
            break reason;
        }
    };

    let mut drained = false;
    let mut hung_up = false;
    let report = if let Some(r) = finished {
        let caller_left;
        (drained, caller_left) = drain(&mut reader, &mut ws_rx, params.drain_timeout).await;
        // A caller who hung up during the goodbye has ended the call already.
        if !caller_left && let Some(rest) = &params.rest {
            match rest.hang_up(&start.call_sid).await {
                Ok(outcome) => {
                    hung_up = true;
                    tracing::info!(?outcome, "hung up");
                }
                Err(e) => tracing::warn!(error = %e, "hang-up failed"),
            }
        }
        let _ = shared.out.send(Out::Close(1000, "bye".into()));
        joined(r)
    } else {
        let _ = shared.out.send(Out::Close(1000, String::new()));
        end_pipeline(&handle, &shared, &mut pipeline, params.end_timeout).await
    };
    let Reader { counts, ctl, .. } = reader;
    drop(ctl);
    if tokio::time::timeout(WRITER_FLUSH, writer).await.is_err() {
        tracing::debug!("socket writer did not finish in time");
    }
    forwarder.abort();

    let input_audio_dropped = report.as_ref().map_or_else(|| handle.input_audio_dropped(), |r| r.input_audio_dropped);
    let marks_sent = shared.playout().marks_sent;
    let call = CallReport {
        call_sid: start.call_sid,
        reason,
        duration: started.elapsed(),
        media_in: counts.media_in,
        media_out: shared.media_out.load(Ordering::Relaxed),
        dtmf_in: counts.dtmf_in,
        marks_sent,
        marks_echoed: counts.marks_echoed,
        clears: shared.clears.load(Ordering::Relaxed),
        bad_messages: counts.bad,
        input_audio_dropped,
        drained,
        hung_up,
        pipeline: report,
    };
    tracing::info!(
        reason = ?call.reason,
        media_in = call.media_in,
        media_out = call.media_out,
        bad = call.bad_messages,
        outcome = ?call.pipeline.as_ref().map(|r| &r.outcome),
        "twilio call ended"
    );
    call
}

#[derive(Default)]
struct Counts {
    media_in: u64,
    dtmf_in: u64,
    marks_echoed: u64,
    bad: u64,
    consecutive_bad: u32,
}

/// The caller side of the socket: decodes messages and routes them to the pipeline.
struct Reader<'a> {
    params: &'a TwilioParams,
    shared: &'a Shared,
    handle: &'a PipelineHandle,
    ctl: mpsc::Sender<Frame>,
    counts: Counts,
}

type SocketItem = Option<Result<Message, axum::Error>>;

impl Reader<'_> {
    /// Handle one socket read; `Some` when the call is over from the caller's side.
    fn on_socket(&mut self, msg: SocketItem) -> Option<EndReason> {
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => return Some(EndReason::Disconnected),
            Some(Ok(_)) => return None,
            Some(Err(e)) => {
                // axum reports an over-limit frame as an error too: the socket is unusable.
                tracing::warn!(error = %e, "twilio socket error");
                return Some(EndReason::Disconnected);
            }
        };
        let inbound = match serializer::decode(text.as_str(), self.params.max_message_bytes) {
            Ok(m) => m,
            Err(e) => return self.on_bad(&e),
        };
        self.counts.consecutive_bad = 0;
        match inbound {
            Inbound::Media { frame, .. } => {
                self.counts.media_in += 1;
                self.handle.push_input_audio(frame);
            }
            Inbound::Dtmf(frame) => {
                self.counts.dtmf_in += 1;
                // Not the digit itself: key presses are often PINs or card numbers.
                tracing::debug!("dtmf received");
                if self.ctl.try_send(frame).is_err() {
                    tracing::warn!("dtmf dropped: control lane full");
                }
            }
            Inbound::Mark { name } => self.on_mark(&name),
            Inbound::Stop { .. } => return Some(EndReason::Stopped),
            Inbound::Ignored { event } => tracing::debug!(event, "ignored twilio event"),
            Inbound::Connected { .. } | Inbound::Start(_) => {
                tracing::debug!("repeated connected/start ignored");
            }
        }
        None
    }

    fn on_bad(&mut self, e: &SerializerError) -> Option<EndReason> {
        self.counts.bad += 1;
        if matches!(e, SerializerError::Oversized { .. }) {
            tracing::warn!(error = %e, "dropping call");
            let _ = self.shared.out.send(Out::Close(1009, "message too big".into()));
            return Some(EndReason::ProtocolViolation(e.to_string()));
        }
        self.counts.consecutive_bad += 1;
        tracing::warn!(error = %e, "undecodable twilio message skipped");
        if self.counts.consecutive_bad >= self.params.max_consecutive_errors {
            let _ = self.shared.out.send(Out::Close(1002, "too many bad messages".into()));
            return Some(EndReason::ProtocolViolation(format!(
                "{} bad messages in a row",
                self.counts.consecutive_bad
            )));
        }
        None
    }

    /// A mark echo: the utterances it closes (and any before it) were played.
    fn on_mark(&mut self, name: &str) {
        let done: Vec<PendingMark> = {
            let mut p = self.shared.playout();
            // Marks are echoed in order; anything before this one has been played too.
            match p.pending.iter().position(|m| m.name == name) {
                Some(i) => p.pending.drain(..=i).collect(),
                // Echoed after a `clear` forgot it: that audio was cut, not played.
                None => Vec::new(),
            }
        };
        tracing::debug!(mark = name, matched = done.len(), "mark echoed");
        self.counts.marks_echoed += u64::try_from(done.len()).unwrap_or(u64::MAX);
        for m in done {
            let Some(context_id) = m.context_id else { continue };
            let frame = Frame::PlayedUpTo { context_id, position: m.position, complete: true };
            if let Err(mpsc::error::TrySendError::Full(_)) = self.ctl.try_send(frame) {
                tracing::warn!("play-out report dropped: control lane full");
            }
        }
        // "Bot speaking" is the output clock's to announce: the reports above tell it what played.
    }
}

/// The pipeline has ended: keep the socket open until every chunk sent has been played (the
/// last mark echoed) or `timeout` passes. Returns (everything confirmed, the caller left).
async fn drain(reader: &mut Reader<'_>, ws_rx: &mut SplitStream<WebSocket>, timeout: Duration) -> (bool, bool) {
    // Audio written outside an utterance (plain `OutputAudio`) has no mark of its own: mark it, so
    // its play-out is awaited too.
    let tail = {
        let mut p = reader.shared.playout();
        (!p.written.is_zero()).then(|| p.mark(None))
    };
    if let Some(name) = tail {
        let _ = reader.shared.out.send(Out::Text(serializer::encode_mark(&reader.shared.stream_sid, &name)));
    }
    let deadline = Instant::now() + timeout;
    while !reader.shared.playout().pending.is_empty() {
        let msg = tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(?timeout, "drain timed out: hanging up before the last audio was confirmed played");
                return (false, false);
            }
            m = ws_rx.next() => m,
        };
        // Caller audio and keys still arrive; the pipeline is gone, so they go nowhere.
        match reader.on_socket(msg) {
            None => {}
            Some(EndReason::Stopped | EndReason::Disconnected) => return (false, true),
            // A broken stream: stop waiting, but the call itself still has to be hung up.
            Some(_) => return (false, false),
        }
    }
    (true, false)
}

/// The caller has left: drop the bot's unheard output, end the pipeline with `End`, and cancel it
/// if that takes longer than `timeout`.
async fn end_pipeline(
    handle: &PipelineHandle,
    shared: &Shared,
    pipeline: &mut JoinHandle<TaskReport>,
    timeout: Duration,
) -> Option<TaskReport> {
    let unheard = {
        let p = shared.playout();
        !p.pending.is_empty() || !p.written.is_zero()
    };
    if unheard {
        // Otherwise the output stage would pace the rest of the answer, in real time, to nobody
        // before letting `End` through; and what was cut is recorded as cut.
        let _ = handle.interrupt();
    }
    let ended = tokio::time::timeout(timeout, async {
        let _ = handle.end().await;
        (&mut *pipeline).await
    })
    .await;
    if let Ok(r) = ended {
        return joined(r);
    }
    tracing::warn!(?timeout, "pipeline did not end in time after the caller left: cancelling it");
    let _ = handle.cancel();
    // The runner gives stages `cancel_timeout` to stop; this bound only guards against a runner
    // that never returns.
    match tokio::time::timeout(timeout, &mut *pipeline).await {
        Ok(r) => joined(r),
        Err(_) => {
            pipeline.abort();
            tracing::error!("pipeline task did not stop after cancel: aborted");
            None
        }
    }
}

fn joined(r: Result<TaskReport, tokio::task::JoinError>) -> Option<TaskReport> {
    match r {
        Ok(report) => Some(report),
        Err(e) => {
            tracing::error!(error = %e, "pipeline task failed");
            None
        }
    }
}

/// Forward DTMF downstream and play-out reports upstream, in order, until the pipeline closes.
async fn forward(handle: PipelineHandle, mut rx: mpsc::Receiver<Frame>) {
    while let Some(frame) = rx.recv().await {
        let res = match frame {
            f @ Frame::PlayedUpTo { .. } => handle.push_upstream(f).await,
            f => handle.push(f).await,
        };
        if res.is_err() {
            break;
        }
    }
}

/// Write outbound messages until a close is asked for or the socket fails.
async fn write_out(mut ws_tx: SplitSink<WebSocket, Message>, mut out_rx: mpsc::UnboundedReceiver<Out>) {
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
}
