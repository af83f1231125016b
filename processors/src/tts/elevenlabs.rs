//! [`ElevenLabsTts`]: ElevenLabs text-to-speech, multi-context websocket (default) or HTTP
//! streaming ([`TtsMode::HttpStreaming`]).
//!
//! - Consumes (downstream): `Text` (a speakable chunk: a trailing space is added so words are
//!   not glued across chunks) and `LlmText` (raw tokens, sent as they are) as text to speak;
//!   `Start` picks the output format from `StartInfo.output_audio` (`ulaw_8000` for a μ-law
//!   phone call: no transcoding; `pcm_<rate>` otherwise) unless the settings force one.
//! - Produces (downstream), per utterance (one per bot turn: a new context on the first text of
//!   a response): `TtsStarted`, then for each audio chunk `TtsText` (the words completed in it)
//!   and `TtsAudio` (word timings from the character alignment, relative to the utterance start,
//!   accumulated across chunks), then `TtsStopped`. `LlmResponseEnd` flushes the utterance and
//!   is forwarded; every other frame is forwarded. Events: `Metrics(Ttfb)` (first text sent →
//!   first audio), `Error` (non-fatal) for provider errors and dropped sockets.
//! - `Interrupt` closes the live contexts at the provider (through the socket task's channel:
//!   `on_event` does not wait); their audio is never pushed afterwards (explicit context check,
//!   plus the stale epoch of the sender they were opened with). `End` sends `close_socket` and
//!   lets flushed audio finish (bounded by `close_timeout`) before forwarding `End`.
//! - Trade-offs: see `elevenlabs_ws` (stop timeout, context cap by fresh socket, reconnect) and
//!   `elevenlabs_http` (no word timings, a round trip per chunk).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use voxline_pipeline::{AudioFormat, Context, Direction, Event, FlowResult, Frame, Processor};

use super::elevenlabs_http::{self as http, HttpTurn, TurnSetup};
use super::elevenlabs_protocol as proto;
use super::elevenlabs_ws::{self as ws, Cmd, WsHandle};
pub use super::elevenlabs_ws::{TtsCounters, TtsStats};
use super::{ELEVENLABS_API_KEY_ENV, TtsError};
use crate::stt::ReconnectPolicy;

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

/// Settings of [`ElevenLabsTts`] (immutable; runtime state lives in the processor).
#[derive(Clone, PartialEq)]
pub struct ElevenLabsSettings {
    /// API key; see [`ElevenLabsSettings::from_env`]. Never logged.
    pub api_key: Option<String>,
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

impl fmt::Debug for ElevenLabsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElevenLabsSettings")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .field("http_base_url", &self.http_base_url)
            .field("voice_id", &self.voice_id)
            .field("model_id", &self.model_id)
            .field("mode", &self.mode)
            .field("output_format", &self.output_format)
            .field("auto_mode", &self.auto_mode)
            .field("max_open_contexts", &self.max_open_contexts)
            .finish_non_exhaustive()
    }
}

impl ElevenLabsSettings {
    /// Defaults with the key from `ELEVENLABS_API_KEY` (if set).
    #[must_use]
    pub fn from_env() -> Self {
        Self { api_key: std::env::var(ELEVENLABS_API_KEY_ENV).ok(), ..Self::default() }
    }

