//! ToolExecutor: concurrency, every call settles, barge-in, fillers, results in provider order.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;
use voxline_pipeline::testing::{Harness, Output};
use voxline_pipeline::{Direction, Frame, FrameKind, Role, ToolCall, ToolOutcome, ToolResult};
use voxline_processors::llm::ConversationContext;
use voxline_processors::tools::{Tool, ToolExecutor, ToolExecutorSettings, ToolRegistry};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Deserialize, JsonSchema)]
struct OrderArgs {
    /// Order number.
    order_id: String,
}

#[derive(Deserialize, JsonSchema)]
struct SleepArgs {
    ms: u64,
}

async fn order_status(a: OrderArgs) -> Result<serde_json::Value, String> {
    if a.order_id == "bad" {
        return Err("no such order".into());
    }
    Ok(serde_json::json!({"order_id": a.order_id, "status": "shipped"}))
}

async fn sleep_tool(a: SleepArgs) -> Result<String, String> {
    tokio::time::sleep(Duration::from_millis(a.ms)).await;
    Ok(format!("slept {}", a.ms))
}

fn registry() -> ToolRegistry {
    ToolRegistry::new()
        .with(Tool::new("check_order_status", "Look up an order", order_status))
        .with(Tool::new("sleep", "Sleep", sleep_tool))
        .with(
            Tool::new("slow_lookup", "Sleep with a short timeout", sleep_tool).with_timeout(Duration::from_millis(100)),
        )
        .with(
            Tool::new("chatty", "Sleep with a filler", sleep_tool)
                .with_filler("One moment, let me check that.", Duration::from_millis(100)),
        )
}

fn call(id: &str, name: &str, args: &str) -> ToolCall {
    ToolCall { id: id.into(), name: name.into(), arguments: args.into() }
}

