//! OpenAI streaming LLM against the emulator: text turns, tool-call batches, faults.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod llm_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_support::*;
use serde_json::json;
use voxline_emulators::openai::{LlmFault, OpenAiConfig, OpenAiEmulator, Scripted, ScriptedToolCall, ToolCallStyle};
use voxline_pipeline::testing::Harness;
use voxline_pipeline::{Frame, FrameKind, LlmContext, ToolSpec};
use voxline_processors::llm::{DEFAULT_FALLBACK_TEXT, LlmService, OpenAiLlm, OpenAiSettings};
use voxline_processors::service::ServiceConfigError;

const KEY: &str = "sk-test-key";

fn emulator(script: Vec<Scripted>) -> OpenAiEmulator {
    OpenAiEmulator::start(OpenAiConfig::with_script(script).with_api_key(KEY)).unwrap()
}

fn llm(emu: &OpenAiEmulator, f: impl FnOnce(&mut OpenAiSettings)) -> LlmService {
    let mut s = OpenAiSettings::new("gpt-test").with_base_url(emu.base_url()).with_api_key(KEY);
    s.service = fast_service();
    s.temperature = Some(0.5);
    s.max_tokens = Some(200);
    f(&mut s);
    OpenAiLlm::new(s).unwrap()
}

#[tokio::test]
async fn streams_a_text_turn_with_metrics_and_a_well_formed_request() {
    let emu = emulator(vec![Scripted::text("Hello there. How can I help you today?")]);
    let h = Harness::single(llm(&emu, |_| {}));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let out = h.finish().await;

    let kinds = out.kinds();
    assert_eq!(kinds.first(), Some(&FrameKind::LlmResponseStart));
    assert_eq!(kinds.last(), Some(&FrameKind::LlmResponseEnd));
    assert!(kinds.iter().filter(|k| **k == FrameKind::LlmText).count() >= 5, "{kinds:?}");
    assert_eq!(llm_text(&out), "Hello there. How can I help you today?");
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    assert_eq!(ttfbs(&out).len(), 1);
    let u = usage(&out);
    assert_eq!(u.len(), 1);
    assert!(u[0].0 > 0 && u[0].1 > 0);

    let reqs = emu.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("authorization"), Some("Bearer sk-test-key"));
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["stream_options"]["include_usage"], true);
    assert_eq!(r.body["model"], "gpt-test");
    assert_eq!(r.body["temperature"], 0.5);
    assert_eq!(r.body["max_tokens"], 200);
    assert_eq!(r.body["messages"][0]["role"], "system");
    assert_eq!(r.body["messages"][1]["content"], "hi");
}

#[tokio::test]
async fn parallel_tool_calls_come_out_as_one_batch_in_index_order() {
    for style in [ToolCallStyle::Sequential, ToolCallStyle::Interleaved, ToolCallStyle::Batched] {
        let calls = vec![
            ScriptedToolCall::new("check_order_status", &json!({"order_id": "ORD-1234"})).with_id("call_a"),
            ScriptedToolCall::new("get_weather", &json!({"city": "Paris", "unit": "celsius"})).with_id("call_b"),
        ];
        let emu = emulator(vec![Scripted::tool_calls(calls).with_tool_call_style(style)]);
        let h = Harness::single(llm(&emu, |_| {}));
        let ctx = LlmContext {
            tools: vec![ToolSpec {
                name: "check_order_status".into(),
                description: "Look up an order".into(),
                parameters: Arc::new(json!({"type": "object", "properties": {"order_id": {"type": "string"}}})),
            }],
            ..(*user_ctx("where is my order")).clone()
        };
        h.push(Frame::LlmRun(Arc::new(ctx))).await;
        assert!(wait_turns(&h, 1).await);
        let out = h.finish().await;
        assert_eq!(out.kinds(), [FrameKind::LlmResponseStart, FrameKind::ToolCalls, FrameKind::LlmResponseEnd]);
        let Some(Frame::ToolCalls(batch)) = out.downstream.iter().find(|f| f.kind() == FrameKind::ToolCalls) else {
            panic!()
        };
        assert_eq!(batch.len(), 2, "{style:?}");
        assert_eq!((&*batch[0].id, &*batch[0].name), ("call_a", "check_order_status"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&batch[0].arguments).unwrap()["order_id"], "ORD-1234");
        assert_eq!((&*batch[1].id, &*batch[1].name), ("call_b", "get_weather"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&batch[1].arguments).unwrap()["city"], "Paris");
        let body = &emu.requests()[0].body;
        assert_eq!(body["tools"][0]["type"], "function");
        assert_eq!(body["tools"][0]["function"]["parameters"]["type"], "object");
        assert_eq!(body["tool_choice"], "auto");
    }
}

