//! Post-call workflow: summary + sentiment (LLM), CRM update, follow-up email, support ticket.
//!
//! Steps run in the configured order; each one's outcome (`ok`, `skipped` with why, or `failed`
//! with the error) is recorded, and a failing step never stops the others: a summary the LLM
//! could not produce falls back to an extractive one so the CRM note and email still go out.
//!
//! The workflow runs as a durable job (jobs.rs) and may be retried on another instance after a
//! crash, so each finished step is marked done in the same transaction as its side effect and a
//! retry replays the recorded results instead of running the step again. Ids of what a step
//! creates derive from the call (`MAIL-<call>`, `TKT-<call>-wf`), a second line of defence.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::Instrument as _;

use crate::call::recorder::CallRecord;
use crate::config::Config;
use crate::fleet::jobs::{self, Effect};
use crate::fleet::store::Store;

/// How one step went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepResult {
    /// A name from `config::ALL_STEPS` (or `load` when progress could not be read).
    pub(crate) step: String,
    /// `ok`, `skipped` or `failed`.
    pub(crate) status: String,
    /// What the step produced, why it was skipped, or the error.
    pub(crate) detail: Value,
}

/// What the workflow decided, stored with the call.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(crate) struct WorkflowOutcome {
    pub(crate) summary: Option<String>,
    /// `positive`, `neutral` or `negative`.
    pub(crate) sentiment: Option<String>,
    pub(crate) resolved: bool,
    pub(crate) steps: Vec<StepResult>,
}

/// What the workflow needs besides the record.
pub(crate) struct WorkflowInput<'a> {
    pub(crate) record: &'a CallRecord,
    /// The customer a skill identified during the call; else the caller's number is matched.
    pub(crate) customer_id: Option<String>,
    pub(crate) end_reason: &'a str,
    pub(crate) transferred: bool,
    /// The bot ended the call with `end_call` (a sign the caller was served).
    pub(crate) ended_by_bot: bool,
}

/// The job a workflow runs as.
pub(crate) struct JobRef<'a> {
    pub(crate) id: &'a str,
    /// The claim (see [`jobs::Claimed::owner`]).
    pub(crate) owner: &'a str,
    /// Testing only: never return after this step (the instance gets killed mid-job).
    pub(crate) stall_after: Option<&'a str>,
}

/// The LLM endpoint for summaries (same provider as the bot).
#[derive(Clone)]
pub struct SummaryLlm {
    /// Client with a 20 s timeout: a summary is worth waiting for, but not forever.
    pub http: reqwest::Client,
    /// `openai` (any OpenAI-compatible server) or `anthropic`, as `llm.provider`.
    pub provider: String,
    /// API base URL without a trailing `/`.
    pub base_url: String,
    /// `llm.summary_model`, else `llm.model`.
    pub model: String,
    /// The LLM key (`llm.api_key_env`); never logged.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for SummaryLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SummaryLlm").finish_non_exhaustive()
    }
}

