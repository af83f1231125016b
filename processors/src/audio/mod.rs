//! Audio processing (in progress).
pub(crate) mod pcm;
mod resample;
pub use pcm::{AudioCounters, AudioPath};
pub use resample::{Resampler, ResamplerError, SUPPORTED_RATES, StreamResampler};
