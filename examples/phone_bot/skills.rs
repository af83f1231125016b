//! The call-center skills the LLM may call, with one result shape for all of them:
//! `{"success": true, "data": …}` or `{"success": false, "error": "…"}`.
//!
//! Arguments are typed structs (schemas generated with `schemars`, so the schema the model sees
//! and the parser can never disagree). A skill never panics or returns a transport error to the
//! model: every failure becomes `success: false` with a message the model can relay.

use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use voxline_transports::twilio::TwilioRest;

use crate::store::Store;

/// What a skill knows about the call it runs in.
pub struct CallCtx {
    pub call_sid: String,
    pub from: String,
    pub rest: Option<TwilioRest>,
    pub transfer_number: String,
    /// Set by `lookup_customer`; used by later skills and the post-call CRM update.
    pub customer_id: Mutex<Option<String>>,
    /// Set by `end_call`: speak the goodbye, then hang up.
    pub end_requested: Mutex<Option<String>>,
    /// Set by `transfer_to_human`.
    pub transferred: Mutex<bool>,
}

impl CallCtx {
    pub fn new(call_sid: &str, from: &str, rest: Option<TwilioRest>, transfer_number: &str) -> Arc<Self> {
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

    pub fn customer_id(&self) -> Option<String> {
        lock(&self.customer_id).clone()
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Look up the caller's customer record by phone number or email address.
pub struct LookupCustomer {
    /// Phone number in any format; defaults to the caller's number.
    pub phone: Option<String>,
    /// Email address.
    pub email: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Check the status and delivery estimate of an order.
pub struct CheckOrderStatus {
    /// The order number, e.g. "12345".
    pub order_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Open a support ticket for a problem that cannot be solved on the call.
pub struct CreateSupportTicket {
    /// One-line summary of the problem.
    pub subject: String,
    /// What happened, in the caller's words.
    pub description: String,
    /// low, normal, high or urgent.
    pub priority: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Schedule a callback from a human agent.
pub struct ScheduleCallback {
    /// When the caller wants to be called, e.g. "tomorrow at 3pm".
    pub preferred_time: String,
    /// Why.
    pub reason: String,
    /// Number to call back; defaults to the caller's number.
    pub phone: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Transfer the call to a human agent.
pub struct TransferToHuman {
    /// Why the caller needs a human.
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// End the call after saying goodbye, when the caller has nothing else.
pub struct EndCall {
    /// Why the call is ending.
    pub reason: Option<String>,
}

/// A tool declaration as the LLM sees it.
#[derive(Debug, Clone)]
pub struct SkillSpec {
    pub name: &'static str,
    pub description: String,
    pub parameters: Value,
}

fn spec<T: JsonSchema>(name: &'static str) -> SkillSpec {
    let schema = schemars::schema_for!(T);
    let mut v = serde_json::to_value(&schema).unwrap_or_else(|_| json!({"type": "object"}));
    let description = v.get("description").and_then(Value::as_str).unwrap_or(name).to_string();
    if let Value::Object(m) = &mut v {
        m.remove("$schema");
        m.remove("title");
        m.remove("description");
    }
    SkillSpec { name, description, parameters: v }
}

/// Declarations for the enabled skills, in a stable order.
pub fn specs(enabled: &[String]) -> Vec<SkillSpec> {
    let all = [
        spec::<LookupCustomer>("lookup_customer"),
        spec::<CheckOrderStatus>("check_order_status"),
        spec::<CreateSupportTicket>("create_support_ticket"),
        spec::<ScheduleCallback>("schedule_callback"),
        spec::<TransferToHuman>("transfer_to_human"),
        spec::<EndCall>("end_call"),
    ];
    all.into_iter().filter(|s| enabled.iter().any(|e| e == s.name)).collect()
}

pub fn ok(data: Value) -> Value {
    json!({"success": true, "data": data})
}

pub fn err(msg: impl std::fmt::Display) -> Value {
    json!({"success": false, "error": msg.to_string()})
}

fn parse<T: for<'de> Deserialize<'de>>(args: &Value) -> Result<T, Value> {
    // Models send `{}`, `null` or "" for no-argument calls; treat them alike.
    let args = if args.is_null() || args.as_str() == Some("") { json!({}) } else { args.clone() };
    serde_json::from_value(args).map_err(|e| err(format!("invalid arguments: {e}")))
}

/// Run skill `name` with JSON `args`.
pub async fn call(store: &Store, ctx: &CallCtx, name: &str, args: &Value) -> Value {
    let result = match name {
        "lookup_customer" => lookup_customer(store, ctx, args).await,
        "check_order_status" => check_order_status(store, args).await,
        "create_support_ticket" => create_support_ticket(store, ctx, args).await,
        "schedule_callback" => schedule_callback(store, ctx, args).await,
        "transfer_to_human" => transfer_to_human(ctx, args).await,
        "end_call" => end_call(ctx, args),
        other => Err(err(format!("unknown tool {other}"))),
    };
    result.unwrap_or_else(|e| e)
}

async fn lookup_customer(store: &Store, ctx: &CallCtx, args: &Value) -> Result<Value, Value> {
    let a: LookupCustomer = parse(args)?;
    let phone = a.phone.clone().or_else(|| (a.email.is_none()).then(|| ctx.from.clone()));
    match store.find_customer(phone.as_deref(), a.email.as_deref()).await {
        Ok(Some(c)) => {
            *lock(&ctx.customer_id) = Some(c.id.clone());
            Ok(ok(json!({"customer_id": c.id, "name": c.name, "email": c.email, "tier": c.tier, "notes": c.notes})))
        }
        Ok(None) => Ok(err("no customer found with that phone number or email")),
        Err(e) => {
            tracing::warn!(error = %e, "lookup_customer failed");
            Ok(err("the customer database is unavailable right now"))
        }
    }
}

async fn check_order_status(store: &Store, args: &Value) -> Result<Value, Value> {
    let a: CheckOrderStatus = parse(args)?;
    if a.order_id.trim().is_empty() {
        return Err(err("order_id is empty"));
    }
    match store.order(&a.order_id).await {
        Ok(Some(o)) => Ok(ok(serde_json::to_value(&o).unwrap_or(Value::Null))),
        Ok(None) => Ok(err(format!("no order {} was found", a.order_id.trim()))),
        Err(e) => {
            tracing::warn!(error = %e, "check_order_status failed");
            Ok(err("the order system is unavailable right now"))
        }
    }
}

async fn create_support_ticket(store: &Store, ctx: &CallCtx, args: &Value) -> Result<Value, Value> {
    let a: CreateSupportTicket = parse(args)?;
    let priority = a.priority.unwrap_or_else(|| "normal".into()).to_lowercase();
    if !matches!(priority.as_str(), "low" | "normal" | "high" | "urgent") {
        return Err(err("priority must be low, normal, high or urgent"));
    }
    match store.create_ticket(ctx.customer_id().as_deref(), &ctx.call_sid, &a.subject, &a.description, &priority).await
    {
        Ok(id) => Ok(ok(json!({"ticket_id": id, "priority": priority}))),
        Err(e) => {
            tracing::warn!(error = %e, "create_support_ticket failed");
            Ok(err("could not create the ticket"))
        }
    }
}

async fn schedule_callback(store: &Store, ctx: &CallCtx, args: &Value) -> Result<Value, Value> {
    let a: ScheduleCallback = parse(args)?;
    let phone = a.phone.unwrap_or_else(|| ctx.from.clone());
    match store
        .schedule_callback(ctx.customer_id().as_deref(), &phone, &a.preferred_time, &a.reason, &ctx.call_sid)
        .await
    {
        Ok(id) => Ok(ok(json!({"callback_id": id, "phone": phone, "time": a.preferred_time}))),
        Err(e) => {
            tracing::warn!(error = %e, "schedule_callback failed");
            Ok(err("could not schedule the callback"))
        }
    }
}

async fn transfer_to_human(ctx: &CallCtx, args: &Value) -> Result<Value, Value> {
    let a: TransferToHuman = parse(args)?;
    let Some(rest) = &ctx.rest else { return Err(err("transfers are not available on this line")) };
    if ctx.transfer_number.is_empty() {
        return Err(err("no transfer number is configured"));
    }
    let say = "Please hold while I connect you to a member of our team.";
    match rest.transfer(&ctx.call_sid, &ctx.transfer_number, Some(say)).await {
        Ok(outcome) => {
            *lock(&ctx.transferred) = true;
            Ok(ok(
                json!({"transferred_to": ctx.transfer_number, "reason": a.reason, "outcome": format!("{outcome:?}")}),
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "transfer failed");
            Ok(err("the transfer could not be completed"))
        }
    }
}

fn end_call(ctx: &CallCtx, args: &Value) -> Result<Value, Value> {
    let a: EndCall = parse(args)?;
    let reason = a.reason.unwrap_or_else(|| "conversation complete".into());
    *lock(&ctx.end_requested) = Some(reason.clone());
    Ok(ok(json!({"ending": true, "reason": reason})))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> Store {
        let path = std::env::temp_dir().join(format!("voxline-skills-{}.db", crate::store::new_id("t")));
        match Store::connect(&format!("sqlite://{}", path.display()), true).await {
            Ok(s) => s,
            Err(e) => panic!("{e:#}"),
        }
    }

    #[tokio::test]
    async fn result_shapes() {
        let s = store().await;
        let ctx = CallCtx::new("CA1", "+15550001111", None, "");
        let r = call(&s, &ctx, "lookup_customer", &json!({})).await;
        assert_eq!(r["success"], true, "{r}");
        assert_eq!(r["data"]["customer_id"], "C-1001");
        assert_eq!(ctx.customer_id().as_deref(), Some("C-1001"));
        let r = call(&s, &ctx, "check_order_status", &json!({"order_id": "12345"})).await;
        assert_eq!(r["data"]["status"], "shipped");
        let r = call(&s, &ctx, "check_order_status", &json!({"order_id": "00000"})).await;
        assert_eq!(r["success"], false);
        assert!(r["error"].as_str().is_some_and(|e| e.contains("00000")));
        let r = call(&s, &ctx, "check_order_status", &json!({"order": 1})).await;
        assert_eq!(r["success"], false);
        let r = call(&s, &ctx, "create_support_ticket", &json!({"subject": "s", "description": "d"})).await;
        assert_eq!(r["success"], true);
        let r = call(&s, &ctx, "schedule_callback", &json!({"preferred_time": "3pm", "reason": "r"})).await;
        assert_eq!(r["data"]["phone"], "+15550001111");
        let r = call(&s, &ctx, "transfer_to_human", &json!({})).await;
        assert_eq!(r["success"], false);
        let r = call(&s, &ctx, "end_call", &Value::Null).await;
        assert_eq!(r["success"], true);
        assert!(lock(&ctx.end_requested).is_some());
        let r = call(&s, &ctx, "fly", &json!({})).await;
        assert_eq!(r["success"], false);
    }

    #[test]
    fn schemas() {
        let all: Vec<String> = crate::config::ALL_SKILLS.iter().map(|s| (*s).to_string()).collect();
        let specs = specs(&all);
        assert_eq!(specs.len(), 6);
        let order = specs.iter().find(|s| s.name == "check_order_status");
        assert!(order.is_some_and(|s| s.parameters["required"][0] == "order_id" && !s.description.is_empty()));
    }
}
