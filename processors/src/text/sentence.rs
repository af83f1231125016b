//! [`SentenceAggregator`]: LLM tokens in, speakable sentences out.
//!
//! Consumes `LlmText` (downstream); produces `Text` chunks at sentence boundaries, flushed at
//! `LlmResponseEnd`; forwards everything else. See the [module docs](super) for the contract.
//!
//! Trade-offs: a chunk is released as soon as its boundary is certain (one character of
//! look-ahead), which keeps time-to-first-audio low at the cost of the occasional short chunk.
//! The buffer is dropped on interruption; text already pushed is the runner's to discard.

use voxline_pipeline::{Context, Direction, Event, FlowResult, Frame, Processor};

use super::splitter::{SentenceSplitter, SplitterSettings};

/// Settings of a [`SentenceAggregator`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentenceSettings {
    /// How text is split.
    pub splitter: SplitterSettings,
}

/// Groups streamed LLM text into sentences for TTS.
#[derive(Debug, Default)]
pub struct SentenceAggregator {
    splitter: SentenceSplitter,
    /// Scratch space for chunks split off in one call, reused between calls.
    ready: Vec<String>,
}

impl SentenceAggregator {
    /// An aggregator with `settings`.
    #[must_use]
    pub fn new(settings: SentenceSettings) -> Self {
        Self { splitter: SentenceSplitter::new(settings.splitter), ready: Vec::new() }
    }

    async fn push_ready(&mut self, cx: &mut Context) {
        for chunk in std::mem::take(&mut self.ready) {
            cx.push(Frame::Text(chunk.into()), Direction::Downstream).await;
        }
    }

    fn flush(&mut self) {
        if let Some(rest) = self.splitter.flush() {
            self.ready.push(rest);
        }
    }
}

impl Processor for SentenceAggregator {
    fn name(&self) -> &str {
        "sentence_aggregator"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        if direction == Direction::Upstream {
            cx.push(frame, direction).await;
            return Ok(());
        }
        match frame {
            Frame::LlmText(piece) => {
                let ready = &mut self.ready;
                self.splitter.push(&piece, |c| ready.push(c));
                self.push_ready(cx).await;
            }
            Frame::LlmResponseStart => {
                self.splitter.clear();
                cx.push(Frame::LlmResponseStart, direction).await;
            }
            Frame::LlmResponseEnd => {
                self.flush();
                self.push_ready(cx).await;
                cx.push(Frame::LlmResponseEnd, direction).await;
            }
            Frame::Text(line) => {
                self.flush();
                self.push_ready(cx).await;
                cx.push(Frame::Text(line), direction).await;
            }
            Frame::End => {
                self.flush();
                self.push_ready(cx).await;
                cx.push(Frame::End, direction).await;
            }
            other => cx.push(other, direction).await,
        }
        Ok(())
    }

    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        if matches!(event, Event::Interrupt) {
            self.splitter.clear();
            self.ready.clear();
        }
        Ok(())
    }
}
