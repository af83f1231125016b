//! [`ToolCallAccumulator`]: assembles OpenAI-style streamed tool-call deltas, keyed by `index`.
//!
//! Consumes the `delta.tool_calls[]` entries of each chunk (all of them: one chunk may carry
//! several indexes); produces complete [`ToolCall`]s in index order once the response finishes.
//!
//! Tolerated deviations seen in compatible servers: indexes not starting at 0; an entry with an
//! index that never got an id or name (an off-by-one on the last fragment) is folded into the
//! previous call; no `index` at all (older Ollama) means "the current call" unless a different
//! id appears; a whole call in one entry; ids repeated on every chunk; names split across chunks.

use std::sync::Arc;

use serde_json::Value;
use voxline_pipeline::ToolCall;

use super::service::StreamError;

#[derive(Debug, Default, Clone)]
struct Partial {
    index: i64,
    id: String,
    name: String,
    arguments: String,
}

/// Accumulates tool-call deltas. See the module docs.
#[derive(Debug, Default, Clone)]
pub struct ToolCallAccumulator {
    calls: Vec<Partial>,
}

impl ToolCallAccumulator {
    /// Whether any delta was seen.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Apply one entry of a chunk's `delta.tool_calls` array.
    pub fn apply(&mut self, entry: &Value) {
        let index = entry.get("index").and_then(Value::as_i64);
        let id = entry.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
        let function = entry.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).filter(|s| !s.is_empty());
        let args = function.and_then(|f| f.get("arguments"));
        let slot = match index {
            Some(i) => match self.calls.iter().position(|c| c.index == i) {
                Some(p) => p,
                None if id.is_none() && name.is_none() && !self.calls.is_empty() => self.calls.len() - 1,
                None => self.new_slot(i),
            },
            None => match self.calls.last() {
                Some(last) if id.is_none_or(|id| last.id.is_empty() || last.id == id) => self.calls.len() - 1,
                Some(last) => {
                    let next = last.index + 1;
                    self.new_slot(next)
                }
                None => self.new_slot(0),
            },
        };
        let call = &mut self.calls[slot];
        if let Some(id) = id {
            id.clone_into(&mut call.id);
        }
        if let Some(name) = name {
            if call.name.is_empty() || name.starts_with(call.name.as_str()) {
                name.clone_into(&mut call.name);
            } else if call.name != name {
                call.name.push_str(name);
            }
        }
        match args {
            Some(Value::String(s)) => call.arguments.push_str(s),
            // Some servers send the arguments as an object instead of JSON text.
            Some(v @ Value::Object(_)) => call.arguments.push_str(&v.to_string()),
            _ => {}
        }
    }

    fn new_slot(&mut self, index: i64) -> usize {
        self.calls.push(Partial { index, ..Partial::default() });
        self.calls.len() - 1
    }

    /// The complete calls in index order; empty arguments become `{}`. Arguments that are not a
    /// JSON object (e.g. truncated) are an error naming the tool.
    pub fn finish(&mut self) -> Result<Vec<ToolCall>, StreamError> {
        let mut calls = std::mem::take(&mut self.calls);
        calls.sort_by_key(|c| c.index);
        calls
            .into_iter()
            .map(|c| {
                if c.name.is_empty() {
                    return Err(StreamError::Malformed(format!("tool call at index {} has no name", c.index)));
                }
                let arguments = if c.arguments.trim().is_empty() { "{}".to_string() } else { c.arguments };
                match serde_json::from_str::<Value>(&arguments) {
                    Ok(Value::Object(_)) => {}
                    _ => return Err(StreamError::InvalidToolArguments { name: c.name }),
                }
                let id = if c.id.is_empty() { format!("call_{}", c.index) } else { c.id };
                Ok(ToolCall { id: Arc::from(id), name: Arc::from(c.name), arguments: Arc::from(arguments) })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(entries: &[Value]) -> Result<Vec<ToolCall>, StreamError> {
        let mut acc = ToolCallAccumulator::default();
        for e in entries {
            acc.apply(e);
        }
        acc.finish()
    }

    #[test]
    fn interleaved_parallel_calls() {
        let calls = run(&[
            json!({"index": 1, "id": "b", "function": {"name": "weather", "arguments": ""}}),
            json!({"index": 0, "id": "a", "function": {"name": "order", "arguments": ""}}),
            json!({"index": 0, "function": {"arguments": "{\"id\":"}}),
            json!({"index": 1, "function": {"arguments": "{\"city\":\"Paris\"}"}}),
            json!({"index": 0, "function": {"arguments": "1}"}}),
        ])
        .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!((&*calls[0].id, &*calls[0].name, &*calls[0].arguments), ("a", "order", "{\"id\":1}"));
        assert_eq!((&*calls[1].id, &*calls[1].name), ("b", "weather"));
    }

    #[test]
    fn deviations() {
        // Index starting at 1, id repeated, off-by-one last fragment.
        let calls = run(&[
            json!({"index": 1, "id": "x", "function": {"name": "f", "arguments": "{\"a\""}}),
            json!({"index": 1, "id": "x", "function": {"arguments": ":1"}}),
            json!({"index": 2, "function": {"arguments": "}"}}),
        ])
        .unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(&*calls[0].arguments, "{\"a\":1}");
        // No index at all, two whole calls with different ids; empty arguments.
        let calls = run(&[
            json!({"id": "p", "function": {"name": "f", "arguments": "{}"}}),
            json!({"id": "q", "function": {"name": "g", "arguments": ""}}),
        ])
        .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(&*calls[1].arguments, "{}");
        // Name split across chunks.
        let calls = run(&[
            json!({"index": 0, "id": "s", "function": {"name": "get_", "arguments": ""}}),
            json!({"index": 0, "function": {"name": "weather"}}),
        ])
        .unwrap();
        assert_eq!(&*calls[0].name, "get_weather");
    }

    #[test]
    fn truncated_arguments_are_an_error() {
        let err = run(&[json!({"index": 0, "id": "a", "function": {"name": "f", "arguments": "{\"order_id\": \"12"}})])
            .unwrap_err();
        assert_eq!(err, StreamError::InvalidToolArguments { name: "f".into() });
    }
}
