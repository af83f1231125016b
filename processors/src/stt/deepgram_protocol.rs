//! Deepgram live wire mapping: the `/v1/listen` URL, control messages, and server messages to
//! provider-neutral `ServerEvent`s. No I/O here, so all of it is unit-tested without sockets.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use voxline_pipeline::{AudioEncoding, AudioFormat};

use super::live::{LiveProtocol, LiveSettings, RawTranscript, RawWord, ServerEvent};
use crate::service::{ApiKey, ServiceConfigError, encode_query_value, require_key, require_scheme};

/// Environment variable the Deepgram key is read from by [`DeepgramSettings::from_env`].
pub const DEEPGRAM_API_KEY_ENV: &str = "DEEPGRAM_API_KEY";

/// Default endpoint (a self-hosted or emulated server takes its own `ws://` base).
pub const DEFAULT_BASE_URL: &str = "wss://api.deepgram.com";
/// Default model.
pub const DEFAULT_MODEL: &str = "nova-3";
/// Default language.
pub const DEFAULT_LANGUAGE: &str = "en";
/// Default for interim results (needed for `UtteranceEnd` and the timeout fallback).
pub const DEFAULT_INTERIM_RESULTS: bool = true;
/// Default for punctuation.
pub const DEFAULT_PUNCTUATE: bool = true;
/// Default for smart formatting (off: it can delay finals while it waits for context).
pub const DEFAULT_SMART_FORMAT: bool = false;
/// Default for Deepgram's own VAD events (off: the local VAD drives turns).
pub const DEFAULT_VAD_EVENTS: bool = false;
/// Default `utterance_end_ms` (Deepgram says values under 1000 are not useful).
pub const DEFAULT_UTTERANCE_END_MS: Option<u32> = Some(1000);

/// Deepgram's `endpointing` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endpointing {
    /// Do not send the parameter (Deepgram's default, 10 ms).
    #[default]
    ProviderDefault,
    /// `endpointing=false`.
    Disabled,
    /// Milliseconds of silence that mark `speech_final`.
    SilenceMs(u32),
}

/// Settings of [`DeepgramStt`](super::DeepgramStt) (immutable; runtime state lives in the processor).
///
/// `Debug` is derived: the key is an [`ApiKey`], which prints redacted.
#[derive(Clone, PartialEq, Debug)]
pub struct DeepgramSettings {
    /// API key; see [`DeepgramSettings::from_env`]. Never logged.
    pub api_key: Option<ApiKey>,
    /// `wss://host[:port]` without a path.
    pub base_url: String,
    /// `model`.
    pub model: String,
    /// `language` (`multi` for Nova-3 code-switching).
    pub language: String,
    /// `interim_results`.
    pub interim_results: bool,
    /// `punctuate`.
    pub punctuate: bool,
    /// `smart_format`.
    pub smart_format: bool,
    /// `endpointing`.
    pub endpointing: Endpointing,
    /// `vad_events`.
    pub vad_events: bool,
    /// `utterance_end_ms` (sent only when set).
    pub utterance_end_ms: Option<u32>,
    /// Extra query parameters passed verbatim (e.g. `keyterm`, repeated as needed).
    pub extra_query: Vec<(String, String)>,
    /// Socket plumbing: keepalive, finalize timeout, replay buffer, reconnect, pass-through.
    pub live: LiveSettings,
}

impl Default for DeepgramSettings {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: DEFAULT_BASE_URL.to_string(),
            model: DEFAULT_MODEL.to_string(),
            language: DEFAULT_LANGUAGE.to_string(),
            interim_results: DEFAULT_INTERIM_RESULTS,
            punctuate: DEFAULT_PUNCTUATE,
            smart_format: DEFAULT_SMART_FORMAT,
            endpointing: Endpointing::default(),
            vad_events: DEFAULT_VAD_EVENTS,
            utterance_end_ms: DEFAULT_UTTERANCE_END_MS,
            extra_query: Vec::new(),
            live: LiveSettings::default(),
        }
    }
}

impl DeepgramSettings {
    /// Defaults with the key from `DEEPGRAM_API_KEY` (if set).
    #[must_use]
    pub fn from_env() -> Self {
        Self { api_key: ApiKey::from_env(DEEPGRAM_API_KEY_ENV), ..Self::default() }
    }

