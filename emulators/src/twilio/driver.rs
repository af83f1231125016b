//! The socket side of a caller: one loop that sends what it is asked (or what its
//! [`Conversation`] says), keeps the line's 20 ms clock, reads the bot's messages, plays them
//! through the simulated playback buffer and records everything in [`Heard`].
//!
//! Everything a caller does happens in this one loop, on purpose: a load test of a thousand
//! callers runs a thousand of these and nothing else, so per-message work here is the load
//! generator's cost. That is why the bot's messages are parsed borrowed (no copy of the base64
//! payload), the audio is decoded only when kept, and the record is touched once per message.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::heard::{BotMessage, Heard, JitterMeter, Said};
use super::speech::{Conversation, Speech};
use super::{CHUNK, CHUNK_BYTES, CallerOptions, DEFAULT_ACCOUNT_SID, MULAW_SILENCE};
use crate::common::{Recorder, sleep_until_opt};

/// How long the caller waits for the bot to close the socket after closing it itself.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One silent 20 ms chunk, base64: what the line carries between the caller's words.
static SILENCE: LazyLock<String> = LazyLock::new(|| B64.encode([MULAW_SILENCE; CHUNK_BYTES]));

pub(super) enum Cmd {
    /// The `start` message (sequence number 1).
    Start(String),
    /// Any text frame, sent as is (takes no sequence number).
    Raw(String),
    /// One `media` message with this base64 payload.
    Media(String),
    /// Speech to send on the line's clock, after what is already queued.
    Say(Speech),
    Dtmf(char),
    Stop,
    /// Close the socket (code 1000), without `stop`.
    Close,
}

pub(super) type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Tx = futures::stream::SplitSink<Ws, Message>;

/// A [`Conversation`] in progress.
struct Autopilot {
    conversation: Conversation,
    next_line: usize,
    /// Set when the greeting is over: the first line waits until then.
    hold_until: Option<Instant>,
    deadline: Instant,
}

pub(super) struct Driver {
    call_sid: String,
    stream_sid: String,
    /// `stream_sid` as a JSON string literal, for the hand-formatted media message.
    sid_json: String,
    echo_marks: bool,
    record_audio: bool,
    record_timeline: bool,
    continuous: bool,
    /// The caller sent `stop` or closed the socket: a close from now on answers the caller.
    hung_up: bool,
    /// `start` was sent: the line's silence starts only then, since Twilio sends no media before
    /// `start` (and the bot drops any).
    started: bool,
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
    /// Speech waiting to be sent; the front one is being sent from chunk `next_chunk`.
    speech: VecDeque<Speech>,
    next_chunk: usize,
    /// Lines said so far (the length of [`Heard::said`]).
    said: usize,
    /// When the caller's latest line started (the connection, before any): a [`Conversation`]
    /// waits for bot audio after it.
    line_start: Instant,
    /// The line whose answer is awaited (index in [`Heard::said`]) and when its voice ended.
    awaiting_answer: Option<(usize, Instant)>,
    jitter: JitterMeter,
    /// Arrival of the bot's latest media.
    last_media: Option<Instant>,
    autopilot: Option<Autopilot>,
}

/// What the bot may send, parsed loosely enough to describe what is wrong with it, and borrowed:
/// a media payload is only measured, so copying it would be waste.
#[derive(Deserialize)]
struct BotMsg<'a> {
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(rename = "streamSid", borrow)]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    media: Option<BotMedia<'a>>,
    #[serde(borrow)]
    mark: Option<BotMark<'a>>,
}

#[derive(Deserialize)]
struct BotMedia<'a> {
    #[serde(borrow)]
    payload: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct BotMark<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

impl Driver {
    pub(super) fn new(
        options: &CallerOptions,
        heard: Arc<Recorder<Heard>>,
        conversation: Option<Conversation>,
    ) -> Self {
        let t0 = Instant::now();
        let autopilot = conversation.map(|c| Autopilot {
            deadline: t0 + c.timeout,
            conversation: c,
            next_line: 0,
            hold_until: None,
        });
        Self {
            call_sid: options.call_sid.clone(),
            stream_sid: options.stream_sid.clone(),
            sid_json: json!(options.stream_sid).to_string(),
            echo_marks: options.echo_marks || autopilot.is_some(),
            record_audio: options.record_audio,
            record_timeline: options.record_timeline,
            continuous: options.continuous_media || autopilot.is_some(),
            hung_up: false,
            started: false,
            heard,
            t0,
            seq: 0,
            chunk: 0,
            play_end: t0,
            marks: VecDeque::new(),
            speech: VecDeque::new(),
            next_chunk: 0,
            said: 0,
            line_start: t0,
            awaiting_answer: None,
            jitter: JitterMeter::new(options.jitter_skip),
            last_media: None,
            autopilot,
        }
    }

    /// The clock of [`Heard`].
    pub(super) fn t0(&self) -> Instant {
        self.t0
    }

