//! [`Resampler`]: streaming sample-rate conversion of mono PCM16: exact 2× ratios on a polyphase
//! FIR, every other pair on rubato's FFT resampler.
//!
//! Consumes PCM16 mono `InputAudio` (or, with [`Resampler::on`], `OutputAudio`/`TtsAudio`) at the
//! configured input rate; produces PCM16 mono at the output rate, one output frame per input
//! frame that yielded samples, carrying the input frame's `pts` (and TTS words/context). Other
//! frames pass through.
//!
//! Choices and trade-offs:
//! - **2× ratios (8↔16 kHz, 24↔48 kHz, …) on a polyphase FIR** (`poly2x.rs`): the telephone path
//!   runs this on every caller frame of every call, and it costs a fraction of the FFT
//!   resampler's instructions, with 2.375 ms delay (rubato: 2.5 ms), flat to 3 kHz at 8 kHz and nothing
//!   imaged or aliased across the lower Nyquist frequency (see its tests). Output is produced at
//!   once, without waiting for 20 ms blocks.
//! - **Other pairs on rubato `Fft` with small sub-chunks** (`new_custom`, a 5 ms input block): the delay of an
//!   FFT resampler is half its output block, so 5 ms blocks cost 2.5 ms (e.g. 40 output samples for
//!   8k→16k) against 10 ms with rubato's default block. The smaller block moves the anti-alias
//!   cutoff down a little (the 1 kHz round trip stays above 60 dB SNR, see the tests). The block
//!   must be a whole multiple of `rate / gcd(rates)` and divide the 20 ms chunk, so pairs mixing
//!   the 44.1 kHz family with the 8 kHz family get bigger blocks: measured delays are 2.5 ms for
//!   every pair among 8/16/24/48 kHz, 3.3 ms for 22.05↔24/48 and 22.05↔44.1, 5 ms for
//!   8/16↔44.1, 10 ms for 8/16↔22.05. Synchronous (fixed ratio) on purpose: input and output clocks are the same
//!   machine's, there is no drift to chase. [`Resampler::delay`] reports the delay.
//! - **State across frames:** the filter overlap lives in rubato, so chunk edges are seamless.
//! - **Any frame size:** input is accumulated and resampled (by rubato) in 20 ms chunks; a frame shorter
//!   than 20 ms may yield no output (nothing is pushed then) and a later one yields more. Frames
//!   of exactly 20 ms always yield exactly 20 ms at the output rate.
//! - **Steady state allocates only the output payload**: the f32 scratch buffers are sized at
//!   construction and the output `BytesMut` is reclaimed once downstream drops the previous frame.
//! - The last `delay()` worth of audio stays in the filter at `End` (as in every streaming
//!   resampler): a 2.5 ms tail of a call.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _, WindowFunction};
use voxline_pipeline::{AudioFormat, AudioFrame, Context, Direction, FlowError, FlowResult, Frame, Processor};

use super::pcm::{self, AudioCounters, AudioPath};
use super::poly2x::{Band, Poly2x, Ratio};

/// Sample rates the resampler accepts on either side.
pub const SUPPORTED_RATES: [u32; 6] = [8000, 16_000, 22_050, 24_000, 44_100, 48_000];

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Why a resampler could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResamplerError {
    /// A rate outside [`SUPPORTED_RATES`].
    #[error("unsupported sample rate {rate} Hz (supported: 8000, 16000, 22050, 24000, 44100, 48000)")]
    UnsupportedRate {
        /// The rejected rate.
        rate: u32,
    },
    /// rubato refused the configuration.
    #[error("resampler construction failed: {0}")]
    Construction(String),
}

/// Exact 2× ratios take the polyphase FIR (the telephone hot path); every other pair rubato.
enum Engine {
    Poly2x(Poly2x),
    Fft(Box<Fft<f32>>),
}

/// The resampling core without the processor plumbing: usable from other processors (the mixer,
/// tests) that need to convert a buffer of i16 samples.
pub struct StreamResampler {
    inner: Engine,
    in_rate: u32,
    out_rate: u32,
    chunk_in: usize,
    pending: Vec<f32>,
    scratch_out: Vec<f32>,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler").finish_non_exhaustive()
    }
}

impl StreamResampler {
    /// A streaming resampler `in_rate` → `out_rate` (both in [`SUPPORTED_RATES`]).
    pub fn new(in_rate: u32, out_rate: u32) -> Result<Self, ResamplerError> {
        Self::build(in_rate, out_rate, Band::Full)
    }