    /// Checks the settings; the error names the field (or the key's environment variable).
    pub fn validate(&self) -> Result<(), ServiceConfigError> {
        require_key(self.api_key.as_ref(), DEEPGRAM_API_KEY_ENV)?;
        require_scheme("base_url", &self.base_url, &["ws://", "wss://"])?;
        let bad = |field, reason: &str| Err(ServiceConfigError::InvalidSetting { field, reason: reason.to_string() });
        if self.model.trim().is_empty() {
            return bad("model", "must not be empty");
        }
        if self.utterance_end_ms.is_some() && !self.interim_results {
            return bad("utterance_end_ms", "needs interim_results = true");
        }
        if self.utterance_end_ms == Some(0) {
            return bad("utterance_end_ms", "must be positive (None leaves it off)");
        }
        if self.endpointing == Endpointing::SilenceMs(0) {
            return bad("endpointing", "must be positive (Endpointing::Disabled turns it off)");
        }
        if self.live.keepalive_interval.is_zero() {
            return bad("live.keepalive_interval", "must be positive");
        }
        if self.live.finalize_timeout.is_zero() {
            return bad("live.finalize_timeout", "must be positive");
        }
        Ok(())
    }
}

/// Deepgram's `encoding` name for a raw (headerless) audio format, if it takes it.
pub(crate) fn encoding_name(encoding: AudioEncoding) -> Option<&'static str> {
    match encoding {
        AudioEncoding::Pcm16 => Some("linear16"),
        AudioEncoding::Mulaw => Some("mulaw"),
        AudioEncoding::Alaw => Some("alaw"),
        // Float PCM has no Deepgram encoding, and raw Opus packets need an Ogg container:
        // both must be converted before this stage.
        AudioEncoding::F32 | AudioEncoding::Opus => None,
    }
}

/// The `/v1/listen` URL for `format` under `settings`.
pub(crate) fn listen_url(settings: &DeepgramSettings, format: AudioFormat) -> Result<String, String> {
    let encoding = encoding_name(format.encoding)
        .ok_or_else(|| format!("Deepgram cannot take {format} audio; convert to PCM16 or G.711 first"))?;
    let mut q: Vec<(&str, String)> = vec![
        ("model", settings.model.clone()),
        ("language", settings.language.clone()),
        ("encoding", encoding.to_string()),
        ("sample_rate", format.sample_rate.to_string()),
        ("channels", format.channels.max(1).to_string()),
        ("interim_results", settings.interim_results.to_string()),
        ("punctuate", settings.punctuate.to_string()),
        ("smart_format", settings.smart_format.to_string()),
    ];
    match settings.endpointing {
        Endpointing::ProviderDefault => {}
        Endpointing::Disabled => q.push(("endpointing", "false".into())),
        Endpointing::SilenceMs(ms) => q.push(("endpointing", ms.to_string())),
    }
    q.push(("vad_events", settings.vad_events.to_string()));
    if let Some(ms) = settings.utterance_end_ms {
        q.push(("utterance_end_ms", ms.to_string()));
    }
    let mut url = format!("{}/v1/listen?", settings.base_url.trim_end_matches('/'));
    let extra = settings.extra_query.iter().map(|(k, v)| (k.as_str(), v.clone()));
    for (i, (k, v)) in q.into_iter().chain(extra).enumerate() {
        if i > 0 {
            url.push('&');
        }
        url.push_str(&encode_query_value(k));
        url.push('=');
        url.push_str(&encode_query_value(&v));
    }
    Ok(url)
}

/// The Deepgram mapping handed to the live plumbing.
pub(crate) struct DeepgramProtocol {
    pub(crate) settings: DeepgramSettings,
}

impl LiveProtocol for DeepgramProtocol {
    fn request(&self, format: AudioFormat) -> Result<Request, String> {
        let url = listen_url(&self.settings, format)?;
        let mut req = url.into_client_request().map_err(|e| format!("bad Deepgram URL: {e}"))?;
        let key = self.settings.api_key.as_ref().map(ApiKey::expose).unwrap_or_default();
        let auth = HeaderValue::from_str(&format!("Token {key}"))
            .map_err(|_| "the Deepgram API key contains characters not allowed in a header".to_string())?;
        req.headers_mut().insert("Authorization", auth);
        Ok(req)
    }

