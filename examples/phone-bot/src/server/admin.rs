//! Admin API: health, call statistics, call records, Prometheus metrics.
//!
//! `/admin/*` and `/metrics` require `Authorization: Bearer <token>` (token from the env var the
//! config names, compared in constant time). Without a configured token those routes answer 503
//! rather than being open. Statistics are computed from the stored calls, so they survive
//! restarts; live gauges (active calls) come from in-process counters.
//!
//! `GET /admin/calls?live=true` lists the live calls of every instance (shared registry).
//! Reads of stored calls (numbers, transcripts) are written to the audit log with the client
//! address; `GET /admin/audit` shows it. `/health` answers 503 while the instance drains, so
//! a load balancer stops routing to it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use voxline::transports::twilio::signature::constant_time_eq;

use crate::fleet::jobs::Jobs;
use crate::fleet::shared_state::Shared;
use crate::fleet::store::{CallRow, Store};
use crate::server::shutdown::Lifecycle;

/// Live counters of this instance since it started (not shared by the fleet); `/health` and
/// `/metrics` serve them.
#[derive(Default)]
pub struct Counters {
    /// Media streams accepted.
    pub calls_started: AtomicU64,
    /// Calls in progress now.
    pub calls_active: AtomicU64,
    /// Calls ended (stored or about to be).
    pub calls_finished: AtomicU64,
    /// Calls refused at admission (`server.max_calls` reached).
    pub calls_rejected: AtomicU64,
    /// Malformed messages received on media streams (each is logged and dropped).
    pub stream_errors: AtomicU64,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

/// What the admin routes share.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) store: Store,
    /// The bearer token; `None` makes the protected routes answer 503.
    pub(crate) token: Option<Arc<str>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) shared: Shared,
    pub(crate) jobs: Jobs,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) instance: String,
    /// `security.trust_forwarded_for`, for the audit log's client address.
    pub(crate) trust_forwarded_for: bool,
}

/// Who is reading, for the audit log: the client address (tokens are never written anywhere).
fn client_of(headers: &axum::http::HeaderMap, peer: Option<&ConnectInfo<std::net::SocketAddr>>, trust: bool) -> String {
    if trust
        && let Some(f) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).and_then(|v| v.split(',').next())
    {
        return f.trim().to_string();
    }
    peer.map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string())
}

async fn audit(
    st: &AdminState,
    headers: &axum::http::HeaderMap,
    peer: Option<&ConnectInfo<std::net::SocketAddr>>,
    action: &str,
    target: &str,
) {
    let client = client_of(headers, peer, st.trust_forwarded_for);
    let actor = headers.get("x-admin-user").and_then(|v| v.to_str().ok()).unwrap_or("admin-token");
    let actor: String = actor.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    if let Err(e) = st.store.audit(&actor, action, target, &client).await {
        tracing::error!(error = %format!("{e:#}"), action, "audit log write failed");
    }
}

/// `/health` (open) and the token-protected `/admin/*` and `/metrics`.
pub(crate) fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/admin/stats", get(stats))
        .route("/admin/calls", get(list_calls))
        .route("/admin/calls/{call_sid}", get(get_call))
        .route("/admin/audit", get(audit_log))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state.clone());
    Router::new().route("/health", get(health)).with_state(state).merge(protected)
}

async fn require_token(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    let Some(token) = &st.token else {
        return (StatusCode::SERVICE_UNAVAILABLE, "admin token not configured").into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized").into_response()
    }
}

async fn health(State(st): State<AdminState>) -> Response {
    let active = st.counters.calls_active.load(Ordering::Relaxed);
    if st.lifecycle.is_draining() {
        let body = json!({"status": "draining", "active_calls": active, "instance": st.instance});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({"status": "ok", "active_calls": active, "instance": st.instance, "shared_state": st.shared.backend()}))
        .into_response()
}

/// Nearest-rank percentile (`p` in 0..=1) of an ascending slice; `None` when it is empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx.min(sorted.len() - 1)).copied()
}

