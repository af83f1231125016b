//! WAV file transport for offline runs and tests.
//!
//! [`WavInput`] reads a PCM16 (or 8-bit/float, converted) WAV file with `hound` and feeds it to a
//! pipeline as 20 ms `InputAudio` frames, either paced in real time (what a live caller does) or
//! as fast as the pipeline's input lane allows. [`WavSink`] is an [`AudioSink`] that records the
//! bot's paced output to a WAV file (μ-law is decoded to PCM16 first).
//!
//! The file is read whole into memory: offline inputs are short prompts, and it keeps the feeding
//! loop free of blocking file I/O.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use voxline_pipeline::clock::AudioSink;
use voxline_pipeline::sync::lock;
use voxline_pipeline::{AudioEncoding, AudioFormat, AudioFrame, FlowError, FlowResult, Frame, PipelineHandle};

/// Why a WAV file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// hound failed (I/O or format).
    #[error("wav {path}: {source}")]
    Hound {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: hound::Error,
    },
    /// A multi-channel or unsupported sample format.
    #[error("wav {path}: unsupported format ({reason})")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported.
        reason: String,
    },
}

/// How fast [`WavInput::feed`] pushes audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// One 20 ms frame every 20 ms, like a live caller.
    RealTime,
    /// As fast as the pipeline accepts (the lossy lane is bypassed: frames are pushed in order).
    AsFastAsPossible,
}

/// Audio from a WAV file, as mono PCM16.
#[derive(Debug, Clone)]
pub struct WavInput {
    samples: Arc<[i16]>,
    sample_rate: u32,
}

impl WavInput {
    /// Read `path` (mono; PCM 8/16/24/32-bit or float).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WavError> {
        let path = path.as_ref();
        let herr = |source| WavError::Hound { path: path.to_path_buf(), source };
        let mut reader = hound::WavReader::open(path).map_err(herr)?;
        let spec = reader.spec();
        if spec.channels != 1 {
            return Err(WavError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("{} channels", spec.channels),
            });
        }
        let samples: Vec<i16> = match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Int, 16) => reader.samples::<i16>().collect::<Result<_, _>>().map_err(herr)?,
            (hound::SampleFormat::Int, bits) if bits <= 32 => {
                let shift = i32::from(bits) - 16;
                reader
                    .samples::<i32>()
                    .map(|s| s.map(|v| clamp16(if shift >= 0 { v >> shift } else { v << -shift })))
                    .collect::<Result<_, _>>()
                    .map_err(herr)?
            }
            (hound::SampleFormat::Float, 32) => reader
                .samples::<f32>()
                .map(|s| s.map(|v| clamp16((v * 32767.0) as i32)))
                .collect::<Result<_, _>>()
                .map_err(herr)?,
            (f, b) => {
                return Err(WavError::Unsupported { path: path.to_path_buf(), reason: format!("{f:?} {b}-bit") });
            }
        };
        Ok(Self { samples: samples.into(), sample_rate: spec.sample_rate })
    }

    /// Wrap samples already in memory.
    #[must_use]
    pub fn from_samples(samples: Vec<i16>, sample_rate: u32) -> Self {
        Self { samples: samples.into(), sample_rate }
    }

    /// The audio format of the frames [`feed`](Self::feed) pushes.
    #[must_use]
    pub fn format(&self) -> AudioFormat {
        AudioFormat::pcm16(self.sample_rate)
    }

    /// Length of the audio.
    #[must_use]
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples.len() as f64 / f64::from(self.sample_rate.max(1)))
    }

    /// The audio as 20 ms frames.
    #[must_use]
    pub fn frames(&self) -> Vec<Frame> {
        let per = (self.sample_rate as usize / 50).max(1);
        self.samples
            .chunks(per)
            .enumerate()
            .map(|(i, c)| {
                let data: Vec<u8> = c.iter().flat_map(|s| s.to_le_bytes()).collect();
                let mut a = AudioFrame::new(Bytes::from(data), self.format());
                a.pts = Some(Duration::from_millis(20 * i as u64));
                Frame::InputAudio(a)
            })
            .collect()
    }

    /// Push the whole file into `handle`; returns the number of frames pushed (stops early if
    /// the pipeline closes).
    pub async fn feed(&self, handle: &PipelineHandle, pacing: Pacing) -> usize {
        let mut n = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for frame in self.frames() {
            match pacing {
                Pacing::RealTime => {
                    tick.tick().await;
                    if handle.is_closed() {
                        break;
                    }
                    handle.push_input_audio(frame);
                }
                Pacing::AsFastAsPossible => {
                    if handle.push(frame).await.is_err() {
                        break;
                    }
                }
            }
            n += 1;
        }
        n
    }
}