    fn keepalive(&self) -> &'static str {
        r#"{"type":"KeepAlive"}"#
    }

    fn finalize(&self) -> &'static str {
        r#"{"type":"Finalize"}"#
    }

    fn close_stream(&self) -> &'static str {
        r#"{"type":"CloseStream"}"#
    }

    fn parse(&self, text: &str) -> ServerEvent {
        parse_message(text, &self.settings.language)
    }
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    ty: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Results {
    start: f64,
    duration: f64,
    is_final: bool,
    speech_final: bool,
    from_finalize: bool,
    channel: Channel,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Channel {
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Alternative {
    transcript: String,
    confidence: f64,
    words: Vec<Word>,
    languages: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Word {
    word: String,
    punctuated_word: Option<String>,
    start: f64,
    end: f64,
    language: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Metadata {
    request_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorMsg {
    variant: Option<String>,
    description: Option<String>,
    message: Option<String>,
}

fn secs(x: f64) -> Duration {
    if x.is_finite() && x > 0.0 { Duration::try_from_secs_f64(x).unwrap_or_default() } else { Duration::ZERO }
}

/// Maps one server text frame. `configured_language` is reported when Deepgram does not say
/// (it only does with `language=multi`), except for `multi` itself which is not a language.
pub(crate) fn parse_message(text: &str, configured_language: &str) -> ServerEvent {
    let ty = match serde_json::from_str::<TypeOnly>(text) {
        Ok(t) => t.ty,
        Err(e) => return ServerEvent::Malformed(e.to_string()),
    };
    match ty.as_deref() {
        Some("Results") => match serde_json::from_str::<Results>(text) {
            Ok(r) => ServerEvent::Transcript(map_results(r, configured_language)),
            Err(e) => ServerEvent::Malformed(format!("Results: {e}")),
        },
        Some("SpeechStarted") => ServerEvent::SpeechStarted,
        Some("UtteranceEnd") => ServerEvent::UtteranceEnd,
        Some("Metadata") => {
            let m = serde_json::from_str::<Metadata>(text).unwrap_or_default();
            ServerEvent::Metadata { request_id: m.request_id }
        }
        Some("Error") => {
            let e = serde_json::from_str::<ErrorMsg>(text).unwrap_or_default();
            let variant = e.variant.unwrap_or_else(|| "Error".into());
            let detail = e.description.or(e.message).unwrap_or_default();
            ServerEvent::ProviderError(format!("{variant}: {detail}"))
        }
        Some(other) => ServerEvent::Other(other.to_string()),
        None => ServerEvent::Other("<no type>".to_string()),
    }
}

fn map_results(r: Results, configured_language: &str) -> RawTranscript {
    let alt = r.channel.alternatives.into_iter().next().unwrap_or_default();
    let language = alt
        .languages
        .first()
        .cloned()
        .or_else(|| alt.words.iter().find_map(|w| w.language.clone()))
        .or_else(|| (configured_language != "multi").then(|| configured_language.to_string()))
        .map(Arc::from);
    let words = alt
        .words
        .into_iter()
        .map(|w| RawWord {
            word: Arc::from(w.punctuated_word.unwrap_or(w.word)),
            start: secs(w.start),
            end: secs(w.end),
        })
        .collect();
    RawTranscript {
        text: alt.transcript.trim().to_string(),
        is_final: r.is_final,
        speech_final: r.speech_final,
        from_finalize: r.from_finalize,
        confidence: alt.confidence as f32,
        words,
        start: secs(r.start),
        duration: secs(r.duration),
        language,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DeepgramSettings {
        DeepgramSettings { api_key: Some("k".into()), ..DeepgramSettings::default() }
    }

    #[test]
    fn url_for_mulaw_passthrough() {
        let mut s = settings();
        s.base_url = "ws://127.0.0.1:9/".into();
        s.utterance_end_ms = Some(1000);
        s.endpointing = Endpointing::SilenceMs(300);
        let url = listen_url(&s, AudioFormat::mulaw_8k()).unwrap();
        assert!(url.starts_with("ws://127.0.0.1:9/v1/listen?model=nova-3"), "{url}");
        for p in [
            "encoding=mulaw",
            "sample_rate=8000",
            "channels=1",
            "interim_results=true",
            "endpointing=300",
            "utterance_end_ms=1000",
            "language=en",
        ] {
            assert!(url.contains(p), "{p} missing in {url}");
        }
    }

    #[test]
    fn url_for_pcm_and_escaping() {
        let mut s = settings();
        s.endpointing = Endpointing::Disabled;
        s.extra_query = vec![("keyterm".into(), "Acme Co&x".into())];
        let url = listen_url(&s, AudioFormat::pcm16(16_000)).unwrap();
        assert!(url.starts_with("wss://api.deepgram.com/v1/listen?"));
        assert!(url.contains("encoding=linear16&sample_rate=16000"));
        assert!(url.contains("endpointing=false"));
        assert!(url.contains("keyterm=Acme%20Co%26x"));
        let f32 = AudioFormat { encoding: AudioEncoding::F32, sample_rate: 16_000, channels: 1 };
        assert!(listen_url(&s, f32).is_err());
    }

    #[test]
    fn request_carries_token_header() {
        let p = DeepgramProtocol { settings: settings() };
        let req = p.request(AudioFormat::mulaw_8k()).unwrap();
        assert_eq!(req.headers().get("authorization").unwrap(), "Token k");
    }

    #[test]
    fn results_map_to_transcript() {
        let msg = r#"{"type":"Results","channel_index":[0,1],"start":3.5,"duration":1.25,
            "is_final":true,"speech_final":true,"from_finalize":false,
            "channel":{"alternatives":[{"transcript":"book a table","confidence":0.97,
            "words":[{"word":"book","start":3.58,"end":3.8,"confidence":0.99,"punctuated_word":"Book"},
                     {"word":"a","start":3.8,"end":3.9,"confidence":0.9},
                     {"word":"table","start":3.9,"end":4.2,"confidence":0.9,"punctuated_word":"table."}]}]},
            "metadata":{"request_id":"r"}}"#;
        let ServerEvent::Transcript(t) = parse_message(msg, "en") else { panic!("not a transcript") };
        assert_eq!(t.text, "book a table");
        assert!(t.is_final && t.speech_final && !t.from_finalize);
        assert_eq!(t.words.len(), 3);
        assert_eq!(&*t.words[0].word, "Book");
        assert_eq!(&*t.words[1].word, "a");
        assert_eq!(t.words[2].end, Duration::from_millis(4200));
        assert_eq!(t.start, Duration::from_millis(3500));
        assert_eq!(t.duration, Duration::from_millis(1250));
        assert_eq!(t.language.as_deref(), Some("en"));
        assert!((t.confidence - 0.97).abs() < 1e-6);
    }

    #[test]
    fn multi_language_comes_from_the_result() {
        let msg = r#"{"type":"Results","is_final":false,"channel":{"alternatives":[
            {"transcript":"hola","confidence":0.8,"languages":["es"],"words":[]}]}}"#;
        let ServerEvent::Transcript(t) = parse_message(msg, "multi") else { panic!() };
        assert_eq!(t.language.as_deref(), Some("es"));
        assert!(!t.is_final);
        let msg = r#"{"type":"Results","is_final":true,"channel":{"alternatives":[]}}"#;
        let ServerEvent::Transcript(t) = parse_message(msg, "multi") else { panic!() };
        assert_eq!(t.text, "");
        assert_eq!(t.language, None);
    }

    #[test]
    fn other_messages() {
        assert!(matches!(
            parse_message(r#"{"type":"SpeechStarted","timestamp":1.0}"#, "en"),
            ServerEvent::SpeechStarted
        ));
        assert!(matches!(
            parse_message(r#"{"type":"UtteranceEnd","last_word_end":2}"#, "en"),
            ServerEvent::UtteranceEnd
        ));
        assert!(matches!(
            parse_message(r#"{"type":"Metadata","request_id":"abc"}"#, "en"),
            ServerEvent::Metadata { request_id: Some(ref r) } if r == "abc"
        ));
        assert!(matches!(
            parse_message(r#"{"type":"Error","variant":"SchemaError","description":"bad"}"#, "en"),
            ServerEvent::ProviderError(ref m) if m == "SchemaError: bad"
        ));
        assert!(
            matches!(parse_message(r#"{"type":"FutureThing"}"#, "en"), ServerEvent::Other(ref t) if t == "FutureThing")
        );
        assert!(matches!(
            parse_message(r#"{"type":"Results","channel":{"alternatives":["#, "en"),
            ServerEvent::Malformed(_)
        ));
        assert!(matches!(parse_message("not json", "en"), ServerEvent::Malformed(_)));
        assert!(matches!(parse_message(r#"{"type":"Results","start":"x"}"#, "en"), ServerEvent::Malformed(_)));
    }

    #[test]
    fn negative_or_nan_times_are_clamped() {
        assert_eq!(secs(-1.0), Duration::ZERO);
        assert_eq!(secs(f64::NAN), Duration::ZERO);
        assert_eq!(secs(1e300), Duration::ZERO);
    }
}
