//! ElevenLabs settings and wire mapping: the settings the processor is built from, output-format
//! choice, URLs, client messages and server message parsing. No I/O here. The lowest of the
//! ElevenLabs files: the socket task, the HTTP turn and the processor import from it, never the
//! other way round.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};
use voxline_pipeline::{AudioEncoding, AudioFormat};

use crate::service::{ApiKey, ReconnectPolicy, ServiceConfigError, encode_query_value, require_key, require_scheme};

/// Environment variable the ElevenLabs key is read from by [`ElevenLabsSettings::from_env`].
pub const ELEVENLABS_API_KEY_ENV: &str = "ELEVENLABS_API_KEY";

/// Default websocket base.
pub const DEFAULT_BASE_URL: &str = "wss://api.elevenlabs.io";
/// Default HTTP base (fallback mode).
pub const DEFAULT_HTTP_BASE_URL: &str = "https://api.elevenlabs.io";
/// Default voice ("Rachel", a premade voice every account has).
pub const DEFAULT_VOICE_ID: &str = "21m00Tcm4TlvDq8ikWAM";
/// Default model: the lowest-latency one.
pub const DEFAULT_MODEL_ID: &str = "eleven_flash_v2_5";
/// Default `auto_mode`: we send whole sentences, so the server should generate at sentence ends
/// instead of waiting for its character schedule.
pub const DEFAULT_AUTO_MODE: bool = true;
/// Default keepalive gap (the provider's inactivity timeout is 20 s).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Default cap on open contexts per socket (ElevenLabs allows 5).
pub const DEFAULT_MAX_OPEN_CONTEXTS: usize = 5;
/// Default time a closed context still counts toward the cap (freed asynchronously).
pub const DEFAULT_CONTEXT_RELEASE_GRACE: Duration = Duration::from_secs(1);
/// Default silence after a flushed utterance's last audio before it is considered finished.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Default handshake / request timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait for flushed audio and the server's close at the end.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which ElevenLabs API synthesises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtsMode {
    /// Multi-context websocket: streaming text in, word alignment, cancel by context.
    #[default]
    WebSocket,
    /// `POST …/stream` per text chunk: no alignment; for networks that block websockets.
    HttpStreaming,
}

/// ElevenLabs voice settings (sent only in a context's first message).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoiceSettings {
    /// 0..=1.
    pub stability: f32,
    /// 0..=1.
    pub similarity_boost: f32,
    /// 0..=1.
    pub style: f32,
    /// Speaker boost.
    pub use_speaker_boost: bool,
    /// 0.7..=1.2.
    pub speed: f32,
}

impl Default for VoiceSettings {
    fn default() -> Self {
        Self { stability: 0.5, similarity_boost: 0.75, style: 0.0, use_speaker_boost: true, speed: 1.0 }
    }
}

/// Settings of [`ElevenLabsTts`](super::ElevenLabsTts) (immutable; runtime state lives in the processor).
///
/// `Debug` is derived: the key is an [`ApiKey`], which prints redacted.
#[derive(Clone, PartialEq, Debug)]
pub struct ElevenLabsSettings {
    /// API key; see [`ElevenLabsSettings::from_env`]. Never logged.
    pub api_key: Option<ApiKey>,
    /// `wss://host[:port]` for the websocket mode.
    pub base_url: String,
    /// `https://host[:port]` for the HTTP mode.
    pub http_base_url: String,
    /// Voice id.
    pub voice_id: String,
    /// `model_id`.
    pub model_id: String,
    /// Websocket or HTTP streaming.
    pub mode: TtsMode,
    /// Force an `output_format` (`pcm_*`, `ulaw_8000`, `alaw_8000`) instead of following the
    /// transport's format.
    pub output_format: Option<String>,
    /// Voice settings; `None` uses the voice's stored settings.
    pub voice_settings: Option<VoiceSettings>,
    /// `generation_config.chunk_length_schedule` (ignored by the server with `auto_mode`).
    pub chunk_length_schedule: Option<Vec<u32>>,
    /// `auto_mode`.
    pub auto_mode: bool,
    /// `language_code`.
    pub language_code: Option<String>,
    /// `inactivity_timeout` in seconds (provider default 20, max 180).
    pub inactivity_timeout_secs: Option<u32>,
    /// Keepalive gap on the socket.
    pub keepalive_interval: Duration,
    /// Cap on open contexts per socket.
    pub max_open_contexts: usize,
    /// How long a closed context still counts toward the cap.
    pub context_release_grace: Duration,
    /// Silence after a flushed utterance's last audio before it is finished.
    pub stop_timeout: Duration,
    /// Handshake and request timeout.
    pub connect_timeout: Duration,
    /// Wait for flushed audio and the server's close at the end.
    pub close_timeout: Duration,
    /// Reconnect backoff.
    pub reconnect: ReconnectPolicy,
}