    pub(super) async fn run(mut self, ws: Ws, mut cmd_rx: mpsc::Receiver<Cmd>) {
        let (mut tx, mut rx) = ws.split();
        let mut closing: Option<Instant> = None;
        let mut tick = tokio::time::interval(CHUNK);
        // A phone line catches up after a stall rather than dropping its audio.
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let give_up = self.autopilot.as_ref().map(|a| a.deadline);
        loop {
            let next_mark = if self.echo_marks { self.marks.front().map(|(_, at)| *at) } else { None };
            let sending = closing.is_none() && (!self.speech.is_empty() || (self.continuous && self.started));
            tokio::select! {
                msg = rx.next() => {
                    let at = self.t0.elapsed();
                    let code = match msg {
                        Some(Ok(Message::Text(t))) => {
                            self.on_text(t.as_str(), &mut tx).await;
                            continue;
                        }
                        Some(Ok(Message::Close(frame))) => frame.map(|f| u16::from(f.code)),
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => None,
                    };
                    let by_bot = !self.hung_up;
                    self.heard.update(|h| {
                        h.timeline.push((at, BotMessage::Closed(code)));
                        h.closed = Some((code, at));
                        h.ended_by_bot = by_bot;
                    });
                    break;
                }
                cmd = cmd_rx.recv(), if closing.is_none() => {
                    let Some(cmd) = cmd else {
                        // The caller was dropped: the network goes away.
                        break;
                    };
                    match cmd {
                        Cmd::Close => {
                            self.hung_up = true;
                            closing = Some(Instant::now() + CLOSE_GRACE);
                            let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                            let _ = tx.send(Message::Close(Some(frame))).await;
                        }
                        Cmd::Say(speech) => {
                            if !self.continuous && self.speech.is_empty() {
                                // The clock was idle: start it now, not with the ticks missed meanwhile.
                                tick.reset_immediately();
                            }
                            self.queue(speech);
                        }
                        cmd => {
                            let start = matches!(cmd, Cmd::Start(_));
                            let text = self.encode(cmd);
                            if tx.send(Message::text(text)).await.is_err() {
                                break;
                            }
                            if start {
                                // The line opens now, not with the ticks since the caller connected.
                                tick.reset_immediately();
                            }
                        }
                    }
                }
                _ = tick.tick(), if sending => {
                    if !self.on_tick(&mut tx).await {
                        break;
                    }
                }
                () = sleep_until_opt(next_mark) => self.echo_due(&mut tx).await,
                () = sleep_until_opt(closing) => {
                    self.heard.update(|h| h.closed = Some((None, self.t0.elapsed())));
                    break;
                }
                () = sleep_until_opt(give_up) => {
                    tracing::debug!(call_sid = %self.call_sid, "the bot did not end the call in time; hanging up");
                    break;
                }
            }
        }
    }

    /// Queue speech; an empty one is said (and over) at once.
    fn queue(&mut self, speech: Speech) {
        if speech.chunks() > 0 {
            self.speech.push_back(speech);
            return;
        }
        let at = self.t0.elapsed();
        self.said += 1;
        self.awaiting_answer = None;
        self.heard.update(|h| h.said.push(Said { started: at, voice_end: Some(at), ended: Some(at), answer: None }));
    }

    /// One tick of the line: maybe start the conversation's next line, then send 20 ms of speech
    /// or silence. `false` once the socket is gone.
    async fn on_tick(&mut self, tx: &mut Tx) -> bool {
        let now = Instant::now();
        if self.speech.is_empty()
            && let Some(line) = self.next_line(now)
        {
            self.queue(line);
        }
        let (payload, position) = match self.speech.front() {
            Some(s) => (s.chunks[self.next_chunk].as_str(), Some((self.next_chunk, s.voice_end, s.chunks()))),
            None => (SILENCE.as_str(), None),
        };
        self.seq += 1;
        self.chunk += 1;
        let text = media_message(&self.sid_json, self.seq, self.chunk, payload);
        if tx.send(Message::text(text)).await.is_err() {
            return false;
        }
        let at = self.t0.elapsed();
        if self.record_timeline {
            self.heard.update(|h| h.sent_media.push(at));
        }
        let Some((i, voice_end, len)) = position else { return true };
        let last = i + 1 == len;
        if i == 0 {
            self.said += 1;
            self.line_start = now;
            // An answer still awaited now would be to this line, not the previous one.
            self.awaiting_answer = None;
        }
        if i == voice_end {
            self.awaiting_answer = Some((self.said - 1, Instant::now()));
        }
        if i == 0 || i == voice_end || last {
            self.heard.update(|h| {
                if i == 0 {
                    h.said.push(Said { started: at, ..Said::default() });
                }
                if let Some(s) = h.said.last_mut() {
                    if i == voice_end {
                        s.voice_end = Some(at);
                    }
                    if last {
                        s.ended = Some(at);
                    }
                }
            });
        }
        if last {
            self.speech.pop_front();
            self.next_chunk = 0;
        } else {
            self.next_chunk += 1;
        }
        true
    }

