//! End-to-end chains: user aggregator → LLM (emulator) → assistant aggregator → tool executor →
//! sentence aggregator, and the heard-words record on interruption.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod llm_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use llm_support::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use voxline_emulators::openai::{OpenAiConfig, OpenAiEmulator, Scripted, ScriptedToolCall, ToolCallStyle};
use voxline_pipeline::testing::Harness;
use voxline_pipeline::{
    AudioFormat, AudioFrame, Direction, Event, Frame, FrameKind, Pipeline, Role, Transcript, TtsAudio, WordTiming,
    processor_fn,
};
use voxline_processors::llm::{
    AssistantAggregator, AssistantSettings, ConversationContext, OpenAiLlm, OpenAiSettings, UserAggregator,
    UserAggregatorSettings,
};
use voxline_processors::text::SentenceAggregator;
use voxline_processors::tools::{Tool, ToolExecutor, ToolExecutorSettings, ToolRegistry};

fn transcript(text: &str, is_final: bool) -> Frame {
    Frame::from(Transcript {
        text: text.into(),
        is_final,
        confidence: 0.9,
        words: Arc::from(Vec::new()),
        start: Duration::ZERO,
        duration: Duration::from_secs(1),
        language: None,
    })
}

#[derive(Deserialize, JsonSchema)]
struct OrderArgs {
    /// The order number.
    order_id: String,
}

#[derive(Deserialize, JsonSchema)]
struct WeatherArgs {
    /// City name.
    city: String,
}

type Spans = Arc<Mutex<Vec<(&'static str, Instant, Instant)>>>;

fn tools(spans: &Spans) -> ToolRegistry {
    let s1 = spans.clone();
    let s2 = spans.clone();
    ToolRegistry::new()
        .with(Tool::new("check_order_status", "Look up an order by number", move |a: OrderArgs| {
            let spans = s1.clone();
            async move {
                let t0 = Instant::now();
                tokio::time::sleep(Duration::from_millis(200)).await;
                spans.lock().unwrap().push(("order", t0, Instant::now()));
                Ok::<_, String>(json!({"order_id": a.order_id, "status": "shipped", "eta": "Tuesday"}))
            }
        }))
        .with(Tool::new("get_weather", "Current weather in a city", move |a: WeatherArgs| {
            let spans = s2.clone();
            async move {
                let t0 = Instant::now();
                tokio::time::sleep(Duration::from_millis(200)).await;
                spans.lock().unwrap().push(("weather", t0, Instant::now()));
                Ok::<_, String>(json!({"city": a.city, "sky": "sunny"}))
            }
        }))
}

#[tokio::test]
async fn parallel_tools_then_a_second_run_answers_from_both_results() {
    let emu = OpenAiEmulator::start(OpenAiConfig::with_script(vec![
        Scripted::tokens(["Let me check", " both for you."])
            .with_tool_calls(vec![
                ScriptedToolCall::new("check_order_status", &json!({"order_id": "ORD-1234"})).with_id("call_order"),
                ScriptedToolCall::new("get_weather", &json!({"city": "Paris"})).with_id("call_weather"),
            ])
            .with_tool_call_style(ToolCallStyle::Interleaved),
        Scripted::text("Your order ORD-1234.5 has shipped, arriving Tuesday. It is sunny in Paris."),
    ]))
    .unwrap();
    let spans: Spans = Arc::default();
    let registry = tools(&spans);
    let ctx = ConversationContext::new("You are a phone agent.", registry.specs());
    let mut s = OpenAiSettings::new("gpt-test").with_base_url(emu.base_url()).with_api_key("k");
    s.service = fast_service();
    let user = UserAggregator::new(ctx.clone(), UserAggregatorSettings::default());
    let (assistant, _tap) = AssistantAggregator::new(ctx.clone(), AssistantSettings::default());
    let pipeline = Pipeline::new()
        .with(user)
        .with(OpenAiLlm::new(s).unwrap())
        .with(assistant)
        .with(ToolExecutor::new(registry, ctx.clone(), ToolExecutorSettings::default()))
        .with(SentenceAggregator::default());
    let h = Harness::new(pipeline);
    h.emit(Event::UserStartedSpeaking);
    h.push(transcript("where is my order", false)).await;
    h.push(transcript("Where is order ORD-1234, and what's the weather in Paris?", true)).await;
    h.emit(Event::UserStoppedSpeaking);
    h.emit(Event::EndOfTurn);
    assert!(h.wait_for(WAIT, |f| count(f, FrameKind::LlmResponseEnd) >= 2).await);
    let out = h.finish().await;

    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    // Tools ran concurrently: each started before the other finished.
    let spans = spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 2);
    assert!(spans[0].1 < spans[1].2 && spans[1].1 < spans[0].2, "not concurrent");

    // Speakable chunks, in order: the pre-tool sentence, then the answer split at sentences.
    assert_eq!(
        plain_texts(&out),
        ["Let me check both for you.", "Your order ORD-1234.5 has shipped, arriving Tuesday.", "It is sunny in Paris."]
    );
    assert_eq!(count_tool_results(&out.downstream), 2);

    // The second request answers both calls, in the order OpenAI requires.
    let reqs = emu.requests();
    assert_eq!(reqs.len(), 2);
    let m = reqs[1].body["messages"].as_array().unwrap().clone();
    let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "tool"]);
    assert_eq!(m[1]["content"], "Where is order ORD-1234, and what's the weather in Paris?");
    assert_eq!(m[2]["content"], "Let me check both for you.");
    assert_eq!(m[2]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(m[3]["tool_call_id"], "call_order");
    assert!(m[3]["content"].as_str().unwrap().contains("shipped"));
    assert_eq!(m[4]["tool_call_id"], "call_weather");
    assert!(m[4]["content"].as_str().unwrap().contains("sunny"));
    assert_eq!(reqs[1].body["tools"].as_array().unwrap().len(), 2);
    assert_eq!(reqs[1].body["tools"][0]["function"]["parameters"]["required"], json!(["order_id"]));

    // The shared context ends with the spoken answer.
    let msgs = ctx.messages();
    let last = msgs.last().unwrap();
    assert_eq!(last.role, Role::Assistant);
    assert_eq!(last.content, "Your order ORD-1234.5 has shipped, arriving Tuesday. It is sunny in Paris.");
    assert_eq!(msgs.len(), 6);
}

