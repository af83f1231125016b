//! A simulated Twilio caller: the far side of a Media Streams websocket, for tests, soaks and
//! keyless simulation.
//!
//! Unlike the other emulators this one is a *client*: Twilio connects to the bot. [`ring`] posts
//! the voice webhook (form fields as Twilio sends them, optionally signed) and reads the TwiML's
//! `<Stream url>` and `<Parameter>`s; [`TwilioCaller::connect`] opens the stream and sends
//! `connected` and `start` (with those parameters in `customParameters`, the stream token among
//! them). Then the caller speaks (`media`, paced at real time or in a burst), presses keys
//! (`dtmf`), and hangs up (`stop`, or just closing the socket).
//!
//! What the bot sends is checked and recorded in [`Heard`], with arrival times: `media` (audio
//! kept, optionally), `mark`, `clear`, the close frame. A message Twilio would reject (not JSON, a
//! wrong `streamSid`, an unknown `event`, a payload that is not base64) is recorded in
//! [`Heard::protocol_errors`] rather than failing the call, so a test can assert there are none.
//!
//! Marks are echoed the way Twilio's playback buffer does it: the bot's audio plays at real time
//! (8 bytes of μ-law per ms) from when it arrives, a mark is echoed when everything queued before
//! it has played (at once if nothing is queued), and `clear` empties the buffer and echoes every
//! pending mark immediately. [`CallerOptions::echo_marks`] turns echoing off.
//!
//! The messages are written as raw JSON here, independently of the transport's own serializer, so
//! a test against this caller checks the transport against the protocol, not against itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::{Recorder, next_id, sleep_until_opt};

mod webhook;
pub use webhook::{Answer, incoming_call_form, parse_twiml, ring};

/// Bytes of μ-law 8 kHz in one 20 ms media message, as Twilio sends them.
pub const CHUNK_BYTES: usize = 160;
/// The μ-law byte for silence.
pub const MULAW_SILENCE: u8 = 0xFF;
/// `accountSid` used when none is given.
pub const DEFAULT_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

const CHUNK: Duration = Duration::from_millis(20);
/// How long the caller waits for the bot to close the socket after closing it itself.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why the simulated caller could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    /// The webhook request failed or was refused.
    #[error("voice webhook: {0}")]
    Webhook(String),
    /// The webhook answered without a `<Stream url>`.
    #[error("TwiML without <Stream url>: {0}")]
    Twiml(String),
    /// The websocket could not be opened.
    #[error("websocket connect to {url}: {reason}")]
    Connect {
        /// The stream URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The call is over (the socket closed); nothing more can be sent.
    #[error("the call is over")]
    Closed,
}

/// Who is calling and how the caller behaves.
#[derive(Debug, Clone)]
pub struct CallerOptions {
    /// `start.callSid`.
    pub call_sid: String,
    /// `streamSid` of every message; the bot must echo it.
    pub stream_sid: String,
    /// `start.customParameters` (from [`Answer::parameters`]).
    pub custom_parameters: Vec<(String, String)>,
    /// Echo marks as the playback buffer plays them (see the module docs).
    pub echo_marks: bool,
    /// Keep the bot's audio bytes in [`Heard::audio`]. Off for load tests: 8 KB a second a call.
    pub record_audio: bool,
}

impl CallerOptions {
    /// A caller with a fresh call SID (`CA` + 32 hex) and the matching stream SID.
    #[must_use]
    pub fn new() -> Self {
        let n = next_id();
        Self::for_call(&format!("CA{:016x}{:016x}", crate::common::unix_secs(), n))
    }

    /// A caller for `call_sid`; the stream SID is `MZ` + the rest of it.
    #[must_use]
    pub fn for_call(call_sid: &str) -> Self {
        Self {
            call_sid: call_sid.to_string(),
            stream_sid: format!("MZ{}", call_sid.get(2..).unwrap_or(call_sid)),
            custom_parameters: Vec::new(),
            echo_marks: true,
            record_audio: true,
        }
    }

    /// With the `<Parameter>`s of a webhook answer.
    #[must_use]
    pub fn with_parameters(mut self, parameters: Vec<(String, String)>) -> Self {
        self.custom_parameters = parameters;
        self
    }
}

