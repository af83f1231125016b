//! Semantic end-of-turn detection: "has the user finished their turn?" from the sound of it.
//!
//! VAD says when the caller went quiet; it cannot tell a finished "I'd like to book a table for
//! two." from a hesitating "I'd like to book a table for… um". Pipecat 1.x answers that with the
//! smart-turn v3.2 model (`LocalSmartTurnAnalyzerV3`, BSD-2-Clause, ~8.7 MB ONNX): the last 8 s
//! of the user's 16 kHz audio in, the probability that the turn is complete out, "complete" when
//! > 0.5. This module runs the same model in-process.
//!
//! | item | what |
//! |---|---|
//! | [`TurnDetector`] | the end-of-turn state machine behind a VAD: asks a [`TurnModel`] at each VAD stop, polls, falls back (always built) |
//! | [`WhisperFeatures`] | 8 s of 16 kHz audio → 80 × 800 Whisper log-mel features (always built) |
//! | `SmartTurn` (feature `smart-turn`) | loads the model file (checksum-verified), `predict(audio) -> probability` |
//! | `SmartTurnWorker` (feature `smart-turn`) | a small shared pool of inference threads behind a bounded queue; callers `await` a oneshot answer |
//!
//! # Why tract
//! [tract](https://github.com/sonos/tract) (`tract-onnx`, pure Rust) runs every op of this graph
//! (406 nodes: Conv, MatMul, Gemm, LayerNormalization, Erf, Softmax, Tanh, per-tensor and
//! per-channel QuantizeLinear / DequantizeLinear, shape plumbing) with nothing native to build,
//! link or download, which is what a fresh machine and CI can rely on. The alternative, `ort`
//! (onnxruntime bindings), is faster on quantised graphs (integer kernels) but fetches or links a
//! prebuilt C++ library, which this project's machines cannot download at build time.
//!
//! Two things had to be handled to make tract give onnxruntime's numbers (see `model.rs`):
//! - the graph annotates intermediate shapes with the symbolic batch `s6`; pinning the input to
//!   batch 1 conflicts with those annotations, so they are ignored and the input fact is set;
//! - tract 0.23.9's decluttering folds a `DequantizeLinear → Softmax → QuantizeLinear` chain into
//!   a 256-entry lookup table as if softmax were element-wise, which saturates every attention
//!   weight to 255 (probability 0.37 instead of 0.98 on the same input). The four dequantizers in
//!   front of a softmax are rewritten as the same arithmetic in plain ops (`Cast`, `Sub`, `Mul`),
//!   which the rule does not match. The result equals the QDQ reference semantics.
//!
//! # What "matches onnxruntime" means here
//! tract evaluates the QDQ graph as written: dequantise, compute in f32, quantise, which is what
//! onnxruntime does at `ORT_DISABLE_ALL`/`ORT_ENABLE_BASIC`. Pipecat runs `ORT_ENABLE_ALL`, whose
//! QDQ→integer-kernel fusion (`QDQSelectorActionTransformer`) rounds differently. Either way the
//! graph is touchy: eight quantised transformer layers turn a ~1e-6 difference in summation order
//! into an occasional flipped quantisation step, and flipped steps propagate. On unstructured
//! input (the `hashed_features` fixture) every evaluation agrees to ~1e-7; on speech, onnxruntime's
//! two levels differ by a median 0.02 and up to 0.22 in probability, and disagree on the > 0.5
//! decision for 2 of 16 espeak clips (`tests/fixtures/smart_turn/sensitivity.py`). So the tests
//! pin the model on identical features tightly and the end-to-end path loosely; the reference
//! numbers of both onnxruntime levels are in `tests/fixtures/smart_turn/reference.json`.
//!
//! # Threading
//! One inference is tens of milliseconds of CPU or more (onnxruntime: 62 ms single-threaded here):
//! far too long for a per-call task on the async runtime, and too bursty to give each call its
//! own thread. `SmartTurnWorker` owns a few threads sharing one optimised plan; requests from
//! every call go through one bounded queue and are answered through a oneshot.

pub mod detector;
pub mod features;
#[cfg(feature = "smart-turn")]
mod model;
#[cfg(feature = "smart-turn")]
mod worker;

pub use detector::{Inference, TURN_SAMPLE_RATE, TurnAnswer, TurnDetector, TurnEnd, TurnModel, TurnParams};
pub use features::WhisperFeatures;
#[cfg(feature = "smart-turn")]
pub use model::{SMART_TURN_V3_2_SHA256, SmartTurn};
#[cfg(feature = "smart-turn")]
pub use worker::{DEFAULT_QUEUE, DEFAULT_THREADS, SmartTurnWorker, WorkerConfig};

use std::path::PathBuf;

/// File name of the model inside the cache directory (and inside the pipecat-ai wheel).
pub const SMART_TURN_V3_2_FILE: &str = "smart-turn-v3.2-cpu.onnx";
/// Environment variable naming the model file; overrides the cache path.
pub const SMART_TURN_MODEL_ENV: &str = "VOXLINE_SMART_TURN_MODEL";
/// Pipecat's decision threshold: a probability above it means "turn complete".
pub const COMPLETE_THRESHOLD: f32 = 0.5;

/// Where the model is expected: `$VOXLINE_SMART_TURN_MODEL` if set, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/voxline/smart-turn-v3.2-cpu.onnx` (where
/// `scripts/fetch-smart-turn.sh` puts it). `None` when neither variable gives a path.
pub fn default_model_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(SMART_TURN_MODEL_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|p| !p.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("voxline").join(SMART_TURN_V3_2_FILE))
}

/// Errors of the turn model: loading it (a model file is external input) and running it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// No file at the model path.
    #[error("smart-turn model not found at {path}: run scripts/fetch-smart-turn.sh or set {SMART_TURN_MODEL_ENV}")]
    ModelMissing {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read smart-turn model {path}: {source}")]
    ModelRead {
        /// The model path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not the audited model (truncated download, other version, tampering).
    #[error("smart-turn model {path} has sha256 {actual}, expected {expected}: re-run scripts/fetch-smart-turn.sh")]
    ChecksumMismatch {
        /// The model path.
        path: PathBuf,
        /// The pinned checksum.
        expected: &'static str,
        /// The file's checksum.
        actual: String,
    },
    /// The bytes passed the checksum but tract could not build a plan from them (or, for
    /// `SmartTurn::load_unverified` (feature `smart-turn`), are not this model at all).
    #[error("cannot build smart-turn model from {path}: {reason}")]
    ModelInvalid {
        /// The model path.
        path: PathBuf,
        /// tract's error chain.
        reason: String,
    },
    /// Running the model failed.
    #[error("smart-turn inference failed: {reason}")]
    Inference {
        /// tract's error chain, or what was wrong with the output.
        reason: String,
    },
    /// The worker's queue is full (more turn decisions in flight than it can take).
    #[error("smart-turn worker queue is full")]
    Busy,
    /// The worker pool has shut down (or its thread died): no answer will come.
    #[error("smart-turn worker is not running")]
    WorkerGone,
}
