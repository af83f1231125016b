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
//!   when [`LiveSettings::pass_through_audio`](super::LiveSettings::pass_through_audio) is set; `Event::Metrics(Ttfb)` measured from
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
use super::live::{self, Control, LiveHandle, SttStats};
use crate::service::ServiceConfigError;

pub use super::deepgram_protocol::{
    DEFAULT_BASE_URL, DEFAULT_INTERIM_RESULTS, DEFAULT_LANGUAGE, DEFAULT_MODEL, DEFAULT_PUNCTUATE,
    DEFAULT_SMART_FORMAT, DEFAULT_UTTERANCE_END_MS, DEFAULT_VAD_EVENTS, DeepgramSettings, Endpointing,
};

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
    pub fn new(settings: DeepgramSettings) -> Result<Self, ServiceConfigError> {
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
        assert_eq!(err, ServiceConfigError::MissingApiKey { env_var: "DEEPGRAM_API_KEY".into() });
        assert!(err.to_string().contains("DEEPGRAM_API_KEY"));
    }

    #[test]
    fn validation_names_fields() {
        let s = DeepgramSettings { api_key: Some("k".into()), base_url: "https://x".into(), ..Default::default() };
        assert!(matches!(s.validate(), Err(ServiceConfigError::InvalidSetting { field: "base_url", .. })));
        let s = DeepgramSettings { api_key: Some("k".into()), interim_results: false, ..Default::default() };
        assert!(matches!(s.validate(), Err(ServiceConfigError::InvalidSetting { field: "utterance_end_ms", .. })));
        let s = DeepgramSettings { api_key: Some("k".into()), utterance_end_ms: Some(0), ..Default::default() };
        assert!(matches!(s.validate(), Err(ServiceConfigError::InvalidSetting { field: "utterance_end_ms", .. })));
        let s = DeepgramSettings {
            api_key: Some("k".into()),
            endpointing: Endpointing::SilenceMs(0),
            ..Default::default()
        };
        assert!(matches!(s.validate(), Err(ServiceConfigError::InvalidSetting { field: "endpointing", .. })));
    }

    #[test]
    fn debug_redacts_the_key() {
        let s = DeepgramSettings { api_key: Some("secret123".into()), ..Default::default() };
        assert!(!format!("{s:?}").contains("secret123"));
    }
}