impl Default for ElevenLabsSettings {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: DEFAULT_BASE_URL.into(),
            http_base_url: DEFAULT_HTTP_BASE_URL.into(),
            voice_id: DEFAULT_VOICE_ID.into(),
            model_id: DEFAULT_MODEL_ID.into(),
            mode: TtsMode::default(),
            output_format: None,
            voice_settings: Some(VoiceSettings::default()),
            chunk_length_schedule: None,
            auto_mode: DEFAULT_AUTO_MODE,
            language_code: None,
            inactivity_timeout_secs: None,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            max_open_contexts: DEFAULT_MAX_OPEN_CONTEXTS,
            context_release_grace: DEFAULT_CONTEXT_RELEASE_GRACE,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            reconnect: ReconnectPolicy::default(),
        }
    }
}

impl ElevenLabsSettings {
    /// Defaults with the key from `ELEVENLABS_API_KEY` (if set).
    #[must_use]
    pub fn from_env() -> Self {
        Self { api_key: ApiKey::from_env(ELEVENLABS_API_KEY_ENV), ..Self::default() }
    }

    /// Checks the settings; the error names the field (or the key's environment variable).
    pub fn validate(&self) -> Result<(), ServiceConfigError> {
        require_key(self.api_key.as_ref(), ELEVENLABS_API_KEY_ENV)?;
        require_scheme("base_url", &self.base_url, &["ws://", "wss://"])?;
        let bad = |field, reason: &str| Err(ServiceConfigError::InvalidSetting { field, reason: reason.to_string() });
        require_scheme("http_base_url", &self.http_base_url, &["http://", "https://"])?;
        if self.voice_id.trim().is_empty() {
            return bad("voice_id", "must not be empty");
        }
        if let Some(f) = &self.output_format
            && parse_output_format(f).is_none()
        {
            return bad("output_format", "must be pcm_<rate>, ulaw_8000 or alaw_8000");
        }
        if !(1..=5).contains(&self.max_open_contexts) {
            return bad("max_open_contexts", "must be 1..=5 (the provider allows 5)");
        }
        if let Some(schedule) = &self.chunk_length_schedule
            && schedule.iter().any(|n| !(50..=500).contains(n))
        {
            return bad("chunk_length_schedule", "each value must be 50..=500");
        }
        if self.keepalive_interval.is_zero() || self.stop_timeout.is_zero() {
            return bad("keepalive_interval/stop_timeout", "must be positive");
        }
        Ok(())
    }
}

const PCM_RATES: [u32; 7] = [8000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000];

/// The `output_format` to ask for so the audio matches what the transport plays, and the format
/// of the audio that comes back. μ-law/A-law 8 kHz are requested natively (no transcoding on a
/// phone call); PCM16 at a rate ElevenLabs has is requested as is; anything else gets the
/// nearest PCM rate at or above it (a resampler downstream finishes the job).
pub(crate) fn output_format_for(out: AudioFormat) -> (String, AudioFormat) {
    match out.encoding {
        AudioEncoding::Mulaw if out.sample_rate == 8000 => ("ulaw_8000".into(), AudioFormat::mulaw_8k()),
        AudioEncoding::Alaw if out.sample_rate == 8000 => {
            ("alaw_8000".into(), AudioFormat { encoding: AudioEncoding::Alaw, sample_rate: 8000, channels: 1 })
        }
        _ => {
            let rate = PCM_RATES.iter().copied().find(|r| *r >= out.sample_rate).unwrap_or(48_000);
            (format!("pcm_{rate}"), AudioFormat::pcm16(rate))
        }
    }
}

/// The format named by an explicit `output_format` setting, if the engine can carry it raw.
pub(crate) fn parse_output_format(name: &str) -> Option<AudioFormat> {
    let (kind, rate) = name.split_once('_')?;
    let rate: u32 = rate.parse().ok()?;
    match kind {
        "pcm" if PCM_RATES.contains(&rate) => Some(AudioFormat::pcm16(rate)),
        "ulaw" if rate == 8000 => Some(AudioFormat::mulaw_8k()),
        "alaw" if rate == 8000 => Some(AudioFormat { encoding: AudioEncoding::Alaw, sample_rate: 8000, channels: 1 }),
        _ => None,
    }
}