    /// Checks the settings; the error names the field (or the key's environment variable).
    pub fn validate(&self) -> Result<(), TtsError> {
        if self.api_key.as_deref().is_none_or(|k| k.trim().is_empty()) {
            return Err(TtsError::MissingApiKey { env_var: ELEVENLABS_API_KEY_ENV });
        }
        let bad = |field, reason: &str| Err(TtsError::InvalidSetting { field, reason: reason.to_string() });
        if !(self.base_url.starts_with("ws://") || self.base_url.starts_with("wss://")) {
            return bad("base_url", "must start with ws:// or wss://");
        }
        if !(self.http_base_url.starts_with("http://") || self.http_base_url.starts_with("https://")) {
            return bad("http_base_url", "must start with http:// or https://");
        }
        if self.voice_id.trim().is_empty() {
            return bad("voice_id", "must not be empty");
        }
        if let Some(f) = &self.output_format
            && proto::parse_output_format(f).is_none()
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

enum Backend {
    Ws(WsHandle),
    Http { client: reqwest::Client, url: String, turn: Option<HttpTurn>, draining: Vec<JoinHandle<()>> },
}

/// ElevenLabs TTS processor. See the module docs for the frame contract.
pub struct ElevenLabsTts {
    settings: Arc<ElevenLabsSettings>,
    stats: Arc<TtsStats>,
    format: Option<(String, AudioFormat)>,
    backend: Option<Backend>,
    context: Option<Arc<str>>,
    next_context: u64,
}

impl fmt::Debug for ElevenLabsTts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElevenLabsTts")
            .field("settings", &self.settings)
            .field("format", &self.format)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl ElevenLabsTts {
    /// A processor for `settings`; fails on a missing key (naming `ELEVENLABS_API_KEY`) or an
    /// invalid setting.
    pub fn new(settings: ElevenLabsSettings) -> Result<Self, TtsError> {
        settings.validate()?;
        Ok(Self {
            settings: Arc::new(settings),
            stats: Arc::default(),
            format: None,
            backend: None,
            context: None,
            next_context: 0,
        })
    }

    /// Counters (connections, contexts, dropped stale audio, cap reconnects, requests), live.
    #[must_use]
    pub fn stats(&self) -> Arc<TtsStats> {
        self.stats.clone()
    }

    /// The `output_format` in use, once the stream started.
    #[must_use]
    pub fn output_format(&self) -> Option<&str> {
        self.format.as_ref().map(|(n, _)| n.as_str())
    }

    fn configure(&mut self, output: AudioFormat, cx: &Context) {
        if self.backend.is_some() {
            return;
        }
        let (name, format) = match self
            .settings
            .output_format
            .as_deref()
            .and_then(|n| proto::parse_output_format(n).map(|f| (n.to_string(), f)))
        {
            Some(forced) => forced,
            None => proto::output_format_for(output),
        };
        if format != output {
            tracing::info!(processor = %cx.name(), transport = %output, tts = %format, "TTS output needs conversion downstream");
        }
        self.backend = Some(match self.settings.mode {
            TtsMode::WebSocket => Backend::Ws(ws::spawn(
                self.settings.clone(),
                name.clone(),
                format,
                cx.stream_sender(),
                self.stats.clone(),
                cx.name().clone(),
            )),
            TtsMode::HttpStreaming => Backend::Http {
                client: reqwest::Client::new(),
                url: proto::http_url(&self.settings, &name),
                turn: None,
                draining: Vec::new(),
            },
        });
        self.format = Some((name, format));
    }

    fn speak(&mut self, text: String, cx: &Context) {
        if self.backend.is_none() {
            let output = cx.start_info().map(|s| s.output_audio).unwrap_or(AudioFormat::pcm16(16_000));
            self.configure(output, cx);
        }
        let ctx = match &self.context {
            Some(c) => c.clone(),
            None => {
                self.next_context += 1;
                let c: Arc<str> = Arc::from(format!("turn-{}", self.next_context));
                self.context = Some(c.clone());
                c
            }
        };
        let format = self.format.as_ref().map(|(_, f)| *f);
        match self.backend.as_mut() {
            Some(Backend::Ws(h)) => h.send(Cmd::Text { ctx, text, sender: cx.sender() }),
            Some(Backend::Http { client, url, turn, .. }) => {
                let turn = turn.get_or_insert_with(|| {
                    http::spawn_turn(TurnSetup {
                        client: client.clone(),
                        settings: self.settings.clone(),
                        url: url.clone(),
                        format: format.unwrap_or(AudioFormat::pcm16(16_000)),
                        context_id: ctx,
                        sender: cx.sender(),
                        token: cx.turn_token(),
                        name: cx.name().clone(),
                        stats: self.stats.clone(),
                    })
                });
                turn.say(text);
            }
            None => {}
        }
    }

    fn flush(&mut self) {
        let Some(ctx) = self.context.take() else { return };
        match self.backend.as_mut() {
            Some(Backend::Ws(h)) => h.send(Cmd::Flush { ctx }),
            Some(Backend::Http { turn, draining, .. }) => {
                draining.retain(|t| !t.is_finished());
                if let Some(t) = turn.take() {
                    draining.push(t.finish());
                }
            }
            None => {}
        }
    }

    async fn shutdown(&mut self) {
        self.flush();
        let wait = self.settings.close_timeout + self.settings.connect_timeout;
        match self.backend.take() {
            Some(Backend::Ws(h)) => h.shutdown(wait).await,
            Some(Backend::Http { draining, .. }) => {
                for t in draining {
                    let abort = t.abort_handle();
                    if tokio::time::timeout(wait, t).await.is_err() {
                        abort.abort();
                    }
                }
            }
            None => {}
        }
    }
}

impl Processor for ElevenLabsTts {
    fn name(&self) -> &str {
        "elevenlabs_tts"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        match frame {
            Frame::Start(info) => {
                self.configure(info.output_audio, cx);
                cx.push(Frame::Start(info), direction).await;
            }
            Frame::Text(t) if direction == Direction::Downstream => {
                let t = t.trim();
                if !t.is_empty() {
                    self.speak(format!("{t} "), cx);
                }
            }
            Frame::LlmText(t) if direction == Direction::Downstream => {
                if !t.is_empty() {
                    self.speak(t.to_string(), cx);
                }
            }
            Frame::LlmResponseEnd if direction == Direction::Downstream => {
                self.flush();
                cx.push(Frame::LlmResponseEnd, direction).await;
            }
            Frame::End => {
                // Let flushed audio out ahead of End.
                self.shutdown().await;
                cx.push(Frame::End, direction).await;
            }
            other => cx.push(other, direction).await,
        }
        Ok(())
    }

    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        if matches!(event, Event::Interrupt) {
            self.context = None;
            match self.backend.as_mut() {
                Some(Backend::Ws(h)) => h.send(Cmd::Interrupt),
                // The runner cancelled the turn token: the turn's task stops by itself.
                Some(Backend::Http { turn, .. }) => {
                    turn.take();
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn stop(&mut self, _cx: &mut Context) -> FlowResult {
        self.shutdown().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_key_names_the_env_var() {
        let err = ElevenLabsTts::new(ElevenLabsSettings::default()).unwrap_err();
        assert_eq!(err, TtsError::MissingApiKey { env_var: "ELEVENLABS_API_KEY" });
        assert!(err.to_string().contains("ELEVENLABS_API_KEY"));
    }

    #[test]
    fn validation() {
        let ok = ElevenLabsSettings { api_key: Some("k".into()), ..Default::default() };
        assert!(ok.validate().is_ok());
        let s = ElevenLabsSettings { output_format: Some("mp3_44100_128".into()), ..ok.clone() };
        assert!(matches!(s.validate(), Err(TtsError::InvalidSetting { field: "output_format", .. })));
        let s = ElevenLabsSettings { max_open_contexts: 6, ..ok.clone() };
        assert!(matches!(s.validate(), Err(TtsError::InvalidSetting { field: "max_open_contexts", .. })));
        assert!(!format!("{ok:?}").contains("\"k\""));
    }
}