    /// The conversation's next line, if it is time for it: the bot has spoken since the last
    /// line, has been quiet for `quiet`, and (before the first line) the hold is over.
    fn next_line(&mut self, now: Instant) -> Option<Speech> {
        let quiet = self.autopilot.as_ref()?.conversation.quiet;
        let bot_quiet = self.marks.is_empty()
            && self.play_end + quiet <= now
            && self.last_media.is_some_and(|t| t >= self.line_start && t + quiet <= now);
        let a = self.autopilot.as_mut()?;
        if !bot_quiet || a.next_line >= a.conversation.lines.len() {
            return None;
        }
        let hold_until = *a.hold_until.get_or_insert(now + a.conversation.hold);
        if a.next_line == 0 && now < hold_until {
            return None;
        }
        a.next_line += 1;
        a.conversation.lines.get(a.next_line - 1).cloned()
    }

    /// The wire message for a command (not `Close` or `Say`).
    fn encode(&mut self, cmd: Cmd) -> String {
        let seq = match cmd {
            Cmd::Raw(t) => return t,
            Cmd::Close | Cmd::Say(_) => return String::new(),
            Cmd::Start(t) => {
                self.seq = 1;
                self.started = true;
                return t;
            }
            _ => {
                self.seq += 1;
                self.seq
            }
        };
        match cmd {
            Cmd::Raw(_) | Cmd::Close | Cmd::Start(_) | Cmd::Say(_) => String::new(),
            Cmd::Media(payload) => {
                self.chunk += 1;
                if self.record_timeline {
                    let now = self.t0.elapsed();
                    self.heard.update(|h| h.sent_media.push(now));
                }
                media_message(&self.sid_json, seq, self.chunk, &payload)
            }
            Cmd::Dtmf(digit) => {
                self.heard.update(|h| h.sent_dtmf.push(digit));
                json!({"event": "dtmf", "sequenceNumber": seq.to_string(), "streamSid": self.stream_sid,
                       "dtmf": {"track": "inbound_track", "digit": digit.to_string()}})
                .to_string()
            }
            Cmd::Stop => {
                self.hung_up = true;
                self.heard.update(|h| h.sent_stop = true);
                json!({"event": "stop", "sequenceNumber": seq.to_string(), "streamSid": self.stream_sid,
                       "stop": {"accountSid": DEFAULT_ACCOUNT_SID, "callSid": self.call_sid}})
                .to_string()
            }
        }
    }

    async fn on_text(&mut self, text: &str, tx: &mut Tx) {
        let at = self.t0.elapsed();
        let now = Instant::now();
        let msg: BotMsg<'_> = match serde_json::from_str(text) {
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
                self.last_media = Some(now);
                let playback_end = self.play_end - self.t0;
                let answer = self.awaiting_answer.take().map(|(i, voice_end)| (i, now - voice_end));
                let jitter = self.jitter.on_media(at);
                let timeline = self.record_timeline;
                self.heard.update(|h| {
                    if timeline {
                        h.timeline.push((at, BotMessage::Media(len)));
                    }
                    h.media_messages += 1;
                    h.audio_bytes += len;
                    h.last_media_at = Some(at);
                    h.playback_end = playback_end;
                    h.jitter.extend(jitter);
                    if let Some((i, answer)) = answer
                        && let Some(s) = h.said.get_mut(i)
                    {
                        s.answer = Some(answer);
                    }
                    if let Some(a) = audio {
                        h.audio.extend_from_slice(&a);
                    }
                });
            }
            Some("mark") => {
                let Some(name) = msg.mark.and_then(|m| m.name) else {
                    return self.protocol_error(format!("mark without name: {}", excerpt(text)));
                };
                let name = name.into_owned();
                let timeline = self.record_timeline;
                self.heard.update(|h| {
                    if timeline {
                        h.timeline.push((at, BotMessage::Mark(name.clone())));
                    }
                    h.marks.push(name.clone());
                });
                self.marks.push_back((name, self.play_end.max(now)));
                self.echo_due(tx).await;
            }
            Some("clear") => {
                self.play_end = now;
                let timeline = self.record_timeline;
                self.heard.update(|h| {
                    if timeline {
                        h.timeline.push((at, BotMessage::Clear));
                    }
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
    async fn echo_due(&mut self, tx: &mut Tx) {
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

/// A `media` message, hand-formatted: a load test sends 50 a second per caller, the payload is
/// base64 (no escaping needed) and the SID is pre-quoted.
fn media_message(sid_json: &str, seq: u64, chunk: u64, payload: &str) -> String {
    format!(
        r#"{{"event":"media","sequenceNumber":"{seq}","streamSid":{sid_json},"media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{}","payload":"{payload}"}}}}"#,
        (chunk - 1) * 20,
    )
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
    fn media_message_is_twilios_shape() {
        let m: serde_json::Value = serde_json::from_str(&media_message("\"MZ1\"", 7, 3, "AAAA")).expect("json");
        assert_eq!(m["event"], "media");
        assert_eq!(m["sequenceNumber"], "7");
        assert_eq!(m["streamSid"], "MZ1");
        assert_eq!(m["media"]["chunk"], "3");
        assert_eq!(m["media"]["timestamp"], "40");
        assert_eq!(m["media"]["payload"], "AAAA");
    }
}