impl SummaryLlm {
    /// From `llm.*` and the resolved LLM key.
    pub fn from_config(cfg: &Config, api_key: Option<String>) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap_or_default();
        Self {
            http,
            provider: cfg.llm.provider.clone(),
            base_url: cfg.llm.base_url.trim_end_matches('/').to_string(),
            model: cfg.llm.summary_model.clone().unwrap_or_else(|| cfg.llm.model.clone()),
            api_key,
        }
    }

    async fn complete(&self, system: &str, user: &str) -> anyhow::Result<String> {
        let span = tracing::info_span!("external_api", otel.kind = "client", service = "llm", provider = %self.provider,
                                       op = "summary");
        let started = std::time::Instant::now();
        let r = self.complete_inner(system, user).instrument(span).await;
        if r.is_err() {
            crate::observability::metrics().provider_error("llm_summary");
        }
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, ok = r.is_ok(), "summary LLM call");
        r
    }

    async fn complete_inner(&self, system: &str, user: &str) -> anyhow::Result<String> {
        let key = self.api_key.clone().unwrap_or_default();
        if self.provider == "anthropic" {
            let body = json!({"model": self.model, "max_tokens": 300, "system": system,
                              "messages": [{"role": "user", "content": user}]});
            let resp = self
                .http
                .post(format!("{}/messages", self.base_url))
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await?
                .error_for_status()?;
            let v: Value = resp.json().await?;
            let text = v["content"]
                .as_array()
                .map(|blocks| blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join(""))
                .unwrap_or_default();
            return Ok(text);
        }
        let body = json!({"model": self.model, "stream": false, "temperature": 0.2,
                          "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]});
        let resp = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        let v: Value = resp.json().await?;
        Ok(v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string())
    }
}

const SUMMARY_PROMPT: &str = "You summarise customer-service phone calls. Answer with JSON only: \
{\"summary\": \"two sentences\", \"sentiment\": \"positive|neutral|negative\", \"resolved\": true|false}";

fn transcript_text(r: &CallRecord) -> String {
    r.transcript.iter().map(|l| format!("{}: {}", l.role, l.text)).collect::<Vec<_>>().join("\n")
}

/// Keyword sentiment for when the LLM's answer is not usable.
fn heuristic_sentiment(r: &CallRecord) -> &'static str {
    let user: String = r.transcript.iter().filter(|l| l.role == "user").map(|l| l.text.to_lowercase()).collect();
    let neg = ["angry", "terrible", "awful", "cancel", "ridiculous", "frustrat", "complain", "worst"];
    let pos = ["thank", "great", "perfect", "awesome", "appreciate", "wonderful"];
    let n = neg.iter().filter(|w| user.contains(*w)).count();
    let p = pos.iter().filter(|w| user.contains(*w)).count();
    if n > p {
        "negative"
    } else if p > n {
        "positive"
    } else {
        "neutral"
    }
}

fn extractive_summary(r: &CallRecord) -> String {
    let first_user = r.transcript.iter().find(|l| l.role == "user").map(|l| l.text.clone());
    let tools: Vec<&str> = r.tool_calls.iter().map(|t| t.name.as_str()).collect();
    match first_user {
        Some(u) => format!(
            "Caller said: \"{u}\". Tools used: {}.",
            if tools.is_empty() { "none".to_string() } else { tools.join(", ") }
        ),
        None => "The caller did not say anything.".to_string(),
    }
}

fn heuristic_resolved(input: &WorkflowInput<'_>) -> bool {
    let ok_tool = input
        .record
        .tool_calls
        .iter()
        .any(|t| t.result["success"] == true && !matches!(t.name.as_str(), "end_call" | "transfer_to_human"));
    !input.transferred && (input.ended_by_bot || ok_tool) && input.record.errors.is_empty()
}

/// Run the configured steps as job `job`: steps the job already finished (an earlier attempt,
/// possibly on another instance) are replayed from their markers, not run again.
pub(crate) async fn run(
    cfg: &Config,
    store: &Store,
    llm: &SummaryLlm,
    input: WorkflowInput<'_>,
    job: &JobRef<'_>,
) -> WorkflowOutcome {
    let r = input.record;
    let mut out = WorkflowOutcome { resolved: heuristic_resolved(&input), ..WorkflowOutcome::default() };
    if !cfg.workflow.enabled {
        return out;
    }
    let done = match jobs::done_steps(store, job.id).await {
        Ok(d) => d,
        Err(e) => {
            // Without the markers a retry could repeat effects: fail the step set, the job retries.
            tracing::warn!(call_sid = %r.call_sid, error = %format!("{e:#}"), "cannot read workflow progress");
            out.steps.push(StepResult {
                step: "load".into(),
                status: "failed".into(),
                detail: json!(format!("{e:#}")),
            });
            return out;
        }
    };
    // The customer: found during the call, or matched by the caller's number now.
    let customer = match &input.customer_id {
        Some(id) => store.customer(id).await.ok().flatten(),
        None => store.find_customer(Some(&r.from), None).await.ok().flatten(),
    };
    for step in &cfg.workflow.steps {
        if let Some((status, detail)) = done.get(step) {
            if step == "summary" {
                restore_summary(&mut out, detail);
            }
            out.steps.push(StepResult { step: step.clone(), status: status.clone(), detail: detail.clone() });
            continue;
        }
        let span = tracing::info_span!("workflow_step", step = %step, call_sid = %r.call_sid, job_id = %job.id);
        let res = run_step(cfg, store, llm, &input, job, step, customer.as_ref(), &mut out).instrument(span).await;
        let result = match res {
            Ok((status, detail)) => StepResult { step: step.clone(), status: status.into(), detail },
            Err(e) => {
                tracing::warn!(call_sid = %r.call_sid, step, error = %format!("{e:#}"), "workflow step failed");
                StepResult { step: step.clone(), status: "failed".into(), detail: json!(format!("{e:#}")) }
            }
        };
        out.steps.push(result);
        if job.stall_after == Some(step.as_str()) {
            tracing::warn!(call_sid = %r.call_sid, step, "jobs.stall_after_step: stalling this job (testing)");
            std::future::pending::<()>().await;
        }
    }
    out
}

