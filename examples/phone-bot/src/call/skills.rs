//! The call-center skills the LLM may call, as a [`ToolRegistry`] for the engine's
//! [`ToolExecutor`](voxline::processors::tools::ToolExecutor).
//!
//! Arguments are typed structs (schemas generated with `schemars` by the registry, so the schema
//! the model sees and the parser can never disagree). A successful skill answers
//! `{"success": true, "data": …}`; a failing one returns `Err(message)`, which the executor sends
//! to the model as `{"error": "…"}` and settles as `ToolOutcome::Error` (so metrics and traces see
//! the failure). The executor also turns invalid arguments, unknown tools, timeouts and panics
//! into `{"error": …}` results. A skill never panics or returns a transport error to the model:
//! every failure is a message the model can relay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use voxline::pipeline::sync::lock;
use voxline::processors::tools::{Tool, ToolRegistry, parameters_schema};
use voxline::transports::twilio::TwilioRest;

use crate::fleet::store::Store;

/// What a skill knows about the call it runs in.
pub(crate) struct CallCtx {
    pub(crate) call_sid: String,
    /// The caller's number: the default for lookups and callbacks.
    pub(crate) from: String,
    /// Twilio REST for transfers; `None` without an account SID (transfers then fail politely).
    pub(crate) rest: Option<TwilioRest>,
    pub(crate) transfer_number: String,
    /// Set by `lookup_customer`; used by later skills and the post-call CRM update.
    pub(crate) customer_id: Mutex<Option<String>>,
    /// Set by `end_call`: speak the goodbye, then hang up.
    pub(crate) end_requested: Mutex<Option<String>>,
    /// Set by `transfer_to_human`.
    pub(crate) transferred: Mutex<bool>,
}

impl CallCtx {
    pub(crate) fn new(call_sid: &str, from: &str, rest: Option<TwilioRest>, transfer_number: &str) -> Arc<Self> {
        Arc::new(Self {
            call_sid: call_sid.to_string(),
            from: from.to_string(),
            rest,
            transfer_number: transfer_number.to_string(),
            customer_id: Mutex::new(None),
            end_requested: Mutex::new(None),
            transferred: Mutex::new(false),
        })
    }

