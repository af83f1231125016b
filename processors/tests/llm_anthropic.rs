//! Anthropic Messages streaming against the emulator: text, tool use round trip, errors.
#![cfg(feature = "anthropic")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod llm_support;

use std::time::Duration;

use llm_support::*;
use serde_json::json;
use voxline_emulators::anthropic::{AnthropicConfig, AnthropicEmulator, LlmFault, Scripted, ScriptedToolCall};
use voxline_pipeline::testing::Harness;
use voxline_pipeline::{Frame, FrameKind, Pipeline};
use voxline_processors::llm::{
    AnthropicLlm, AnthropicSettings, AssistantAggregator, AssistantSettings, ConversationContext,
    DEFAULT_FALLBACK_TEXT, LlmProviderSettings, LlmService,
};
use voxline_processors::tools::{Tool, ToolExecutor, ToolExecutorSettings, ToolRegistry};

const KEY: &str = "sk-ant-test";

fn emulator(script: Vec<Scripted>) -> AnthropicEmulator {
    AnthropicEmulator::start(AnthropicConfig::with_script(script).with_api_key(KEY)).unwrap()
}

fn llm(emu: &AnthropicEmulator) -> LlmService {
    let mut s = AnthropicSettings::new("claude-test").with_base_url(emu.base_url()).with_api_key(KEY);
    s.service = fast_service();
    s.max_tokens = 300;
    // Through the provider switch, as an application config would.
    LlmService::from_settings(LlmProviderSettings::Anthropic(s)).unwrap()
}

#[tokio::test]
async fn streams_a_text_turn() {
    let emu = emulator(vec![Scripted::text("Hello from Claude. How can I help?")]);
    let h = Harness::single(llm(&emu));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let out = h.finish().await;
    assert_eq!(out.kinds().first(), Some(&FrameKind::LlmResponseStart));
    assert_eq!(out.kinds().last(), Some(&FrameKind::LlmResponseEnd));
    assert_eq!(llm_text(&out), "Hello from Claude. How can I help?");
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    assert_eq!(ttfbs(&out).len(), 1);
    let u = usage(&out);
    assert_eq!(u.len(), 1);
    assert!(u[0].0 > 0 && u[0].1 > 0);
    let r = &emu.requests()[0];
    assert_eq!(r.header("x-api-key"), Some(KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.body["system"], "You are a phone agent.");
    assert_eq!(r.body["max_tokens"], 300);
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["messages"][0]["role"], "user");
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct OrderArgs {
    order_id: String,
}

#[tokio::test]
async fn tool_use_round_trip_in_the_order_anthropic_requires() {
    let emu = emulator(vec![
        Scripted::text("Let me check.").with_tool_calls(vec![
            ScriptedToolCall::new("check_order_status", &json!({"order_id": "A1"})).with_id("toolu_a"),
            ScriptedToolCall::new("check_order_status", &json!({"order_id": "B2"})).with_id("toolu_b"),
        ]),
        Scripted::text("Both orders have shipped."),
    ]);
    let registry =
        ToolRegistry::new().with(Tool::new("check_order_status", "Look up an order", |a: OrderArgs| async move {
            Ok::<_, String>(json!({"order_id": a.order_id, "status": "shipped"}))
        }));
    let ctx = ConversationContext::new("You are a phone agent.", registry.specs());
    ctx.add_user_text("Where are orders A1 and B2?");
    let (assistant, _tap) = AssistantAggregator::new(ctx.clone(), AssistantSettings::default());
    let h = Harness::new(Pipeline::new().with(llm(&emu)).with(assistant).with(ToolExecutor::new(
        registry,
        ctx.clone(),
        ToolExecutorSettings::default(),
    )));
    h.push(Frame::LlmRun(ctx.snapshot())).await;
    assert!(h.wait_for(WAIT, |f| count(f, FrameKind::LlmResponseEnd) >= 2).await);
    let out = h.finish().await;
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    assert_eq!(llm_text(&out), "Let me check.Both orders have shipped.");

    let reqs = emu.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body["tools"][0]["input_schema"]["type"], "object");
    assert_eq!(reqs[0].body["tool_choice"]["type"], "auto");
    let m = reqs[1].body["messages"].as_array().unwrap();
    let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(m[1]["content"][0], json!({"type": "text", "text": "Let me check."}));
    assert_eq!(m[1]["content"][1]["type"], "tool_use");
    assert_eq!(m[1]["content"][1]["input"], json!({"order_id": "A1"}));
    assert_eq!(m[2]["content"][0]["type"], "tool_result");
    assert_eq!(m[2]["content"][0]["tool_use_id"], "toolu_a");
    assert_eq!(m[2]["content"][1]["tool_use_id"], "toolu_b");
    assert!(m[2]["content"][1]["content"].as_str().unwrap().contains("B2"));
    assert_eq!(reqs[1].status, 200, "the emulator validated the history");
}

