//! UserAggregator: turn end = VAD stop + final transcript, grace for late finals, interim fallback.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use voxline_pipeline::testing::Harness;
use voxline_pipeline::{Event, Frame, FrameKind, Role, Transcript};
use voxline_processors::llm::{ConversationContext, UserAggregator, UserAggregatorSettings};

fn transcript(text: &str, is_final: bool) -> Frame {
    Frame::from(Transcript {
        text: text.into(),
        is_final,
        confidence: 0.9,
        words: Arc::from(Vec::new()),
        start: Duration::ZERO,
        duration: Duration::from_millis(500),
        language: None,
    })
}

fn settings() -> UserAggregatorSettings {
    UserAggregatorSettings {
        grace: Duration::from_millis(150),
        final_transcript_timeout: Duration::from_millis(400),
        ..UserAggregatorSettings::default()
    }
}

fn runs(h: &Harness) -> Vec<Arc<voxline_pipeline::LlmContext>> {
    h.collected()
        .into_iter()
        .filter_map(|(_, f)| match f {
            Frame::LlmRun(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn late_final_within_the_grace_window_joins_the_turn() {
    let ctx = ConversationContext::new("sys", Vec::new());
    let h = Harness::single(UserAggregator::new(ctx.clone(), settings()));
    h.emit(Event::UserStartedSpeaking);
    h.push(transcript("I want to", false)).await;
    h.push(transcript("I want to check", true)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::UserStoppedSpeaking);
    tokio::time::sleep(Duration::from_millis(80)).await;
    h.push(transcript("my order.", true)).await;
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = runs(&h);
    assert_eq!(r.len(), 1, "one run per turn");
    let last = r[0].messages.last().unwrap();
    assert_eq!((last.role, last.content.as_str()), (Role::User, "I want to check my order."));
    let out = h.finish().await;
    assert!(!out.kinds().contains(&FrameKind::Transcript), "transcripts are consumed");
}

#[tokio::test]
async fn no_run_while_the_user_is_still_speaking() {
    let ctx = ConversationContext::new("", Vec::new());
    let h = Harness::single(UserAggregator::new(ctx.clone(), settings()));
    h.emit(Event::UserStartedSpeaking);
    h.push(transcript("Hello", true)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(runs(&h).is_empty());
    let t0 = Instant::now();
    h.emit(Event::UserStoppedSpeaking);
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    assert!(t0.elapsed() >= Duration::from_millis(140));
    let _ = h.finish().await;
    assert_eq!(ctx.messages()[0].content, "Hello");
}

#[tokio::test]
async fn stalled_stt_falls_back_to_interim_text() {
    let ctx = ConversationContext::new("", Vec::new());
    let h = Harness::single(UserAggregator::new(ctx.clone(), settings()));
    h.emit(Event::UserStartedSpeaking);
    h.push(transcript("cancel my subscription", false)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::UserStoppedSpeaking);
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    let _ = h.finish().await;
    assert_eq!(ctx.messages()[0].content, "cancel my subscription");
}

#[tokio::test]
async fn text_clients_without_vad_and_optional_interrupt() {
    let ctx = ConversationContext::new("", Vec::new());
    let s = UserAggregatorSettings { interrupt_on_transcript: true, ..settings() };
    let mut h = Harness::single(UserAggregator::new(ctx.clone(), s));
    h.emit(Event::BotStartedSpeaking);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(transcript("wait, stop", true)).await;
    assert!(h.wait_event(Duration::from_secs(2), |e| matches!(e, Event::Interrupt)).await.is_some());
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    let _ = h.finish().await;
    assert_eq!(ctx.messages()[0].content, "wait, stop");
}