    /// The same for audio that is only analysed, never heard (the VAD): 2× ratios keep a
    /// narrower band (−6 dB at 0.65 of the lower Nyquist frequency, 2.6 kHz at 8 kHz), which keeps
    /// μ-law's signal-following quantisation noise out of the analysis; other ratios are as
    /// [`StreamResampler::new`].
    pub fn for_analysis(in_rate: u32, out_rate: u32) -> Result<Self, ResamplerError> {
        Self::build(in_rate, out_rate, Band::Narrow)
    }

    fn build(in_rate: u32, out_rate: u32, band: Band) -> Result<Self, ResamplerError> {
        for rate in [in_rate, out_rate] {
            if !SUPPORTED_RATES.contains(&rate) {
                return Err(ResamplerError::UnsupportedRate { rate });
            }
        }
        let chunk_in = in_rate as usize / 50;
        let ratio = if out_rate == 2 * in_rate {
            Some(Ratio::Up)
        } else if in_rate == 2 * out_rate {
            Some(Ratio::Down)
        } else {
            None
        };
        if let Some(ratio) = ratio {
            return Ok(Self {
                inner: Engine::Poly2x(Poly2x::new(ratio, band)),
                in_rate,
                out_rate,
                chunk_in,
                pending: Vec::with_capacity(chunk_in * 2),
                scratch_out: Vec::with_capacity(chunk_in * 2),
            });
        }
        // Up to 4 blocks of 5 ms per 20 ms chunk (see the module docs for the delay/cutoff
        // trade-off), but only a split into whole blocks that rubato can use (multiples of
        // in_rate/gcd): otherwise samples would carry over between calls and a 20 ms frame would
        // not always give exactly 20 ms out.
        let min_block = in_rate as usize / gcd(in_rate as usize, out_rate as usize);
        let sub_chunks = (1..=4)
            .rev()
            .find(|&k| chunk_in.is_multiple_of(k) && (chunk_in / k).is_multiple_of(min_block))
            .unwrap_or(1);
        let inner = Fft::<f32>::new_custom(
            in_rate as usize,
            out_rate as usize,
            chunk_in,
            sub_chunks,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .map_err(|e| ResamplerError::Construction(e.to_string()))?;
        let scratch_out = vec![0.0; inner.output_frames_max()];
        Ok(Self {
            inner: Engine::Fft(Box::new(inner)),
            in_rate,
            out_rate,
            chunk_in,
            pending: Vec::with_capacity(chunk_in * 2),
            scratch_out,
        })
    }

    /// Input rate.
    #[must_use]
    pub fn in_rate(&self) -> u32 {
        self.in_rate
    }

    /// Output rate.
    #[must_use]
    pub fn out_rate(&self) -> u32 {
        self.out_rate
    }

    /// Filter delay in output samples (paid once, at the start of the stream).
    #[must_use]
    pub fn delay_samples(&self) -> usize {
        match &self.inner {
            Engine::Poly2x(h) => h.delay_samples(),
            Engine::Fft(f) => f.output_delay(),
        }
    }

    /// Filter delay as a duration.
    #[must_use]
    pub fn delay(&self) -> Duration {
        Duration::from_secs_f64(self.delay_samples() as f64 / f64::from(self.out_rate))
    }

    /// Relative anti-alias cutoff (fraction of the lower Nyquist frequency), for documentation and tests.
    #[must_use]
    pub fn cutoff_hz(&self) -> f32 {
        let relative = match &self.inner {
            Engine::Poly2x(p) => p.cutoff() as f32,
            Engine::Fft(f) => f.cutoff(),
        };
        relative * self.in_rate.min(self.out_rate) as f32 / 2.0
    }

    /// Input samples waiting for a full 20 ms chunk.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Forget all state (a new stream).
    pub fn reset(&mut self) {
        match &mut self.inner {
            Engine::Poly2x(h) => h.reset(),
            Engine::Fft(f) => f.reset(),
        }
        self.pending.clear();
    }

    /// Feed samples; every complete 20 ms chunk is resampled and its output passed to `sink`
    /// (as f32 in [-1, 1]).
    pub fn push(
        &mut self,
        samples: impl IntoIterator<Item = i16>,
        mut sink: impl FnMut(&[f32]),
    ) -> Result<(), FlowError> {
        let samples = samples.into_iter().map(|s| f32::from(s) * (1.0 / 32768.0));
        let inner = match &mut self.inner {
            Engine::Poly2x(h) => {
                // No blocks to wait for: every sample (pair, down) yields output at once.
                self.scratch_out.clear();
                h.process_iter(samples, &mut self.scratch_out);
                if !self.scratch_out.is_empty() {
                    sink(&self.scratch_out);
                }
                return Ok(());
            }
            Engine::Fft(f) => f,
        };
        self.pending.extend(samples);
        let mut start = 0;
        while self.pending.len() - start >= self.chunk_in {
            let input = InterleavedSlice::new(&self.pending[start..start + self.chunk_in], 1, self.chunk_in)
                .map_err(|e| FlowError::fatal(format!("resampler input buffer: {e}")))?;
            let cap = self.scratch_out.len();
            let mut output = InterleavedSlice::new_mut(&mut self.scratch_out[..], 1, cap)
                .map_err(|e| FlowError::fatal(format!("resampler output buffer: {e}")))?;
            let (_, written) = inner
                .process_into_buffer(&input, &mut output, None)
                .map_err(|e| FlowError::fatal(format!("resampler: {e}")))?;
            sink(&self.scratch_out[..written]);
            start += self.chunk_in;
        }
        if start > 0 {
            self.pending.drain(..start);
        }
        Ok(())
    }
}

/// Streaming resampler processor. See the module docs.
pub struct Resampler {
    core: StreamResampler,
    path: AudioPath,
    out: BytesMut,
    counters: Arc<AudioCounters>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler").finish_non_exhaustive()
    }
}