fn count_tool_results(frames: &[Frame]) -> usize {
    frames.iter().filter(|f| f.kind() == FrameKind::ToolResult).count()
}

fn words(list: &[(&str, u64)]) -> Arc<[WordTiming]> {
    list.iter()
        .map(|(w, ms)| WordTiming {
            word: (*w).into(),
            start: Duration::from_millis(*ms),
            end: Duration::from_millis(*ms + 150),
        })
        .collect()
}

fn audio(context_id: &str, w: Arc<[WordTiming]>) -> Frame {
    Frame::from(TtsAudio {
        audio: AudioFrame::new(Bytes::from(vec![0u8; 640]), AudioFormat::pcm16(16_000)),
        context_id: context_id.into(),
        words: w,
        offset: Duration::ZERO,
    })
}

fn played(context_id: &str, ms: u64, complete: bool) -> Frame {
    Frame::PlayedUpTo { context_id: context_id.into(), position: Duration::from_millis(ms), complete }
}

fn played_out(frames: &[(Direction, Frame)]) -> usize {
    frames.iter().filter(|(d, f)| *d == Direction::Upstream && f.kind() == FrameKind::PlayedUpTo).count()
}

/// Push a play-out report once the audio it is about has reached the tap (in a real pipeline
/// the output cannot report audio it has not received; the harness lanes could reorder them).
async fn report(h: &Harness, audio_frames: usize, frame: Frame) {
    assert!(h.wait_for(WAIT, |f| count(f, FrameKind::TtsAudio) >= audio_frames).await);
    let before = played_out(&h.collected());
    h.push_upstream(frame).await;
    assert!(h.wait_for(WAIT, |f| played_out(f) > before).await);
}

#[tokio::test]
async fn interrupted_turn_keeps_only_the_words_the_caller_heard() {
    let ctx = ConversationContext::new("sys", Vec::new());
    ctx.add_user_text("Where is my order?");
    let (assistant, tap) = AssistantAggregator::new(ctx.clone(), AssistantSettings::default());
    let h = Harness::new(Pipeline::new().with(assistant).with(tap));

    // A first response, played in full.
    h.push(Frame::LlmResponseStart).await;
    h.push(Frame::LlmText("Let me look.".into())).await;
    h.push(Frame::LlmResponseEnd).await;
    h.push(audio("u1", words(&[("Let", 0), ("me", 150), ("look.", 300)]))).await;
    report(&h, 1, played("u1", 450, true)).await;

    // A second response, cut after "shipped".
    h.push(Frame::LlmResponseStart).await;
    for t in ["Your order", " has shipped", " and it will", " arrive on Tuesday."] {
        h.push(Frame::LlmText(t.into())).await;
    }
    h.push(Frame::LlmResponseEnd).await;
    let w = words(&[
        ("Your", 0),
        ("order", 200),
        ("has", 400),
        ("shipped", 600),
        ("and", 800),
        ("it", 1000),
        ("will", 1200),
        ("arrive", 1400),
        ("on", 1600),
        ("Tuesday.", 1800),
    ]);
    h.push(audio("u2", w[..5].into())).await;
    h.push(audio("u2", w[5..].into())).await;
    report(&h, 3, played("u2", 500, false)).await;
    // Full text until the interruption: a tool re-run would see what the model generated.
    assert_eq!(ctx.messages().last().unwrap().content, "Your order has shipped and it will arrive on Tuesday.");

    h.interrupt();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ctx.messages().last().unwrap().content, "Your order has");
    // The output's final report for the cut utterance arrives just after the interrupt.
    report(&h, 3, played("u2", 700, false)).await;
    let _ = h.finish().await;

    let msgs = ctx.messages();
    let roles: Vec<Role> = msgs.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Assistant]);
    assert_eq!(msgs[2].content, "Let me look.");
    assert_eq!(msgs[3].content, "Your order has shipped");
}