fn results(out: &Output) -> Vec<ToolResult> {
    out.downstream
        .iter()
        .filter_map(|f| match f {
            Frame::ToolResult(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn llm_runs_up(out: &Output) -> usize {
    out.upstream.iter().filter(|f| f.kind() == FrameKind::LlmRun).count()
}

async fn run_batch(ctx: &ConversationContext, reg: ToolRegistry, calls: Vec<ToolCall>, n: usize) -> Output {
    let h = Harness::single(ToolExecutor::new(reg, ctx.clone(), ToolExecutorSettings::default()));
    h.push(Frame::ToolCalls(calls.into())).await;
    assert!(h.wait_for(WAIT, |f| f.iter().filter(|(_, f)| f.kind() == FrameKind::ToolResult).count() >= n).await);
    assert!(
        h.wait_for(WAIT, |f| f.iter().any(|(d, f)| *d == Direction::Upstream && f.kind() == FrameKind::LlmRun)).await
    );
    h.finish().await
}

#[tokio::test]
async fn every_call_settles_with_readable_errors_and_one_llm_run() {
    let ctx = ConversationContext::new("sys", registry().specs());
    ctx.add_user_text("check my order");
    let calls = vec![
        call("c1", "check_order_status", r#"{"order_id":"ORD-1"}"#),
        call("c2", "transfer_money", r#"{"amount":5}"#),
        call("c3", "check_order_status", r#"{"order":"ORD-1"}"#),
        call("c4", "check_order_status", r#"{"order_id":"bad"}"#),
        call("c5", "slow_lookup", r#"{"ms":1000}"#),
    ];
    let out = run_batch(&ctx, registry(), calls, 5).await;
    let r = results(&out);
    let ids: Vec<&str> = r.iter().map(|r| &*r.call_id).collect();
    assert_eq!(ids, ["c1", "c2", "c3", "c4", "c5"]);
    assert_eq!(r[0].outcome, ToolOutcome::Ok);
    assert!(r[0].content.contains("shipped"));
    assert_eq!(r[1].outcome, ToolOutcome::Error);
    assert!(r[1].content.contains("unknown tool `transfer_money`") && r[1].content.contains("check_order_status"));
    assert_eq!(r[2].outcome, ToolOutcome::Error);
    assert!(r[2].content.contains("missing field `order_id`"), "{}", r[2].content);
    assert_eq!(r[3].outcome, ToolOutcome::Error);
    assert!(r[3].content.contains("no such order"));
    assert_eq!(r[4].outcome, ToolOutcome::Timeout);
    assert_eq!(llm_runs_up(&out), 1, "one LLM run per batch");

    // The LlmRun snapshot: assistant message with the calls, then one tool message per call, in order.
    let Some(Frame::LlmRun(snap)) = out.upstream.iter().find(|f| f.kind() == FrameKind::LlmRun) else { panic!() };
    let roles: Vec<Role> = snap.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::System, Role::User, Role::Assistant, Role::Tool, Role::Tool, Role::Tool, Role::Tool, Role::Tool]
    );
    assert_eq!(snap.messages[2].tool_calls.len(), 5);
    let answered: Vec<&str> = snap.messages[3..].iter().map(|m| m.tool_call_id.as_deref().unwrap()).collect();
    assert_eq!(answered, ["c1", "c2", "c3", "c4", "c5"]);
    assert_eq!(snap.tools.len(), 4);
}

#[tokio::test]
async fn a_batch_runs_concurrently() {
    let ctx = ConversationContext::new("", Vec::new());
    let t0 = Instant::now();
    let calls = vec![
        call("a", "sleep", r#"{"ms":300}"#),
        call("b", "sleep", r#"{"ms":300}"#),
        call("c", "sleep", r#"{"ms":300}"#),
    ];
    let out = run_batch(&ctx, registry(), calls, 3).await;
    let elapsed = t0.elapsed();
    assert!(elapsed < Duration::from_millis(700), "not concurrent: {elapsed:?}");
    assert!(results(&out).iter().all(|r| r.outcome == ToolOutcome::Ok));
}

#[tokio::test]
async fn filler_line_only_for_slow_batches() {
    let ctx = ConversationContext::new("", Vec::new());
    let out = run_batch(&ctx, registry(), vec![call("a", "chatty", r#"{"ms":300}"#)], 1).await;
    let kinds = out.kinds();
    assert_eq!(kinds, [FrameKind::Text, FrameKind::ToolResult]);
    assert_eq!(out.texts(), ["One moment, let me check that."]);

    let ctx = ConversationContext::new("", Vec::new());
    let out = run_batch(&ctx, registry(), vec![call("a", "chatty", r#"{"ms":10}"#)], 1).await;
    assert_eq!(out.kinds(), [FrameKind::ToolResult]);
}

#[tokio::test]
async fn barge_in_cancels_plain_tools_but_not_side_effecting_ones() {
    let booked = Arc::new(AtomicBool::new(false));
    let flag = booked.clone();
    let reg = registry().with(
        Tool::new("book_table", "Book a table", move |a: SleepArgs| {
            let flag = flag.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(a.ms)).await;
                flag.store(true, Ordering::SeqCst);
                Ok::<_, String>(serde_json::json!({"ok": true, "ref": "R42"}))
            }
        })
        .side_effecting(true),
    );
    let ctx = ConversationContext::new("sys", Vec::new());
    ctx.add_user_text("book it");
    let h = Harness::single(ToolExecutor::new(reg, ctx.clone(), ToolExecutorSettings::default()));
    let calls = vec![call("s", "sleep", r#"{"ms":2000}"#), call("b", "book_table", r#"{"ms":300}"#)];
    h.push(Frame::ToolCalls(calls.into())).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    h.interrupt();
    assert!(h.wait_for(WAIT, |f| f.iter().filter(|(_, f)| f.kind() == FrameKind::ToolResult).count() >= 2).await);
    // The batch settles when its slowest uncancelled call does (the booking), not after 2 s.
    assert!(t0.elapsed() < Duration::from_millis(1000));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = h.finish().await;
    assert!(booked.load(Ordering::SeqCst), "side-effecting tool must finish");
    let r = results(&out);
    assert_eq!(r[0].outcome, ToolOutcome::Cancelled);
    assert_eq!(r[1].outcome, ToolOutcome::Ok);
    assert_eq!(llm_runs_up(&out), 0, "no LLM run for a batch the caller interrupted");
    // Both results are in the context, right after the calls.
    let msgs = ctx.snapshot().messages.clone();
    assert_eq!(msgs.len(), 5);
    assert!(msgs[3].content.contains("cancelled"));
    assert!(msgs[4].content.contains("R42"));
}