    /// The customer `lookup_customer` identified, if any.
    pub(crate) fn customer_id(&self) -> Option<String> {
        lock(&self.customer_id).clone()
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Look up the caller's customer record by phone number or email address.
struct LookupCustomer {
    /// Phone number in any format; defaults to the caller's number.
    phone: Option<String>,
    /// Email address.
    email: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Check the status and delivery estimate of an order.
struct CheckOrderStatus {
    /// The order number, e.g. "12345".
    order_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Open a support ticket for a problem that cannot be solved on the call.
struct CreateSupportTicket {
    /// One-line summary of the problem.
    subject: String,
    /// What happened, in the caller's words.
    description: String,
    /// low, normal, high or urgent.
    priority: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Schedule a callback from a human agent.
struct ScheduleCallback {
    /// When the caller wants to be called, e.g. "tomorrow at 3pm".
    preferred_time: String,
    /// Why.
    reason: String,
    /// Number to call back; defaults to the caller's number.
    phone: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Transfer the call to a human agent.
struct TransferToHuman {
    /// Why the caller needs a human.
    reason: Option<String>,
}

// Lenient on purpose: `end_call` does not re-run the LLM, so an argument error here would
// leave the caller in silence.
#[derive(Debug, Deserialize, JsonSchema)]
/// End the call after saying goodbye, when the caller has nothing else.
struct EndCall {
    /// Why the call is ending.
    reason: Option<String>,
}

/// Tool results in the bot's own shape, for the call record: `{"success": true, "data": …}` as
/// the skill produced it, or `{"success": false, "error": …}` for anything the executor
/// settled as a failure (`{"error": …}` on the wire).
pub(crate) fn normalize_result(content: &str) -> Value {
    let v: Value = serde_json::from_str(content).unwrap_or_else(|_| Value::String(content.to_string()));
    if v.get("success").is_some() {
        return v;
    }
    let error = v.get("error").and_then(Value::as_str).map_or_else(|| v.to_string(), str::to_string);
    json!({"success": false, "error": error})
}

fn ok(data: Value) -> Result<Value, String> {
    Ok(json!({"success": true, "data": data}))
}

/// The skills enabled in `enabled`, in a stable order, bound to this call's store and context.
///
/// Side-effecting skills (tickets, callbacks, transfers, hang-ups) are not cancelled by
/// barge-in: a caller talking over the bot must not leave a ticket half-created or a
/// transfer half-done. `end_call` and a successful transfer do not re-run the LLM (the bot's
/// turn is over; see `bot::CallControl`).
pub(crate) fn registry(enabled: &[String], store: &Store, ctx: &Arc<CallCtx>, timeout: Duration) -> ToolRegistry {
    let (st, cx) = (store.clone(), ctx.clone());
    let lookup = Tool::new("lookup_customer", &describe::<LookupCustomer>(), move |a: LookupCustomer| {
        let (st, cx) = (st.clone(), cx.clone());
        async move { lookup_customer(&st, &cx, a).await }
    });
    let st = store.clone();
    let order = Tool::new("check_order_status", &describe::<CheckOrderStatus>(), move |a: CheckOrderStatus| {
        let st = st.clone();
        async move { check_order_status(&st, a).await }
    });
    let (st, cx) = (store.clone(), ctx.clone());
    let ticket = Tool::new("create_support_ticket", &describe::<CreateSupportTicket>(), move |a| {
        let (st, cx) = (st.clone(), cx.clone());
        async move { create_support_ticket(&st, &cx, a).await }
    })
    .side_effecting(true);
    let (st, cx) = (store.clone(), ctx.clone());
    let callback = Tool::new("schedule_callback", &describe::<ScheduleCallback>(), move |a| {
        let (st, cx) = (st.clone(), cx.clone());
        async move { schedule_callback(&st, &cx, a).await }
    })
    .side_effecting(true);
    let cx = ctx.clone();
    let transfer = Tool::new("transfer_to_human", &describe::<TransferToHuman>(), move |a| {
        let cx = cx.clone();
        async move { transfer_to_human(&cx, a).await }
    })
    .side_effecting(true);
    let cx = ctx.clone();
    let end = Tool::new("end_call", &describe::<EndCall>(), move |a| {
        let cx = cx.clone();
        async move { end_call(&cx, a) }
    })
    .side_effecting(true)
    .run_llm(false);
    let mut registry = ToolRegistry::new();
    for tool in [lookup, order, ticket, callback, transfer, end] {
        if enabled.iter().any(|e| **e == **tool.name()) {
            registry.register(tool.with_timeout(timeout));
        }
    }
    registry
}

/// The model-facing description: the argument struct's doc comment.
fn describe<T: JsonSchema>() -> String {
    let schema = parameters_schema::<T>();
    schema.get("description").and_then(Value::as_str).unwrap_or_default().to_string()
}

async fn lookup_customer(store: &Store, ctx: &CallCtx, a: LookupCustomer) -> Result<Value, String> {
    let phone = a.phone.clone().or_else(|| (a.email.is_none()).then(|| ctx.from.clone()));
    match store.find_customer(phone.as_deref(), a.email.as_deref()).await {
        Ok(Some(c)) => {
            *lock(&ctx.customer_id) = Some(c.id.clone());
            ok(json!({"customer_id": c.id, "name": c.name, "email": c.email, "tier": c.tier, "notes": c.notes}))
        }
        Ok(None) => Err("no customer found with that phone number or email".into()),
        Err(e) => {
            tracing::warn!(error = %e, "lookup_customer failed");
            Err("the customer database is unavailable right now".into())
        }
    }
}

async fn check_order_status(store: &Store, a: CheckOrderStatus) -> Result<Value, String> {
    let id = a.order_id.trim();
    if id.is_empty() {
        return Err("order_id is empty".into());
    }
    match store.order(id).await {
        Ok(Some(o)) => ok(serde_json::to_value(&o).unwrap_or(Value::Null)),
        Ok(None) => Err(format!("no order {id} was found")),
        Err(e) => {
            tracing::warn!(error = %e, "check_order_status failed");
            Err("the order system is unavailable right now".into())
        }
    }
}

async fn create_support_ticket(store: &Store, ctx: &CallCtx, a: CreateSupportTicket) -> Result<Value, String> {
    let priority = a.priority.unwrap_or_else(|| "normal".into()).to_lowercase();
    if !matches!(priority.as_str(), "low" | "normal" | "high" | "urgent") {
        return Err("priority must be low, normal, high or urgent".into());
    }
    match store.create_ticket(ctx.customer_id().as_deref(), &ctx.call_sid, &a.subject, &a.description, &priority).await
    {
        Ok(id) => ok(json!({"ticket_id": id, "priority": priority})),
        Err(e) => {
            tracing::warn!(error = %e, "create_support_ticket failed");
            Err("could not create the ticket".into())
        }
    }
}

async fn schedule_callback(store: &Store, ctx: &CallCtx, a: ScheduleCallback) -> Result<Value, String> {
    let phone = a.phone.unwrap_or_else(|| ctx.from.clone());
    match store
        .schedule_callback(ctx.customer_id().as_deref(), &phone, &a.preferred_time, &a.reason, &ctx.call_sid)
        .await
    {
        Ok(id) => ok(json!({"callback_id": id, "phone": phone, "time": a.preferred_time})),
        Err(e) => {
            tracing::warn!(error = %e, "schedule_callback failed");
            Err("could not schedule the callback".into())
        }
    }
}

async fn transfer_to_human(ctx: &CallCtx, a: TransferToHuman) -> Result<Value, String> {
    let Some(rest) = &ctx.rest else { return Err("transfers are not available on this line".into()) };
    if ctx.transfer_number.is_empty() {
        return Err("no transfer number is configured".into());
    }
    let say = "Please hold while I connect you to a member of our team.";
    match rest.transfer(&ctx.call_sid, &ctx.transfer_number, Some(say)).await {
        Ok(outcome) => {
            *lock(&ctx.transferred) = true;
            ok(json!({"transferred_to": ctx.transfer_number, "reason": a.reason, "outcome": format!("{outcome:?}")}))
        }
        Err(e) => {
            tracing::warn!(error = %e, "transfer failed");
            Err("the transfer could not be completed".into())
        }
    }
}

fn end_call(ctx: &CallCtx, a: EndCall) -> Result<Value, String> {
    let reason = a.reason.unwrap_or_else(|| "conversation complete".into());
    *lock(&ctx.end_requested) = Some(reason.clone());
    ok(json!({"ending": true, "reason": reason}))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> Store {
        let path = std::env::temp_dir().join(format!("voxline-skills-{}.db", crate::fleet::store::new_id("t")));
        match Store::connect(&format!("sqlite://{}", path.display()), true).await {
            Ok(s) => s,
            Err(e) => panic!("{e:#}"),
        }
    }

    fn all() -> Vec<String> {
        crate::config::ALL_SKILLS.iter().map(|s| (*s).to_string()).collect()
    }

    async fn call(r: &ToolRegistry, name: &str, args: &str) -> Result<Value, String> {
        let Some(tool) = r.get(name) else { return Err(format!("unknown tool {name}")) };
        let out = tool.invoke(args)?.await?;
        serde_json::from_str(&out).map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn result_shapes() {
        let s = store().await;
        let ctx = CallCtx::new("CA1", "+15550001111", None, "");
        let r = registry(&all(), &s, &ctx, Duration::from_secs(5));
        let v = call(&r, "lookup_customer", "{}").await;
        assert!(v.as_ref().is_ok_and(|v| v["success"] == true && v["data"]["customer_id"] == "C-1001"), "{v:?}");
        assert_eq!(ctx.customer_id().as_deref(), Some("C-1001"));
        let v = call(&r, "check_order_status", r#"{"order_id": "12345"}"#).await;
        assert!(v.is_ok_and(|v| v["data"]["status"] == "shipped"));
        let v = call(&r, "check_order_status", r#"{"order_id": "00000"}"#).await;
        assert!(v.as_ref().is_err_and(|e| e.contains("00000")), "{v:?}");
        let v = call(&r, "check_order_status", r#"{"order": 1}"#).await;
        assert!(v.as_ref().is_err_and(|e| e.contains("invalid arguments")), "{v:?}");
        let v = call(&r, "create_support_ticket", r#"{"subject": "s", "description": "d"}"#).await;
        assert!(v.is_ok_and(|v| v["success"] == true));
        let v = call(&r, "schedule_callback", r#"{"preferred_time": "3pm", "reason": "r"}"#).await;
        assert!(v.is_ok_and(|v| v["data"]["phone"] == "+15550001111"));
        assert!(call(&r, "transfer_to_human", "{}").await.is_err());
        assert!(call(&r, "end_call", "").await.is_ok_and(|v| v["success"] == true));
        assert!(lock(&ctx.end_requested).is_some());
        assert!(call(&r, "fly", "{}").await.is_err());
    }

    #[test]
    fn registry_declares_schemas_and_flags() {
        let ctx = CallCtx::new("CA1", "+1", None, "");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let Ok(rt) = rt else { panic!("runtime") };
        let s = rt.block_on(store());
        let r = registry(&all(), &s, &ctx, Duration::from_millis(1234));
        let specs = r.specs();
        assert_eq!(specs.len(), 6);
        let order = specs.iter().find(|s| &*s.name == "check_order_status");
        assert!(order.is_some_and(|s| s.parameters["required"][0] == "order_id" && !s.description.is_empty()));
        for name in ["create_support_ticket", "schedule_callback", "transfer_to_human", "end_call"] {
            assert!(r.get(name).is_some_and(|t| t.side_effecting), "{name} is side-effecting");
        }
        for name in ["lookup_customer", "check_order_status"] {
            assert!(r.get(name).is_some_and(|t| !t.side_effecting), "{name} is not side-effecting");
        }
        assert!(r.get("end_call").is_some_and(|t| !t.run_llm));
        assert!(r.get("lookup_customer").is_some_and(|t| t.timeout == Some(Duration::from_millis(1234))));
        let only = registry(&["end_call".to_string()], &s, &ctx, Duration::from_secs(1));
        assert_eq!(only.names().len(), 1);
    }

    #[test]
    fn normalized_results() {
        assert_eq!(normalize_result(r#"{"success":true,"data":{"a":1}}"#)["data"]["a"], 1);
        let v = normalize_result(r#"{"error":"timed out after 5s"}"#);
        assert_eq!(v, json!({"success": false, "error": "timed out after 5s"}));
        assert_eq!(normalize_result("garbage")["success"], false);
    }
}