impl Resampler {
    /// Resample mono PCM16 `InputAudio` from `in_rate` to `out_rate`.
    pub fn new(in_rate: u32, out_rate: u32) -> Result<Self, ResamplerError> {
        let core = StreamResampler::new(in_rate, out_rate)?;
        let out = BytesMut::with_capacity(out_rate as usize / 25 * 2);
        Ok(Self { core, path: AudioPath::Input, out, counters: Arc::default() })
    }

    /// Resample the frames on `path` instead (e.g. `Output` for TTS audio to the transport rate).
    #[must_use]
    pub fn on(mut self, path: AudioPath) -> Self {
        self.path = path;
        self
    }

    /// Filter delay in output samples.
    #[must_use]
    pub fn delay_samples(&self) -> usize {
        self.core.delay_samples()
    }

    /// Filter delay.
    #[must_use]
    pub fn delay(&self) -> Duration {
        self.core.delay()
    }

    /// Shared counters (frames, dropped empty frames, rejections).
    #[must_use]
    pub fn counters(&self) -> Arc<AudioCounters> {
        self.counters.clone()
    }

    /// Resample one frame outside a pipeline. `Ok(None)` when it produced no samples yet.
    pub fn convert(&mut self, audio: &AudioFrame) -> Result<Option<AudioFrame>, FlowError> {
        let r = self.convert_inner(audio);
        pcm::counted(&self.counters, r)
    }

    fn convert_inner(&mut self, audio: &AudioFrame) -> Result<Option<AudioFrame>, FlowError> {
        pcm::expect_pcm16_mono("resampler", &audio.format, Some(self.core.in_rate))?;
        pcm::check_whole_samples("resampler", audio.data.len(), 2)?;
        if audio.data.is_empty() {
            self.counters.empty();
            return Ok(None);
        }
        let out = &mut self.out;
        self.core.push(pcm::pcm16_samples(&audio.data), |chunk| pcm::put_pcm16_f32(out, chunk))?;
        if self.out.is_empty() {
            return Ok(None);
        }
        self.counters.frame();
        let data = self.out.split().freeze();
        Ok(Some(AudioFrame { data, format: AudioFormat::pcm16(self.core.out_rate), pts: audio.pts }))
    }
}

impl Processor for Resampler {
    fn name(&self) -> &str {
        "resampler"
    }

    async fn start(&mut self, _cx: &mut Context) -> FlowResult {
        tracing::debug!(
            in_rate = self.core.in_rate,
            out_rate = self.core.out_rate,
            delay_samples = self.core.delay_samples(),
            delay_ms = self.core.delay().as_secs_f64() * 1e3,
            "resampler delay"
        );
        Ok(())
    }

    /// 1:1 and synchronous: at most one output frame per input frame, so the fast path is safe.
    fn process_now(
        &mut self,
        frame: Frame,
        direction: Direction,
        cx: &mut Context,
    ) -> Result<Option<Frame>, FlowError> {
        pcm::map_now(frame, self.path, direction, cx, |audio| self.convert(audio))
    }
}
