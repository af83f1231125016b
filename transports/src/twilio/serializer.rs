//! Twilio Media Streams wire messages ⇄ typed values, with no sockets involved.
//!
//! Consumes the JSON text frames Twilio sends (`connected`, `start`, `media`, `dtmf`, `mark`,
//! `stop`) and produces [`Inbound`] values; encodes the three messages we may send (`media`,
//! `mark`, `clear`). Trade-offs: fields we do not use are ignored (Twilio adds fields over time)
//! and an unknown `event` is a typed [`Inbound::Ignored`] rather than an error, so a protocol
//! addition never drops a call; anything that cannot be parsed is an [`SerializerError`] value,
//! never a panic, and the transport decides whether to carry on.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::Deserialize;
use voxline_pipeline::{AudioFormat, AudioFrame, Frame};

/// Largest text frame accepted. A 20 ms media message is ~300 bytes; `start` with custom
/// parameters is a few KiB. Anything far above that is hostile or broken.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Why a message could not be turned into an [`Inbound`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerializerError {
    /// The message is larger than the configured limit.
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Size of the message.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, or JSON of the wrong shape for its `event`.
    #[error("malformed {event} message: {reason}")]
    Malformed {
        /// The `event` field, or `?` when unknown.
        event: String,
        /// What was wrong.
        reason: String,
    },
    /// A `media` payload that is not valid base64.
    #[error("media payload is not valid base64: {0}")]
    BadPayload(String),
    /// A `dtmf` digit outside `0-9 * # A-D`.
    #[error("invalid DTMF digit {0:?}")]
    BadDigit(String),
}

/// The `start` message: who is calling and how the audio is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// `MZ…`: the stream id every outbound message must carry.
    pub stream_sid: String,
    /// `CA…`: the call id for REST updates.
    pub call_sid: String,
    /// `AC…`.
    pub account_sid: String,
    /// `<Parameter>` values from the TwiML.
    pub custom_parameters: BTreeMap<String, String>,
    /// Tracks in the stream (`inbound`, ...).
    pub tracks: Vec<String>,
    /// `mediaFormat.encoding`, normally `audio/x-mulaw`.
    pub encoding: String,
    /// `mediaFormat.sampleRate`, normally 8000.
    pub sample_rate: u32,
    /// `mediaFormat.channels`, normally 1.
    pub channels: u16,
}

impl StreamStart {
    /// The pipeline audio format for this stream's inbound audio.
    #[must_use]
    pub fn audio_format(&self) -> AudioFormat {
        AudioFormat { sample_rate: self.sample_rate, channels: self.channels.max(1), ..AudioFormat::mulaw_8k() }
    }
}

/// One decoded inbound message.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// The first message on the socket.
    Connected {
        /// `protocol`, e.g. `Call`.
        protocol: String,
        /// `version`, e.g. `1.0.0`.
        version: String,
    },
    /// Stream metadata.
    Start(Box<StreamStart>),
    /// Caller audio, already decoded from base64, as a pipeline frame.
    Media {
        /// `Frame::InputAudio` with μ-law 8 kHz.
        frame: Frame,
        /// `media.timestamp`: ms since the stream started, when present.
        timestamp_ms: Option<u64>,
        /// `media.track`.
        track: String,
    },
    /// A key press as `Frame::Dtmf`.
    Dtmf(Frame),
    /// Echo of a mark we sent: everything queued before it has been played (or cleared).
    Mark {
        /// The mark's name.
        name: String,
    },
    /// The stream ended (hang-up, redirect); Twilio closes the socket next.
    Stop {
        /// `stop.callSid`, when present.
        call_sid: Option<String>,
    },
    /// A well-formed message with an event we do not handle.
    Ignored {
        /// Its `event` field.
        event: String,
    },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(rename = "streamSid", default)]
    stream_sid: Option<String>,
    #[serde(default)]
    start: Option<StartBody>,
    #[serde(default)]
    media: Option<MediaBody>,
    #[serde(default)]
    dtmf: Option<DtmfBody>,
    #[serde(default)]
    mark: Option<MarkBody>,
    #[serde(default)]
    stop: Option<StopBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    #[serde(default)]
    account_sid: String,
    call_sid: String,
    #[serde(default)]
    stream_sid: Option<String>,
    #[serde(default)]
    tracks: Vec<String>,
    #[serde(default)]
    custom_parameters: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    media_format: Option<MediaFormat>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaFormat {
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    sample_rate: Option<u32>,
    #[serde(default)]
    channels: Option<u16>,
}

