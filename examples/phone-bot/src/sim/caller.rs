//! The simulated Twilio caller shared by the soak, the socket bench and the ops tests: the signed
//! voice webhook, the TwiML's `<Stream>` and `<Parameter>`s, and a media-stream caller that
//! speaks a script and echoes marks the way Twilio's playback buffer does.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use voxline::transports::twilio::serializer::client;
use voxline::transports::twilio::signature;

use crate::sim::simulate::{SIM_AUTH_TOKEN, last_voiced};

/// What the voice webhook answered: where to open the media stream, and the `<Parameter>`s to
/// send back in `start` (the stream token among them), as Twilio does.
pub struct Answered {
    pub stream_url: String,
    pub custom: Vec<(String, String)>,
}

/// POST the signed voice webhook for an incoming call and read the TwiML.
pub async fn ring(http: &reqwest::Client, base: &str, call_sid: &str, from: &str) -> anyhow::Result<Answered> {
    let params = vec![
        ("AccountSid".to_string(), "AC00000000000000000000000000000000".to_string()),
        ("CallSid".to_string(), call_sid.to_string()),
        ("From".to_string(), from.to_string()),
        ("To".to_string(), "+15550009999".to_string()),
        ("CallStatus".to_string(), "ringing".to_string()),
    ];
    let url = format!("{base}/voice/twilio");
    let sig = signature::compute(SIM_AUTH_TOKEN, &url, &params);
    let resp = http.post(&url).header("X-Twilio-Signature", sig).form(&params).send().await.context("webhook")?;
    if !resp.status().is_success() {
        bail!("webhook answered {}", resp.status());
    }
    let twiml = resp.text().await.context("webhook body")?;
    let stream_url = unescape(&between(&twiml, "Stream url=\"", "\"").context("TwiML without <Stream url>")?);
    let mut custom: Vec<(String, String)> = Vec::new();
    let mut rest = twiml.as_str();
    while let Some(i) = rest.find("<Parameter name=\"") {
        rest = &rest[i..];
        let name = between(rest, "name=\"", "\"").unwrap_or_default();
        let value = between(rest, "value=\"", "\"").unwrap_or_default();
        custom.push((unescape(&name), unescape(&value)));
        rest = &rest[1..];
    }
    Ok(Answered { stream_url, custom })
}

/// TwiML attribute text back to plain text.
pub fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&apos;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// The text between the first `start` and the next `end`.
pub fn between(s: &str, start: &str, end: &str) -> Option<String> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(s[i..j].to_string())
}

/// The caller's speech, pre-encoded once for every caller: at N = 1000 the driver sends 50,000
/// media messages a second, and base64 plus a `serde_json::Value` per message would be a large
/// share of the load generator's one core.
pub struct Script {
    lines: Vec<Line>,
    silence: String,
}

struct Line {
    /// Base64 of each 20 ms μ-law chunk (the last one padded with silence).
    chunks: Vec<String>,
    /// Index of the chunk holding the last voiced sample (where turn latency starts).
    last_voiced: usize,
}

impl Script {
    pub fn new(lines: &[Vec<u8>]) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        let lines = lines
            .iter()
            .map(|bytes| {
                let chunks: Vec<String> = bytes
                    .chunks(160)
                    .map(|c| {
                        let mut c = c.to_vec();
                        c.resize(160, 0xFF);
                        b64.encode(&c)
                    })
                    .collect();
                let last = last_voiced(bytes).saturating_sub(1);
                Line { last_voiced: (last / 160).min(chunks.len().saturating_sub(1)), chunks }
            })
            .filter(|l| !l.chunks.is_empty())
            .collect();
        Self { lines, silence: b64.encode([0xFFu8; 160]) }
    }
}

/// The same message as [`client::media`], formatted around a pre-encoded payload.
fn media_message(stream_sid: &str, seq: u64, payload: &str) -> String {
    format!(
        r#"{{"event":"media","sequenceNumber":"{}","streamSid":"{stream_sid}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{payload}"}}}}"#,
        seq + 2,
        seq + 1,
        seq * 20
    )
}

/// What the bot sends, parsed without building a `Value` or decoding the audio (only its length
/// matters to the caller).
#[derive(Deserialize)]
struct OutMsg<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    media: Option<OutMedia<'a>>,
    #[serde(borrow, default)]
    mark: Option<OutMark<'a>>,
}

#[derive(Deserialize)]
struct OutMedia<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(Deserialize)]
struct OutMark<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// Decoded length of a base64 string.
fn b64_len(s: &str) -> usize {
    let pad = s.bytes().rev().take_while(|b| *b == b'=').count();
    (s.len() / 4 * 3).saturating_sub(pad)
}

/// What one caller saw.
#[derive(Debug, Default)]
pub struct CallOutcome {
    pub completed: bool,
    pub error: Option<String>,
    /// Outbound jitter samples: |media inter-arrival − 20 ms|, after each utterance's send-ahead
    /// burst.
    pub jitter_ms: Vec<f64>,
    /// Per turn: caller's last voiced frame sent → first bot media after it.
    pub turn_ms: Vec<f64>,
}

/// One simulated Twilio caller: greeting, then (after `hold` of silence) each line of `script`
/// once the bot has answered the previous one, marks echoed as Twilio's playback buffer plays
/// them; completed when the bot ends the call after the last line. Never panics, failures come
/// back in `error`.
pub async fn caller(
    http: &reqwest::Client,
    base: &str,
    call_sid: &str,
    script: &Script,
    hold: Duration,
) -> CallOutcome {
    let mut out = CallOutcome::default();
    if let Err(e) = caller_inner(http, base, call_sid, script, hold, &mut out).await {
        out.completed = false;
        out.error = Some(format!("{e:#}"));
    }
    out
}

