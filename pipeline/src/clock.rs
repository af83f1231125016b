//! The media clock and paced audio output.
//!
//! [`MediaClock`] schedules 20 ms chunks against a monotonic clock on an absolute timeline
//! (`t0 + k·chunk`), so rounding never accumulates into drift. A configurable *send-ahead* lets
//! the first chunks of an utterance go out at once to fill the far end's jitter buffer; after that
//! one chunk leaves per chunk period. If the producer falls behind real time (the far end ran
//! dry), the timeline is re-based at the next chunk.
//!
//! [`AudioOutput`] is the output stage every transport uses: it re-chunks audio of any size into
//! 20 ms chunks, releases them to an [`AudioSink`] on the clock, reports speaking state
//! (`BotStartedSpeaking` / `BotStoppedSpeaking`) and, upstream, how much of each utterance the
//! caller heard ([`Frame::PlayedUpTo`]). Because the wait for the next release happens inside
//! `process`, an interruption cancels it centrally: release stops within one chunk (at most the
//! send-ahead already sent, which the sink's `clear` discards at the far end).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::context::Context;
use crate::error::FlowResult;
use crate::event::Event;
use crate::frame::{AudioEncoding, AudioFormat, Direction, Frame};
use crate::processor::Processor;

/// Default chunk length for telephony and websocket output.
pub const DEFAULT_CHUNK: Duration = Duration::from_millis(20);
/// Default send-ahead: two chunks in the far end's buffer absorb network jitter while keeping a
/// barge-in audible within ~40 ms even before the far end is cleared.
pub const DEFAULT_SEND_AHEAD: Duration = Duration::from_millis(40);

/// Schedules chunk releases on an absolute timeline.
#[derive(Debug, Clone)]
pub struct MediaClock {
    chunk: Duration,
    send_ahead: Duration,
    t0: Option<Instant>,
    k: u32,
}

impl MediaClock {
    /// A clock releasing `chunk`-long chunks with `send_ahead` of lead.
    #[must_use]
    pub fn new(chunk: Duration, send_ahead: Duration) -> Self {
        Self { chunk, send_ahead, t0: None, k: 0 }
    }

    /// Chunk length.
    #[must_use]
    pub fn chunk(&self) -> Duration {
        self.chunk
    }

    /// When the next chunk should be released, given the time now. Starts (or re-bases) the
    /// timeline when idle or when the far end would already have run dry.
    pub fn next_release(&mut self, now: Instant) -> Instant {
        let play_at = match self.t0 {
            Some(t0) => t0 + self.chunk * self.k,
            None => now,
        };
        if self.t0.is_none() || play_at < now {
            self.t0 = Some(now);
            self.k = 0;
            return now;
        }
        play_at.checked_sub(self.send_ahead).unwrap_or(play_at).max(now.min(play_at))
    }

    /// Record that the chunk scheduled by [`next_release`](Self::next_release) was released.
    pub fn advance(&mut self) {
        self.k = self.k.saturating_add(1);
    }

    /// When the audio released so far finishes playing, if the clock is running.
    #[must_use]
    pub fn play_end(&self) -> Option<Instant> {
        self.t0.map(|t0| t0 + self.chunk * self.k)
    }

    /// Audio played by `now` since the timeline started (bounded by what was released).
    #[must_use]
    pub fn played(&self, now: Instant) -> Duration {
        match self.t0 {
            Some(t0) => now.saturating_duration_since(t0).min(self.chunk * self.k),
            None => Duration::ZERO,
        }
    }

    /// Forget the timeline (interruption, or end of an utterance with nothing queued).
    pub fn reset(&mut self) {
        self.t0 = None;
        self.k = 0;
    }
}

/// Where paced output audio goes: a websocket, a file, a null writer in a benchmark.
pub trait AudioSink: Send + 'static {
    /// Write one chunk, at its release time.
    fn write(&mut self, chunk: Bytes, format: AudioFormat) -> impl Future<Output = FlowResult> + Send;

    /// Discard whatever the far end has buffered and not yet played (barge-in). Must not wait.
    fn clear(&mut self) {}

    /// Every chunk of utterance `context_id` has been written.
    fn utterance_done(&mut self, context_id: &Arc<str>) {
        let _ = context_id;
    }

    /// `true` if the sink reports play-out itself (e.g. Twilio marks); the output then leaves
    /// `BotStoppedSpeaking` and the final `PlayedUpTo` of a complete utterance to the transport.
    fn reports_playout(&self) -> bool {
        false
    }
}

/// Settings of [`AudioOutput`].
#[derive(Debug, Clone)]
pub struct OutputParams {
    /// Chunk length.
    pub chunk: Duration,
    /// Lead over real time.
    pub send_ahead: Duration,
}

impl Default for OutputParams {
    fn default() -> Self {
        Self { chunk: DEFAULT_CHUNK, send_ahead: DEFAULT_SEND_AHEAD }
    }
}

struct Utterance {
    context_id: Arc<str>,
    /// Clock position (released audio) at which this utterance started.
    start_offset: Duration,
    written: Duration,
}

/// Paced audio output stage; see the module docs.
pub struct AudioOutput<S> {
    sink: S,
    clock: MediaClock,
    buf: BytesMut,
    format: Option<AudioFormat>,
    utterance: Option<Utterance>,
    speaking: bool,
    chunks_written: u64,
}

