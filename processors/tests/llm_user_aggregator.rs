//! UserAggregator: turn end = VAD stop + all text final and complete, no fixed grace; waits for a
//! pending final, for an unfinished sentence, and falls back to interim text.
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
        final_transcript_timeout: Duration::from_millis(400),
        incomplete_timeout: Duration::from_millis(600),
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
async fn a_pending_interim_waits_for_its_final_then_commits_at_once() {
    let ctx = ConversationContext::new("sys", Vec::new());
    let h = Harness::single(UserAggregator::new(ctx.clone(), settings()));
    h.emit(Event::UserStartedSpeaking);
    h.push(transcript("I want to", false)).await;
    h.push(transcript("I want to check", true)).await;
    h.push(transcript("my or", false)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::UserStoppedSpeaking);
    h.emit(Event::EndOfTurn);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(runs(&h).is_empty(), "the interim's final is still on its way");
    let t_final = Instant::now();
    h.push(transcript("my order.", true)).await;
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    assert!(t_final.elapsed() < Duration::from_millis(100), "no fixed grace after the final");
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
    h.emit(Event::EndOfTurn);
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    assert!(t0.elapsed() < Duration::from_millis(100), "final and complete: committed at the VAD stop");
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
    h.emit(Event::EndOfTurn);
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

#[tokio::test]
async fn an_unfinished_sentence_waits_for_the_caller_to_go_on() {
    let ctx = ConversationContext::new("", Vec::new());
    let h = Harness::single(UserAggregator::new(ctx.clone(), settings()));
    h.emit(Event::UserStartedSpeaking);
    h.push(transcript("my order number is", true)).await;
    h.emit(Event::UserStoppedSpeaking);
    h.emit(Event::EndOfTurn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(runs(&h).is_empty(), "a thinking caller is not cut off");
    // The caller goes on after a 0.3 s pause: one turn with both parts.
    h.emit(Event::UserStartedSpeaking);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(runs(&h).is_empty(), "speaking again cancelled the pending commit");
    h.push(transcript("one two three four five.", true)).await;
    let t0 = Instant::now();
    h.emit(Event::UserStoppedSpeaking);
    h.emit(Event::EndOfTurn);
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    assert!(t0.elapsed() < Duration::from_millis(100));
    let _ = h.finish().await;
    assert_eq!(ctx.messages()[0].content, "my order number is one two three four five.");
}

#[tokio::test]
async fn an_unfinished_sentence_is_committed_when_the_caller_stays_silent() {
    let ctx = ConversationContext::new("", Vec::new());
    let h = Harness::single(UserAggregator::new(ctx.clone(), settings()));
    h.emit(Event::UserStartedSpeaking);
    h.push(transcript("I was wondering about", true)).await;
    let t0 = Instant::now();
    h.emit(Event::UserStoppedSpeaking);
    h.emit(Event::EndOfTurn);
    assert!(h.wait_for(Duration::from_secs(3), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(550) && waited < Duration::from_millis(900), "{waited:?}");
    let _ = h.finish().await;
}

#[test]
fn unfinished_sentences_are_recognised() {
    use voxline_processors::llm::reads_unfinished;
    for t in
        ["my order number is", "uh", "I need to check the", "and,", "so um", "It's about my...", "I called because"]
    {
        assert!(reads_unfinished(t), "{t}");
    }
    for t in ["Hello.", "check my order status", "What is my balance?", "one two three four five", "yes", ""] {
        assert!(!reads_unfinished(t), "{t}");
    }
}

#[tokio::test]
async fn a_commit_after_an_interruption_is_not_lost() {
    let ctx = ConversationContext::new("", Vec::new());
    let h = Harness::single(UserAggregator::new(ctx.clone(), settings()));
    h.emit(Event::UserStartedSpeaking);
    h.push(transcript("stop, wait", false)).await;
    h.emit(Event::UserStoppedSpeaking);
    h.emit(Event::EndOfTurn);
    // A barge-in bumps the epoch while the commit is pending (waiting for the final).
    h.interrupt();
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(transcript("stop, wait.", true)).await;
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    let _ = h.finish().await;
    assert_eq!(ctx.messages()[0].content, "stop, wait.");
}

#[tokio::test]
async fn a_pause_is_not_the_end_of_the_turn_until_end_of_turn_says_so() {
    let ctx = ConversationContext::new("", Vec::new());
    let h = Harness::single(UserAggregator::new(ctx.clone(), settings()));
    h.emit(Event::UserStartedSpeaking);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(transcript("my order number is one two three.", true)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::UserStoppedSpeaking);
    // The end-of-turn model is still thinking (or said "incomplete"): a final alone commits nothing.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(runs(&h).is_empty(), "committed on a VAD pause without EndOfTurn");
    // The caller goes on: the same turn continues.
    h.emit(Event::UserStartedSpeaking);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(transcript("four five.", true)).await;
    // Events overtake frames: let the final land first, as it does after a real stop.
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::UserStoppedSpeaking);
    let t0 = Instant::now();
    h.emit(Event::EndOfTurn);
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    assert!(t0.elapsed() < Duration::from_millis(100), "the verdict commits at once: {:?}", t0.elapsed());
    let _ = h.finish().await;
    assert_eq!(runs_text(&ctx), "my order number is one two three. four five.");
}

fn runs_text(ctx: &ConversationContext) -> String {
    ctx.messages().iter().filter(|m| m.role == Role::User).map(|m| m.content.to_string()).collect::<Vec<_>>().join("|")
}

fn false_interruption_settings() -> UserAggregatorSettings {
    UserAggregatorSettings { false_interruption_timeout: Duration::from_millis(300), ..settings() }
}

fn count(out: &voxline_pipeline::testing::Output, pred: impl Fn(&Event) -> bool) -> usize {
    out.events.iter().filter(|e| pred(e)).count()
}

/// "mm-hmm" over the bot: the pending barge-in is withdrawn at the end of turn, with no
/// interruption and no user turn.
#[tokio::test]
async fn a_backchannel_withdraws_a_pending_barge_in() {
    let ctx = ConversationContext::new("", Vec::new());
    let h = Harness::single(UserAggregator::new(ctx.clone(), false_interruption_settings()));
    h.emit(Event::BotStartedSpeaking);
    h.emit(Event::UserStartedSpeaking);
    h.emit(Event::InterruptPending);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(transcript("mm", false)).await;
    h.push(transcript("Mm-hmm.", true)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::UserStoppedSpeaking);
    h.emit(Event::EndOfTurn);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = h.finish().await;
    assert_eq!(count(&out, |e| matches!(e, Event::InterruptWithdrawn)), 1);
    assert_eq!(count(&out, |e| matches!(e, Event::Interrupt)), 0);
    assert!(out.downstream.iter().all(|f| f.kind() != FrameKind::LlmRun), "a backchannel is not a turn");
    assert!(ctx.messages().is_empty());
}

/// Real words confirm the barge-in at the first transcript, interim or final, and the turn
/// goes on as any other.
#[tokio::test]
async fn words_confirm_a_pending_barge_in() {
    let ctx = ConversationContext::new("", Vec::new());
    let h = Harness::single(UserAggregator::new(ctx.clone(), false_interruption_settings()));
    h.emit(Event::BotStartedSpeaking);
    h.emit(Event::UserStartedSpeaking);
    h.emit(Event::InterruptPending);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(transcript("yeah but wait", false)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.push(transcript("Yeah, but wait, that's the wrong order.", true)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::UserStoppedSpeaking);
    h.emit(Event::EndOfTurn);
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    let out = h.finish().await;
    assert_eq!(count(&out, |e| matches!(e, Event::Interrupt)), 1, "confirmed once");
    assert_eq!(count(&out, |e| matches!(e, Event::InterruptWithdrawn)), 0);
    assert_eq!(runs_text(&ctx), "Yeah, but wait, that's the wrong order.");
}

/// No words at all (a cough, a door): withdrawn once the timeout passes after the caller stops.
#[tokio::test]
async fn silence_after_a_pending_barge_in_withdraws_it_after_the_timeout() {
    let ctx = ConversationContext::new("", Vec::new());
    let mut h = Harness::single(UserAggregator::new(ctx.clone(), false_interruption_settings()));
    h.emit(Event::BotStartedSpeaking);
    h.emit(Event::UserStartedSpeaking);
    h.emit(Event::InterruptPending);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t0 = Instant::now();
    h.emit(Event::UserStoppedSpeaking);
    h.emit(Event::EndOfTurn);
    assert!(h.wait_event(Duration::from_secs(2), |e| matches!(e, Event::InterruptWithdrawn)).await.is_some());
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(280) && waited < Duration::from_millis(700), "{waited:?}");
    let out = h.finish().await;
    assert_eq!(count(&out, |e| matches!(e, Event::Interrupt)), 0);
}

/// The final that confirms the barge-in also completes the turn (it came after the stop): the
/// run must survive the interruption it triggers in the same call.
#[tokio::test]
async fn a_run_committed_by_the_confirming_final_is_not_flushed_by_its_interruption() {
    let ctx = ConversationContext::new("", Vec::new());
    let h = Harness::single(UserAggregator::new(ctx.clone(), false_interruption_settings()));
    h.emit(Event::BotStartedSpeaking);
    h.emit(Event::UserStartedSpeaking);
    h.emit(Event::InterruptPending);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::UserStoppedSpeaking);
    h.emit(Event::EndOfTurn);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(transcript("Wait, that's the wrong order.", true)).await;
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    let out = h.finish().await;
    assert_eq!(count(&out, |e| matches!(e, Event::Interrupt)), 1);
    assert_eq!(runs_text(&ctx), "Wait, that's the wrong order.");
}

fn speculative_settings() -> UserAggregatorSettings {
    UserAggregatorSettings { speculative: true, ..settings() }
}

fn speculation_events(out: &voxline_pipeline::testing::Output) -> Vec<voxline_pipeline::Speculation> {
    out.events
        .iter()
        .filter_map(|e| match e {
            Event::Speculation(s) => Some(*s),
            _ => None,
        })
        .collect()
}

/// At the pause, with the text final and complete, the LLM is asked before the end of turn; the
/// end of turn confirms it without a second request and records the user message then.
#[tokio::test]
async fn a_speculation_is_sent_at_the_pause_and_confirmed_by_the_end_of_turn() {
    use voxline_pipeline::Speculation;
    let ctx = ConversationContext::new("", Vec::new());
    let agg = UserAggregator::new(ctx.clone(), speculative_settings());
    let stats = agg.speculation_stats();
    let h = Harness::single(agg);
    h.emit(Event::UserStartedSpeaking);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::UserStoppedSpeaking);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t0 = Instant::now();
    h.push(transcript("Where is my order?", true)).await;
    assert!(h.wait_for(Duration::from_secs(2), |f| f.iter().any(|(_, f)| f.kind() == FrameKind::LlmRun)).await);
    assert!(t0.elapsed() < Duration::from_millis(100), "asked before the end of turn");
    assert!(ctx.messages().is_empty(), "the context waits for the confirmation");
    let r = runs(&h);
    assert_eq!(r[0].messages.last().map(|m| m.content.as_str()), Some("Where is my order?"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.emit(Event::EndOfTurn);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = h.finish().await;
    assert_eq!(speculation_events(&out), [Speculation::Started, Speculation::Confirmed]);
    assert_eq!(out.downstream.iter().filter(|f| f.kind() == FrameKind::LlmRun).count(), 1, "no second request");
    assert_eq!(runs_text(&ctx), "Where is my order?");
    assert_eq!(stats.get(), (1, 1, 0));
}

/// The caller goes on after the pause: the speculation is cancelled through an interruption,
/// and the turn is answered once, with all of it.
#[tokio::test]
async fn a_speculation_is_cancelled_when_the_caller_goes_on() {
    use voxline_pipeline::Speculation;
    let ctx = ConversationContext::new("", Vec::new());
    let agg = UserAggregator::new(ctx.clone(), speculative_settings());
    let stats = agg.speculation_stats();
    let h = Harness::single(agg);
    h.emit(Event::UserStartedSpeaking);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(transcript("I want to book a table.", true)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::UserStoppedSpeaking);
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.emit(Event::UserStartedSpeaking);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(transcript("For two people tonight.", true)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::UserStoppedSpeaking);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::EndOfTurn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = h.finish().await;
    let ev = speculation_events(&out);
    assert_eq!(&ev[..2], [Speculation::Started, Speculation::Cancelled], "{ev:?}");
    assert!(out.events.iter().any(|e| matches!(e, Event::Interrupt)), "the request is aborted");
    assert_eq!(runs_text(&ctx), "I want to book a table. For two people tonight.");
    let (started, used, cancelled) = stats.get();
    assert_eq!((used, cancelled), (started - 1, 1), "{:?}", stats.get());
}
