//! [`ToolRegistry`] and [`Tool`]: async Rust functions the LLM can call, with typed arguments.
//!
//! A tool is an `async fn(Args) -> Result<R, E>` where `Args: Deserialize + JsonSchema`. The
//! JSON schema the model sees (`parameters` for OpenAI, `input_schema` for Anthropic) is generated
//! from `Args` with schemars (draft-07, subschemas inlined: several compatible servers do not
//! resolve `$ref`). Arguments are validated by deserializing them; a failure becomes a readable
//! error *result* ("invalid arguments for `x`: missing field `order_id`") so the model can retry
//! instead of the turn failing. `R: Serialize` is sent back as JSON text.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use voxline_pipeline::ToolSpec;

/// Default per-tool timeout.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default delay before a tool's filler line is spoken.
pub const DEFAULT_FILLER_AFTER: Duration = Duration::from_millis(1500);

/// What a tool invocation produced: JSON result text, or an error message for the model.
pub type ToolOutput = Result<String, String>;

type Handler = Arc<dyn Fn(&str) -> Result<BoxFuture<'static, ToolOutput>, String> + Send + Sync>;

/// Arguments of a tool that takes none.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, JsonSchema)]
pub struct NoArgs {}

/// One callable tool.
#[derive(Clone)]
pub struct Tool {
    name: Arc<str>,
    description: Arc<str>,
    parameters: Arc<Value>,
    handler: Handler,
    /// Per-call timeout (`None`: the executor's default).
    pub timeout: Option<Duration>,
    /// Not cancelled by barge-in (it changes the world: a booking, a payment, a transfer).
    pub side_effecting: bool,
    /// A line spoken when the call takes longer than `filler_after`.
    pub filler: Option<String>,
    /// When the filler line is spoken.
    pub filler_after: Duration,
    /// Run the LLM again once the batch holding this call has settled.
    pub run_llm: bool,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("side_effecting", &self.side_effecting)
            .field("filler", &self.filler)
            .finish_non_exhaustive()
    }
}

/// The JSON schema of `A` as a tool's `parameters` object.
#[must_use]
pub fn parameters_schema<A: JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let mut v = generator.into_root_schema_for::<A>().to_value();
    if let Value::Object(m) = &mut v {
        m.remove("title");
        m.remove("$schema");
        m.entry("type").or_insert_with(|| Value::String("object".into()));
        if m.get("type").and_then(Value::as_str) == Some("object") {
            m.entry("properties").or_insert_with(|| Value::Object(serde_json::Map::new()));
        }
    }
    v
}

impl Tool {
    /// A tool named `name` (must match `^[A-Za-z0-9_-]{1,64}$` for OpenAI) running `f`.
    pub fn new<A, F, Fut, R, E>(name: &str, description: &str, f: F) -> Self
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize,
        E: Display,
    {
        let tool_name: Arc<str> = Arc::from(name);
        let for_errors = tool_name.clone();
        let f = Arc::new(f);
        let handler: Handler = Arc::new(move |raw: &str| {
            let raw = if raw.trim().is_empty() { "{}" } else { raw };
            let args: A =
                serde_json::from_str(raw).map_err(|e| format!("invalid arguments for `{for_errors}`: {e}"))?;
            let fut = f(args);
            Ok(async move {
                match fut.await {
                    Ok(r) => serde_json::to_string(&r).map_err(|e| format!("result could not be encoded: {e}")),
                    Err(e) => Err(e.to_string()),
                }
            }
            .boxed())
        });
        Self {
            name: tool_name,
            description: Arc::from(description),
            parameters: Arc::new(parameters_schema::<A>()),
            handler,
            timeout: None,
            side_effecting: false,
            filler: None,
            filler_after: DEFAULT_FILLER_AFTER,
            run_llm: true,
        }
    }

    /// Set the per-call timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Mark the tool side-effecting: barge-in does not cancel it.
    #[must_use]
    pub fn side_effecting(mut self, yes: bool) -> Self {
        self.side_effecting = yes;
        self
    }

    /// Speak `line` when a call takes longer than `after`.
    #[must_use]
    pub fn with_filler(mut self, line: impl Into<String>, after: Duration) -> Self {
        self.filler = Some(line.into());
        self.filler_after = after;
        self
    }

    /// Whether the LLM runs again after this tool (off for e.g. `end_call`).
    #[must_use]
    pub fn run_llm(mut self, yes: bool) -> Self {
        self.run_llm = yes;
        self
    }

    /// The tool's name.
    #[must_use]
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// What the model is told about the tool.
    #[must_use]
    pub fn spec(&self) -> ToolSpec {
        ToolSpec { name: self.name.clone(), description: self.description.clone(), parameters: self.parameters.clone() }
    }

    /// Validate `arguments` and start the call; `Err` is a readable message for the model.
    pub fn invoke(&self, arguments: &str) -> Result<BoxFuture<'static, ToolOutput>, String> {
        (self.handler)(arguments)
    }
}

/// The tools of an agent, by name, in registration order.
#[derive(Debug, Clone, Default)]
pub struct ToolRegistry {
    tools: HashMap<Arc<str>, Tool>,
    order: Vec<Arc<str>>,
}

impl ToolRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a tool.
    #[must_use]
    pub fn with(mut self, tool: Tool) -> Self {
        self.register(tool);
        self
    }

    /// Add (or replace) a tool.
    pub fn register(&mut self, tool: Tool) {
        let name = tool.name.clone();
        if self.tools.insert(name.clone(), tool).is_none() {
            self.order.push(name);
        }
    }

    /// The tool called `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.get(name)
    }

    /// Tool names in registration order.
    #[must_use]
    pub fn names(&self) -> Vec<Arc<str>> {
        self.order.clone()
    }

    /// Specs for the LLM context, in registration order.
    #[must_use]
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.order.iter().filter_map(|n| self.tools.get(n)).map(Tool::spec).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, JsonSchema)]
    struct OrderArgs {
        /// The order number, e.g. "ORD-1234".
        order_id: String,
        #[serde(default)]
        verbose: bool,
    }

    async fn status(a: OrderArgs) -> Result<Value, String> {
        Ok(serde_json::json!({"order_id": a.order_id, "status": "shipped", "verbose": a.verbose}))
    }

    #[tokio::test]
    async fn schema_and_validation() {
        let t = Tool::new("check_order", "Look up an order", status);
        let spec = t.spec();
        let p = &*spec.parameters;
        assert_eq!(p["type"], "object");
        assert_eq!(p["properties"]["order_id"]["type"], "string");
        assert!(p["properties"]["order_id"]["description"].as_str().unwrap().contains("order number"));
        assert_eq!(p["required"], serde_json::json!(["order_id"]));
        assert!(p.get("$schema").is_none() && p.get("title").is_none());

        let out = t.invoke(r#"{"order_id":"A1"}"#).unwrap().await.unwrap();
        assert!(out.contains("shipped"));
        let err = t.invoke(r#"{"order":"A1"}"#).err().unwrap();
        assert!(err.contains("missing field `order_id`"), "{err}");
        let err = t.invoke(r#"{"order_id": 5"#).err().unwrap();
        assert!(err.starts_with("invalid arguments for `check_order`"), "{err}");

        let none = Tool::new("ping", "no args", |_: NoArgs| async { Ok::<_, String>("pong") });
        assert_eq!(none.invoke("").unwrap().await.unwrap(), "\"pong\"");
        assert_eq!(none.spec().parameters["type"], "object");
    }
}
