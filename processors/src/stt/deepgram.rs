//! [`DeepgramStt`]: Deepgram live streaming speech-to-text over a websocket.
//!
//! - Consumes: `Frame::InputAudio` downstream (PCM16 → `linear16`, μ-law → `mulaw`, A-law →
//!   `alaw`, sent as-is: a Twilio call goes straight through without decoding); the format is
//!   taken from `StartInfo.input_audio` and re-learnt from the frames (a change reopens the
//!   stream). `Frame::End` closes the stream (`CloseStream`). Events: `UserStartedSpeaking` marks
//!   the audio that follows as words owed (so an unanswered `Finalize` after only silence is not
//!   an error); `UserStoppedSpeaking` → `Finalize`. `Interrupt` needs nothing: the socket task pushes
//!   through a stream sender, which the engine keeps on the current epoch.
//! - Produces: `Frame::Transcript` downstream, interim (`is_final: false`) and final, with word
//!   timings in call time (offset across reconnects) and the language; the input audio itself
//!   when [`LiveSettings::pass_through_audio`] is set; `Event::Metrics(Ttfb)` measured from
//!   `UserStoppedSpeaking` to the first final after it; `Event::Error` (non-fatal) for provider
//!   errors, malformed messages, dropped sockets and stalled finals (words owed, no final: a
//!   `Finalize` that finds the turn already finalized on Deepgram's own endpoint may go
//!   unanswered, and that is normal). Every other frame is forwarded unchanged.
//! - Trade-offs: see the `live` module (replay of offline audio only, interim promotion on a
//!   missing final). `SpeechStarted` and `UtteranceEnd` are logged, not turned into events:
//!   turn-taking follows the local VAD, which is faster and does not fire on line noise.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use voxline_pipeline::{AudioFormat, Context, Direction, ErrorEvent, Event, FlowResult, Frame, Processor};

use super::deepgram_protocol::{DeepgramProtocol, encoding_name};
use super::live::{self, Control, LiveHandle, LiveSettings, SttStats};
use super::{DEEPGRAM_API_KEY_ENV, SttError};

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

/// Settings of [`DeepgramStt`] (immutable; runtime state lives in the processor).
#[derive(Clone, PartialEq)]
pub struct DeepgramSettings {
    /// API key; see [`DeepgramSettings::from_env`]. Never logged.
    pub api_key: Option<String>,
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

impl fmt::Debug for DeepgramSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeepgramSettings")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("language", &self.language)
            .field("interim_results", &self.interim_results)
            .field("punctuate", &self.punctuate)
            .field("smart_format", &self.smart_format)
            .field("endpointing", &self.endpointing)
            .field("vad_events", &self.vad_events)
            .field("utterance_end_ms", &self.utterance_end_ms)
            .field("extra_query", &self.extra_query)
            .field("live", &self.live)
            .finish()
    }
}

impl DeepgramSettings {
    /// Defaults with the key from `DEEPGRAM_API_KEY` (if set).
    #[must_use]
    pub fn from_env() -> Self {
        Self { api_key: std::env::var(DEEPGRAM_API_KEY_ENV).ok(), ..Self::default() }
    }

    /// Checks the settings; the error names the field (or the key's environment variable).
    pub fn validate(&self) -> Result<(), SttError> {
        if self.api_key.as_deref().is_none_or(|k| k.trim().is_empty()) {
            return Err(SttError::MissingApiKey { env_var: DEEPGRAM_API_KEY_ENV });
        }
        let bad = |field, reason: &str| Err(SttError::InvalidSetting { field, reason: reason.to_string() });
        if !(self.base_url.starts_with("ws://") || self.base_url.starts_with("wss://")) {
            return bad("base_url", "must start with ws:// or wss://");
        }
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

/// Deepgram live STT processor. See the module docs for the frame contract.
pub struct DeepgramStt {
    protocol: Arc<DeepgramProtocol>,
    stats: Arc<SttStats>,
    session: Option<LiveHandle>,
    unsupported: Option<AudioFormat>,
}

impl fmt::Debug for DeepgramStt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeepgramStt")
            .field("settings", &self.protocol.settings)
            .field("format", &self.session.as_ref().map(|s| s.format))
            .finish_non_exhaustive()
    }
}

impl DeepgramStt {
    /// A processor for `settings`; fails on a missing key (naming `DEEPGRAM_API_KEY`) or an
    /// invalid setting.
    pub fn new(settings: DeepgramSettings) -> Result<Self, SttError> {
        settings.validate()?;
        Ok(Self {
            protocol: Arc::new(DeepgramProtocol { settings }),
            stats: Arc::default(),
            session: None,
            unsupported: None,
        })
    }