#[tokio::test]
async fn server_error_then_success_is_retried_silently() {
    let emu = emulator(vec![
        Scripted::fault(LlmFault::ServerError),
        Scripted::fault(LlmFault::Overloaded),
        Scripted::text("Recovered fine."),
    ]);
    let h = Harness::single(llm(&emu, |_| {}));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let out = h.finish().await;
    assert_eq!(llm_text(&out), "Recovered fine.");
    assert!(errors(&out).is_empty());
    assert!(plain_texts(&out).is_empty(), "no fallback on recovery");
    assert_eq!(emu.requests().len(), 3);
}

#[tokio::test]
async fn rate_limit_honours_retry_after() {
    let emu = emulator(vec![Scripted::fault(LlmFault::RateLimited { retry_after_secs: 1 }), Scripted::text("Okay.")]);
    let h = Harness::single(llm(&emu, |_| {}));
    let t0 = Instant::now();
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let elapsed = t0.elapsed();
    let out = h.finish().await;
    assert_eq!(llm_text(&out), "Okay.");
    // The emulator sends retry-after-ms: 1000 (and retry-after: 1); backoff alone would be 20 ms.
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    assert!(errors(&out).is_empty());
}

#[tokio::test]
async fn rate_limit_longer_than_a_caller_can_wait_fails_fast_with_fallback() {
    let emu = emulator(vec![Scripted::fault(LlmFault::RateLimited { retry_after_secs: 30 }), Scripted::text("late")]);
    let h = Harness::single(llm(&emu, |_| {}));
    let t0 = Instant::now();
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    assert!(t0.elapsed() < Duration::from_secs(2));
    let out = h.finish().await;
    let errs = errors(&out);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("429") && errs[0].contains("retry"), "{errs:?}");
    assert_eq!(plain_texts(&out), [DEFAULT_FALLBACK_TEXT]);
    assert_eq!(out.kinds(), [FrameKind::Text], "no response frames for a turn that never started");
}

#[tokio::test]
async fn retries_exhausted_gives_one_error_and_the_fallback() {
    let emu = emulator(vec![Scripted::fault(LlmFault::ServerError); 3]);
    let h = Harness::single(llm(&emu, |_| {}));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let out = h.finish().await;
    let errs = errors(&out);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("HTTP 500") && errs[0].contains("after 3 attempts"), "{errs:?}");
    assert_eq!(plain_texts(&out), [DEFAULT_FALLBACK_TEXT]);
    assert_eq!(emu.requests().len(), 3);
}

#[tokio::test]
async fn socket_closed_mid_stream_ends_the_turn_with_fallback_and_the_pipeline_keeps_running() {
    let emu = emulator(vec![
        Scripted::text("Hello there my friend.").with_fault(LlmFault::CloseMidStream { after_events: 3 }),
        Scripted::text("Second turn works."),
    ]);
    let h = Harness::single(llm(&emu, |_| {}));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 2).await);
    h.push(Frame::LlmRun(user_ctx("again"))).await;
    assert!(wait_turns(&h, 3).await);
    let out = h.finish().await;
    let errs = errors(&out);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("mid-stream") || errs[0].contains("closed"), "{errs:?}");
    // Text already streamed stays, the response is closed, then the fallback line.
    let kinds = out.kinds();
    let end = kinds.iter().position(|k| *k == FrameKind::LlmResponseEnd).unwrap();
    assert_eq!(kinds[end + 1], FrameKind::Text);
    assert_eq!(plain_texts(&out), [DEFAULT_FALLBACK_TEXT]);
    assert!(llm_text(&out).starts_with("Hello there"));
    assert!(llm_text(&out).ends_with("Second turn works."));
    assert_eq!(emu.requests().len(), 2, "no retry once text went out");
}

#[tokio::test]
async fn cut_before_the_first_token_is_retried() {
    let emu = emulator(vec![
        Scripted::text("lost").with_fault(LlmFault::CloseMidStream { after_events: 1 }),
        Scripted::text("Got it."),
    ]);
    let h = Harness::single(llm(&emu, |_| {}));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let out = h.finish().await;
    assert_eq!(llm_text(&out), "Got it.");
    assert!(errors(&out).is_empty());
}

#[tokio::test]
async fn malformed_sse_data_gives_an_error_event_and_fallback() {
    let emu = emulator(vec![Scripted::text("One two three.").with_fault(LlmFault::MalformedData { after_events: 2 })]);
    let h = Harness::single(llm(&emu, |_| {}));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 2).await);
    let out = h.finish().await;
    let errs = errors(&out);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("malformed"), "{errs:?}");
    assert_eq!(plain_texts(&out), [DEFAULT_FALLBACK_TEXT]);
    assert_eq!(out.kinds().last(), Some(&FrameKind::Text));
}

#[tokio::test]
async fn in_stream_error_after_text_ends_the_turn() {
    let emu =
        emulator(vec![Scripted::text("Partial answer here.").with_fault(LlmFault::StreamError { after_events: 3 })]);
    let h = Harness::single(llm(&emu, |_| {}));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 2).await);
    let out = h.finish().await;
    let errs = errors(&out);
    assert!(errs[0].contains("server_error"), "{errs:?}");
    assert_eq!(plain_texts(&out), [DEFAULT_FALLBACK_TEXT]);
}