#[derive(Deserialize)]
struct MediaBody {
    #[serde(default)]
    track: Option<String>,
    #[serde(default)]
    timestamp: Option<serde_json::Value>,
    payload: String,
}

#[derive(Deserialize)]
struct DtmfBody {
    digit: String,
}

#[derive(Deserialize)]
struct MarkBody {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StopBody {
    #[serde(default)]
    call_sid: Option<String>,
}

fn malformed(event: &str, reason: impl ToString) -> SerializerError {
    SerializerError::Malformed { event: event.to_string(), reason: reason.to_string() }
}

/// Parse one text frame, rejecting anything over `max_len` bytes before looking at it.
pub fn decode(text: &str, max_len: usize) -> Result<Inbound, SerializerError> {
    if text.len() > max_len {
        return Err(SerializerError::Oversized { len: text.len(), max: max_len });
    }
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| malformed("?", e))?;
    let Some(event) = env.event else {
        return Err(malformed("?", "missing `event`"));
    };
    match &*event {
        "connected" => Ok(Inbound::Connected {
            protocol: env.protocol.unwrap_or_default(),
            version: env.version.unwrap_or_default(),
        }),
        "start" => {
            let s = env.start.ok_or_else(|| malformed("start", "missing `start` object"))?;
            let stream_sid = s
                .stream_sid
                .or(env.stream_sid)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| malformed("start", "missing streamSid"))?;
            if s.call_sid.is_empty() {
                return Err(malformed("start", "empty callSid"));
            }
            let fmt = s.media_format.unwrap_or(MediaFormat { encoding: None, sample_rate: None, channels: None });
            let custom_parameters = s
                .custom_parameters
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect();
            Ok(Inbound::Start(Box::new(StreamStart {
                stream_sid,
                call_sid: s.call_sid,
                account_sid: s.account_sid,
                custom_parameters,
                tracks: s.tracks,
                encoding: fmt.encoding.unwrap_or_else(|| "audio/x-mulaw".into()),
                sample_rate: fmt.sample_rate.unwrap_or(8000),
                channels: fmt.channels.unwrap_or(1),
            })))
        }
        "media" => {
            let m = env.media.ok_or_else(|| malformed("media", "missing `media` object"))?;
            let data = B64.decode(m.payload.as_bytes()).map_err(|e| SerializerError::BadPayload(e.to_string()))?;
            let timestamp_ms = m.timestamp.and_then(|t| match t {
                serde_json::Value::String(s) => s.parse().ok(),
                serde_json::Value::Number(n) => n.as_u64(),
                _ => None,
            });
            let mut audio = AudioFrame::new(Bytes::from(data), AudioFormat::mulaw_8k());
            audio.pts = timestamp_ms.map(std::time::Duration::from_millis);
            Ok(Inbound::Media {
                frame: Frame::InputAudio(audio),
                timestamp_ms,
                track: m.track.unwrap_or_else(|| "inbound".into()),
            })
        }
        "dtmf" => {
            let d = env.dtmf.ok_or_else(|| malformed("dtmf", "missing `dtmf` object"))?;
            let mut chars = d.digit.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D') => {
                    Ok(Inbound::Dtmf(Frame::Dtmf(c)))
                }
                _ => Err(SerializerError::BadDigit(d.digit)),
            }
        }
        "mark" => {
            let m = env.mark.ok_or_else(|| malformed("mark", "missing `mark` object"))?;
            Ok(Inbound::Mark { name: m.name })
        }
        "stop" => Ok(Inbound::Stop { call_sid: env.stop.and_then(|s| s.call_sid) }),
        other => Ok(Inbound::Ignored { event: other.to_string() }),
    }
}

/// `{"event":"media",…}` carrying `mulaw` (raw μ-law 8 kHz, no header).
#[must_use]
pub fn encode_media(stream_sid: &str, mulaw: &[u8]) -> String {
    serde_json::json!({
        "event": "media",
        "streamSid": stream_sid,
        "media": { "payload": B64.encode(mulaw) },
    })
    .to_string()
}

/// `{"event":"mark",…}`: Twilio echoes it once everything queued before it has played.
#[must_use]
pub fn encode_mark(stream_sid: &str, name: &str) -> String {
    serde_json::json!({ "event": "mark", "streamSid": stream_sid, "mark": { "name": name } }).to_string()
}