impl Default for CallerOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// One message from the bot, as the caller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotMessage {
    /// `media` with this many bytes of μ-law.
    Media(usize),
    /// `mark` with this name.
    Mark(String),
    /// `clear`.
    Clear,
    /// The bot closed the socket (close code, if any).
    Closed(Option<u16>),
}

/// Everything the caller heard and did, with times since it connected.
#[derive(Debug, Clone, Default)]
pub struct Heard {
    /// Every message from the bot, in arrival order.
    pub timeline: Vec<(Duration, BotMessage)>,
    /// The bot's μ-law audio, concatenated (only with [`CallerOptions::record_audio`]).
    pub audio: Vec<u8>,
    /// Audio bytes received.
    pub audio_bytes: usize,
    /// `media` messages received.
    pub media_messages: u64,
    /// Marks received, in order.
    pub marks: Vec<String>,
    /// Marks echoed back, in order.
    pub echoed: Vec<String>,
    /// `clear` messages received.
    pub clears: u64,
    /// When the simulated playback buffer runs (ran) dry: the bot's audio has all been heard by
    /// then, unless a `clear` cut it.
    pub playback_end: Duration,
    /// Messages Twilio would reject, described.
    pub protocol_errors: Vec<String>,
    /// The close: code from the bot (`None` if the socket just ended) and when.
    pub closed: Option<(Option<u16>, Duration)>,
    /// When each `media` message from the caller was sent.
    pub sent_media: Vec<Duration>,
    /// Key presses sent.
    pub sent_dtmf: Vec<char>,
    /// `stop` was sent.
    pub sent_stop: bool,
}

impl Heard {
    /// Arrival time of the first bot `media` at or after `t`.
    #[must_use]
    pub fn first_media_after(&self, t: Duration) -> Option<Duration> {
        self.timeline.iter().find(|(at, m)| *at >= t && matches!(m, BotMessage::Media(_))).map(|(at, _)| *at)
    }

    /// Arrival time of the last bot `media`.
    #[must_use]
    pub fn last_media(&self) -> Option<Duration> {
        self.timeline.iter().rev().find(|(_, m)| matches!(m, BotMessage::Media(_))).map(|(at, _)| *at)
    }

    /// Outbound jitter: |inter-arrival − 20 ms| of the bot's media, skipping the first `burst`
    /// messages of each run (the send-ahead arrives at once); a gap over 200 ms starts a run.
    #[must_use]
    pub fn media_jitter(&self, burst: usize) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut prev: Option<Duration> = None;
        let mut run = 0usize;
        for (at, m) in &self.timeline {
            if !matches!(m, BotMessage::Media(_)) {
                continue;
            }
            match prev {
                Some(p) if *at - p < Duration::from_millis(200) => {
                    if run >= burst {
                        out.push((*at - p).abs_diff(CHUNK));
                    }
                    run += 1;
                }
                _ => run = 0,
            }
            prev = Some(*at);
        }
        out
    }

    /// Marks received and not echoed (still playing, or echo turned off).
    #[must_use]
    pub fn unechoed_marks(&self) -> Vec<&str> {
        self.marks.iter().filter(|m| !self.echoed.contains(m)).map(String::as_str).collect()
    }
}

/// Speech pre-encoded into 20 ms `media` payloads, so a load test encodes each line once for
/// every caller. The last chunk is padded with silence.
#[derive(Debug, Clone)]
pub struct Speech {
    chunks: Arc<[String]>,
}

impl Speech {
    /// Cut μ-law 8 kHz audio into 20 ms chunks.
    #[must_use]
    pub fn from_mulaw(mulaw: &[u8]) -> Self {
        let chunks = mulaw
            .chunks(CHUNK_BYTES)
            .map(|c| {
                let mut c = c.to_vec();
                c.resize(CHUNK_BYTES, MULAW_SILENCE);
                B64.encode(&c)
            })
            .collect();
        Self { chunks }
    }

    /// `duration` of silence.
    #[must_use]
    pub fn silence(duration: Duration) -> Self {
        let n = usize::try_from(duration.as_millis() / CHUNK.as_millis()).unwrap_or(0);
        Self::from_mulaw(&vec![MULAW_SILENCE; n * CHUNK_BYTES])
    }

