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
//! caller heard ([`Frame::PlayedUpTo`]). It owns the utterance's buffer: `process` queues audio
//! and returns, and the next chunk is released from an engine timer
//! ([`Context::wake_at`](crate::Context::wake_at)), so pacing never holds the stage busy and never
//! back-pressures the TTS (up to [`OutputParams::max_buffered`]). An interruption reaches the
//! stage at once (it is idle between releases) and clears the queue and the sink in `on_event`:
//! nothing is written after it, and the far end only has the send-ahead to discard.

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
    /// Audio released (and, by the re-base, fully played) on earlier timelines since the last
    /// reset: positions stay continuous across a re-base (an underrun, a pause).
    base: Duration,
}

impl MediaClock {
    /// A clock releasing `chunk`-long chunks with `send_ahead` of lead.
    #[must_use]
    pub fn new(chunk: Duration, send_ahead: Duration) -> Self {
        Self { chunk, send_ahead, t0: None, k: 0, base: Duration::ZERO }
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
            self.base += self.chunk * self.k;
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

    /// Audio played by `now` since the last reset (bounded by what was released).
    #[must_use]
    pub fn played(&self, now: Instant) -> Duration {
        match self.t0 {
            Some(t0) => self.base + now.saturating_duration_since(t0).min(self.chunk * self.k),
            None => self.base,
        }
    }

    /// Audio released since the last reset.
    #[must_use]
    pub fn released(&self) -> Duration {
        self.base + self.chunk * self.k
    }

    /// Take back the last `n` released chunks (the far end discarded them unplayed; they will
    /// be released again). Positions before them are kept.
    pub fn rewind(&mut self, n: u32) {
        self.k = self.k.saturating_sub(n);
    }

    /// Forget the timeline (interruption, or end of an utterance with nothing queued).
    pub fn reset(&mut self) {
        self.t0 = None;
        self.k = 0;
        self.base = Duration::ZERO;
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

    /// `true` if the sink reports play-out itself (e.g. Twilio marks): the transport then pushes
    /// the final `PlayedUpTo { complete: true }` of each utterance upstream into the output stage,
    /// which ends "bot speaking" on the one for the last utterance written.
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
    /// Audio the stage may hold ahead of the clock. Past it, `process` waits for the clock
    /// (backpressure on the TTS) instead of queueing more. Default 5 minutes: a whole answer,
    /// so the TTS is never held back by pacing (and neither is anything before it), while a
    /// runaway producer still cannot grow memory without bound (~2.4 MB of μ-law 8 kHz).
    pub max_buffered: Duration,
    /// Hold the release while the VAD hears the caller over the bot (`UserStartedSpeaking`)
    /// and resume where it stopped if no barge-in follows (`UserStoppedSpeaking` without
    /// `Interrupt`). A cough or an "mm-hmm" then costs the caller a short gap, not the answer,
    /// and a real barge-in is silent from its onset (only the send-ahead was in flight) while
    /// the VAD confirms it. Only when the stream allows interruptions.
    pub pause_on_user_speech: bool,
}

impl Default for OutputParams {
    fn default() -> Self {
        Self {
            chunk: DEFAULT_CHUNK,
            send_ahead: DEFAULT_SEND_AHEAD,
            max_buffered: Duration::from_secs(300),
            pause_on_user_speech: true,
        }
    }
}

/// The utterance being released (or whose last chunk is still playing).
struct Utterance {
    context_id: Arc<str>,
    /// Clock position (released audio) at which this utterance started.
    start_offset: Duration,
    written: Duration,
}

/// What the stage holds ahead of the clock, in release order.
enum Item {
    /// The next chunks belong to this TTS utterance.
    Begin(Arc<str>),
    /// One chunk, released at its slot on the clock.
    Chunk(Bytes, AudioFormat),
    /// Every chunk of this utterance has been queued.
    Done(Arc<str>),
}

/// An utterance fully written whose last chunk has not finished playing yet.
struct Finishing {
    context_id: Arc<str>,
    written: Duration,
    at: Instant,
}

/// Paced audio output stage; see the module docs.
///
/// It owns the utterance's buffer: `process` queues audio and returns at once, and chunks are
/// released from an engine timer ([`Context::wake_at`]). So pacing never holds the stage's call:
/// the TTS before it is not back-pressured by real time, and caller input (which the runner
/// gives every stage ahead of data) is never stuck behind the bot's own speech.
pub struct AudioOutput<S> {
    sink: S,
    clock: MediaClock,
    max_buffered: Duration,
    /// Bytes of the next, still partial, chunk.
    buf: BytesMut,
    format: Option<AudioFormat>,
    queue: std::collections::VecDeque<Item>,
    /// Audio in `queue`.
    queued: Duration,
    /// Context id of the last `Begin` queued (to know when a new utterance starts).
    queued_utterance: Option<Arc<str>>,
    utterance: Option<Utterance>,
    finishing: Option<Finishing>,
    speaking: bool,
    pause_on_user_speech: bool,
    /// Release held while the caller talks over the bot (see [`OutputParams`]).
    paused: bool,
    /// An `InterruptPending` holds the release until `Interrupt` or `InterruptWithdrawn`.
    barge_pending: bool,
    /// The last utterance fully written to a sink that reports play-out itself: its
    /// confirmation, with nothing written since, ends "bot speaking".
    last_done: Option<Arc<str>>,
    /// The last chunks written of the current utterance (the send-ahead and then some): what a
    /// pending barge-in's `clear` discards at the far end, released again on a withdrawal.
    history: std::collections::VecDeque<(Bytes, AudioFormat)>,
    history_cap: usize,
    chunks_written: u64,
}

impl<S> std::fmt::Debug for AudioOutput<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioOutput").finish_non_exhaustive()
    }
}

