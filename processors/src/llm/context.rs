//! [`ConversationContext`]: the provider-neutral conversation, shared by the aggregators and the
//! tool executor of one call.
//!
//! It is an `Arc<Mutex<…>>` handle: the user aggregator appends user turns and takes snapshots
//! ([`LlmContext`]) for `LlmRun`, the assistant aggregator records what the bot said (and trims
//! it to what the caller heard), the tool executor inserts results. The lock is a plain
//! `std::sync::Mutex` held only for short, non-async sections, never across an `.await`.
//!
//! Invariants kept for the providers (both reject a request that breaks them with a 400):
//! - a `Tool` message always sits right after the assistant message that made the call (results
//!   that settle late, e.g. a side-effecting tool finishing after a barge-in, are *inserted* there
//!   rather than appended after newer user turns);
//! - a snapshot answers every call: a call whose result has not settled yet gets a placeholder
//!   result ([`PENDING_TOOL_RESULT`]), as Pipecat does with its `IN_PROGRESS` marker;
//! - empty assistant text is never stored (Anthropic rejects empty text blocks).

use std::sync::{Arc, Mutex};

use voxline_pipeline::sync::lock;
use voxline_pipeline::{ChatMessage, LlmContext, Role, ToolCall, ToolResult, ToolSpec};

/// Result content a snapshot shows for a tool call that has not settled yet.
pub const PENDING_TOOL_RESULT: &str = r#"{"status":"in_progress","note":"the result is not available yet"}"#;

/// Stable id of a message in a [`ConversationContext`] (indices shift when messages are inserted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u64);

#[derive(Debug, Clone)]
struct Entry {
    id: MessageId,
    msg: ChatMessage,
}

#[derive(Debug, Default)]
struct Inner {
    entries: Vec<Entry>,
    tools: Vec<ToolSpec>,
    next_id: u64,
}

impl Inner {
    fn add(&mut self, at: usize, msg: ChatMessage) -> MessageId {
        let id = MessageId(self.next_id);
        self.next_id += 1;
        self.entries.insert(at.min(self.entries.len()), Entry { id, msg });
        id
    }
    fn push(&mut self, msg: ChatMessage) -> MessageId {
        let at = self.entries.len();
        self.add(at, msg)
    }
    fn position(&self, id: MessageId) -> Option<usize> {
        self.entries.iter().rposition(|e| e.id == id)
    }
    /// Index of the assistant message that made call `call_id`.
    fn caller_of(&self, call_id: &str) -> Option<usize> {
        self.entries
            .iter()
            .rposition(|e| e.msg.role == Role::Assistant && e.msg.tool_calls.iter().any(|c| &*c.id == call_id))
    }
}

/// A shared, mutable conversation. Cloning gives another handle on the same conversation.
#[derive(Debug, Clone, Default)]
pub struct ConversationContext {
    inner: Arc<Mutex<Inner>>,
}

impl ConversationContext {
    /// A conversation that starts with `system_prompt` (skipped when empty) and offers `tools`.
    #[must_use]
    pub fn new(system_prompt: impl Into<String>, tools: Vec<ToolSpec>) -> Self {
        let ctx = Self::default();
        {
            let mut g = lock(&ctx.inner);
            let prompt = system_prompt.into();
            if !prompt.trim().is_empty() {
                g.push(ChatMessage::text(Role::System, prompt));
            }
            g.tools = tools;
        }
        ctx
    }

    /// Replace the tools offered to the model.
    pub fn set_tools(&self, tools: Vec<ToolSpec>) {
        lock(&self.inner).tools = tools;
    }

    /// Append any message.
    pub fn push(&self, msg: ChatMessage) -> MessageId {
        lock(&self.inner).push(msg)
    }

