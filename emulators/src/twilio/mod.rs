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
//! Two ways to drive it. A test holds a [`TwilioCaller`] and calls its methods step by step
//! ([`TwilioCaller::say`], [`TwilioCaller::wait_answer`], ...), with the line either silent
//! between messages or, with [`CallerOptions::continuous_media`], carrying 20 ms of silence every
//! 20 ms as a real phone line does (the bot's VAD hears the end of a turn in it). A load test
//! hands a [`Conversation`] to [`TwilioCaller::converse`]: the caller then talks by itself (greeting,
//! hold, each line once the bot has answered the previous one) inside the calling task, one task
//! per caller, recording only what a load test reads ([`CallerOptions::for_load`]).
//!
//! Per line said, [`Heard::said`] keeps when it started, when its voice ended (the chunk with the
//! last voiced sample) and how long the bot took to answer from there; [`Heard::jitter`] keeps
//! the outbound jitter of the bot's media past each run's send-ahead burst, measured as it
//! arrives, so neither needs the per-message timeline.
//!
//! Marks are echoed the way Twilio's playback buffer does it: the bot's audio plays at real time
//! (8 bytes of μ-law per ms) from when it arrives, a mark is echoed when everything queued before
//! it has played (at once if nothing is queued), and `clear` empties the buffer and echoes every
//! pending mark immediately. [`CallerOptions::echo_marks`] turns echoing off.
//!
//! The messages are written as raw JSON here, independently of the transport's own serializer, so
//! a test against this caller checks the transport against the protocol, not against itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::common::{Recorder, next_id};

mod driver;
mod heard;
mod speech;
mod webhook;
use driver::{Cmd, Driver, Ws};
pub use heard::{BotMessage, Heard, Said};
pub use speech::{Conversation, DEFAULT_CONVERSATION_TIMEOUT, DEFAULT_QUIET, Speech};
pub use webhook::{Answer, incoming_call_form, parse_twiml, ring};

/// Bytes of μ-law 8 kHz in one 20 ms media message, as Twilio sends them.
pub const CHUNK_BYTES: usize = 160;
/// The μ-law byte for silence.
pub const MULAW_SILENCE: u8 = 0xFF;
/// `accountSid` used when none is given.
pub const DEFAULT_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
/// Bot media messages at the start of each run left out of [`Heard::jitter`]: the send-ahead
/// burst arrives at once by design, and 10 leaves room over any sensible send-ahead (the engine's
/// default is 2) so the figure is the pacing's, not the burst's.
pub const DEFAULT_JITTER_SKIP: usize = 10;

const CHUNK: Duration = Duration::from_millis(20);

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
    /// Keep every message's time in [`Heard::timeline`] and [`Heard::sent_media`]. Off for load
    /// tests: two entries per 20 ms a call; the counters, [`Heard::jitter`] and [`Heard::said`]
    /// are kept either way.
    pub record_timeline: bool,
    /// Send a 20 ms `media` message every 20 ms, silence unless [`TwilioCaller::say`] queued
    /// speech: a phone line never stops sending, and the bot's VAD hears the end of a turn in
    /// that silence. Off: the caller sends media only when asked.
    pub continuous_media: bool,
    /// Bot media messages left out of [`Heard::jitter`] at the start of each run (see
    /// [`DEFAULT_JITTER_SKIP`]).
    pub jitter_skip: usize,
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
            record_timeline: true,
            continuous_media: false,
            jitter_skip: DEFAULT_JITTER_SKIP,
        }
    }

    /// Keep only what a load test reads (counters, marks, jitter, the lines said and their
    /// answers): no audio, no timeline, so a thousand callers cost little memory and no
    /// per-message bookkeeping beyond the counters.
    #[must_use]
    pub fn for_load(mut self) -> Self {
        self.record_audio = false;
        self.record_timeline = false;
        self
    }

    /// Keep the line open with silence between the caller's words (see
    /// [`CallerOptions::continuous_media`]).
    #[must_use]
    pub fn continuous(mut self) -> Self {
        self.continuous_media = true;
        self
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

/// A simulated caller on one Media Streams websocket; see the module docs.
///
/// A background task owns the socket: it sends what the methods ask, reads the bot's messages,
/// echoes marks and records everything in [`Heard`]. Dropping the caller ends the task (the
/// socket just goes away, as when a network drops). A caller that talks by itself
/// ([`TwilioCaller::converse`]) needs no handle and runs in the calling task instead.
pub struct TwilioCaller {
    options: CallerOptions,
    cmd: mpsc::Sender<Cmd>,
    heard: Arc<Recorder<Heard>>,
    t0: Instant,
    /// Lines queued with [`TwilioCaller::say`], to find each one's entry in [`Heard::said`].
    says: AtomicUsize,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TwilioCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioCaller").field("options", &self.options).finish_non_exhaustive()
    }
}

/// Open the websocket the way Twilio's media edge does.
async fn open(url: &str) -> Result<Ws, CallerError> {
    // A small read buffer: tungstenite zeroes its whole read buffer (128 KiB by default) on
    // every read, which dominated a load generator's CPU; the bot's messages are under 1 KiB.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    // No Nagle: a 20 ms media message must leave at once, as it would from Twilio's edge.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| CallerError::Connect { url: url.to_string(), reason: e.to_string() })?;
    Ok(ws)
}

/// `connected`, the first message on every stream.
fn connected_message() -> String {
    json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()
}