impl<S: AudioSink> AudioOutput<S> {
    /// An output stage writing to `sink`.
    pub fn new(sink: S, params: OutputParams) -> Self {
        Self {
            sink,
            clock: MediaClock::new(params.chunk, params.send_ahead),
            max_buffered: params.max_buffered,
            buf: BytesMut::with_capacity(4096),
            format: None,
            queue: std::collections::VecDeque::new(),
            queued: Duration::ZERO,
            queued_utterance: None,
            utterance: None,
            finishing: None,
            speaking: false,
            pause_on_user_speech: params.pause_on_user_speech,
            paused: false,
            barge_pending: false,
            last_done: None,
            history: std::collections::VecDeque::new(),
            // Every chunk the far end may hold unplayed: the send-ahead, the chunk playing, and
            // one for a late release.
            history_cap: usize::try_from(params.send_ahead.as_nanos() / params.chunk.as_nanos().max(1))
                .unwrap_or(0)
                .saturating_add(2),
            chunks_written: 0,
        }
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Audio queued ahead of the clock.
    #[must_use]
    pub fn buffered(&self) -> Duration {
        self.queued
    }

    fn chunk_bytes(&self, format: &AudioFormat) -> usize {
        let ms = u32::try_from(self.clock.chunk().as_millis()).unwrap_or(20);
        format.bytes_per_ms(ms).unwrap_or(0).max(1)
    }

    /// Queue audio, cut into chunks; a trailing partial chunk waits for more (or a flush).
    fn accept(&mut self, data: &Bytes, format: AudioFormat) -> FlowResult {
        if format.encoding == AudioEncoding::Opus {
            return Err(crate::FlowError::NotNegotiated {
                processor: "audio_output",
                expected: "PCM or G.711".into(),
                got: format.to_string(),
            });
        }
        if self.format.is_some_and(|f| f != format) {
            self.flush_partial();
        }
        self.format = Some(format);
        let n = self.chunk_bytes(&format);
        if self.buf.is_empty() && data.len().is_multiple_of(n) {
            // The common case (TTS sends whole chunks, or multiples): slice without copying.
            let mut rest = data.clone();
            while !rest.is_empty() {
                self.push_chunk(rest.split_to(n), format);
            }
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        while self.buf.len() >= n {
            let chunk = self.buf.split_to(n).freeze();
            self.push_chunk(chunk, format);
        }
        Ok(())
    }

    fn push_chunk(&mut self, chunk: Bytes, format: AudioFormat) {
        self.queued += self.clock.chunk();
        self.queue.push_back(Item::Chunk(chunk, format));
    }

    /// Queue a trailing partial chunk, padded with the encoding's silence.
    fn flush_partial(&mut self) {
        let Some(format) = self.format else { return };
        if self.buf.is_empty() {
            return;
        }
        let n = self.chunk_bytes(&format);
        let pad = silence_byte(format.encoding);
        self.buf.resize(n, pad);
        let chunk = self.buf.split_to(n).freeze();
        self.push_chunk(chunk, format);
    }

    /// Release everything that is due now; returns when the next release lies in the future
    /// (arming the stage's timer for it) or the queue is empty.
    async fn pump(&mut self, cx: &mut Context) -> FlowResult {
        if self.paused {
            return Ok(());
        }
        loop {
            let now = Instant::now();
            self.report_finished(now, cx).await;
            let Some(item) = self.queue.front() else {
                if let Some(f) = &self.finishing {
                    cx.wake_at(f.at);
                }
                return Ok(());
            };
            if matches!(item, Item::Chunk(..)) {
                let at = self.clock.next_release(now);
                if at > now {
                    cx.wake_at(at);
                    return Ok(());
                }
            }
            match self.queue.pop_front() {
                Some(Item::Begin(id)) => {
                    self.history.clear();
                    self.utterance =
                        Some(Utterance { context_id: id, start_offset: Duration::ZERO, written: Duration::ZERO });
                }
                Some(Item::Chunk(chunk, format)) => {
                    self.queued = self.queued.saturating_sub(self.clock.chunk());
                    self.write(chunk, format, cx).await?;
                }
                Some(Item::Done(id)) => self.utterance_written(id, cx).await,
                None => {}
            }
        }
    }

    async fn write(&mut self, chunk: Bytes, format: AudioFormat, cx: &mut Context) -> FlowResult {
        if self.utterance.is_some() {
            if self.history.len() >= self.history_cap {
                self.history.pop_front();
            }
            // A refcount, not a copy: the ring holds at most a few chunks.
            self.history.push_back((chunk.clone(), format));
        }
        self.sink.write(chunk, format).await?;
        if let Some(u) = self.utterance.as_mut() {
            if u.written.is_zero() {
                // Where the utterance starts on the timeline: taken at its first write, after
                // `next_release` may have re-based the clock.
                u.start_offset = self.clock.released();
            }
            u.written += self.clock.chunk();
        }
        self.clock.advance();
        self.chunks_written += 1;
        if !self.speaking {
            self.speaking = true;
            cx.emit(Event::BotStartedSpeaking);
        }
        Ok(())
    }

    /// Every chunk of utterance `id` has been written to the sink.
    async fn utterance_written(&mut self, id: Arc<str>, cx: &mut Context) {
        self.sink.utterance_done(&id);
        let written = self.utterance.take().map_or(Duration::ZERO, |u| u.written);
        if self.sink.reports_playout() {
            // The far end confirms play-out (a `PlayedUpTo` coming back upstream, see
            // `process`): speaking lasts until it confirms this utterance, the last written.
            self.last_done = Some(id.clone());
        } else {
            // "Stopped speaking" means the caller heard the last chunk, not that it was sent.
            let at = self.clock.play_end().unwrap_or_else(Instant::now);
            self.finishing = Some(Finishing { context_id: id.clone(), written, at });
        }
        cx.push(Frame::TtsStopped { context_id: id }, Direction::Downstream).await;
    }

    /// Report an utterance whose last chunk has now played: complete `PlayedUpTo`, and
    /// `BotStoppedSpeaking` unless the next utterance is already playing.
    async fn report_finished(&mut self, now: Instant, cx: &mut Context) {
        if self.finishing.as_ref().is_none_or(|f| f.at > now) {
            return;
        }
        let Some(f) = self.finishing.take() else { return };
        cx.push(
            Frame::PlayedUpTo { context_id: f.context_id, position: f.written, complete: true },
            Direction::Upstream,
        )
        .await;
        let playing_on = self.utterance.as_ref().is_some_and(|u| u.written > Duration::ZERO);
        if self.speaking && !playing_on {
            self.speaking = false;
            cx.emit(Event::BotStoppedSpeaking);
        }
    }

    /// Wait on the clock and release until at most `limit` of audio is queued.
    async fn drain_to(&mut self, limit: Duration, cx: &mut Context) -> FlowResult {
        // Draining (End, or past the buffer bound) does not wait for a paused caller.
        self.paused = false;
        loop {
            self.pump(cx).await?;
            if self.queued <= limit && (limit > Duration::ZERO || self.queue.is_empty()) {
                return Ok(());
            }
            let at = self.clock.next_release(Instant::now());
            tokio::time::sleep_until(at).await;
        }
    }

    /// A pending barge-in: the far end drops what it holds, so the chunks it had not played go
    /// back to the front of the queue and the timeline steps back over them.
    fn rewind_unplayed(&mut self) {
        let Some(u) = self.utterance.as_mut() else { return };
        let chunk = self.clock.chunk();
        let unplayed = self.clock.released().saturating_sub(self.clock.played(Instant::now()));
        let n = usize::try_from(unplayed.as_nanos().div_ceil(chunk.as_nanos().max(1)))
            .unwrap_or(usize::MAX)
            .min(self.history.len());
        for _ in 0..n {
            if let Some((b, f)) = self.history.pop_back() {
                self.queue.push_front(Item::Chunk(b, f));
                self.queued += chunk;
                u.written = u.written.saturating_sub(chunk);
            }
        }
        self.clock.rewind(u32::try_from(n).unwrap_or(u32::MAX));
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
            if let Frame::PlayedUpTo { context_id, complete: true, .. } = &frame
                && self.speaking
                && self.utterance.is_none()
                && self.last_done.as_ref() == Some(context_id)
                && self.queued.is_zero()
            {
                // The far end played the last utterance written, and nothing follows it.
                self.last_done = None;
                self.speaking = false;
                cx.emit(Event::BotStoppedSpeaking);
            }
            cx.push(frame, direction).await;
            return Ok(());
        }
        match frame {
            Frame::TtsAudio(t) => {
                if self.queued_utterance.as_ref() != Some(&t.context_id) {
                    self.flush_partial();
                    self.queued_utterance = Some(t.context_id.clone());
                    self.queue.push_back(Item::Begin(t.context_id.clone()));
                }
                self.accept(&t.audio.data, t.audio.format)?;
            }
            Frame::OutputAudio(a) => self.accept(&a.data, a.format)?,
            Frame::TtsStopped { context_id } => {
                self.flush_partial();
                if self.queued_utterance.as_ref() == Some(&context_id) {
                    self.queued_utterance = None;
                }
                self.queue.push_back(Item::Done(context_id));
            }
            Frame::End => {
                // Drain: every queued chunk is released and has played before `End` goes on.
                self.flush_partial();
                self.drain_to(Duration::ZERO, cx).await?;
                if let Some(at) = self.finishing.as_ref().map(|f| f.at) {
                    tokio::time::sleep_until(at).await;
                    self.report_finished(Instant::now(), cx).await;
                }
                cx.push(Frame::End, Direction::Downstream).await;
                return Ok(());
            }
            other => {
                cx.push(other, Direction::Downstream).await;
                return Ok(());
            }
        }
        // Past the bound the producer waits for the clock (backpressure); below it, release
        // what is due and return, leaving the rest to the timer.
        if self.queued > self.max_buffered { self.drain_to(self.max_buffered, cx).await } else { self.pump(cx).await }
    }

    async fn on_timer(&mut self, cx: &mut Context) -> FlowResult {
        self.pump(cx).await
    }

    fn on_event(&mut self, event: &Event, cx: &mut Context) -> FlowResult {
        match event {
            Event::UserStartedSpeaking
                if self.pause_on_user_speech
                    && self.speaking
                    && cx.start_info().is_none_or(|s| s.allow_interruptions) =>
            {
                self.paused = true;
                cx.cancel_wake();
            }
            Event::UserStoppedSpeaking if self.paused && !self.barge_pending => {
                // No barge-in came of it: go on from where the caller stopped hearing.
                self.paused = false;
                cx.wake_at(Instant::now());
            }
            Event::InterruptPending if self.speaking && cx.start_info().is_none_or(|s| s.allow_interruptions) => {
                self.barge_pending = true;
                self.paused = true;
                cx.cancel_wake();
                // Mid-utterance: silence the far end now and keep the place. With the whole
                // utterance already written, only its tail (at most the send-ahead) is left to
                // play and there is nothing to come back to: let it finish.
                if let Some(context_id) = self.utterance.as_ref().map(|u| u.context_id.clone()) {
                    self.rewind_unplayed();
                    self.sink.clear();
                    // Report the heard position now: if words confirm the barge-in, the record
                    // of the bot's turn is cut to it before the caller's turn is answered.
                    let position = self.heard();
                    cx.push_now(Frame::PlayedUpTo { context_id, position, complete: false }, Direction::Upstream);
                }
            }
            Event::InterruptWithdrawn if self.barge_pending => {
                self.barge_pending = false;
                self.paused = false;
                cx.wake_at(Instant::now());
            }
            _ => {}
        }
        if matches!(event, Event::Interrupt | Event::Cancel) {
            self.paused = false;
            self.barge_pending = false;
            self.last_done = None;
            self.history.clear();
            let heard = self.heard();
            self.buf.clear();
            self.queue.clear();
            self.queued = Duration::ZERO;
            self.queued_utterance = None;
            self.sink.clear();
            if let Some(u) = self.utterance.take() {
                cx.push_now(
                    Frame::PlayedUpTo { context_id: u.context_id, position: heard, complete: false },
                    Direction::Upstream,
                );
            } else if let Some(f) = self.finishing.take() {
                // Everything was sent but the tail was still playing: the caller heard up to now.
                let played = f.written.saturating_sub(f.at.saturating_duration_since(Instant::now()));
                cx.push_now(
                    Frame::PlayedUpTo { context_id: f.context_id, position: played, complete: false },
                    Direction::Upstream,
                );
            }
            self.finishing = None;
            self.clock.reset();
            cx.cancel_wake();
            if self.speaking {
                self.speaking = false;
                cx.emit(Event::BotStoppedSpeaking);
            }
        }
        Ok(())
    }
}

impl<S> AudioOutput<S> {
    /// Chunks written since the stage was created.
    #[must_use]
    pub fn chunks_written(&self) -> u64 {
        self.chunks_written
    }
}