    /// Number of 20 ms chunks.
    #[must_use]
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Length of the speech.
    #[must_use]
    pub fn duration(&self) -> Duration {
        CHUNK * u32::try_from(self.chunks.len()).unwrap_or(u32::MAX)
    }
}

enum Cmd {
    /// The `start` message (sequence number 1).
    Start(String),
    /// Any text frame, sent as is (takes no sequence number).
    Raw(String),
    /// One `media` message with this base64 payload.
    Media(String),
    Dtmf(char),
    Stop,
    /// Close the socket (code 1000), without `stop`.
    Close,
}

/// A simulated caller on one Media Streams websocket; see the module docs.
///
/// A background task owns the socket: it sends what the methods ask, reads the bot's messages,
/// echoes marks and records everything in [`Heard`]. Dropping the caller ends the task (the
/// socket just goes away, as when a network drops).
pub struct TwilioCaller {
    options: CallerOptions,
    cmd: mpsc::Sender<Cmd>,
    heard: Arc<Recorder<Heard>>,
    t0: Instant,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TwilioCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioCaller").field("options", &self.options).finish_non_exhaustive()
    }
}

impl TwilioCaller {
    /// Open the stream at `url` and send `connected` and `start`.
    pub async fn connect(url: &str, options: CallerOptions) -> Result<Self, CallerError> {
        let caller = Self::connect_raw(url, options).await?;
        caller.send_raw(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()).await?;
        caller.send(Cmd::Start(caller.start_message())).await?;
        Ok(caller)
    }

