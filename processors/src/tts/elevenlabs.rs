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

use tokio::task::JoinHandle;
use voxline_pipeline::{AudioFormat, Context, Direction, Event, FlowResult, Frame, Processor};

use super::elevenlabs_http::{self as http, HttpTurn, TurnSetup};
use super::elevenlabs_protocol as proto;
use super::elevenlabs_ws::{self as ws, Cmd, WsHandle};
pub use super::elevenlabs_ws::{TtsCounters, TtsStats};
use crate::service::ServiceConfigError;

pub use super::elevenlabs_protocol::{
    DEFAULT_AUTO_MODE, DEFAULT_BASE_URL, DEFAULT_CLOSE_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONTEXT_RELEASE_GRACE,
    DEFAULT_HTTP_BASE_URL, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_MAX_OPEN_CONTEXTS, DEFAULT_MODEL_ID,
    DEFAULT_STOP_TIMEOUT, DEFAULT_VOICE_ID, ElevenLabsSettings, TtsMode, VoiceSettings,
};

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
    pub fn new(settings: ElevenLabsSettings) -> Result<Self, ServiceConfigError> {
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
        assert_eq!(err, ServiceConfigError::MissingApiKey { env_var: "ELEVENLABS_API_KEY".into() });
        assert!(err.to_string().contains("ELEVENLABS_API_KEY"));
    }

    #[test]
    fn validation() {
        let ok = ElevenLabsSettings { api_key: Some("k".into()), ..Default::default() };
        assert!(ok.validate().is_ok());
        let s = ElevenLabsSettings { output_format: Some("mp3_44100_128".into()), ..ok.clone() };
        assert!(matches!(s.validate(), Err(ServiceConfigError::InvalidSetting { field: "output_format", .. })));
        let s = ElevenLabsSettings { max_open_contexts: 6, ..ok.clone() };
        assert!(matches!(s.validate(), Err(ServiceConfigError::InvalidSetting { field: "max_open_contexts", .. })));
        assert!(!format!("{ok:?}").contains("\"k\""));
    }
}