#[tokio::test]
async fn interruption_while_the_llm_is_still_streaming() {
    let emu = OpenAiEmulator::start(OpenAiConfig::with_script(vec![
        Scripted::text("Your order has shipped and it will arrive on Tuesday morning before noon.")
            .with_token_delay(Duration::from_millis(40)),
    ]))
    .unwrap();
    let ctx = ConversationContext::new("sys", Vec::new());
    ctx.add_user_text("Where is my order?");
    let mut s = OpenAiSettings::new("gpt-test").with_base_url(emu.base_url()).with_api_key("k");
    s.service = fast_service();
    let (assistant, tap) = AssistantAggregator::new(ctx.clone(), AssistantSettings::default());
    // A stand-in TTS: one word per LLM token, 200 ms apart, in utterance "u1".
    let mut n = 0u64;
    let tts = processor_fn("fake_tts", move |frame, dir, cx| {
        if let Frame::LlmText(t) = &frame {
            let w = t.trim();
            if !w.is_empty() {
                cx.push_now(audio("u1", words(&[(w, n * 200)])), Direction::Downstream);
                n += 1;
            }
        }
        cx.push_now(frame, dir);
        Ok(())
    });
    let h = Harness::new(Pipeline::new().with(OpenAiLlm::new(s).unwrap()).with(assistant).with(tts).with(tap));
    h.push(Frame::LlmRun(ctx.snapshot())).await;
    assert!(h.wait_for(WAIT, |f| count(f, FrameKind::TtsAudio) >= 5).await);
    // The caller heard "Your order has shipped" (starts 0..600 ms) when they barged in. The
    // report cannot leave the pipeline upstream yet (the LLM stage is busy streaming), but the tap
    // handles it on arrival.
    h.push_upstream(played("u1", 700, false)).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    h.interrupt();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = h.finish().await;
    assert!(
        !out.kinds().contains(&FrameKind::LlmResponseEnd),
        "the stream was cut: {:?} {:?}",
        out.kinds(),
        out.report
    );
    let msgs = ctx.messages();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[2].role, Role::Assistant);
    assert_eq!(msgs[2].content, "Your order has shipped");
}

#[tokio::test]
async fn without_word_timings_nothing_is_trimmed() {
    let ctx = ConversationContext::new("sys", Vec::new());
    let (assistant, tap) = AssistantAggregator::new(ctx.clone(), AssistantSettings::default());
    let h = Harness::new(Pipeline::new().with(assistant).with(tap));
    h.push(Frame::LlmResponseStart).await;
    h.push(Frame::LlmText("A full answer.".into())).await;
    h.push(Frame::LlmResponseEnd).await;
    h.push(audio("u1", Arc::from(Vec::new()))).await;
    assert!(h.wait_for(WAIT, |f| count(f, FrameKind::TtsAudio) >= 1).await);
    h.push_upstream(played("u1", 2000, true)).await;
    assert!(h.wait_for(WAIT, played_out_any).await);
    h.interrupt();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = h.finish().await;
    assert_eq!(ctx.messages().last().unwrap().content, "A full answer.");
}

fn played_out_any(frames: &[(Direction, Frame)]) -> bool {
    played_out(frames) >= 1
}

/// The gate holds a speculative response's frames until confirmed and drops them on a cancel.
#[tokio::test]
async fn the_speculation_gate_holds_until_confirmed_and_drops_on_cancel() {
    use voxline_pipeline::Speculation;
    use voxline_processors::llm::SpeculationGate;
    let h = Harness::single(SpeculationGate::new());
    h.emit(Event::Speculation(Speculation::Started));
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(Frame::LlmResponseStart).await;
    h.push(Frame::LlmText("Hello".into())).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let kinds = |h: &Harness| h.collected().iter().map(|(_, f)| f.kind()).collect::<Vec<_>>();
    assert_eq!(kinds(&h), [FrameKind::Start], "held while speculative");
    h.emit(Event::Speculation(Speculation::Confirmed));
    let released = h.wait_for(Duration::from_secs(2), |f| f.len() == 3).await;
    assert!(released, "released on confirmation: {:?}", kinds(&h));
    assert_eq!(kinds(&h), [FrameKind::Start, FrameKind::LlmResponseStart, FrameKind::LlmText], "in order");
    h.push(Frame::LlmResponseEnd).await;
    assert!(h.wait_for(Duration::from_secs(2), |f| f.len() == 4).await);
    h.emit(Event::Speculation(Speculation::Started));
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(Frame::LlmText("guess".into())).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.emit(Event::Speculation(Speculation::Cancelled));
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.push(Frame::LlmText("after".into())).await;
    let out = h.finish().await;
    let texts: Vec<String> = out
        .downstream
        .iter()
        .filter_map(|f| match f {
            Frame::LlmText(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["Hello", "after"], "the cancelled guess never went out");
}