fn restore_summary(out: &mut WorkflowOutcome, detail: &Value) {
    out.summary = detail["summary"].as_str().map(str::to_string);
    out.sentiment = detail["sentiment"].as_str().map(str::to_string);
    if let Some(res) = detail["resolved"].as_bool() {
        out.resolved = res;
    }
}

/// Mark a step done with `effect`; if another attempt got there first, its result wins.
async fn once(
    store: &Store,
    job: &JobRef<'_>,
    step: &str,
    status: &'static str,
    detail: Value,
    effect: Effect<'_>,
) -> anyhow::Result<(&'static str, Value)> {
    if jobs::step_once(store, job.id, step, job.owner, status, &detail, effect).await? {
        return Ok((status, detail));
    }
    let theirs = jobs::done_steps(store, job.id).await?;
    match theirs.get(step) {
        Some((_, d)) => Ok(("ok", json!({"done_by_another_attempt": d}))),
        None => anyhow::bail!("step {step} neither done nor recorded"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    cfg: &Config,
    store: &Store,
    llm: &SummaryLlm,
    input: &WorkflowInput<'_>,
    job: &JobRef<'_>,
    step: &str,
    customer: Option<&crate::fleet::store::Customer>,
    out: &mut WorkflowOutcome,
) -> anyhow::Result<(&'static str, Value)> {
    let r = input.record;
    match step {
        "summary" => {
            if r.transcript.is_empty() {
                out.summary = Some(extractive_summary(r));
                out.sentiment = Some("neutral".into());
                let detail = json!({"summary": out.summary, "sentiment": out.sentiment, "resolved": out.resolved,
                                    "why": "empty transcript"});
                return once(store, job, step, "skipped", detail, Effect::None).await;
            }
            let answer = llm.complete(SUMMARY_PROMPT, &transcript_text(r)).await;
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    out.summary = Some(extractive_summary(r));
                    out.sentiment = Some(heuristic_sentiment(r).into());
                    return Err(e.context("summary LLM call failed (extractive fallback used)"));
                }
            };
            let parsed = extract_json(&answer);
            let summary = parsed
                .as_ref()
                .and_then(|v| v["summary"].as_str().map(str::to_string))
                .unwrap_or_else(|| extractive_summary(r));
            let sentiment = parsed
                .as_ref()
                .and_then(|v| v["sentiment"].as_str().map(str::to_lowercase))
                .filter(|s| matches!(s.as_str(), "positive" | "neutral" | "negative"))
                .unwrap_or_else(|| heuristic_sentiment(r).to_string());
            if let Some(res) = parsed.as_ref().and_then(|v| v["resolved"].as_bool()) {
                out.resolved = res && !input.transferred;
            }
            out.summary = Some(summary.clone());
            out.sentiment = Some(sentiment.clone());
            let detail = json!({"summary": summary, "sentiment": sentiment, "from_llm": parsed.is_some(),
                                "resolved": out.resolved});
            let (status, detail) = once(store, job, step, "ok", detail, Effect::None).await?;
            if let Some(theirs) = detail.get("done_by_another_attempt") {
                restore_summary(out, theirs);
            }
            Ok((status, detail))
        }
        "crm_update" => {
            let Some(c) = customer else { return Ok(("skipped", json!("caller is not a known customer"))) };
            let note = out.summary.clone().unwrap_or_else(|| extractive_summary(r));
            let effect = Effect::Crm { customer_id: &c.id, call_sid: &r.call_sid, note: &note };
            once(store, job, step, "ok", json!({"customer_id": c.id}), effect).await
        }
        "follow_up_email" => {
            let Some(c) = customer else { return Ok(("skipped", json!("no customer email"))) };
            let body = format!(
                "Hi {},\n\nThanks for calling {}. {}\n\n{}\n",
                c.name,
                cfg.persona.company,
                out.summary.clone().unwrap_or_default(),
                if out.resolved { "We're glad we could help." } else { "A member of our team will follow up shortly." }
            );
            let id = format!("MAIL-{}", r.call_sid);
            let effect = Effect::Email {
                id: &id,
                to: &c.email,
                from: &cfg.workflow.email_from,
                subject: "Your call with us",
                body: &body,
                call_sid: &r.call_sid,
            };
            once(store, job, step, "ok", json!({"email_id": id, "to": c.email}), effect).await
        }
        "support_ticket" => {
            if out.resolved {
                return Ok(("skipped", json!("call resolved")));
            }
            let existing = store.tickets_for_call(&r.call_sid).await?;
            if !existing.is_empty() {
                return Ok(("skipped", json!({"already_open": existing})));
            }
            let desc = format!(
                "Unresolved call ({}). {}\n\nTranscript:\n{}",
                input.end_reason,
                out.summary.clone().unwrap_or_default(),
                transcript_text(r)
            );
            let id = format!("TKT-{}-wf", r.call_sid);
            let effect = Effect::Ticket {
                id: &id,
                customer_id: customer.map(|c| c.id.as_str()),
                call_sid: &r.call_sid,
                subject: "Follow up on unresolved call",
                description: &desc,
            };
            once(store, job, step, "ok", json!({"ticket_id": id}), effect).await
        }
        other => Ok(("skipped", json!(format!("unknown step {other}")))),
    }
}