#[tokio::test]
async fn overloaded_is_retried_before_the_first_token() {
    let emu = emulator(vec![
        Scripted::fault(LlmFault::Overloaded),
        Scripted::text("x").with_fault(LlmFault::StreamError { after_events: 1 }),
        Scripted::text("Back again."),
    ]);
    let h = Harness::single(llm(&emu));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let out = h.finish().await;
    assert_eq!(llm_text(&out), "Back again.");
    assert!(errors(&out).is_empty());
    assert_eq!(emu.requests().len(), 3);
}

#[tokio::test]
async fn errors_become_one_error_event_and_the_fallback_line() {
    // A 400 is not retried.
    let emu = emulator(vec![Scripted::fault(LlmFault::HttpStatus { status: 400, message: "bad request".into() })]);
    let h = Harness::single(llm(&emu));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let out = h.finish().await;
    let errs = errors(&out);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("HTTP 400") && errs[0].contains("invalid_request_error"), "{errs:?}");
    assert_eq!(plain_texts(&out), [DEFAULT_FALLBACK_TEXT]);
    assert_eq!(emu.requests().len(), 1);

    // An overloaded error event after text went out ends the turn.
    let emu =
        emulator(vec![Scripted::text("Partial answer here.").with_fault(LlmFault::StreamError { after_events: 5 })]);
    let h = Harness::single(llm(&emu));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 2).await);
    let out = h.finish().await;
    let errs = errors(&out);
    assert!(errs[0].contains("overloaded_error"), "{errs:?}");
    assert!(out.kinds().contains(&FrameKind::LlmResponseEnd));
    assert_eq!(plain_texts(&out), [DEFAULT_FALLBACK_TEXT]);

    // Truncated tool input.
    let emu = emulator(vec![
        Scripted::tool_call("check_order_status", &json!({"order_id": "A1"}))
            .with_fault(LlmFault::TruncatedToolArguments),
    ]);
    let h = Harness::single(llm(&emu));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 1).await);
    let out = h.finish().await;
    assert!(errors(&out)[0].contains("check_order_status"));
    assert!(!out.kinds().contains(&FrameKind::ToolCalls));
}

#[tokio::test]
async fn cut_stream_and_missing_key() {
    let emu =
        emulator(vec![Scripted::text("Hello there friend.").with_fault(LlmFault::CloseMidStream { after_events: 5 })]);
    let h = Harness::single(llm(&emu));
    h.push(Frame::LlmRun(user_ctx("hi"))).await;
    assert!(wait_turns(&h, 2).await);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let out = h.finish().await;
    assert_eq!(errors(&out).len(), 1);
    assert_eq!(plain_texts(&out), [DEFAULT_FALLBACK_TEXT]);

    let s = AnthropicSettings { api_key_env: "VOXLINE_TEST_NO_ANTHROPIC_KEY".into(), ..AnthropicSettings::default() };
    let err = AnthropicLlm::new(s).unwrap_err();
    assert!(err.to_string().contains("VOXLINE_TEST_NO_ANTHROPIC_KEY"));
}