#[tokio::test]
async fn truncated_tool_call_json_is_an_error_not_a_call() {
    let emu = emulator(vec![
        Scripted::tool_call("check_order_status", &json!({"order_id": "ORD-1234"}))
            .with_fault(LlmFault::TruncatedToolArguments),
    ]);
    let h = Harness::single(llm(&emu, |_| {}));
    h.push(Frame::LlmRun(user_ctx("order ORD-1234"))).await;
    assert!(wait_turns(&h, 1).await);
    let out = h.finish().await;
    let errs = errors(&out);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("check_order_status") && errs[0].contains("not valid JSON"), "{errs:?}");
    assert!(!out.kinds().contains(&FrameKind::ToolCalls));
    assert_eq!(plain_texts(&out), [DEFAULT_FALLBACK_TEXT]);
}

#[tokio::test]
async fn never_answering_provider_times_out() {
    let emu = emulator(vec![Scripted::fault(LlmFault::NeverAnswer)]);
    let h = Harness::single(llm(&emu, |s| s.service.first_token_timeout = Duration::from_millis(300)));
    let t0 = Instant::now();
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let elapsed = t0.elapsed();
    let out = h.finish().await;
    assert!(elapsed >= Duration::from_millis(280) && elapsed < Duration::from_secs(2), "{elapsed:?}");
    let errs = errors(&out);
    assert!(errs[0].contains("no response within"), "{errs:?}");
    assert_eq!(plain_texts(&out), [DEFAULT_FALLBACK_TEXT]);
}

#[tokio::test]
async fn stalled_stream_hits_the_idle_timeout() {
    let emu = emulator(vec![
        Scripted::text("Start of an answer that stalls.").with_fault(LlmFault::Stall { after_events: 3 }),
    ]);
    let h = Harness::single(llm(&emu, |s| s.service.idle_timeout = Duration::from_millis(200)));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 2).await);
    let out = h.finish().await;
    assert!(errors(&out)[0].contains("stalled"));
    assert_eq!(plain_texts(&out), [DEFAULT_FALLBACK_TEXT]);
}

#[tokio::test]
async fn wrong_key_is_a_clear_error_naming_the_variable() {
    let emu = emulator(vec![Scripted::text("never")]);
    let h = Harness::single(llm(&emu, |s| s.api_key = Some("sk-wrong".into())));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let out = h.finish().await;
    let errs = errors(&out);
    assert!(errs[0].contains("401") && errs[0].contains("OPENAI_API_KEY"), "{errs:?}");
    assert_eq!(emu.requests().len(), 1, "authentication errors are not retried");
}

#[tokio::test]
async fn missing_key_fails_at_construction() {
    let s = OpenAiSettings { api_key_env: "VOXLINE_TEST_NO_SUCH_KEY".into(), ..OpenAiSettings::new("m") };
    let err = OpenAiLlm::new(s).unwrap_err();
    assert_eq!(err, ServiceConfigError::MissingApiKey { env_var: "VOXLINE_TEST_NO_SUCH_KEY".into() });
    assert!(err.to_string().contains("VOXLINE_TEST_NO_SUCH_KEY"));
    // A local server needs no key.
    assert!(OpenAiLlm::new(OpenAiSettings::compatible("http://127.0.0.1:11434/v1", "llama3")).is_ok());
}

#[tokio::test]
async fn azure_style_path_and_api_key_header() {
    // The emulator only serves /v1/chat/completions, so point the "deployment" path there.
    let emu = emulator(vec![Scripted::text("Azure says hi.")]);
    let mut s = OpenAiSettings::azure(format!("http://{}", emu.addr()), "dep", "2024-10-21").with_api_key(KEY);
    s.path = "/v1/chat/completions".into();
    s.service = fast_service();
    let h = Harness::single(OpenAiLlm::new(s).unwrap());
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let _ = h.finish().await;
    let r = &emu.requests()[0];
    assert_eq!(r.header("api-key"), Some(KEY));
    assert_eq!(r.header("authorization"), None);
}

#[tokio::test]
async fn interrupt_drops_the_stream() {
    let emu = emulator(vec![
        Scripted::text("one two three four five six seven eight nine ten").with_token_delay(Duration::from_millis(50)),
        Scripted::text("After the barge-in."),
    ]);
    let h = Harness::single(llm(&emu, |_| {}));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(h.wait_for(WAIT, |f| count(f, FrameKind::LlmText) >= 2).await);
    h.interrupt();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_interrupt = count(&h.collected(), FrameKind::LlmText);
    assert!(after_interrupt < 6, "stream kept going: {after_interrupt}");
    h.push(Frame::LlmRun(user_ctx("again"))).await;
    assert!(h.wait_for(WAIT, |f| count(f, FrameKind::LlmResponseEnd) >= 1).await);
    let out = h.finish().await;
    assert!(llm_text(&out).ends_with("After the barge-in."));
    assert!(errors(&out).is_empty());
}