async fn caller_inner(
    http: &reqwest::Client,
    base: &str,
    call_sid: &str,
    script: &Script,
    hold: Duration,
    out: &mut CallOutcome,
) -> anyhow::Result<()> {
    let Answered { stream_url, custom } = ring(http, base, call_sid, "+15550001111").await?;
    // No Nagle: a 20 ms media message must leave at once, as it would from Twilio's media edge.
    // A small read buffer: tungstenite zeroes the whole buffer (128 KiB by default) on every
    // read, which made memset a third of the driver's CPU; the bot's messages are under 1 KiB.
    let ws_config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(stream_url.as_str(), Some(ws_config), true)
        .await
        .context("websocket connect")?;
    let (mut tx, mut rx) = ws.split();
    let stream_sid = format!("MZ{}", call_sid.get(2..).unwrap_or(call_sid));
    tx.send(Message::text(client::connected())).await?;
    let custom_ref: Vec<(&str, &str)> = custom.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    tx.send(Message::text(client::start(&stream_sid, call_sid, &custom_ref))).await?;

    let mut marks: VecDeque<(String, Instant)> = VecDeque::new();
    let mut play_end = Instant::now();
    let mut last_audio: Option<Instant> = None;
    let mut run_start: Option<u32> = None;
    let mut prev: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // (line, next chunk) while speaking.
    let mut speaking: Option<(usize, usize)> = None;
    let mut next_line = 0usize;
    let mut hold_until: Option<Instant> = None;
    let mut awaiting_answer: Option<Instant> = None;
    let mut seq = 0u64;
    let limit = hold + Duration::from_secs(120);
    let deadline = Instant::now() + limit;
    loop {
        tokio::select! {
            msg = rx.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => bail!("websocket read: {e}"),
                    Some(Ok(_)) => continue,
                };
                let Ok(o) = serde_json::from_str::<OutMsg<'_>>(text.as_str()) else { continue };
                let now = Instant::now();
                match (&*o.event, o.media, o.mark) {
                    ("media", Some(m), _) => {
                        if let Some(t) = awaiting_answer.take() {
                            out.turn_ms.push(now.duration_since(t).as_secs_f64() * 1e3);
                        }
                        play_end = play_end.max(now) + Duration::from_millis(b64_len(&m.payload) as u64 / 8);
                        // Jitter as the soak measures it: inter-arrival vs 20 ms, skipping the
                        // send-ahead burst (10 chunks) of each utterance (a gap > 200 ms starts one).
                        match (prev, run_start) {
                            (Some(p), Some(n)) if now.duration_since(p) < Duration::from_millis(200) => {
                                if n >= 10 {
                                    out.jitter_ms.push((now.duration_since(p).as_secs_f64() * 1e3 - 20.0).abs());
                                }
                                run_start = Some(n + 1);
                            }
                            _ => run_start = Some(0),
                        }
                        prev = Some(now);
                        last_audio = Some(now);
                    }
                    ("mark", _, Some(m)) => marks.push_back((m.name.into_owned(), play_end.max(now))),
                    ("clear", _, _) => {
                        play_end = now;
                        while let Some((name, _)) = marks.pop_front() {
                            tx.send(Message::text(client::mark(&stream_sid, &name))).await?;
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if now > deadline {
                    bail!("call not ended by the bot within {limit:?} (said {next_line} lines)");
                }
                while marks.front().is_some_and(|(_, at)| *at <= now) {
                    if let Some((name, _)) = marks.pop_front() {
                        tx.send(Message::text(client::mark(&stream_sid, &name))).await?;
                    }
                }
                // Speak the next line once the bot has spoken and been quiet for 400 ms; the
                // first line only after the hold.
                let quiet = marks.is_empty() && play_end + Duration::from_millis(400) <= now
                    && last_audio.is_some_and(|t| t + Duration::from_millis(400) <= now);
                if speaking.is_none() && quiet && next_line < script.lines.len() {
                    let held = next_line > 0 || now >= *hold_until.get_or_insert(now + hold);
                    if held {
                        speaking = Some((next_line, 0));
                        next_line += 1;
                        last_audio = None;
                    }
                }
                let payload = match speaking {
                    Some((l, c)) => &script.lines[l].chunks[c],
                    None => &script.silence,
                };
                if tx.send(Message::text(media_message(&stream_sid, seq, payload))).await.is_err() {
                    break;
                }
                seq += 1;
                if let Some((l, c)) = speaking {
                    let line = &script.lines[l];
                    if c == line.last_voiced {
                        awaiting_answer = Some(Instant::now());
                    }
                    speaking = (c + 1 < line.chunks.len()).then_some((l, c + 1));
                }
            }
        }
    }
    // Only the bot closing the stream leaves the loop without an error. Completed: every line
    // was said, the bot answered, and then it ended the call (the goodbye).
    out.completed = next_line == script.lines.len() && speaking.is_none() && prev.is_some();
    if !out.completed {
        bail!("bot ended the call after {next_line} of {} caller lines", script.lines.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_encoded_media_is_the_serializers_message() {
        let chunk: Vec<u8> = (0..160u8).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&chunk);
        for seq in [0, 1, 4_000_000_000] {
            let ours: serde_json::Value = serde_json::from_str(&media_message("MZ1", seq, &b64)).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(&client::media("MZ1", seq, &chunk)).unwrap();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn decoded_length_of_base64() {
        let e = base64::engine::general_purpose::STANDARD;
        for n in [0, 1, 2, 3, 159, 160, 161] {
            assert_eq!(b64_len(&e.encode(vec![0u8; n])), n);
        }
    }
}
