//! Helpers shared by the LLM / tools integration tests (emulators on 127.0.0.1).
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use voxline_pipeline::testing::{Harness, Output};
use voxline_pipeline::{ChatMessage, Direction, Event, Frame, FrameKind, LlmContext, MetricsEvent, Role};
use voxline_processors::llm::{LlmServiceSettings, RetrySettings};

pub const WAIT: Duration = Duration::from_secs(10);

/// Tight timings so fault tests run fast.
pub fn fast_service() -> LlmServiceSettings {
    LlmServiceSettings {
        first_token_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(3),
        retry: RetrySettings {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            ..RetrySettings::default()
        },
        ..LlmServiceSettings::default()
    }
}

pub fn user_ctx(text: &str) -> Arc<LlmContext> {
    Arc::new(LlmContext {
        messages: vec![ChatMessage::text(Role::System, "You are a phone agent."), ChatMessage::text(Role::User, text)],
        tools: Vec::new(),
    })
}

pub fn count(frames: &[(Direction, Frame)], kind: FrameKind) -> usize {
    frames.iter().filter(|(d, f)| *d == Direction::Downstream && f.kind() == kind).count()
}

/// Wait until `n` responses ended downstream (`LlmResponseEnd`) or a fallback line went out.
pub async fn wait_turns(h: &Harness, n: usize) -> bool {
    h.wait_for(WAIT, |f| count(f, FrameKind::LlmResponseEnd) + count(f, FrameKind::Text) >= n).await
}

pub fn errors(out: &Output) -> Vec<String> {
    out.events
        .iter()
        .filter_map(|e| match e {
            Event::Error(e) => Some(e.message.to_string()),
            _ => None,
        })
        .collect()
}

pub fn usage(out: &Output) -> Vec<(u64, u64)> {
    out.events
        .iter()
        .filter_map(|e| match e {
            Event::Metrics(MetricsEvent::LlmUsage { prompt_tokens, completion_tokens, .. }) => {
                Some((*prompt_tokens, *completion_tokens))
            }
            _ => None,
        })
        .collect()
}

pub fn ttfbs(out: &Output) -> Vec<Duration> {
    out.events
        .iter()
        .filter_map(|e| match e {
            Event::Metrics(MetricsEvent::Ttfb { value, .. }) => Some(*value),
            _ => None,
        })
        .collect()
}

pub fn llm_text(out: &Output) -> String {
    out.downstream
        .iter()
        .filter_map(|f| match f {
            Frame::LlmText(t) => Some(t.to_string()),
            _ => None,
        })
        .collect()
}

pub fn plain_texts(out: &Output) -> Vec<String> {
    out.downstream
        .iter()
        .filter_map(|f| match f {
            Frame::Text(t) => Some(t.to_string()),
            _ => None,
        })
        .collect()
}
