//! [`Mixer`]: a looped background track (hold music, office ambience) under the bot's audio.
//!
//! Consumes PCM16 mono `OutputAudio` and `TtsAudio` at the configured rate and produces the same
//! frames (TTS words, context ids and `pts` kept) with the background added at
//! [`MixerConfig::level_db`], saturating at full scale. Everything else passes through; a bot
//! frame in another format is refused with `NotNegotiated`.
//!
//! The track is loaded once (`hound`: 8–32-bit integer or float WAV, any channel count, mixed
//! down to mono), resampled once to the output rate and scaled to the level, so mixing a frame is
//! one saturating add per sample.
//!
//! **Background during bot silence.** The output stage only plays what it is given, so silence
//! between bot turns would be silence, not background. Unless [`MixerConfig::pause_when_silent`]
//! is set, the mixer runs a small task (spawned in `start`, stopped in `stop` or on drop) that
//! pushes a 20 ms `OutputAudio` background frame every 20 ms through a stream sender
//! ([`Context::stream_sender`]: the track outlives every turn, so the engine keeps its frames on
//! the current epoch) while the bot is idle. "Idle" is the playback side's view: it ends as soon as a bot audio frame
//! passes (so idle frames never queue up between speech frames) or `BotStartedSpeaking` arrives,
//! and begins again at `BotStoppedSpeaking` (the output transport has played everything) or at an
//! interruption (queued bot audio is discarded). Idle frames carry no `pts`. The track position
//! is shared by both paths, so the music runs on continuously across turns. With
//! `pause_when_silent` there is no task: the track only advances under bot audio and resumes
//! where it stopped.
//!
//! Trade-offs: the idle task is paced by the tokio timer, not by the output clock, so a loaded
//! runtime can leave a short gap in the background (never a backlog: late ticks are delayed, not
//! bunched). The loop seam is a plain jump; pick a track that loops cleanly.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio_util::sync::CancellationToken;
use voxline_pipeline::sync::lock;
use voxline_pipeline::{
    AudioFormat, AudioFrame, Context, Direction, Event, FlowError, FlowResult, Frame, Processor, StreamSender,
};

use super::convert::db_to_gain;
use super::pcm::{self, AudioCounters, AudioPath};
use super::resample::StreamResampler;

/// Mixer settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixerConfig {
    /// Output sample rate: bot audio must arrive at this rate (PCM16 mono).
    pub sample_rate: u32,
    /// Background level relative to the track as recorded, in dB (e.g. -20).
    pub level_db: f32,
    /// Stop the background while the bot is silent (and resume it where it stopped).
    pub pause_when_silent: bool,
}

impl Default for MixerConfig {
    fn default() -> Self {
        Self { sample_rate: 16_000, level_db: -20.0, pause_when_silent: false }
    }
}

/// What the mixer did, readable while it runs.
#[derive(Debug, Default)]
pub struct MixerStats {
    mixed: std::sync::atomic::AtomicU64,
    idle: std::sync::atomic::AtomicU64,
}