/// `{"event":"clear",…}`: drop everything Twilio has queued and not yet played.
#[must_use]
pub fn encode_clear(stream_sid: &str) -> String {
    serde_json::json!({ "event": "clear", "streamSid": stream_sid }).to_string()
}

/// Messages a Twilio client would send, for tests and simulations (the far side of the wire).
pub mod client {
    use super::B64;
    use base64::Engine as _;

    /// `connected`.
    #[must_use]
    pub fn connected() -> String {
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.to_string()
    }

    /// `start` with the given ids and custom parameters.
    #[must_use]
    pub fn start(stream_sid: &str, call_sid: &str, params: &[(&str, &str)]) -> String {
        let params: serde_json::Map<String, serde_json::Value> =
            params.iter().map(|(k, v)| ((*k).to_string(), serde_json::Value::String((*v).to_string()))).collect();
        serde_json::json!({
            "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
            "start": {
                "accountSid": "AC00000000000000000000000000000000", "callSid": call_sid,
                "streamSid": stream_sid, "tracks": ["inbound"], "customParameters": params,
                "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 },
            },
        })
        .to_string()
    }

    /// `media` with μ-law bytes.
    #[must_use]
    pub fn media(stream_sid: &str, seq: u64, mulaw: &[u8]) -> String {
        serde_json::json!({
            "event": "media", "sequenceNumber": (seq + 2).to_string(), "streamSid": stream_sid,
            "media": { "track": "inbound", "chunk": (seq + 1).to_string(), "timestamp": (seq * 20).to_string(),
                       "payload": B64.encode(mulaw) },
        })
        .to_string()
    }

    /// `dtmf`.
    #[must_use]
    pub fn dtmf(stream_sid: &str, digit: char) -> String {
        serde_json::json!({ "event": "dtmf", "streamSid": stream_sid,
            "dtmf": { "track": "inbound_track", "digit": digit.to_string() } })
        .to_string()
    }

    /// The echo of a mark.
    #[must_use]
    pub fn mark(stream_sid: &str, name: &str) -> String {
        serde_json::json!({ "event": "mark", "streamSid": stream_sid, "mark": { "name": name } }).to_string()
    }

    /// `stop`.
    #[must_use]
    pub fn stop(stream_sid: &str, call_sid: &str) -> String {
        serde_json::json!({ "event": "stop", "streamSid": stream_sid,
            "stop": { "accountSid": "AC00000000000000000000000000000000", "callSid": call_sid } })
        .to_string()
    }
}

/// What we send, parsed back (for tests and the simulated caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Audio to play.
    Media {
        /// Decoded μ-law bytes.
        payload: Vec<u8>,
    },
    /// A mark.
    Mark {
        /// Its name.
        name: String,
    },
    /// Drop queued audio.
    Clear,
}

/// Parse a message we sent (the Twilio side of the wire).
pub fn decode_outbound(text: &str) -> Result<(String, Outbound), SerializerError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| malformed("?", e))?;
    let sid = v.get("streamSid").and_then(|s| s.as_str()).unwrap_or_default().to_string();
    let event = v.get("event").and_then(|s| s.as_str()).unwrap_or_default();
    let out = match event {
        "media" => {
            let p = v.pointer("/media/payload").and_then(|p| p.as_str()).unwrap_or_default();
            Outbound::Media { payload: B64.decode(p).map_err(|e| SerializerError::BadPayload(e.to_string()))? }
        }
        "mark" => {
            Outbound::Mark { name: v.pointer("/mark/name").and_then(|p| p.as_str()).unwrap_or_default().to_string() }
        }
        "clear" => Outbound::Clear,
        other => return Err(malformed(other, "not an outbound event")),
    };
    Ok((sid, out))
}

