//! A generic websocket transport for browser and app clients.
//!
//! Wire format: binary frames are raw PCM16 little-endian mono audio (caller audio in, bot audio
//! out, at the rates given in [`WsParams`]); text frames are JSON control messages with a `type`:
//!
//! | direction | message |
//! |---|---|
//! | client → bot | `{"type":"text","text":"…"}` (typed input), `{"type":"dtmf","digit":"5"}`, `{"type":"interrupt"}`, `{"type":"end"}` |
//! | bot → client | `{"type":"clear"}` (drop buffered audio: barge-in), `{"type":"utterance_done","id":"…"}`, `{"type":"error","message":"…"}` |
//!
//! Unlike Twilio there is no play-out echo, so the output relies on the pacing clock for "bot
//! stopped speaking" (`reports_playout() == false`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use voxline_pipeline::clock::{AudioOutput, AudioSink, OutputParams};
use voxline_pipeline::{AudioEncoding, AudioFormat, AudioFrame, CancellationToken, FlowResult, Frame, PipelineHandle};

/// A control message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Typed user input.
    Text(String),
    /// A key press.
    Dtmf(char),
    /// The user wants the bot to stop talking.
    Interrupt,
    /// The client is leaving.
    End,
}

/// Why a control message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Larger than allowed.
    #[error("message of {0} bytes is too large")]
    Oversized(usize),
    /// Not a known control message.
    #[error("bad control message: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct RawControl {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    digit: Option<String>,
}

/// Parse a client text frame.
pub fn decode_control(text: &str, max_len: usize) -> Result<Control, ControlError> {
    if text.len() > max_len {
        return Err(ControlError::Oversized(text.len()));
    }
    let raw: RawControl = serde_json::from_str(text).map_err(|e| ControlError::Malformed(e.to_string()))?;
    match raw.kind.as_str() {
        "text" => raw.text.map(Control::Text).ok_or_else(|| ControlError::Malformed("text without `text`".into())),
        "dtmf" => {
            let d = raw.digit.unwrap_or_default();
            let mut cs = d.chars();
            match (cs.next(), cs.next()) {
                (Some(c), None) if c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D') => Ok(Control::Dtmf(c)),
                _ => Err(ControlError::Malformed(format!("bad digit {d:?}"))),
            }
        }
        "interrupt" => Ok(Control::Interrupt),
        "end" => Ok(Control::End),
        other => Err(ControlError::Malformed(format!("unknown type {other:?}"))),
    }
}

/// Settings of a websocket session.
#[derive(Debug, Clone)]
pub struct WsParams {
    /// Format of the client's binary audio (PCM16 mono).
    pub input_sample_rate: u32,
    /// Largest text or binary frame accepted.
    pub max_message_bytes: usize,
    /// Output pacing.
    pub output: OutputParams,
}

impl Default for WsParams {
    fn default() -> Self {
        Self { input_sample_rate: 16_000, max_message_bytes: 64 * 1024, output: OutputParams::default() }
    }
}

enum Out {
    Binary(Bytes),
    Text(String),
}

/// Sends paced PCM16 chunks as binary frames; `clear` as a JSON message.
///
/// The channel is unbounded because `clear` must never wait and the pacing clock upstream
/// bounds the audio rate to real time plus the send-ahead.
#[derive(Clone)]
pub struct WsSink {
    out: mpsc::UnboundedSender<Out>,
}

impl std::fmt::Debug for WsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSink").finish_non_exhaustive()
    }
}

impl AudioSink for WsSink {
    async fn write(&mut self, chunk: Bytes, format: AudioFormat) -> FlowResult {
        let pcm = match format.encoding {
            AudioEncoding::Pcm16 => chunk,
            AudioEncoding::Mulaw => voxline_pipeline::g711::decode_mulaw(&chunk),
            _ => {
                return Err(voxline_pipeline::FlowError::NotNegotiated {
                    processor: "ws_sink",
                    expected: "PCM16 or μ-law".into(),
                    got: format.to_string(),
                });
            }
        };
        let _ = self.out.send(Out::Binary(pcm));
        Ok(())
    }