    /// Counters (connections, reconnects, replayed/dropped audio, keepalives, …), live.
    #[must_use]
    pub fn stats(&self) -> Arc<SttStats> {
        self.stats.clone()
    }

    fn settings(&self) -> &DeepgramSettings {
        &self.protocol.settings
    }

    /// Makes sure a stream for `format` is running; `false` if Deepgram cannot take it.
    fn ensure_session(&mut self, format: AudioFormat, cx: &mut Context) -> bool {
        if self.session.as_ref().is_some_and(|s| s.format == format) {
            return true;
        }
        if encoding_name(format.encoding).is_none() {
            if self.unsupported != Some(format) {
                self.unsupported = Some(format);
                let message =
                    format!("Deepgram cannot take {format} audio; put a converter to PCM16 or G.711 before it");
                tracing::warn!(processor = %cx.name(), %message);
                cx.emit(Event::Error(ErrorEvent {
                    processor: cx.name().clone(),
                    message: message.into(),
                    fatal: false,
                }));
            }
            return false;
        }
        if let Some(old) = self.session.take() {
            tracing::info!(processor = %cx.name(), from = %old.format, to = %format, "input format changed; reopening the stream");
            // Dropping the handle closes its channels: the old task sends CloseStream and exits.
            drop(old);
        }
        tracing::debug!(processor = %cx.name(), %format, "opening stt stream");
        self.session = Some(live::spawn(
            self.protocol.clone(),
            format,
            self.settings().live.clone(),
            cx.stream_sender(),
            self.stats.clone(),
            cx.name().clone(),
        ));
        true
    }
}

impl Processor for DeepgramStt {
    fn name(&self) -> &str {
        "deepgram_stt"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        match frame {
            Frame::Start(info) => {
                self.ensure_session(info.input_audio, cx);
                cx.push(Frame::Start(info), direction).await;
            }
            Frame::InputAudio(audio) if direction == Direction::Downstream => {
                // A zero-length binary frame reads as end-of-stream to Deepgram.
                if !audio.data.is_empty()
                    && self.ensure_session(audio.format, cx)
                    && let Some(s) = &self.session
                {
                    s.send_audio(audio.data.clone());
                }
                if self.settings().live.pass_through_audio {
                    cx.push(Frame::InputAudio(audio), direction).await;
                }
            }
            Frame::End => {
                // Drain before forwarding End: the provider flushes its last results on
                // CloseStream, and they must travel ahead of End to reach the aggregator.
                if let Some(s) = self.session.take() {
                    let wait = self.settings().live.close_timeout + self.settings().live.send_timeout;
                    s.shutdown(wait).await;
                }
                cx.push(Frame::End, direction).await;
            }
            other => cx.push(other, direction).await,
        }
        Ok(())
    }

    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        match event {
            Event::UserStartedSpeaking => {
                if let Some(s) = &self.session {
                    s.control(Control::SpeechStarted);
                }
            }
            Event::UserStoppedSpeaking => {
                if let Some(s) = &self.session {
                    s.control(Control::Finalize { at: Instant::now() });
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn stop(&mut self, _cx: &mut Context) -> FlowResult {
        if let Some(s) = self.session.take() {
            let wait = self.settings().live.close_timeout + self.settings().live.send_timeout;
            s.shutdown(wait).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_key_names_the_env_var() {
        let err = DeepgramStt::new(DeepgramSettings::default()).unwrap_err();
        assert_eq!(err, SttError::MissingApiKey { env_var: "DEEPGRAM_API_KEY" });
        assert!(err.to_string().contains("DEEPGRAM_API_KEY"));
    }

    #[test]
    fn validation_names_fields() {
        let s = DeepgramSettings { api_key: Some("k".into()), base_url: "https://x".into(), ..Default::default() };
        assert!(matches!(s.validate(), Err(SttError::InvalidSetting { field: "base_url", .. })));
        let s = DeepgramSettings { api_key: Some("k".into()), interim_results: false, ..Default::default() };
        assert!(matches!(s.validate(), Err(SttError::InvalidSetting { field: "utterance_end_ms", .. })));
        let s = DeepgramSettings { api_key: Some("k".into()), utterance_end_ms: Some(0), ..Default::default() };
        assert!(matches!(s.validate(), Err(SttError::InvalidSetting { field: "utterance_end_ms", .. })));
        let s = DeepgramSettings {
            api_key: Some("k".into()),
            endpointing: Endpointing::SilenceMs(0),
            ..Default::default()
        };
        assert!(matches!(s.validate(), Err(SttError::InvalidSetting { field: "endpointing", .. })));
    }

    #[test]
    fn debug_redacts_the_key() {
        let s = DeepgramSettings { api_key: Some("secret123".into()), ..Default::default() };
        assert!(!format!("{s:?}").contains("secret123"));
    }
}