/// Shared, cheap-to-clone stream id.
pub type StreamSid = Arc<str>;

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = DEFAULT_MAX_MESSAGE_BYTES;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
    }

    #[test]
    fn connected_fixture() {
        let Ok(Inbound::Connected { protocol, version }) = decode(&fixture("connected.json"), MAX) else {
            panic!("not connected")
        };
        assert_eq!((protocol.as_str(), version.as_str()), ("Call", "1.0.0"));
    }

    #[test]
    fn start_fixture() {
        let Ok(Inbound::Start(s)) = decode(&fixture("start.json"), MAX) else { panic!("not start") };
        assert_eq!(s.stream_sid, "MZ18ad3ab5a668481ce02b83e7395059f0");
        assert_eq!(s.call_sid, "CA9d1b1d3c4a5f6e7d8c9b0a1f2e3d4c5b");
        assert_eq!(s.custom_parameters.get("from").map(String::as_str), Some("+15550001111"));
        assert_eq!(s.custom_parameters.get("token").map(String::as_str), Some("abc"));
        assert_eq!(s.encoding, "audio/x-mulaw");
        assert_eq!(s.audio_format(), AudioFormat::mulaw_8k());
    }

    #[test]
    fn media_fixture() {
        let Ok(Inbound::Media { frame: Frame::InputAudio(a), timestamp_ms, track }) =
            decode(&fixture("media.json"), MAX)
        else {
            panic!("not media")
        };
        assert_eq!(a.data.len(), 160);
        assert!(a.data.iter().all(|b| *b == 0xFF));
        assert_eq!(a.format, AudioFormat::mulaw_8k());
        assert_eq!(timestamp_ms, Some(20));
        assert_eq!(track, "inbound");
    }

    #[test]
    fn dtmf_mark_stop_fixtures() {
        assert!(matches!(decode(&fixture("dtmf.json"), MAX), Ok(Inbound::Dtmf(Frame::Dtmf('5')))));
        assert!(matches!(decode(&fixture("mark.json"), MAX), Ok(Inbound::Mark { name }) if name == "utt-1"));
        assert!(matches!(
            decode(&fixture("stop.json"), MAX),
            Ok(Inbound::Stop { call_sid: Some(c) }) if c == "CA9d1b1d3c4a5f6e7d8c9b0a1f2e3d4c5b"
        ));
    }

    #[test]
    fn unknown_event_is_ignored() {
        let r = decode(r#"{"event":"futureThing","streamSid":"MZ1","x":{"y":1}}"#, MAX);
        assert!(matches!(r, Ok(Inbound::Ignored { event }) if event == "futureThing"));
    }

    #[test]
    fn errors_are_values() {
        assert!(matches!(decode("not json", MAX), Err(SerializerError::Malformed { .. })));
        assert!(matches!(decode("{}", MAX), Err(SerializerError::Malformed { .. })));
        assert!(matches!(decode(r#"{"event":"media"}"#, MAX), Err(SerializerError::Malformed { .. })));
        assert!(matches!(
            decode(r#"{"event":"media","media":{"payload":"!!!not base64"}}"#, MAX),
            Err(SerializerError::BadPayload(_))
        ));
        assert!(matches!(decode(r#"{"event":"dtmf","dtmf":{"digit":"55"}}"#, MAX), Err(SerializerError::BadDigit(_))));
        assert!(decode(r#"{"event":"start","start":{"callSid":""}}"#, MAX).is_err());
        let big = format!(r#"{{"event":"media","media":{{"payload":"{}"}}}}"#, "A".repeat(MAX));
        assert!(matches!(decode(&big, MAX), Err(SerializerError::Oversized { .. })));
        assert!(matches!(decode(r#"[1,2,3]"#, MAX), Err(SerializerError::Malformed { .. })));
        assert!(matches!(decode(r#"{"event":5}"#, MAX), Err(SerializerError::Malformed { .. })));
    }

    #[test]
    fn outbound_round_trip() {
        let m = encode_media("MZ1", &[1, 2, 3]);
        assert_eq!(decode_outbound(&m), Ok(("MZ1".into(), Outbound::Media { payload: vec![1, 2, 3] })));
        let v: serde_json::Value = serde_json::from_str(&m).unwrap_or_default();
        assert_eq!(v["media"]["payload"], "AQID");
        assert_eq!(
            decode_outbound(&encode_mark("MZ1", "u1")),
            Ok(("MZ1".into(), Outbound::Mark { name: "u1".into() }))
        );
        assert_eq!(decode_outbound(&encode_clear("MZ1")), Ok(("MZ1".into(), Outbound::Clear)));
    }

    #[test]
    fn client_messages_parse() {
        assert!(matches!(decode(&client::connected(), MAX), Ok(Inbound::Connected { .. })));
        assert!(matches!(decode(&client::start("MZ1", "CA1", &[("a", "b")]), MAX), Ok(Inbound::Start(_))));
        assert!(matches!(decode(&client::media("MZ1", 0, &[0xFF; 160]), MAX), Ok(Inbound::Media { .. })));
        assert!(matches!(decode(&client::dtmf("MZ1", '#'), MAX), Ok(Inbound::Dtmf(Frame::Dtmf('#')))));
        assert!(matches!(decode(&client::stop("MZ1", "CA1"), MAX), Ok(Inbound::Stop { .. })));
    }
}
