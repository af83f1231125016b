//! Audio helpers: output formats and the deterministic "voice" used by the TTS emulator. G.711
//! is the engine's ([`voxline_pipeline::g711`]), so emulated phone audio is encoded exactly as
//! the pipeline decodes it.
//!
//! The synthesized signal is a sequence of short tones, one per character, so that tests
//! can tell emulator audio from silence (RMS well above zero) and can relate byte counts to
//! character timings exactly.

use std::f64::consts::PI;

use voxline_pipeline::g711;

/// Sample encoding of an [`OutputFormat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Signed 16-bit little-endian PCM, mono, headerless.
    Pcm16,
    /// G.711 μ-law, one byte per sample.
    Ulaw,
    /// G.711 A-law, one byte per sample.
    Alaw,
}

/// An ElevenLabs `output_format` the emulator can produce (MP3 and Opus are not emulated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputFormat {
    /// Sample encoding.
    pub encoding: Encoding,
    /// Sample rate in Hz.
    pub sample_rate: u32,
}

impl OutputFormat {
    /// Parses an ElevenLabs format name such as `pcm_16000` or `ulaw_8000`.
    pub fn parse(name: &str) -> Option<Self> {
        let (kind, rate) = name.split_once('_')?;
        let sample_rate: u32 = rate.parse().ok()?;
        let encoding = match kind {
            "pcm" if [8000, 16000, 22050, 24000, 32000, 44100, 48000].contains(&sample_rate) => Encoding::Pcm16,
            "ulaw" if sample_rate == 8000 => Encoding::Ulaw,
            "alaw" if sample_rate == 8000 => Encoding::Alaw,
            _ => return None,
        };
        Some(Self { encoding, sample_rate })
    }

    /// Bytes per sample on the wire.
    pub fn bytes_per_sample(&self) -> usize {
        match self.encoding {
            Encoding::Pcm16 => 2,
            Encoding::Ulaw | Encoding::Alaw => 1,
        }
    }

    /// Number of samples covering `[0, ms)` of audio, rounded to the nearest sample.
    pub fn samples_at_ms(&self, ms: u64) -> u64 {
        (ms * u64::from(self.sample_rate) + 500) / 1000
    }

    /// Encodes linear samples into this format's wire bytes.
    pub fn encode(&self, samples: &[i16]) -> Vec<u8> {
        match self.encoding {
            Encoding::Pcm16 => samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
            Encoding::Ulaw => samples.iter().map(|&s| g711::mulaw_encode(s)).collect(),
            Encoding::Alaw => samples.iter().map(|&s| g711::alaw_encode(s)).collect(),
        }
    }

    /// Decodes wire bytes back into linear samples (a trailing odd PCM byte is ignored).
    pub fn decode(&self, bytes: &[u8]) -> Vec<i16> {
        match self.encoding {
            Encoding::Pcm16 => bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect(),
            Encoding::Ulaw => bytes.iter().map(|&b| g711::mulaw_decode(b)).collect(),
            Encoding::Alaw => bytes.iter().map(|&b| g711::alaw_decode(b)).collect(),
        }
    }
}

/// Root-mean-square of linear samples, for "is this audio or silence" assertions.
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// Deterministic per-character tone generator with a continuous phase across calls.
///
/// Each character gets its own pitch and a short fade in/out, so the result sounds like
/// a chirpy "voice" rather than a flat beep; its level never drops to silence.
#[derive(Debug, Clone)]
pub struct ToneVoice {
    sample_rate: u32,
    phase: f64,
}

impl ToneVoice {
    /// A voice producing samples at `sample_rate`.
    pub fn new(sample_rate: u32) -> Self {
        Self { sample_rate, phase: 0.0 }
    }

    /// Renders `n_samples` for character `c`.
    pub fn render_char(&mut self, c: char, n_samples: usize) -> Vec<i16> {
        let freq = 180.0 + f64::from(u32::from(c) % 29) * 17.0;
        let amp = if c.is_alphanumeric() { 9000.0 } else { 2500.0 };
        let rate = f64::from(self.sample_rate);
        let fade = ((rate * 0.004) as usize).max(1).min(n_samples / 2 + 1);
        let step = 2.0 * PI * freq / rate;
        (0..n_samples)
            .map(|i| {
                let edge = i.min(n_samples - 1 - i);
                // Keep a floor so even the fade edges are never exactly zero.
                let env = ((edge as f64 + 1.0) / fade as f64).clamp(0.2, 1.0);
                let v = (self.phase.sin() * amp * env).round();
                self.phase = (self.phase + step) % (2.0 * PI);
                v as i16
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_is_not_silence() {
        let mut v = ToneVoice::new(8000);
        let s = v.render_char('a', 480);
        assert!(rms(&s) > 1000.0);
    }
}