fn clamp16(v: i32) -> i16 {
    i16::try_from(v.clamp(i32::from(i16::MIN), i32::from(i16::MAX))).unwrap_or(0)
}

type Writer = hound::WavWriter<std::io::BufWriter<std::fs::File>>;

struct SinkState {
    path: PathBuf,
    writer: Option<Writer>,
    rate: Option<u32>,
    samples: u64,
}

/// Records the bot's output to a WAV file; clone it to keep a handle for [`finalize`](Self::finalize).
#[derive(Clone)]
pub struct WavSink {
    state: Arc<Mutex<SinkState>>,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink").finish_non_exhaustive()
    }
}

impl WavSink {
    /// A sink that creates `path` on the first chunk (the rate is taken from the audio).
    #[must_use]
    pub fn create(path: impl Into<PathBuf>) -> Self {
        Self { state: Arc::new(Mutex::new(SinkState { path: path.into(), writer: None, rate: None, samples: 0 })) }
    }

    /// Samples written so far.
    #[must_use]
    pub fn samples_written(&self) -> u64 {
        lock(&self.state).samples
    }

    /// Write the header and close the file.
    pub fn finalize(&self) -> Result<(), WavError> {
        let mut st = lock(&self.state);
        let path = st.path.clone();
        match st.writer.take() {
            Some(w) => w.finalize().map_err(|source| WavError::Hound { path, source }),
            None => Ok(()),
        }
    }
}

impl AudioSink for WavSink {
    async fn write(&mut self, chunk: Bytes, format: AudioFormat) -> FlowResult {
        let pcm: Vec<i16> = match format.encoding {
            AudioEncoding::Pcm16 => chunk.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect(),
            AudioEncoding::Mulaw => chunk.iter().map(|u| voxline_pipeline::g711::mulaw_decode(*u)).collect(),
            _ => {
                return Err(FlowError::NotNegotiated {
                    processor: "wav_sink",
                    expected: "PCM16 or μ-law".into(),
                    got: format.to_string(),
                });
            }
        };
        let mut st = lock(&self.state);
        if st.rate.is_some_and(|r| r != format.sample_rate) {
            return Err(FlowError::BadInput(format!("wav output rate changed to {}", format.sample_rate)));
        }
        if st.writer.is_none() {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: format.sample_rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let w = hound::WavWriter::create(&st.path, spec).map_err(|e| FlowError::fatal(e.to_string()))?;
            st.writer = Some(w);
            st.rate = Some(format.sample_rate);
        }
        if let Some(w) = st.writer.as_mut() {
            for s in &pcm {
                w.write_sample(*s).map_err(|e| FlowError::fatal(e.to_string()))?;
            }
        }
        st.samples += pcm.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_through_files() {
        let dir = std::env::temp_dir().join(format!("voxline-wav-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let out = dir.join("out.wav");
        let mut sink = WavSink::create(&out);
        let tone: Vec<u8> = (0..320i16).flat_map(|i| (i * 50).to_le_bytes()).collect();
        assert!(sink.write(Bytes::from(tone), AudioFormat::pcm16(16_000)).await.is_ok());
        assert!(sink.write(Bytes::from(vec![0xFFu8; 320]), AudioFormat::mulaw_8k()).await.is_err());
        assert!(sink.finalize().is_ok());
        let input = WavInput::open(&out);
        assert!(input.is_ok());
        if let Ok(input) = input {
            assert_eq!(input.format(), AudioFormat::pcm16(16_000));
            assert_eq!(input.frames().len(), 1);
            assert_eq!(input.duration(), Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
