//! [`ToolExecutor`]: runs the LLM's tool-call batches.
//!
//! Consumes `ToolCalls` (downstream, one frame per batch). Produces, per batch: at most one
//! filler `Text` line while slow tools run, one `ToolResult` per call (downstream,
//! uninterruptible), the results stored in the shared [`ConversationContext`] in call order right
//! after the assistant message that made the calls, then ONE `LlmRun` (upstream, to the LLM)
//! when at least one tool asks for it. Every other frame is forwarded.
//!
//! Every call settles exactly once: `Ok`, `Error` (unknown tool, invalid arguments, the tool's own
//! error, a panic), `Timeout`, or `Cancelled` (barge-in, for tools not marked side-effecting).
//!
//! Design choice, and why: the runner drops an in-flight `process` future on interruption, so a
//! batch awaited inside `process` would be torn down mid-way (a booking half made, no result
//! recorded). Instead `process` only spawns one task per call plus a batch task that awaits their
//! `JoinHandle`s, and returns at once (the pipeline keeps flowing, so the filler line can be
//! spoken while tools run). Non-side-effecting calls race the turn's cancellation token and settle
//! as `Cancelled` on barge-in; side-effecting calls ignore it and finish. The batch task writes
//! the results into the shared context itself — so even a batch that settles after a barge-in
//! leaves the conversation consistent for the next user turn — and pushes through a
//! `FrameSender`: `ToolResult` frames are uninterruptible and survive, while the follow-up
//! `LlmRun` is stamped with the batch's epoch and is dropped if the caller interrupted meanwhile
//! (the next user turn will run the LLM with these results in context instead).

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use voxline_pipeline::{
    Context, Direction, FlowResult, Frame, FrameSender, Processor, ToolCall, ToolOutcome, ToolResult,
};

use super::registry::{DEFAULT_TOOL_TIMEOUT, ToolRegistry};
use crate::llm::ConversationContext;

/// Settings of a [`ToolExecutor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolExecutorSettings {
    /// Timeout for tools without their own.
    pub default_timeout: Duration,
    /// Run the LLM again after a batch (when its tools ask for it).
    pub run_llm: bool,
    /// Also cancel side-effecting tools on barge-in.
    pub cancel_side_effecting: bool,
}

impl Default for ToolExecutorSettings {
    fn default() -> Self {
        Self { default_timeout: DEFAULT_TOOL_TIMEOUT, run_llm: true, cancel_side_effecting: false }
    }
}

/// Executes tool-call batches. See the module docs.
pub struct ToolExecutor {
    registry: Arc<ToolRegistry>,
    ctx: ConversationContext,
    settings: ToolExecutorSettings,
}

impl std::fmt::Debug for ToolExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolExecutor").field("tools", &self.registry.names()).field("settings", &self.settings).finish()
    }
}

fn error_json(message: &str) -> Arc<str> {
    Arc::from(serde_json::json!({ "error": message }).to_string())
}

impl ToolExecutor {
    /// An executor for `registry`, storing results in `ctx`.
    #[must_use]
    pub fn new(registry: ToolRegistry, ctx: ConversationContext, settings: ToolExecutorSettings) -> Self {
        Self { registry: Arc::new(registry), ctx, settings }
    }

    fn start_batch(&self, calls: Arc<[ToolCall]>, turn: CancellationToken, sender: FrameSender) {
        // Makes the batch self-sufficient without an assistant aggregator: results must follow
        // an assistant message holding the calls (no-op when the aggregator recorded it).
        self.ctx.record_tool_calls("", &calls);
        let registry = self.registry.clone();
        let ctx = self.ctx.clone();
        let settings = self.settings.clone();
        let span = tracing::info_span!("tool_batch", calls = calls.len());
        tokio::spawn(run_batch(registry, ctx, settings, calls, turn, sender).instrument(span));
    }
}