    /// Open the stream at `url` and send nothing yet (to test what happens before `start`).
    pub async fn connect_raw(url: &str, options: CallerOptions) -> Result<Self, CallerError> {
        // A small read buffer: tungstenite zeroes its whole read buffer (128 KiB by default) on
        // every read, which dominated a load generator's CPU; the bot's messages are under 1 KiB.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        // No Nagle: a 20 ms media message must leave at once, as it would from Twilio's edge.
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|e| CallerError::Connect { url: url.to_string(), reason: e.to_string() })?;
        let heard = Arc::new(Recorder::new(Heard::default()));
        let (cmd, cmd_rx) = mpsc::channel(256);
        let t0 = Instant::now();
        let driver = Driver {
            call_sid: options.call_sid.clone(),
            stream_sid: options.stream_sid.clone(),
            sid_json: json!(options.stream_sid).to_string(),
            echo_marks: options.echo_marks,
            record_audio: options.record_audio,
            heard: heard.clone(),
            t0,
            seq: 0,
            chunk: 0,
            play_end: t0,
            marks: VecDeque::new(),
        };
        let task = tokio::spawn(driver.run(ws, cmd_rx));
        Ok(Self { options, cmd, heard, t0, task })
    }

    /// The `start` message this caller sends.
    #[must_use]
    pub fn start_message(&self) -> String {
        let o = &self.options;
        let params: serde_json::Map<String, serde_json::Value> =
            o.custom_parameters.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        json!({
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": o.stream_sid,
            "start": {
                "accountSid": DEFAULT_ACCOUNT_SID,
                "callSid": o.call_sid,
                "streamSid": o.stream_sid,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        })
        .to_string()
    }

    /// `start.callSid`.
    #[must_use]
    pub fn call_sid(&self) -> &str {
        &self.options.call_sid
    }

    /// `streamSid`.
    #[must_use]
    pub fn stream_sid(&self) -> &str {
        &self.options.stream_sid
    }

    /// Time since the caller connected (the clock of [`Heard`]).
    #[must_use]
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    async fn send(&self, cmd: Cmd) -> Result<(), CallerError> {
        self.cmd.send(cmd).await.map_err(|_| CallerError::Closed)
    }

    /// Send any text frame as is (a malformed message, an unknown event...).
    pub async fn send_raw(&self, text: impl Into<String>) -> Result<(), CallerError> {
        self.send(Cmd::Raw(text.into())).await
    }

    /// Send one `media` message carrying `mulaw` as it is (any length).
    pub async fn send_media(&self, mulaw: &[u8]) -> Result<(), CallerError> {
        self.send(Cmd::Media(B64.encode(mulaw))).await
    }

    /// Say `speech` at real time: one 20 ms chunk every 20 ms. Returns when the last chunk was
    /// sent, as a time on the [`Heard`] clock.
    pub async fn speak(&self, speech: &Speech) -> Result<Duration, CallerError> {
        let mut tick = tokio::time::interval(CHUNK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for chunk in speech.chunks.iter() {
            tick.tick().await;
            self.send(Cmd::Media(chunk.clone())).await?;
        }
        Ok(self.now())
    }

    /// Send every chunk of `speech` at once (faster than real time).
    pub async fn send_speech(&self, speech: &Speech) -> Result<(), CallerError> {
        for chunk in speech.chunks.iter() {
            self.send(Cmd::Media(chunk.clone())).await?;
        }
        Ok(())
    }

    /// Press a key.
    pub async fn dtmf(&self, digit: char) -> Result<(), CallerError> {
        self.send(Cmd::Dtmf(digit)).await
    }

    /// Hang up the way Twilio reports it: `stop`. The bot is expected to close the socket next.
    pub async fn stop(&self) -> Result<(), CallerError> {
        self.send(Cmd::Stop).await
    }

    /// Close the socket without `stop` (a network drop, or a proxy closing it).
    pub async fn close(&self) -> Result<(), CallerError> {
        self.send(Cmd::Close).await
    }

    /// A snapshot of what was heard so far.
    #[must_use]
    pub fn heard(&self) -> Heard {
        self.heard.snapshot()
    }

    /// Wait until `pred` holds for what was heard, up to `timeout`; `None` on timeout.
    pub async fn wait_for(&self, pred: impl Fn(&Heard) -> bool, timeout: Duration) -> Option<Heard> {
        self.heard.wait_for(pred, timeout).await
    }

    /// Wait for the bot to close the socket, up to `timeout`.
    pub async fn closed(&self, timeout: Duration) -> Option<Heard> {
        self.wait_for(|h| h.closed.is_some(), timeout).await
    }

    /// Wait until the bot has been quiet for `quiet`: nothing playing (every mark echoed, the
    /// playback buffer dry) and no `media` for that long. `false` on timeout or close.
    pub async fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.heard();
            if h.closed.is_some() {
                return false;
            }
            let last = h.playback_end.max(h.last_media().unwrap_or_default());
            let quiet_at = self.t0 + last + quiet;
            let now = Instant::now();
            if h.unechoed_marks().is_empty() && quiet_at <= now {
                return true;
            }
            if now >= deadline {
                return false;
            }
            // Re-check when the quiet period would be over, or on any news from the bot.
            let wake = quiet_at.max(now + Duration::from_millis(1)).min(deadline);
            let seen = h.timeline.len();
            let _ = self.heard.wait_for(|h| h.timeline.len() != seen, wake - now).await;
        }
    }
}

impl Drop for TwilioCaller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the bot may send, parsed loosely enough to describe what is wrong with it.
#[derive(Deserialize)]
struct BotMsg {
    event: Option<String>,
    #[serde(rename = "streamSid")]
    stream_sid: Option<String>,
    media: Option<BotMedia>,
    mark: Option<BotMark>,
}

#[derive(Deserialize)]
struct BotMedia {
    payload: Option<String>,
}

#[derive(Deserialize)]
struct BotMark {
    name: Option<String>,
}

