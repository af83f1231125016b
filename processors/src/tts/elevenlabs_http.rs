//! HTTP streaming fallback: one `POST …/stream` per text chunk, chunks of a turn synthesised in
//! order by one task per turn.
//!
//! Trade-offs: the plain streaming endpoint carries no alignment, so `TtsAudio.words` is empty
//! and `TtsText` carries the whole chunk (use the websocket mode when the assistant context must
//! be cut to the heard words). Each chunk pays a request round trip, unlike the socket. HTTP chunk
//! boundaries are arbitrary, so an odd PCM16 byte is carried into the next chunk. The task stops
//! at the turn's cancellation token (barge-in), dropping the response stream mid-body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use voxline_pipeline::{
    AudioFormat, AudioFrame, Direction, ErrorEvent, Event, Frame, FrameSender, MetricsEvent, TtsAudio,
};

use super::elevenlabs_protocol as proto;
use super::elevenlabs_protocol::ElevenLabsSettings;
use super::elevenlabs_ws::{TtsStats, bump};
use crate::service::ApiKey;

/// Error bodies are read up to this size for the error event.
const MAX_ERROR_BODY: usize = 4096;

/// One turn being synthesised over HTTP.
pub(crate) struct HttpTurn {
    /// Unbounded: one message per sentence of one LLM response.
    tx: mpsc::UnboundedSender<String>,
    task: JoinHandle<()>,
}

impl HttpTurn {
    pub(crate) fn say(&self, text: String) {
        let _ = self.tx.send(text);
    }

    /// No more text: the task finishes what is queued, pushes `TtsStopped` and exits.
    pub(crate) fn finish(self) -> JoinHandle<()> {
        drop(self.tx);
        self.task
    }
}

pub(crate) struct TurnSetup {
    pub(crate) client: reqwest::Client,
    pub(crate) settings: Arc<ElevenLabsSettings>,
    pub(crate) url: String,
    pub(crate) format: AudioFormat,
    pub(crate) context_id: Arc<str>,
    pub(crate) sender: FrameSender,
    pub(crate) token: CancellationToken,
    pub(crate) name: Arc<str>,
    pub(crate) stats: Arc<TtsStats>,
}

pub(crate) fn spawn_turn(setup: TurnSetup) -> HttpTurn {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run_turn(setup, rx));
    HttpTurn { tx, task }
}

struct Turn {
    s: TurnSetup,
    started: bool,
    offset: Duration,
    carry: Option<u8>,
    ttfb_from: Option<Instant>,
}

async fn run_turn(s: TurnSetup, mut rx: mpsc::UnboundedReceiver<String>) {
    let token = s.token.clone();
    let mut t = Turn { s, started: false, offset: Duration::ZERO, carry: None, ttfb_from: None };
    loop {
        let text = tokio::select! {
            () = token.cancelled() => return,
            text = rx.recv() => text,
        };
        let Some(text) = text else { break };
        tokio::select! {
            () = token.cancelled() => return,
            () = t.synthesise(&text) => {}
        }
    }
    if t.started {
        t.s.sender.push(Frame::TtsStopped { context_id: t.s.context_id.clone() }, Direction::Downstream);
    }
}

impl Turn {
    fn error(&self, message: String) {
        tracing::warn!(processor = %self.s.name, %message, "tts error");
        let ev = ErrorEvent { processor: self.s.name.clone(), message: Arc::from(message), fatal: false };
        self.s.sender.emit(Event::Error(ev));
    }

    async fn synthesise(&mut self, text: &str) {
        bump(&self.s.stats.requests);
        if self.ttfb_from.is_none() && !self.started {
            self.ttfb_from = Some(Instant::now());
        }
        let key = self.s.settings.api_key.as_ref().map(ApiKey::expose).unwrap_or_default().to_owned();
        let req = self
            .s
            .client
            .post(&self.s.url)
            .header("xi-api-key", key)
            .json(&proto::http_body(&self.s.settings, text))
            .send();
        let resp = match tokio::time::timeout(self.s.settings.connect_timeout, req).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.error(format!("request failed: {e}")),
            Err(_) => return self.error(format!("no response within {:?}", self.s.settings.connect_timeout)),
        };
        let status = resp.status();
        if !status.is_success() {
            let body = read_error_body(resp).await;
            return self.error(format!("HTTP {}: {body}", status.as_u16()));
        }
        self.carry = None;
        let mut said = false;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return self.error(format!("audio stream broke: {e}")),
            };
            let Some(data) = self.align(chunk) else { continue };
            if !said {
                said = true;
                self.on_first_audio(text);
            }
            let offset = self.offset;
            let frame = AudioFrame { data, format: self.s.format, pts: Some(offset) };
            self.offset += frame.duration();
            let ctx = self.s.context_id.clone();
            let audio = TtsAudio { audio: frame, context_id: ctx, words: Arc::new([]), offset };
            self.s.sender.push(Frame::from(audio), Direction::Downstream);
        }
    }

    fn on_first_audio(&mut self, text: &str) {
        let ctx = self.s.context_id.clone();
        if !self.started {
            self.started = true;
            self.s.sender.push(Frame::TtsStarted { context_id: ctx.clone() }, Direction::Downstream);
            if let Some(t0) = self.ttfb_from.take() {
                let value = t0.elapsed();
                tracing::debug!(processor = %self.s.name, ttfb_ms = value.as_secs_f64() * 1e3, "tts ttfb");
                self.s.sender.emit(Event::Metrics(MetricsEvent::Ttfb { processor: self.s.name.clone(), value }));
            }
        }
        self.s.sender.push(Frame::TtsText { context_id: ctx, text: Arc::from(text.trim()) }, Direction::Downstream);
    }

    /// Whole samples only: carries an odd PCM16 byte into the next chunk.
    fn align(&mut self, chunk: Bytes) -> Option<Bytes> {
        let width = self.s.format.encoding.bytes_per_sample().unwrap_or(1).max(1);
        if width == 1 {
            return (!chunk.is_empty()).then_some(chunk);
        }
        let mut buf = BytesMut::with_capacity(chunk.len() + 1);
        if let Some(b) = self.carry.take() {
            buf.extend_from_slice(&[b]);
        }
        buf.extend_from_slice(&chunk);
        if buf.len() % 2 == 1 {
            self.carry = buf.last().copied();
            buf.truncate(buf.len() - 1);
        }
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

async fn read_error_body(resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(c)) = stream.next().await {
        body.extend_from_slice(&c);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    // `{"detail":{"status":…,"message":…}}` is the documented shape; fall back to the raw body.
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            let d = v.get("detail")?;
            let status = d.get("status").and_then(|x| x.as_str()).unwrap_or("");
            let message = d.get("message").and_then(|x| x.as_str()).unwrap_or("");
            Some(format!("{status}: {message}"))
        })
        .unwrap_or(text)
}
