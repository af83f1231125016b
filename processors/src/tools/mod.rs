//! Tools the LLM can call: a typed registry and the executor processor.
//!
//! ```text
//! … → LlmService → AssistantAggregator → ToolExecutor → SentenceAggregator → tts → …
//! ```
//!
//! - [`Tool`]: an async Rust function with a `#[derive(Deserialize, JsonSchema)]` argument
//!   struct; the JSON schema the model sees is generated from it; per-tool timeout,
//!   `side_effecting` (not cancelled by barge-in), optional filler line, `run_llm`.
//! - [`ToolRegistry`]: tools by name; [`ToolRegistry::specs`] goes into the
//!   [`ConversationContext`](crate::llm::ConversationContext).
//! - [`ToolExecutor`]: runs each `ToolCalls` batch concurrently, settles every call, stores the
//!   results in the shared context in provider order and re-runs the LLM once per batch.

mod executor;
mod registry;

pub use executor::{ToolExecutor, ToolExecutorSettings};
pub use registry::{
    DEFAULT_FILLER_AFTER, DEFAULT_TOOL_TIMEOUT, NoArgs, Tool, ToolOutput, ToolRegistry, parameters_schema,
};