    /// Append a user turn.
    pub fn add_user_text(&self, text: &str) -> Option<MessageId> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Some(lock(&self.inner).push(ChatMessage::text(Role::User, text)))
    }

    /// Append bot speech: extends the last message when it is plain assistant text (so a response
    /// and the fallback line after it stay one message), else starts a new one.
    pub fn append_assistant_text(&self, text: &str) -> Option<MessageId> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let mut g = lock(&self.inner);
        if let Some(last) = g.entries.last_mut()
            && last.msg.role == Role::Assistant
            && last.msg.tool_calls.is_empty()
        {
            if !last.msg.content.is_empty() {
                last.msg.content.push(' ');
            }
            last.msg.content.push_str(text);
            return Some(last.id);
        }
        Some(g.push(ChatMessage::text(Role::Assistant, text)))
    }

    /// Record an assistant message that says `text` and makes `calls`. Idempotent: when a message
    /// with these call ids exists already, its id is returned and nothing changes.
    pub fn record_tool_calls(&self, text: &str, calls: &[ToolCall]) -> MessageId {
        let mut g = lock(&self.inner);
        if let Some(first) = calls.first()
            && let Some(i) = g.caller_of(&first.id)
        {
            return g.entries[i].id;
        }
        let msg = ChatMessage {
            role: Role::Assistant,
            content: text.trim().to_string(),
            tool_calls: calls.to_vec(),
            tool_call_id: None,
            name: None,
        };
        g.push(msg)
    }

    /// Replace the text of message `id`. A plain assistant/user message left empty is removed;
    /// returns `false` when `id` is gone.
    pub fn set_content(&self, id: MessageId, text: &str) -> bool {
        let mut g = lock(&self.inner);
        let Some(i) = g.position(id) else { return false };
        let text = text.trim();
        if text.is_empty() && g.entries[i].msg.tool_calls.is_empty() && g.entries[i].msg.role != Role::Tool {
            g.entries.remove(i);
        } else {
            g.entries[i].msg.content = text.to_string();
        }
        true
    }

    /// The text of message `id`, if it is still there.
    #[must_use]
    pub fn content(&self, id: MessageId) -> Option<String> {
        let g = lock(&self.inner);
        g.position(id).map(|i| g.entries[i].msg.content.clone())
    }

    /// Store settled tool results, each right after the assistant message that made the call (and
    /// after results already stored for it), replacing an earlier result for the same call.
    /// Results for calls the context does not know are dropped (a request holding them would be
    /// rejected) and counted in the return value.
    pub fn add_tool_results(&self, results: &[ToolResult]) -> usize {
        let mut g = lock(&self.inner);
        let mut unknown = 0;
        for r in results {
            if let Some(e) = g
                .entries
                .iter_mut()
                .find(|e| e.msg.role == Role::Tool && e.msg.tool_call_id.as_deref() == Some(&*r.call_id))
            {
                e.msg.content = r.content.to_string();
                continue;
            }
            let Some(caller) = g.caller_of(&r.call_id) else {
                tracing::warn!(call_id = %r.call_id, tool = %r.name, "tool result for a call not in the context; dropped");
                unknown += 1;
                continue;
            };
            let mut at = caller + 1;
            while at < g.entries.len() && g.entries[at].msg.role == Role::Tool {
                at += 1;
            }
            let msg = ChatMessage {
                role: Role::Tool,
                content: r.content.to_string(),
                tool_calls: Vec::new(),
                tool_call_id: Some(r.call_id.clone()),
                name: Some(r.name.clone()),
            };
            g.add(at, msg);
        }
        unknown
    }

    /// A copy of the messages, in order.
    #[must_use]
    pub fn messages(&self) -> Vec<ChatMessage> {
        lock(&self.inner).entries.iter().map(|e| e.msg.clone()).collect()
    }

    /// Number of messages.
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// Whether there are no messages.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot to run the LLM on: every tool call answered (placeholders for unsettled ones),
    /// each answer right after its call, in call order.
    #[must_use]
    pub fn snapshot(&self) -> Arc<LlmContext> {
        self.snapshot_with(None)
    }

    /// A snapshot as if `user_text` had been appended as a user message, without appending it
    /// (a speculative request: the turn may yet go on).
    #[must_use]
    pub fn snapshot_with_user(&self, user_text: &str) -> Arc<LlmContext> {
        self.snapshot_with(Some(user_text))
    }

    fn snapshot_with(&self, user_text: Option<&str>) -> Arc<LlmContext> {
        let g = lock(&self.inner);
        let mut messages = Vec::with_capacity(g.entries.len() + 2);
        let mut i = 0;
        while i < g.entries.len() {
            let msg = &g.entries[i].msg;
            i += 1;
            if msg.role == Role::Tool {
                // Emitted with its caller below; a stray one (caller gone) would be rejected.
                continue;
            }
            messages.push(msg.clone());
            if msg.role != Role::Assistant || msg.tool_calls.is_empty() {
                continue;
            }
            for call in &msg.tool_calls {
                let answer = g
                    .entries
                    .iter()
                    .find(|e| e.msg.role == Role::Tool && e.msg.tool_call_id.as_deref() == Some(&*call.id));
                messages.push(match answer {
                    Some(e) => e.msg.clone(),
                    None => ChatMessage {
                        role: Role::Tool,
                        content: PENDING_TOOL_RESULT.to_string(),
                        tool_calls: Vec::new(),
                        tool_call_id: Some(call.id.clone()),
                        name: Some(call.name.clone()),
                    },
                });
            }
        }
        if let Some(text) = user_text {
            messages.push(ChatMessage::text(Role::User, text.trim()));
        }
        Arc::new(LlmContext { messages, tools: g.tools.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxline_pipeline::ToolOutcome;

    fn call(id: &str) -> ToolCall {
        ToolCall { id: id.into(), name: "t".into(), arguments: "{}".into() }
    }
    fn result(id: &str, content: &str) -> ToolResult {
        ToolResult {
            call_id: id.into(),
            name: "t".into(),
            content: content.into(),
            outcome: ToolOutcome::Ok,
            run_llm: true,
        }
    }

    #[test]
    fn late_results_are_inserted_after_their_call_in_call_order() {
        let ctx = ConversationContext::new("sys", Vec::new());
        ctx.add_user_text("hi");
        ctx.record_tool_calls("Let me check.", &[call("a"), call("b")]);
        ctx.add_user_text("hello?");
        let snap = ctx.snapshot();
        let roles: Vec<Role> = snap.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool, Role::Tool, Role::User]);
        assert_eq!(snap.messages[3].content, PENDING_TOOL_RESULT);
        ctx.add_tool_results(&[result("b", "B")]);
        ctx.add_tool_results(&[result("a", "A")]);
        let snap = ctx.snapshot();
        assert_eq!(snap.messages[3].tool_call_id.as_deref(), Some("a"));
        assert_eq!(snap.messages[3].content, "A");
        assert_eq!(snap.messages[4].content, "B");
        assert_eq!(snap.messages[5].role, Role::User);
        assert_eq!(ctx.add_tool_results(&[result("zzz", "?")]), 1);
        // Idempotent recording.
        let n = ctx.len();
        ctx.record_tool_calls("", &[call("a"), call("b")]);
        assert_eq!(ctx.len(), n);
    }

    #[test]
    fn assistant_text_merges_and_empty_text_is_removed() {
        let ctx = ConversationContext::new("", Vec::new());
        let a = ctx.append_assistant_text("Hello.").unwrap();
        let b = ctx.append_assistant_text("Sorry.").unwrap();
        assert_eq!(a, b);
        assert_eq!(ctx.content(a).unwrap(), "Hello. Sorry.");
        assert!(ctx.set_content(a, "  "));
        assert!(ctx.is_empty());
        assert!(ctx.append_assistant_text(" ").is_none());
    }
}