    fn clear(&mut self) {
        let _ = self.out.send(Out::Text(r#"{"type":"clear"}"#.to_string()));
    }

    fn utterance_done(&mut self, context_id: &Arc<str>) {
        let _ =
            self.out.send(Out::Text(serde_json::json!({"type": "utterance_done", "id": &**context_id}).to_string()));
    }
}

/// One client connection.
pub struct WsSession {
    socket: WebSocket,
    params: WsParams,
    out_tx: mpsc::UnboundedSender<Out>,
    out_rx: mpsc::UnboundedReceiver<Out>,
}

impl std::fmt::Debug for WsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSession").finish_non_exhaustive()
    }
}

impl WsSession {
    /// Wrap an upgraded socket.
    #[must_use]
    pub fn new(socket: WebSocket, params: WsParams) -> Self {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        Self { socket, params, out_tx, out_rx }
    }

    /// The paced output stage for the end of the pipeline.
    #[must_use]
    pub fn output(&self) -> AudioOutput<WsSink> {
        AudioOutput::new(WsSink { out: self.out_tx.clone() }, self.params.output.clone())
    }

    /// Pump the socket until the client leaves or `pipeline_done` is cancelled; cancels the
    /// pipeline when the client goes first.
    pub async fn run(self, handle: PipelineHandle, pipeline_done: CancellationToken) {
        let WsSession { socket, params, out_tx, mut out_rx } = self;
        let (mut tx, mut rx) = socket.split();
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let msg = match m {
                    Out::Binary(b) => Message::Binary(b),
                    Out::Text(t) => Message::Text(t.into()),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
            let _ = tx.close().await;
        });
        let format = AudioFormat::pcm16(params.input_sample_rate);
        let client_left = loop {
            let msg = tokio::select! {
                () = pipeline_done.cancelled() => break false,
                m = rx.next() => m,
            };
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    if b.len() > params.max_message_bytes || b.len() % 2 != 0 {
                        let _ =
                            out_tx.send(Out::Text(error_json("audio frame must be PCM16 and within the size limit")));
                        continue;
                    }
                    handle.push_input_audio(Frame::InputAudio(AudioFrame::new(b, format)));
                }
                Some(Ok(Message::Text(t))) => match decode_control(t.as_str(), params.max_message_bytes) {
                    Ok(Control::Text(s)) => {
                        if handle.try_push(Frame::Text(s.into())).is_err() {
                            let _ = out_tx.send(Out::Text(error_json("busy")));
                        }
                    }
                    Ok(Control::Dtmf(c)) => {
                        let _ = handle.try_push(Frame::Dtmf(c));
                    }
                    Ok(Control::Interrupt) => {
                        let _ = handle.interrupt();
                    }
                    Ok(Control::End) => break true,
                    Err(e) => {
                        let _ = out_tx.send(Out::Text(error_json(&e.to_string())));
                    }
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break true,
                Some(Ok(_)) => {}
            }
        };
        if client_left {
            let _ = handle.cancel();
        }
        drop(out_tx);
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
}

fn error_json(message: &str) -> String {
    serde_json::json!({"type": "error", "message": message}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls() {
        assert_eq!(decode_control(r#"{"type":"text","text":"hi"}"#, 100), Ok(Control::Text("hi".into())));
        assert_eq!(decode_control(r##"{"type":"dtmf","digit":"#"}"##, 100), Ok(Control::Dtmf('#')));
        assert_eq!(decode_control(r#"{"type":"interrupt"}"#, 100), Ok(Control::Interrupt));
        assert_eq!(decode_control(r#"{"type":"end"}"#, 100), Ok(Control::End));
        assert!(decode_control(r#"{"type":"dtmf","digit":"xx"}"#, 100).is_err());
        assert!(decode_control(r#"{"type":"nope"}"#, 100).is_err());
        assert!(decode_control("garbage", 100).is_err());
        assert_eq!(decode_control(&"x".repeat(200), 100), Err(ControlError::Oversized(200)));
    }
}
