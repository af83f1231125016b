//! [`CallRecorder`]: records the caller and the bot to one stereo WAV (caller left, bot right),
//! streamed to disk with bounded memory however long the call.
//!
//! Consumes (and forwards unchanged) `InputAudio` for the caller track and `OutputAudio` /
//! `TtsAudio` for the bot track: PCM16 mono at any supported rate, or G.711 (decoded inline);
//! other formats are refused with `NotNegotiated`. Produces nothing new in the pipeline.
//!
//! Alignment: the **caller audio is the clock**. Every caller sample written advances the file by
//! one sample, and the bot track gets the next queued bot sample or silence, so the bot is silent
//! wherever it did not speak and lines up with what the caller heard to within the output
//! transport's send-ahead. Bot audio arrives in bursts (TTS is faster than real time), so it waits
//! in a queue capped at [`CallRecorder::MAX_BOT_QUEUE`] of audio; beyond that the oldest is dropped
//! and counted. On `Event::Interrupt` the queue is cleared: the caller never heard that audio.
//!
//! Finalized (WAV header sizes written) on `End` and on `stop`. Trade-offs: file writes go
//! through a 64 KiB `BufWriter` on the pipeline task (a `write` syscall every ~1 s of 8 kHz
//! stereo audio) rather than a writer thread; a stalled disk therefore stalls this pipeline.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use voxline_pipeline::{AudioEncoding, AudioFrame, Context, Direction, Event, FlowError, FlowResult, Frame, Processor};

use super::pcm;
use super::resample::StreamResampler;
use voxline_pipeline::g711;

/// Counters of a recorder, readable while it runs.
#[derive(Debug, Default)]
pub struct RecorderStats {
    frames_written: AtomicU64,
    bot_dropped: AtomicU64,
    bot_queue_peak: AtomicUsize,
    scratch_peak: AtomicUsize,
}

impl RecorderStats {
    /// Stereo sample frames written to the file so far.
    #[must_use]
    pub fn frames_written(&self) -> u64 {
        self.frames_written.load(Ordering::Relaxed)
    }
    /// Bot samples dropped because the queue was full.
    #[must_use]
    pub fn bot_dropped(&self) -> u64 {
        self.bot_dropped.load(Ordering::Relaxed)
    }
    /// Largest bot queue seen, in samples.
    #[must_use]
    pub fn bot_queue_peak(&self) -> usize {
        self.bot_queue_peak.load(Ordering::Relaxed)
    }
    /// Largest conversion scratch buffer seen, in samples.
    #[must_use]
    pub fn scratch_peak(&self) -> usize {
        self.scratch_peak.load(Ordering::Relaxed)
    }
}

type Writer = hound::WavWriter<BufWriter<File>>;

/// Stereo call recorder. See the module docs.
pub struct CallRecorder {
    path: PathBuf,
    rate: u32,
    writer: Option<Writer>,
    bot: VecDeque<i16>,
    max_bot: usize,
    caller_rs: Option<StreamResampler>,
    bot_rs: Option<StreamResampler>,
    scratch: Vec<i16>,
    stats: Arc<RecorderStats>,
}

impl std::fmt::Debug for CallRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallRecorder").finish_non_exhaustive()
    }
}

impl CallRecorder {
    /// Longest bot audio held waiting for the caller clock.
    pub const MAX_BOT_QUEUE: Duration = Duration::from_secs(30);

    /// Record to `path` (created or truncated at `start`) at `rate` Hz, one of
    /// [`super::SUPPORTED_RATES`].
    pub fn new(path: impl AsRef<Path>, rate: u32) -> Result<Self, FlowError> {
        if !super::SUPPORTED_RATES.contains(&rate) {
            return Err(FlowError::fatal(format!("recorder: unsupported rate {rate} Hz")));
        }
        let max_bot = (Self::MAX_BOT_QUEUE.as_secs_f64() * f64::from(rate)) as usize;
        Ok(Self {
            path: path.as_ref().to_path_buf(),
            rate,
            writer: None,
            bot: VecDeque::with_capacity(rate as usize),
            max_bot,
            caller_rs: None,
            bot_rs: None,
            scratch: Vec::with_capacity(rate as usize / 25),
            stats: Arc::default(),
        })
    }

    /// Shared counters.
    #[must_use]
    pub fn stats(&self) -> Arc<RecorderStats> {
        self.stats.clone()
    }

    fn open(&mut self) -> FlowResult {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: self.rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let file = File::create(&self.path)
            .map_err(|e| FlowError::fatal(format!("recorder: cannot create {}: {e}", self.path.display())))?;
        let writer = hound::WavWriter::new(BufWriter::with_capacity(64 * 1024, file), spec)
            .map_err(|e| FlowError::fatal(format!("recorder: {e}")))?;
        self.writer = Some(writer);
        Ok(())
    }