async fn run_batch(
    registry: Arc<ToolRegistry>,
    ctx: ConversationContext,
    settings: ToolExecutorSettings,
    calls: Arc<[ToolCall]>,
    turn: CancellationToken,
    sender: FrameSender,
) {
    let filler = calls
        .iter()
        .filter_map(|c| registry.get(&c.name))
        .filter_map(|t| t.filler.clone().map(|line| (t.filler_after, line)))
        .min_by_key(|(after, _)| *after);
    let handles: Vec<_> = calls
        .iter()
        .map(|call| {
            let span = tracing::info_span!("tool_call", tool = %call.name, id = %call.id);
            tokio::spawn(run_call(registry.clone(), settings.clone(), call.clone(), turn.clone()).instrument(span))
        })
        .collect();
    let all = join_all(handles);
    tokio::pin!(all);
    let joined = match filler {
        Some((after, line)) => {
            tokio::select! {
                done = &mut all => done,
                () = tokio::time::sleep(after) => {
                    // Turn-scoped: a filler line for a turn the caller talked over is noise (the
                    // runner would drop it anyway; this skips the trip).
                    if sender.is_current() {
                        sender.push(Frame::Text(Arc::from(line)), Direction::Downstream);
                    }
                    all.await
                }
            }
        }
        None => all.await,
    };
    let results: Vec<ToolResult> = joined
        .into_iter()
        .zip(calls.iter())
        .map(|(joined, call)| {
            joined.unwrap_or_else(|e| ToolResult {
                call_id: call.id.clone(),
                name: call.name.clone(),
                content: error_json(&format!("the tool failed unexpectedly: {e}")),
                outcome: ToolOutcome::Error,
                run_llm: true,
            })
        })
        .collect();
    ctx.add_tool_results(&results);
    let run_llm = settings.run_llm && results.iter().any(|r| r.run_llm);
    for r in results {
        sender.push(Frame::ToolResult(r), Direction::Downstream);
    }
    // Turn-scoped on purpose: the follow-up run answers the turn that asked for the tools. After
    // a barge-in the caller's new words start the next run, with these results in context; a
    // second run now would answer a question nobody is waiting for.
    if run_llm && sender.is_current() {
        sender.push(Frame::LlmRun(ctx.snapshot()), Direction::Upstream);
    } else if run_llm {
        tracing::debug!("batch settled after a barge-in; results kept for the next turn");
    }
}

async fn run_call(
    registry: Arc<ToolRegistry>,
    settings: ToolExecutorSettings,
    call: ToolCall,
    turn: CancellationToken,
) -> ToolResult {
    let settle = |content: Arc<str>, outcome: ToolOutcome, run_llm: bool| ToolResult {
        call_id: call.id.clone(),
        name: call.name.clone(),
        content,
        outcome,
        run_llm,
    };
    let Some(tool) = registry.get(&call.name) else {
        let known: Vec<String> = registry.names().iter().map(|n| n.to_string()).collect();
        tracing::warn!("unknown tool");
        let msg = format!("unknown tool `{}`; available tools: {}", call.name, known.join(", "));
        return settle(error_json(&msg), ToolOutcome::Error, true);
    };
    let fut = match tool.invoke(&call.arguments) {
        Ok(f) => f,
        Err(msg) => {
            tracing::warn!(%msg, "invalid tool arguments");
            return settle(error_json(&msg), ToolOutcome::Error, tool.run_llm);
        }
    };
    let timeout = tool.timeout.unwrap_or(settings.default_timeout);
    let cancellable = !tool.side_effecting || settings.cancel_side_effecting;
    let started = std::time::Instant::now();
    let guarded = tokio::time::timeout(timeout, fut);
    let outcome = if cancellable {
        tokio::select! {
            r = guarded => Some(r),
            () = turn.cancelled() => None,
        }
    } else {
        Some(guarded.await)
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match outcome {
        None => {
            tracing::info!(elapsed_ms, "tool cancelled by barge-in");
            settle(error_json("cancelled: the caller interrupted"), ToolOutcome::Cancelled, tool.run_llm)
        }
        Some(Err(_)) => {
            tracing::warn!(elapsed_ms, "tool timed out");
            settle(error_json(&format!("timed out after {timeout:?}")), ToolOutcome::Timeout, tool.run_llm)
        }
        Some(Ok(Err(msg))) => {
            tracing::info!(elapsed_ms, %msg, "tool returned an error");
            settle(error_json(&msg), ToolOutcome::Error, tool.run_llm)
        }
        Some(Ok(Ok(content))) => {
            tracing::debug!(elapsed_ms, "tool ok");
            settle(Arc::from(content), ToolOutcome::Ok, tool.run_llm)
        }
    }
}

impl Processor for ToolExecutor {
    fn name(&self) -> &str {
        "tool_executor"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        match frame {
            Frame::ToolCalls(calls) if direction == Direction::Downstream => {
                if !calls.is_empty() {
                    self.start_batch(calls, cx.turn_token(), cx.sender());
                }
            }
            other => cx.push(other, direction).await,
        }
        Ok(())
    }
}