/// The socket side of a caller.
struct Driver {
    call_sid: String,
    stream_sid: String,
    /// `stream_sid` as a JSON string literal, for the hand-formatted media message.
    sid_json: String,
    echo_marks: bool,
    record_audio: bool,
    heard: Arc<Recorder<Heard>>,
    t0: Instant,
    /// `sequenceNumber` of the last message sent (`start` is 1, `connected` has none).
    seq: u64,
    /// `media.chunk` of the last media sent.
    chunk: u64,
    /// When the bot's audio received so far finishes playing.
    play_end: Instant,
    /// Marks waiting for the audio before them to play, with when that happens.
    marks: VecDeque<(String, Instant)>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Driver {
    async fn run(mut self, ws: Ws, mut cmd_rx: mpsc::Receiver<Cmd>) {
        let (mut tx, mut rx) = ws.split();
        let mut closing: Option<Instant> = None;
        loop {
            let next_mark = if self.echo_marks { self.marks.front().map(|(_, at)| *at) } else { None };
            tokio::select! {
                msg = rx.next() => {
                    let at = self.t0.elapsed();
                    match msg {
                        Some(Ok(Message::Text(t))) => self.on_text(t.as_str(), &mut tx).await,
                        Some(Ok(Message::Close(frame))) => {
                            let code = frame.map(|f| u16::from(f.code));
                            self.heard.update(|h| {
                                h.timeline.push((at, BotMessage::Closed(code)));
                                h.closed = Some((code, at));
                            });
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => {
                            self.heard.update(|h| {
                                h.timeline.push((at, BotMessage::Closed(None)));
                                h.closed = Some((None, at));
                            });
                            break;
                        }
                    }
                }
                cmd = cmd_rx.recv(), if closing.is_none() => {
                    let Some(cmd) = cmd else {
                        // The caller was dropped: the network goes away.
                        break;
                    };
                    if matches!(cmd, Cmd::Close) {
                        closing = Some(Instant::now() + CLOSE_GRACE);
                        let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                        let _ = tx.send(Message::Close(Some(frame))).await;
                        continue;
                    }
                    let text = self.encode(cmd);
                    if tx.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                () = sleep_until_opt(next_mark) => self.echo_due(&mut tx).await,
                () = sleep_until_opt(closing) => {
                    self.heard.update(|h| h.closed = Some((None, self.t0.elapsed())));
                    break;
                }
            }
        }
    }

    /// The wire message for a command (not `Close`).
    fn encode(&mut self, cmd: Cmd) -> String {
        let now = self.t0.elapsed();
        let seq = match cmd {
            Cmd::Raw(t) => return t,
            Cmd::Close => return String::new(),
            Cmd::Start(t) => {
                self.seq = 1;
                return t;
            }
            _ => {
                self.seq += 1;
                self.seq
            }
        };
        match cmd {
            Cmd::Raw(_) | Cmd::Close | Cmd::Start(_) => String::new(),
            Cmd::Media(payload) => {
                self.chunk += 1;
                self.heard.update(|h| h.sent_media.push(now));
                // Hand-formatted: a load test sends 50 messages a second per caller, and the
                // payload is base64 (no escaping needed) while the SID is pre-quoted.
                format!(
                    r#"{{"event":"media","sequenceNumber":"{seq}","streamSid":{},"media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{payload}"}}}}"#,
                    self.sid_json,
                    self.chunk,
                    (self.chunk - 1) * 20,
                )
            }
            Cmd::Dtmf(digit) => {
                self.heard.update(|h| h.sent_dtmf.push(digit));
                json!({"event": "dtmf", "sequenceNumber": seq.to_string(), "streamSid": self.stream_sid,
                       "dtmf": {"track": "inbound_track", "digit": digit.to_string()}})
                .to_string()
            }
            Cmd::Stop => {
                self.heard.update(|h| h.sent_stop = true);
                json!({"event": "stop", "sequenceNumber": seq.to_string(), "streamSid": self.stream_sid,
                       "stop": {"accountSid": DEFAULT_ACCOUNT_SID, "callSid": self.call_sid}})
                .to_string()
            }
        }
    }

    async fn on_text(&mut self, text: &str, tx: &mut futures::stream::SplitSink<Ws, Message>) {
        let at = self.t0.elapsed();
        let now = Instant::now();
        let msg: BotMsg = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => return self.protocol_error(format!("not JSON ({e}): {}", excerpt(text))),
        };
        if msg.stream_sid.as_deref() != Some(self.stream_sid.as_str()) {
            self.protocol_error(format!("wrong streamSid {:?}: {}", msg.stream_sid, excerpt(text)));
        }
        match msg.event.as_deref() {
            Some("media") => {
                let Some(payload) = msg.media.and_then(|m| m.payload) else {
                    return self.protocol_error(format!("media without payload: {}", excerpt(text)));
                };
                let audio = if self.record_audio {
                    match B64.decode(payload.as_bytes()) {
                        Ok(a) => Some(a),
                        Err(e) => return self.protocol_error(format!("media payload not base64: {e}")),
                    }
                } else {
                    None
                };
                let len = audio.as_ref().map_or_else(|| b64_len(&payload), Vec::len);
                // Twilio plays queued audio at real time: 8 bytes of μ-law per ms.
                self.play_end = self.play_end.max(now) + Duration::from_micros(len as u64 * 125);
                let playback_end = self.play_end - self.t0;
                self.heard.update(|h| {
                    h.timeline.push((at, BotMessage::Media(len)));
                    h.media_messages += 1;
                    h.audio_bytes += len;
                    h.playback_end = playback_end;
                    if let Some(a) = audio {
                        h.audio.extend_from_slice(&a);
                    }
                });
            }
            Some("mark") => {
                let Some(name) = msg.mark.and_then(|m| m.name) else {
                    return self.protocol_error(format!("mark without name: {}", excerpt(text)));
                };
                self.heard.update(|h| {
                    h.timeline.push((at, BotMessage::Mark(name.clone())));
                    h.marks.push(name.clone());
                });
                self.marks.push_back((name, self.play_end.max(now)));
                self.echo_due(tx).await;
            }
            Some("clear") => {
                self.play_end = now;
                self.heard.update(|h| {
                    h.timeline.push((at, BotMessage::Clear));
                    h.clears += 1;
                    h.playback_end = at;
                });
                // Twilio echoes every pending mark at once on `clear`.
                for m in &mut self.marks {
                    m.1 = now;
                }
                self.echo_due(tx).await;
            }
            other => self.protocol_error(format!("unknown event {other:?}: {}", excerpt(text))),
        }
    }

    /// Echo every mark whose audio has played.
    async fn echo_due(&mut self, tx: &mut futures::stream::SplitSink<Ws, Message>) {
        if !self.echo_marks {
            return;
        }
        let now = Instant::now();
        while self.marks.front().is_some_and(|(_, at)| *at <= now) {
            let Some((name, _)) = self.marks.pop_front() else { break };
            self.seq += 1;
            let echo = json!({"event": "mark", "sequenceNumber": self.seq.to_string(),
                              "streamSid": self.stream_sid, "mark": {"name": name}});
            if tx.send(Message::text(echo.to_string())).await.is_err() {
                return;
            }
            self.heard.update(|h| h.echoed.push(name));
        }
    }

    fn protocol_error(&self, what: String) {
        tracing::warn!(error = %what, "bot sent a message Twilio would reject");
        self.heard.update(|h| h.protocol_errors.push(what));
    }
}

fn excerpt(text: &str) -> String {
    text.chars().take(120).collect()
}

/// Decoded length of a base64 string, without decoding it.
fn b64_len(s: &str) -> usize {
    let pad = s.bytes().rev().take_while(|b| *b == b'=').count();
    (s.len() / 4 * 3).saturating_sub(pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_length_of_base64() {
        for n in [0, 1, 2, 3, 159, 160, 161] {
            assert_eq!(b64_len(&B64.encode(vec![0u8; n])), n);
        }
    }

    #[test]
    fn speech_is_cut_into_padded_chunks() {
        let s = Speech::from_mulaw(&[0u8; 400]);
        assert_eq!(s.chunks(), 3);
        assert_eq!(s.duration(), Duration::from_millis(60));
        let last = B64.decode(s.chunks[2].as_bytes()).expect("b64");
        assert_eq!(last.len(), CHUNK_BYTES);
        assert_eq!(last[79], 0);
        assert_eq!(last[80], MULAW_SILENCE);
        assert_eq!(Speech::silence(Duration::from_millis(100)).chunks(), 5);
    }

    #[test]
    fn jitter_skips_the_burst() {
        let ms = Duration::from_millis;
        let h = Heard {
            timeline: [0, 0, 0, 20, 45, 60, 1000, 1000].iter().map(|t| (ms(*t), BotMessage::Media(160))).collect(),
            ..Heard::default()
        };
        // Runs: 0..60 (6 messages), then 1000.. (2). Skipping 2 per run.
        assert_eq!(h.media_jitter(2), vec![ms(0), ms(5), ms(5)]);
    }
}
