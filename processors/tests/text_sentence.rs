//! SentenceAggregator as a processor: the frame contract with TTS.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use voxline_pipeline::testing::Harness;
use voxline_pipeline::{Frame, FrameKind};
use voxline_processors::text::SentenceAggregator;

#[tokio::test]
async fn llm_tokens_become_sentences_flushed_at_the_end() {
    let h = Harness::single(SentenceAggregator::default());
    h.push(Frame::LlmResponseStart).await;
    for t in [
        "Hi", " Mr.", " Smith", ". Your", " total", " is", " $3", ".", "50", " today", ". Call", " us", " at",
        " 10:30", " a.m", ".",
    ] {
        h.push(Frame::LlmText(t.into())).await;
    }
    h.push(Frame::LlmResponseEnd).await;
    let out = h.finish().await;
    assert_eq!(out.texts(), ["Hi Mr. Smith.", "Your total is $3.50 today.", "Call us at 10:30 a.m."]);
    assert_eq!(
        out.kinds(),
        [FrameKind::LlmResponseStart, FrameKind::Text, FrameKind::Text, FrameKind::Text, FrameKind::LlmResponseEnd]
    );
}

#[tokio::test]
async fn a_text_line_flushes_first_and_passes_unchanged() {
    let h = Harness::single(SentenceAggregator::default());
    h.push(Frame::LlmText("Let me check".into())).await;
    h.push(Frame::Text("Sorry, I'm having trouble right now.".into())).await;
    h.push_upstream(Frame::PlayedUpTo { context_id: "c".into(), position: Duration::ZERO, complete: true }).await;
    let out = h.finish().await;
    assert_eq!(out.texts(), ["Let me check", "Sorry, I'm having trouble right now."]);
    assert_eq!(out.upstream.iter().filter(|f| f.kind() == FrameKind::PlayedUpTo).count(), 1);
}

#[tokio::test]
async fn interruption_drops_the_buffer() {
    let h = Harness::single(SentenceAggregator::default());
    h.push(Frame::LlmText("Half a sent".into())).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.interrupt();
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(Frame::LlmText("New answer.".into())).await;
    h.push(Frame::LlmResponseEnd).await;
    let out = h.finish().await;
    assert_eq!(out.texts(), ["New answer."]);
    assert!(out.downstream.iter().all(|f| !matches!(f, Frame::LlmText(_))));
}