/// The first JSON object inside `text` (models wrap JSON in prose or code fences).
fn extract_json(text: &str) -> Option<Value> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    serde_json::from_str(text.get(start..=end)?).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Held by every test that runs the workflow: tracing caches each callsite's interest when
    /// it is first hit, so a run on a thread with no subscriber racing the span test's run
    /// (thread-local subscriber) could leave the step spans disabled for it.
    pub(crate) static WORKFLOW_RUNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[test]
    fn json_extraction() {
        assert_eq!(extract_json("```json\n{\"a\":1}\n```"), Some(json!({"a": 1})));
        assert_eq!(extract_json("no json"), None);
    }

    #[tokio::test]
    async fn failing_step_does_not_stop_others() {
        let _one_at_a_time = WORKFLOW_RUNS.lock().await;
        let path = std::env::temp_dir().join(format!("voxline-wf-{}.db", crate::fleet::store::new_id("t")));
        let store = match Store::connect(&format!("sqlite://{}", path.display()), true).await {
            Ok(s) => s,
            Err(e) => panic!("{e:#}"),
        };
        let cfg = Config::default();
        // Nothing listens on port 9: the summary step fails.
        let llm = SummaryLlm {
            http: reqwest::Client::new(),
            provider: "openai".into(),
            base_url: "http://127.0.0.1:9/v1".into(),
            model: "m".into(),
            api_key: None,
        };
        let mut rec = CallRecord { call_sid: "CAwf".into(), from: "+15550001111".into(), ..CallRecord::default() };
        rec.transcript.push(crate::call::recorder::TranscriptLine {
            role: "user".into(),
            text: "this is terrible".into(),
            t_ms: 0,
            interrupted: false,
        });
        let input = || WorkflowInput {
            record: &rec,
            customer_id: None,
            end_reason: "hangup",
            transferred: false,
            ended_by_bot: false,
        };
        let job = JobRef { id: "JOB-CAwf", owner: "t/1", stall_after: None };
        let out = run(&cfg, &store, &llm, input(), &job).await;
        let status: Vec<(&str, &str)> = out.steps.iter().map(|s| (s.step.as_str(), s.status.as_str())).collect();
        assert_eq!(
            status,
            vec![("summary", "failed"), ("crm_update", "ok"), ("follow_up_email", "ok"), ("support_ticket", "ok")]
        );
        assert_eq!(out.sentiment.as_deref(), Some("negative"));
        assert!(!out.resolved);
        // A retry of the same job repeats none of the effects.
        let again = run(&cfg, &store, &llm, input(), &job).await;
        assert_eq!(again.steps.iter().filter(|s| s.status == "ok").count(), 3);
        assert_eq!(store.outbox_for_call("CAwf").await.map(|v| v.len()).ok(), Some(1));
        assert_eq!(store.tickets_for_call("CAwf").await.map(|v| v.len()).ok(), Some(1));
    }
}
