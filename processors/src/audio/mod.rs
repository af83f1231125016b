//! Audio processing: resampling, sample-format conversion, mixing, VAD, end-of-turn detection and
//! call recording.
//!
//! | item | consumes | produces |
//! |---|---|---|
//! | [`Resampler`] | PCM16 mono at rate A | PCM16 mono at rate B (2.5 ms delay for 8k↔16k) |
//! | [`FormatConverter`] | PCM16/F32, mono/stereo | PCM16/F32, mono/stereo, same rate, optional gain |
//! | [`Mixer`] | bot audio (`OutputAudio`, `TtsAudio`) | the same with a looped background track under it, and background during bot silence |
//! | [`VadProcessor`] | PCM16 16 kHz (or 8 kHz) `InputAudio` | the same audio + user speaking events, barge-in |
//! | [`turn`] | the user's turn audio (16 kHz f32) | probability the turn is complete (smart-turn v3.2; model behind feature `smart-turn`) |
//! | [`CallRecorder`] | `InputAudio` + bot audio | a stereo WAV on disk (caller left, bot right) |
//!
//! Every processor forwards the frames it does not handle, rejects a format it cannot take with
//! `FlowError::NotNegotiated` naming both formats, and never panics on a payload.

pub mod convert;
mod mixer;
pub(crate) mod pcm;
mod poly2x;
mod recorder;
mod resample;
pub mod turn;
pub mod vad;

pub use convert::{ConvertStats, FormatConverter};
pub use mixer::{Mixer, MixerConfig, MixerStats};
pub use pcm::{AudioCounters, AudioPath};
pub use recorder::{CallRecorder, RecorderStats};
pub use resample::{Resampler, ResamplerError, SUPPORTED_RATES, StreamResampler};
pub use vad::{EarshotVad, VadAnalyzer, VadParams, VadProcessor, VadSegmenter, VadState, VadTransition};
