//! Text shaping between the LLM and TTS.
//!
//! # The frame contract with TTS
//!
//! [`SentenceAggregator`] sits between the LLM (and the tool executor) and the TTS service:
//!
//! | in (downstream) | out (downstream) |
//! |---|---|
//! | `LlmResponseStart` | forwarded (buffer cleared) |
//! | `LlmText(piece)` | consumed; `Text(chunk)` for every complete speakable chunk |
//! | `LlmResponseEnd` | `Text(rest)` if anything is buffered, then `LlmResponseEnd` |
//! | `Text(line)` (fallback lines, tool fillers) | buffer flushed as `Text`, then the line, unchanged |
//! | anything else | forwarded unchanged, in order |
//!
//! So TTS consumes **`Frame::Text` as "text to speak"** (one chunk = one sentence or clause,
//! trimmed, markdown removed, never empty) and **`Frame::LlmResponseEnd` as "flush: no more text
//! for this response"**. `LlmText` never reaches TTS. On `Event::Interrupt` the buffer is dropped.
//! Upstream frames pass through untouched.

mod sentence;
mod splitter;

pub use sentence::{SentenceAggregator, SentenceSettings};
pub use splitter::{DEFAULT_MAX_CHARS, SentenceSplitter, SplitterSettings};