/// The `start` message of a caller with `o`.
fn start_message(o: &CallerOptions) -> String {
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

impl TwilioCaller {
    /// Open the stream at `url` and send `connected` and `start`.
    pub async fn connect(url: &str, options: CallerOptions) -> Result<Self, CallerError> {
        let caller = Self::connect_raw(url, options).await?;
        caller.send_raw(connected_message()).await?;
        caller.send(Cmd::Start(caller.start_message())).await?;
        Ok(caller)
    }

    /// Open the stream at `url` and send nothing yet (to test what happens before `start`).
    pub async fn connect_raw(url: &str, options: CallerOptions) -> Result<Self, CallerError> {
        let ws = open(url).await?;
        let heard = Arc::new(Recorder::new(Heard::default()));
        let (cmd, cmd_rx) = mpsc::channel(256);
        let driver = Driver::new(&options, heard.clone(), None);
        let t0 = driver.t0();
        let task = tokio::spawn(driver.run(ws, cmd_rx));
        Ok(Self { options, cmd, heard, t0, says: AtomicUsize::new(0), task })
    }

    /// Call the stream at `url` and hold `conversation` (see [`Conversation`]) until the bot
    /// ends the call or the conversation's timeout passes; returns what was heard.
    ///
    /// The socket is driven in the calling task, with no background task and no handle: a load
    /// test spawns one task per caller and that is all a caller costs. Marks are always echoed
    /// and the line always carries silence between lines ([`CallerOptions::continuous_media`]),
    /// whatever `options` say, since the conversation waits on both.
    pub async fn converse(url: &str, options: CallerOptions, conversation: Conversation) -> Result<Heard, CallerError> {
        let ws = open(url).await?;
        let heard = Arc::new(Recorder::new(Heard::default()));
        // The driver reads commands; these two are all a conversation sends unasked. The sender
        // lives until the driver returns, so the channel never reads as a dropped caller.
        let (cmd, cmd_rx) = mpsc::channel(2);
        let _ = cmd.try_send(Cmd::Raw(connected_message()));
        let _ = cmd.try_send(Cmd::Start(start_message(&options)));
        Driver::new(&options, heard.clone(), Some(conversation)).run(ws, cmd_rx).await;
        drop(cmd);
        Ok(heard.snapshot())
    }

    /// The `start` message this caller sends.
    #[must_use]
    pub fn start_message(&self) -> String {
        start_message(&self.options)
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
        let said = self.say(speech).await?;
        Ok(said.ended.unwrap_or_else(|| self.now()))
    }

    /// Say `speech` on the line's clock, after anything queued before it (with
    /// [`CallerOptions::continuous_media`], in place of the silence), and wait until its last
    /// chunk is sent. Returns its [`Said`] entry: when it started, when the voice ended (where
    /// the bot's turn latency starts) and when it ended; [`Said::answer`] is filled in later, in
    /// [`Heard::said`], when the bot answers.
    pub async fn say(&self, speech: &Speech) -> Result<Said, CallerError> {
        let index = self.says.fetch_add(1, Ordering::Relaxed);
        self.send(Cmd::Say(speech.clone())).await?;
        // Generous: the speech takes its own length, plus whatever was queued before it.
        let timeout = speech.duration() * 4 + Duration::from_secs(30);
        let heard = self
            .heard
            .wait_for(|h| h.said.get(index).is_some_and(|s| s.ended.is_some()) || h.closed.is_some(), timeout)
            .await;
        heard.and_then(|h| h.said.get(index).copied()).filter(|s| s.ended.is_some()).ok_or(CallerError::Closed)
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
        self.wait_quiet_since(None, quiet, timeout).await
    }

    /// Wait until the bot has answered: some `media` at or after `since` (a time on the
    /// [`Heard`] clock, e.g. [`TwilioCaller::now`] when the caller stopped talking), then quiet
    /// for `quiet` as in [`TwilioCaller::wait_quiet`]. Unlike that, a bot that has not spoken
    /// yet is not "quiet": the caller waits for the greeting or the answer first. `false` on
    /// timeout or close.
    pub async fn wait_answer(&self, since: Duration, quiet: Duration, timeout: Duration) -> bool {
        self.wait_quiet_since(Some(since), quiet, timeout).await
    }

    async fn wait_quiet_since(&self, since: Option<Duration>, quiet: Duration, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.heard();
            if h.closed.is_some() {
                return false;
            }
            let spoke = since.is_none_or(|s| h.last_media_at.is_some_and(|t| t >= s));
            let last = h.playback_end.max(h.last_media_at.unwrap_or_default());
            let quiet_at = self.t0 + last + quiet;
            let now = Instant::now();
            if spoke && h.unechoed_marks().is_empty() && quiet_at <= now {
                return true;
            }
            if now >= deadline {
                return false;
            }
            // Re-check when the quiet period would be over, or on any news from the bot.
            let wake = if spoke { quiet_at.max(now + Duration::from_millis(1)).min(deadline) } else { deadline };
            let seen = (h.media_messages, h.marks.len(), h.echoed.len(), h.clears);
            let _ = self
                .heard
                .wait_for(
                    |h| (h.media_messages, h.marks.len(), h.echoed.len(), h.clears) != seen || h.closed.is_some(),
                    wake - now,
                )
                .await;
        }
    }
}

impl Drop for TwilioCaller {
    fn drop(&mut self) {
        self.task.abort();
    }
}