impl MixerStats {
    /// Bot frames that got background mixed in.
    #[must_use]
    pub fn mixed_frames(&self) -> u64 {
        self.mixed.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Background-only frames emitted during bot silence.
    #[must_use]
    pub fn idle_frames(&self) -> u64 {
        self.idle.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// State shared by the processor and its idle task.
struct Shared {
    track: Arc<[i16]>,
    pos: usize,
    /// Bot audio is queued or playing: no idle frames.
    bot_active: bool,
    idle_buf: BytesMut,
}

impl Shared {
    /// Add the next `out.len()` background samples into `out`, saturating, and advance.
    fn mix_into(&mut self, out: &mut [u8]) {
        let n = self.track.len();
        if n == 0 {
            return;
        }
        for pair in out.chunks_exact_mut(2) {
            let bot = i16::from_le_bytes([pair[0], pair[1]]);
            let mixed = bot.saturating_add(self.track[self.pos]);
            pair.copy_from_slice(&mixed.to_le_bytes());
            self.pos += 1;
            if self.pos == n {
                self.pos = 0;
            }
        }
    }
}

/// Background-track mixer. See the module docs.
pub struct Mixer {
    config: MixerConfig,
    shared: Arc<Mutex<Shared>>,
    out: BytesMut,
    stop: CancellationToken,
    counters: Arc<AudioCounters>,
    stats: Arc<MixerStats>,
}

impl std::fmt::Debug for Mixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mixer").finish_non_exhaustive()
    }
}

impl Mixer {
    /// Load the background from a WAV file (see the module docs for what is accepted).
    pub fn from_wav(path: impl AsRef<Path>, config: MixerConfig) -> Result<Self, FlowError> {
        let path = path.as_ref();
        let what = |e: hound::Error| FlowError::fatal(format!("mixer: background {}: {e}", path.display()));
        let mut reader = hound::WavReader::open(path).map_err(what)?;
        let spec = reader.spec();
        let channels = usize::from(spec.channels.max(1));
        let interleaved: Vec<f32> = match spec.sample_format {
            hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>().map_err(what)?,
            hound::SampleFormat::Int => {
                let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
                reader.samples::<i32>().map(|s| s.map(|v| v as f32 * scale)).collect::<Result<_, _>>().map_err(what)?
            }
        };
        let mono: Vec<f32> =
            interleaved.chunks_exact(channels).map(|c| c.iter().sum::<f32>() / channels as f32).collect();
        Self::from_f32(&mono, spec.sample_rate, config)
    }

    /// Use `samples` (mono PCM16 at `rate`) as the background.
    pub fn from_samples(samples: &[i16], rate: u32, config: MixerConfig) -> Result<Self, FlowError> {
        let f: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
        Self::from_f32(&f, rate, config)
    }

    fn from_f32(mono: &[f32], rate: u32, config: MixerConfig) -> Result<Self, FlowError> {
        if !config.level_db.is_finite() || config.level_db > 0.0 {
            return Err(FlowError::fatal(format!("mixer: level_db must be finite and <= 0, got {}", config.level_db)));
        }
        if mono.is_empty() {
            return Err(FlowError::fatal("mixer: the background track is empty"));
        }
        let gain = db_to_gain(config.level_db);
        let scaled: Vec<i16> = if rate == config.sample_rate {
            // NaN in a float WAV is silence, like everywhere else in the audio path.
            mono.iter().map(|&x| if x.is_finite() { pcm::f32_to_i16(x * gain) } else { 0 }).collect()
        } else {
            let mut rs =
                StreamResampler::new(rate, config.sample_rate).map_err(|e| FlowError::fatal(format!("mixer: {e}")))?;
            let as_i16 = mono.iter().map(|&x| if x.is_finite() { pcm::f32_to_i16(x) } else { 0 });
            // Pad so the filter releases the tail, then drop its delay from the front.
            let pad = std::iter::repeat_n(0i16, rate as usize / 25);
            let mut out = Vec::with_capacity(mono.len() * config.sample_rate as usize / rate as usize + 1024);
            rs.push(as_i16.chain(pad), |chunk| out.extend(chunk.iter().map(|&x| pcm::f32_to_i16(x * gain))))?;
            let want = (mono.len() as u64 * u64::from(config.sample_rate) / u64::from(rate)) as usize;
            let start = rs.delay_samples().min(out.len());
            out.drain(..start);
            out.truncate(want);
            out
        };
        if scaled.is_empty() {
            return Err(FlowError::fatal("mixer: the background track is shorter than one sample at the output rate"));
        }
        let shared = Shared {
            track: scaled.into(),
            pos: 0,
            bot_active: false,
            idle_buf: BytesMut::with_capacity(config.sample_rate as usize / 25 * 4),
        };
        Ok(Self {
            config,
            shared: Arc::new(Mutex::new(shared)),
            out: BytesMut::new(),
            stop: CancellationToken::new(),
            counters: Arc::default(),
            stats: Arc::default(),
        })
    }