impl<S: AudioSink> AudioOutput<S> {
    /// An output stage writing to `sink`.
    pub fn new(sink: S, params: OutputParams) -> Self {
        Self {
            sink,
            clock: MediaClock::new(params.chunk, params.send_ahead),
            buf: BytesMut::with_capacity(4096),
            format: None,
            utterance: None,
            speaking: false,
            chunks_written: 0,
        }
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    fn chunk_bytes(&self, format: &AudioFormat) -> usize {
        let ms = u32::try_from(self.clock.chunk().as_millis()).unwrap_or(20);
        format.bytes_per_ms(ms).unwrap_or(0).max(1)
    }

    async fn release(&mut self, chunk: Bytes, format: AudioFormat, cx: &mut Context) -> FlowResult {
        let at = self.clock.next_release(Instant::now());
        tokio::time::sleep_until(at).await;
        self.sink.write(chunk, format).await?;
        self.clock.advance();
        self.chunks_written += 1;
        if let Some(u) = self.utterance.as_mut() {
            u.written += self.clock.chunk();
        }
        if !self.speaking {
            self.speaking = true;
            cx.emit(Event::BotStartedSpeaking);
        }
        Ok(())
    }

    async fn accept(&mut self, data: &Bytes, format: AudioFormat, cx: &mut Context) -> FlowResult {
        if format.encoding == AudioEncoding::Opus {
            return Err(crate::FlowError::NotNegotiated {
                processor: "audio_output",
                expected: "PCM or G.711".into(),
                got: format.to_string(),
            });
        }
        if self.format.is_some_and(|f| f != format) {
            self.flush(cx).await?;
        }
        self.format = Some(format);
        self.buf.extend_from_slice(data);
        let n = self.chunk_bytes(&format);
        while self.buf.len() >= n {
            let chunk = self.buf.split_to(n).freeze();
            self.release(chunk, format, cx).await?;
        }
        Ok(())
    }

    /// Release a trailing partial chunk, padded with the encoding's silence.
    async fn flush(&mut self, cx: &mut Context) -> FlowResult {
        let Some(format) = self.format else { return Ok(()) };
        if self.buf.is_empty() {
            return Ok(());
        }
        let n = self.chunk_bytes(&format);
        let pad = silence_byte(format.encoding);
        self.buf.resize(n, pad);
        let chunk = self.buf.split_to(n).freeze();
        self.release(chunk, format, cx).await
    }

    fn heard(&self) -> Duration {
        let played = self.clock.played(Instant::now());
        match &self.utterance {
            Some(u) => played.saturating_sub(u.start_offset).min(u.written),
            None => Duration::ZERO,
        }
    }
}

/// The byte that encodes silence in `encoding` (G.711 silence is not zero).
#[must_use]
pub fn silence_byte(encoding: AudioEncoding) -> u8 {
    match encoding {
        AudioEncoding::Mulaw => 0xFF,
        AudioEncoding::Alaw => 0xD5,
        _ => 0,
    }
}

impl<S: AudioSink> Processor for AudioOutput<S> {
    fn name(&self) -> &str {
        "audio_output"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        if direction == Direction::Upstream {
            cx.push(frame, direction).await;
            return Ok(());
        }
        match frame {
            Frame::TtsAudio(t) => {
                let new_utt = self.utterance.as_ref().is_none_or(|u| u.context_id != t.context_id);
                if new_utt {
                    let start_offset = self.clock.chunk() * u32::try_from(self.clock_k()).unwrap_or(u32::MAX);
                    self.utterance =
                        Some(Utterance { context_id: t.context_id.clone(), start_offset, written: Duration::ZERO });
                }
                self.accept(&t.audio.data, t.audio.format, cx).await
            }
            Frame::OutputAudio(a) => self.accept(&a.data, a.format, cx).await,
            Frame::TtsStopped { context_id } => {
                self.flush(cx).await?;
                self.sink.utterance_done(&context_id);
                if !self.sink.reports_playout() {
                    if let Some(end) = self.clock.play_end() {
                        // "Stopped speaking" means the caller heard the last chunk, not that we sent it.
                        tokio::time::sleep_until(end).await;
                    }
                    let written = self.utterance.as_ref().map_or(Duration::ZERO, |u| u.written);
                    cx.push(
                        Frame::PlayedUpTo { context_id: context_id.clone(), position: written, complete: true },
                        Direction::Upstream,
                    )
                    .await;
                    if self.speaking {
                        self.speaking = false;
                        cx.emit(Event::BotStoppedSpeaking);
                    }
                    self.utterance = None;
                } else {
                    // The transport announces the stop (from the far end's echo); this stage only
                    // re-arms so the next utterance announces its start again.
                    self.speaking = false;
                    self.utterance = None;
                }
                cx.push(Frame::TtsStopped { context_id }, Direction::Downstream).await;
                Ok(())
            }
            Frame::End => {
                self.flush(cx).await?;
                cx.push(Frame::End, Direction::Downstream).await;
                Ok(())
            }
            other => {
                cx.push(other, Direction::Downstream).await;
                Ok(())
            }
        }
    }

    fn on_event(&mut self, event: &Event, cx: &mut Context) -> FlowResult {
        if matches!(event, Event::Interrupt | Event::Cancel) {
            let heard = self.heard();
            self.buf.clear();
            self.sink.clear();
            if let Some(u) = self.utterance.take() {
                cx.push_now(
                    Frame::PlayedUpTo { context_id: u.context_id, position: heard, complete: false },
                    Direction::Upstream,
                );
            }
            self.clock.reset();
            if self.speaking {
                self.speaking = false;
                cx.emit(Event::BotStoppedSpeaking);
            }
        }
        Ok(())
    }
}

impl<S> AudioOutput<S> {
    fn clock_k(&self) -> u64 {
        u64::from(self.clock.k)
    }

    /// Chunks written since the stage was created.
    #[must_use]
    pub fn chunks_written(&self) -> u64 {
        self.chunks_written
    }
}