    fn finalize(&mut self) -> FlowResult {
        if let Some(w) = self.writer.take() {
            w.finalize().map_err(|e| FlowError::fatal(format!("recorder: finalize {}: {e}", self.path.display())))?;
            tracing::debug!(path = %self.path.display(), frames = self.stats.frames_written(), "recording finalized");
        }
        Ok(())
    }

    /// Decode/resample `audio` into `self.scratch` at the recording rate.
    fn decode_to_scratch(&mut self, audio: &AudioFrame, bot: bool) -> FlowResult {
        let fmt = audio.format;
        self.scratch.clear();
        let supported = super::SUPPORTED_RATES.contains(&fmt.sample_rate);
        let samples_ok = matches!(fmt.encoding, AudioEncoding::Pcm16 | AudioEncoding::Mulaw | AudioEncoding::Alaw);
        if fmt.channels != 1 || !supported || !samples_ok {
            let expected = format!("Pcm16, Mulaw or Alaw x1 at one of {:?} Hz", super::SUPPORTED_RATES);
            return Err(pcm::not_negotiated("call_recorder", expected, &fmt));
        }
        let decoded: &mut dyn Iterator<Item = i16> = match fmt.encoding {
            AudioEncoding::Mulaw => &mut audio.data.iter().map(|&b| g711::mulaw_decode(b)),
            AudioEncoding::Alaw => &mut audio.data.iter().map(|&b| g711::alaw_decode(b)),
            _ => {
                pcm::check_whole_samples("call_recorder", audio.data.len(), 2)?;
                &mut pcm::pcm16_samples(&audio.data)
            }
        };
        if fmt.sample_rate == self.rate {
            self.scratch.extend(decoded);
        } else {
            let slot = if bot { &mut self.bot_rs } else { &mut self.caller_rs };
            if slot.as_ref().is_none_or(|r| r.in_rate() != fmt.sample_rate) {
                *slot = Some(
                    StreamResampler::new(fmt.sample_rate, self.rate).map_err(|e| FlowError::fatal(e.to_string()))?,
                );
            }
            if let Some(rs) = slot.as_mut() {
                let scratch = &mut self.scratch;
                rs.push(decoded, |c| scratch.extend(c.iter().map(|&x| pcm::f32_to_i16(x))))?;
            }
        }
        self.stats.scratch_peak.fetch_max(self.scratch.len(), Ordering::Relaxed);
        Ok(())
    }

    fn write_caller(&mut self) -> FlowResult {
        let Some(w) = self.writer.as_mut() else { return Ok(()) };
        for &c in &self.scratch {
            let b = self.bot.pop_front().unwrap_or(0);
            w.write_sample(c)
                .and_then(|()| w.write_sample(b))
                .map_err(|e| FlowError::fatal(format!("recorder: write: {e}")))?;
        }
        self.stats.frames_written.fetch_add(self.scratch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn queue_bot(&mut self) {
        let overflow = (self.bot.len() + self.scratch.len()).saturating_sub(self.max_bot);
        if overflow > 0 {
            let drop_now = overflow.min(self.bot.len());
            self.bot.drain(..drop_now);
            self.stats.bot_dropped.fetch_add(overflow as u64, Ordering::Relaxed);
        }
        let skip = overflow.saturating_sub(self.bot.len().min(overflow)).min(self.scratch.len());
        let keep = self.scratch.len().saturating_sub(self.max_bot);
        self.bot.extend(&self.scratch[skip.max(keep)..]);
        self.stats.bot_queue_peak.fetch_max(self.bot.len(), Ordering::Relaxed);
    }

    fn handle(&mut self, frame: &Frame) -> FlowResult {
        match frame {
            Frame::InputAudio(a) if !a.data.is_empty() => {
                self.decode_to_scratch(a, false)?;
                self.write_caller()
            }
            Frame::OutputAudio(a) if !a.data.is_empty() => {
                self.decode_to_scratch(a, true)?;
                self.queue_bot();
                Ok(())
            }
            Frame::TtsAudio(t) if !t.audio.data.is_empty() => {
                self.decode_to_scratch(&t.audio, true)?;
                self.queue_bot();
                Ok(())
            }
            Frame::End => self.finalize(),
            _ => Ok(()),
        }
    }
}

impl Processor for CallRecorder {
    fn name(&self) -> &str {
        "call_recorder"
    }

    async fn start(&mut self, _cx: &mut Context) -> FlowResult {
        self.open()
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        // Record first, forward always: a recording problem must not eat the call's audio.
        let result = self.handle(&frame);
        cx.push(frame, direction).await;
        result
    }

    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        if matches!(event, Event::Interrupt) {
            self.bot.clear();
        }
        Ok(())
    }

    async fn stop(&mut self, _cx: &mut Context) -> FlowResult {
        self.finalize()
    }
}