    /// Shared counters (frames mixed, rejections).
    #[must_use]
    pub fn counters(&self) -> Arc<AudioCounters> {
        self.counters.clone()
    }

    /// Mixed and idle frame counts.
    #[must_use]
    pub fn stats(&self) -> Arc<MixerStats> {
        self.stats.clone()
    }

    /// The background as it is mixed (resampled and scaled), for tests and diagnostics.
    #[must_use]
    pub fn track(&self) -> Arc<[i16]> {
        lock(&self.shared).track.clone()
    }

    /// Mix the background under one bot frame outside a pipeline.
    pub fn mix(&mut self, audio: &AudioFrame) -> Result<AudioFrame, FlowError> {
        let r = self.mix_inner(audio);
        pcm::counted(&self.counters, r)
    }

    fn mix_inner(&mut self, audio: &AudioFrame) -> Result<AudioFrame, FlowError> {
        pcm::expect_pcm16_mono("mixer", &audio.format, Some(self.config.sample_rate))?;
        pcm::check_whole_samples("mixer", audio.data.len(), 2)?;
        self.out.extend_from_slice(&audio.data);
        {
            let mut s = lock(&self.shared);
            s.bot_active = true;
            s.mix_into(&mut self.out);
        }
        self.counters.frame();
        self.stats.mixed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(AudioFrame { data: self.out.split().freeze(), format: audio.format, pts: audio.pts })
    }

    fn set_idle(&self) {
        lock(&self.shared).bot_active = false;
    }
}

/// Pushes a background frame every 20 ms while the bot is idle (see the module docs).
async fn idle_loop(
    shared: Arc<Mutex<Shared>>,
    stats: Arc<MixerStats>,
    rate: u32,
    stop: CancellationToken,
    sender: StreamSender,
) {
    const TICK: Duration = Duration::from_millis(20);
    let samples = rate as usize / 50;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let frame = {
            let mut s = lock(&shared);
            if s.bot_active {
                continue;
            }
            let mut buf = std::mem::take(&mut s.idle_buf);
            buf.resize(samples * 2, 0);
            s.mix_into(&mut buf);
            let data = buf.split().freeze();
            s.idle_buf = buf;
            AudioFrame::new(data, AudioFormat::pcm16(rate))
        };
        if !sender.push(Frame::OutputAudio(frame), Direction::Downstream) {
            return; // the pipeline ended
        }
        stats.idle.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Mixer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Processor for Mixer {
    fn name(&self) -> &str {
        "mixer"
    }

    async fn start(&mut self, cx: &mut Context) -> FlowResult {
        if !self.config.pause_when_silent {
            let (shared, stats) = (self.shared.clone(), self.stats.clone());
            let task = idle_loop(shared, stats, self.config.sample_rate, self.stop.clone(), cx.stream_sender());
            tokio::spawn(task);
        }
        Ok(())
    }

    async fn stop(&mut self, _cx: &mut Context) -> FlowResult {
        self.stop.cancel();
        Ok(())
    }

    /// 1:1 and synchronous (idle frames come from the task, not from here).
    fn process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        match pcm::split(frame, AudioPath::Output) {
            Ok((audio, wrap)) => {
                let mixed = self.mix(&audio)?;
                cx.push_now(wrap.wrap(mixed), direction);
            }
            Err(other) => cx.push_now(other, direction),
        }
        Ok(None)
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        match pcm::split(frame, AudioPath::Output) {
            Ok((audio, wrap)) => {
                let mixed = self.mix(&audio)?;
                cx.push(wrap.wrap(mixed), direction).await;
            }
            Err(other) => cx.push(other, direction).await,
        }
        Ok(())
    }

    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        match event {
            Event::BotStartedSpeaking => lock(&self.shared).bot_active = true,
            // An interruption discarded the queued bot audio: the caller hears only background
            // again. (The idle task's sender needs nothing: the engine keeps it current.)
            Event::BotStoppedSpeaking | Event::Interrupt => self.set_idle(),
            _ => {}
        }
        Ok(())
    }
}