/// Aggregate statistics over stored calls.
pub(crate) fn compute_stats(calls: &[CallRow]) -> Value {
    let n = calls.len();
    let avg_duration =
        if n == 0 { 0.0 } else { calls.iter().map(|c| c.duration_ms as f64).sum::<f64>() / n as f64 / 1e3 };
    let resolved = calls.iter().filter(|c| c.resolved).count();
    let with_errors = calls.iter().filter(|c| c.errors > 0).count();
    let mut tools: BTreeMap<String, u64> = BTreeMap::new();
    let mut tool_failures = 0u64;
    let mut latencies: Vec<f64> = Vec::new();
    let mut interruptions = 0u64;
    for c in calls {
        for t in c.record["tool_calls"].as_array().into_iter().flatten() {
            *tools.entry(t["name"].as_str().unwrap_or("?").to_string()).or_default() += 1;
            if t["result"]["success"] != true {
                tool_failures += 1;
            }
        }
        for t in c.record["turns"].as_array().into_iter().flatten() {
            if let Some(v) = t["total_ms"].as_f64() {
                latencies.push(v);
            }
        }
        interruptions += c.record["interruptions"].as_u64().unwrap_or(0);
    }
    latencies.sort_by(f64::total_cmp);
    let mut by_day: BTreeMap<String, u64> = BTreeMap::new();
    for c in calls {
        let day = c.started_ms / 86_400_000;
        *by_day.entry(day.to_string()).or_default() += 1;
    }
    let ratio = |a: usize| if n == 0 { 0.0 } else { a as f64 / n as f64 };
    json!({
        "calls": n,
        "calls_by_epoch_day": by_day,
        "avg_duration_secs": avg_duration,
        "resolution_rate": ratio(resolved),
        "error_rate": ratio(with_errors),
        "tool_usage": tools,
        "tool_failures": tool_failures,
        "interruptions": interruptions,
        "latency_ms": {"p50": percentile(&latencies, 0.5), "p95": percentile(&latencies, 0.95), "turns": latencies.len()},
    })
}