fn query(pairs: &[(&str, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={}", encode_query_value(v))).collect::<Vec<_>>().join("&")
}

/// Multi-context websocket URL.
pub(crate) fn ws_url(s: &ElevenLabsSettings, output_format: &str) -> String {
    let mut q = vec![
        ("model_id", s.model_id.clone()),
        ("output_format", output_format.to_string()),
        ("auto_mode", s.auto_mode.to_string()),
    ];
    if let Some(lang) = &s.language_code {
        q.push(("language_code", lang.clone()));
    }
    if let Some(secs) = s.inactivity_timeout_secs {
        q.push(("inactivity_timeout", secs.to_string()));
    }
    format!(
        "{}/v1/text-to-speech/{}/multi-stream-input?{}",
        s.base_url.trim_end_matches('/'),
        encode_query_value(&s.voice_id),
        query(&q)
    )
}

/// HTTP streaming URL.
pub(crate) fn http_url(s: &ElevenLabsSettings, output_format: &str) -> String {
    format!(
        "{}/v1/text-to-speech/{}/stream?{}",
        s.http_base_url.trim_end_matches('/'),
        encode_query_value(&s.voice_id),
        query(&[("output_format", output_format.to_string())])
    )
}

fn voice_settings_json(s: &ElevenLabsSettings) -> Option<Value> {
    s.voice_settings.as_ref().map(|v| {
        json!({
            "stability": v.stability,
            "similarity_boost": v.similarity_boost,
            "style": v.style,
            "use_speaker_boost": v.use_speaker_boost,
            "speed": v.speed,
        })
    })
}

/// HTTP request body for one utterance chunk.
pub(crate) fn http_body(s: &ElevenLabsSettings, text: &str) -> Value {
    let mut body = json!({"text": text, "model_id": s.model_id});
    if let Some(v) = voice_settings_json(s) {
        body["voice_settings"] = v;
    }
    if let Some(lang) = &s.language_code {
        body["language_code"] = json!(lang);
    }
    body
}

/// First message of a context: `" "` plus the settings that are only allowed here.
pub(crate) fn init_context(s: &ElevenLabsSettings, ctx: &str) -> String {
    let mut m = json!({"text": " ", "context_id": ctx});
    if let Some(v) = voice_settings_json(s) {
        m["voice_settings"] = v;
    }
    if let Some(schedule) = &s.chunk_length_schedule {
        m["generation_config"] = json!({"chunk_length_schedule": schedule});
    }
    m.to_string()
}

pub(crate) fn send_text(ctx: &str, text: &str) -> String {
    json!({"text": text, "context_id": ctx}).to_string()
}

pub(crate) fn flush(ctx: &str) -> String {
    json!({"context_id": ctx, "flush": true}).to_string()
}

pub(crate) fn close_context(ctx: &str) -> String {
    json!({"context_id": ctx, "close_context": true}).to_string()
}

/// Keepalive: per context once one is open; context-less before, because a keepalive that
/// became a context's first message (without settings) would make its later init fail.
pub(crate) fn keepalive(ctx: Option<&str>) -> String {
    match ctx {
        Some(c) => json!({"text": "", "context_id": c}).to_string(),
        None => json!({"text": ""}).to_string(),
    }
}

pub(crate) fn close_socket() -> String {
    json!({"close_socket": true}).to_string()
}

/// Character alignment of one audio chunk (times relative to the chunk).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct Alignment {
    pub(crate) chars: Vec<String>,
    pub(crate) char_start_times_ms: Vec<f64>,
    pub(crate) char_durations_ms: Vec<f64>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawServer {
    audio: Option<String>,
    is_final: Option<bool>,
    context_id: Option<String>,
    alignment: Option<Alignment>,
    normalized_alignment: Option<Alignment>,
    message: Option<String>,
    error: Option<String>,
}

/// One server message, mapped.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ServerMessage {
    pub(crate) context_id: Option<String>,
    /// Decoded audio (absent or empty on alignment-only and final messages).
    pub(crate) audio: Option<Vec<u8>>,
    pub(crate) alignment: Option<Alignment>,
    pub(crate) is_final: bool,
    /// `(error code, message)` of a provider error.
    pub(crate) error: Option<(String, String)>,
}

/// Parses a server text frame; `Err` carries a description of what was wrong.
pub(crate) fn parse_server(text: &str) -> Result<ServerMessage, String> {
    let raw: RawServer = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let audio = match raw.audio.as_deref() {
        Some(b) if !b.is_empty() => Some(B64.decode(b).map_err(|e| format!("bad base64 audio: {e}"))?),
        _ => None,
    };
    // `alignment` follows the text we sent; the normalized one only matters with dictionaries.
    let alignment = raw.alignment.or(raw.normalized_alignment);
    let error = match (raw.error, raw.message) {
        (Some(e), m) => Some((e, m.unwrap_or_default())),
        (None, Some(m)) if audio.is_none() && raw.is_final.is_none() => Some(("error".into(), m)),
        _ => None,
    };
    Ok(ServerMessage { context_id: raw.context_id, audio, alignment, is_final: raw.is_final == Some(true), error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_matches_the_transport() {
        assert_eq!(output_format_for(AudioFormat::mulaw_8k()).0, "ulaw_8000");
        assert_eq!(output_format_for(AudioFormat::pcm16(16_000)).0, "pcm_16000");
        assert_eq!(output_format_for(AudioFormat::pcm16(24_000)), ("pcm_24000".into(), AudioFormat::pcm16(24_000)));
        assert_eq!(output_format_for(AudioFormat::pcm16(12_000)).0, "pcm_16000");
        assert_eq!(output_format_for(AudioFormat::pcm16(96_000)).0, "pcm_48000");
        assert_eq!(parse_output_format("ulaw_8000"), Some(AudioFormat::mulaw_8k()));
        assert_eq!(parse_output_format("mp3_44100_128"), None);
    }

    #[test]
    fn urls() {
        let s = ElevenLabsSettings {
            base_url: "ws://h:1/".into(),
            http_base_url: "http://h:1".into(),
            voice_id: "v1".into(),
            ..ElevenLabsSettings::default()
        };
        let u = ws_url(&s, "ulaw_8000");
        assert!(u.starts_with("ws://h:1/v1/text-to-speech/v1/multi-stream-input?model_id=eleven_flash_v2_5"), "{u}");
        assert!(u.contains("output_format=ulaw_8000"));
        assert_eq!(http_url(&s, "pcm_16000"), "http://h:1/v1/text-to-speech/v1/stream?output_format=pcm_16000");
    }

    #[test]
    fn client_messages() {
        let s = ElevenLabsSettings { chunk_length_schedule: Some(vec![50, 120]), ..ElevenLabsSettings::default() };
        let init: Value = serde_json::from_str(&init_context(&s, "c1")).unwrap();
        assert_eq!(init["text"], " ");
        assert_eq!(init["context_id"], "c1");
        assert_eq!(init["generation_config"]["chunk_length_schedule"], json!([50, 120]));
        assert!(init["voice_settings"]["stability"].is_number());
        assert_eq!(flush("c1"), r#"{"context_id":"c1","flush":true}"#);
        assert_eq!(close_context("c1"), r#"{"close_context":true,"context_id":"c1"}"#);
        assert_eq!(keepalive(None), r#"{"text":""}"#);
        assert_eq!(close_socket(), r#"{"close_socket":true}"#);
    }

    #[test]
    fn server_messages() {
        let audio = B64.encode([1u8, 2, 3]);
        let m = parse_server(&format!(
            r#"{{"audio":"{audio}","contextId":"c1","alignment":{{"chars":["H","i"],"charStartTimesMs":[0,70],"charDurationsMs":[70,50]}},"normalizedAlignment":null}}"#
        ))
        .unwrap();
        assert_eq!(m.audio.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(m.context_id.as_deref(), Some("c1"));
        assert_eq!(m.alignment.unwrap().char_durations_ms, vec![70.0, 50.0]);
        assert!(!m.is_final);
        let f = parse_server(r#"{"isFinal":true,"contextId":"c1"}"#).unwrap();
        assert!(f.is_final && f.audio.is_none());
        let e = parse_server(r#"{"message":"quota","error":"quota_exceeded","code":1008}"#).unwrap();
        assert_eq!(e.error, Some(("quota_exceeded".into(), "quota".into())));
        let n = parse_server(r#"{"audio":null,"isFinal":null}"#).unwrap();
        assert!(n.audio.is_none() && !n.is_final && n.error.is_none());
        assert!(parse_server(r#"{"audio":"!!!"}"#).is_err());
        assert!(parse_server("nope").is_err());
    }
}