async fn stats(State(st): State<AdminState>) -> Response {
    match st.store.list_calls(100_000).await {
        Ok(calls) => {
            let mut v = compute_stats(&calls);
            v["active_calls"] = json!(st.counters.calls_active.load(Ordering::Relaxed));
            Json(v).into_response()
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    /// Live calls of every instance instead of stored ones.
    live: Option<bool>,
}

async fn list_calls(
    State(st): State<AdminState>,
    Query(q): Query<ListQuery>,
    peer: Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: axum::http::HeaderMap,
) -> Response {
    if q.live == Some(true) {
        return match st.shared.live_calls().await {
            Ok(calls) => Json(json!({"live": true, "calls": calls})).into_response(),
            Err(e) => internal(e),
        };
    }
    audit(&st, &headers, peer.as_ref().map(|p| &p.0), "list_calls", "calls").await;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    match st.store.list_calls(limit).await {
        Ok(calls) => {
            let items: Vec<Value> = calls
                .iter()
                .map(|c| {
                    json!({"call_sid": c.call_sid, "from": c.from_number, "started_ms": c.started_ms,
                           "duration_ms": c.duration_ms, "end_reason": c.end_reason, "resolved": c.resolved,
                           "errors": c.errors, "summary": c.summary, "sentiment": c.sentiment})
                })
                .collect();
            Json(json!({"calls": items})).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn get_call(
    State(st): State<AdminState>,
    Path(call_sid): Path<String>,
    peer: Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: axum::http::HeaderMap,
) -> Response {
    audit(&st, &headers, peer.as_ref().map(|p| &p.0), "get_call", &call_sid).await;
    match st.store.get_call(&call_sid).await {
        Ok(Some(c)) => Json(serde_json::to_value(&c).unwrap_or(Value::Null)).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({"error": "no such call"}))).into_response(),
        Err(e) => internal(e),
    }
}

async fn audit_log(State(st): State<AdminState>, Query(q): Query<ListQuery>) -> Response {
    match st.store.audit_log(q.limit.unwrap_or(100).clamp(1, 1000)).await {
        Ok(items) => Json(json!({"audit": items})).into_response(),
        Err(e) => internal(e),
    }
}

async fn metrics(State(st): State<AdminState>) -> Response {
    let calls = match st.store.list_calls(100_000).await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let s = compute_stats(&calls);
    let c = &st.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    metric(
        "voxline_calls_started_total",
        "counter",
        "Media streams accepted.",
        vec![(String::new(), load(&c.calls_started))],
    );
    metric("voxline_calls_active", "gauge", "Calls in progress.", vec![(String::new(), load(&c.calls_active))]);
    metric(
        "voxline_calls_finished_total",
        "counter",
        "Calls finished.",
        vec![(String::new(), load(&c.calls_finished))],
    );
    metric(
        "voxline_calls_rejected_total",
        "counter",
        "Calls refused (capacity).",
        vec![(String::new(), load(&c.calls_rejected))],
    );
    metric(
        "voxline_stream_protocol_errors_total",
        "counter",
        "Undecodable Twilio messages.",
        vec![(String::new(), load(&c.stream_errors))],
    );
    metric(
        "voxline_calls_stored",
        "gauge",
        "Calls in storage.",
        vec![(String::new(), s["calls"].as_f64().unwrap_or(0.0))],
    );
    metric(
        "voxline_resolution_rate",
        "gauge",
        "Share of stored calls resolved.",
        vec![(String::new(), s["resolution_rate"].as_f64().unwrap_or(0.0))],
    );
    let tools: Vec<(String, f64)> = s["tool_usage"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (format!("{{tool=\"{k}\"}}"), v.as_f64().unwrap_or(0.0))).collect())
        .unwrap_or_default();
    metric("voxline_tool_calls_total", "counter", "Tool calls by tool.", tools);
    let lat = &s["latency_ms"];
    let mut q = Vec::new();
    for (label, key) in [("0.5", "p50"), ("0.95", "p95")] {
        if let Some(v) = lat[key].as_f64() {
            q.push((format!("{{quantile=\"{label}\"}}"), v / 1e3));
        }
    }
    metric("voxline_turn_latency_p_seconds", "summary", "User stopped speaking to first bot audio (stored calls).", q);
    let mut gauges: Vec<(&str, &str, String, f64)> = Vec::new();
    match st.jobs.depth().await {
        Ok(d) => {
            for status in ["queued", "running", "dead"] {
                let n = d.get(status).copied().unwrap_or(0) as f64;
                gauges.push((
                    "voxline_jobs",
                    "Post-call jobs by status (queue depth).",
                    format!("status=\"{status}\""),
                    n,
                ));
            }
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "job queue depth unavailable"),
    }
    if let Ok(live) = st.shared.live_calls().await {
        gauges.push(("voxline_calls_live_fleet", "Live calls on all instances.", String::new(), live.len() as f64));
    }
    gauges.push((
        "voxline_draining",
        "1 while this instance drains.",
        String::new(),
        f64::from(u8::from(st.lifecycle.is_draining())),
    ));
    out.push_str(&crate::observability::metrics().render(&gauges));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!(error = %format!("{e:#}"), "admin query failed");
    (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "storage error"}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_shape() {
        let mk = |sid: &str, resolved: bool, lat: f64| CallRow {
            call_sid: sid.into(),
            from_number: "+1".into(),
            started_ms: 0,
            ended_ms: 1000,
            duration_ms: 1000,
            end_reason: "stopped".into(),
            resolved,
            errors: 0,
            summary: None,
            sentiment: None,
            record: json!({"tool_calls": [{"name": "check_order_status", "result": {"success": true}}],
                           "turns": [{"total_ms": lat}], "interruptions": 1}),
            workflow: None,
        };
        let s = compute_stats(&[mk("a", true, 100.0), mk("b", false, 300.0)]);
        assert_eq!(s["calls"], 2);
        assert_eq!(s["resolution_rate"], 0.5);
        assert_eq!(s["tool_usage"]["check_order_status"], 2);
        assert_eq!(s["latency_ms"]["p95"], 300.0);
        assert_eq!(s["interruptions"], 2);
    }
}
