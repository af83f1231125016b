//! The server: Twilio routes + admin API, and what happens to each call.
//!
//! Per call: build the pipeline around the Twilio output, greet first (a `Text` line the
//! assistant aggregator records and TTS speaks), pump the socket, and when either side ends run
//! the post-call workflow and store the call. A call that breaks (malformed stream, abrupt
//! disconnect) takes the same path, so it still gets its record.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use serde_json::json;
use tokio::sync::Notify;
use voxline_pipeline::{CancellationToken, Event, PipelineParams, PipelineTask, TaskOutcome};
use voxline_transports::twilio::routes::BoxFuture;
use voxline_transports::twilio::{
    CallHandler, EndReason, RoutesConfig, StatusUpdate, TwilioParams, TwilioRest, TwilioSession, router,
};

use crate::admin::{self, AdminState, Counters};
use crate::bot::{self, CallParts};
use crate::config::{Config, Secrets};
use crate::recorder::{LiveFn, Recorder};
use crate::skills::{self, CallCtx};
use crate::store::{CallRow, Store, now_ms};
use crate::workflow::{self, SummaryLlm, WorkflowInput, WorkflowOutcome};

/// Observer of finished calls.
pub type CallDoneFn = Arc<dyn Fn(&CallRow) + Send + Sync>;

/// Everything a call needs, shared by all calls.
pub struct App {
    pub cfg: Arc<Config>,
    pub secrets: Secrets,
    pub store: Store,
    pub counters: Arc<Counters>,
    pub summary_llm: SummaryLlm,
    pub rest: Option<TwilioRest>,
    /// Live transcript printer (simulation).
    pub live: Option<LiveFn>,
    /// Called with each finished call's record (simulation, tests).
    pub on_call_done: Option<CallDoneFn>,
}

impl App {
    pub fn new(cfg: Config, secrets: Secrets, store: Store) -> Self {
        let rest = secrets.twilio_account_sid.as_ref().map(|sid| {
            TwilioRest::new(
                cfg.telephony.api_base_url.clone(),
                sid.clone(),
                secrets.twilio_auth_token.clone().unwrap_or_default(),
            )
        });
        let summary_llm = SummaryLlm::from_config(&cfg, secrets.llm.clone());
        Self {
            cfg: Arc::new(cfg),
            secrets,
            store,
            counters: Arc::new(Counters::default()),
            summary_llm,
            rest,
            live: None,
            on_call_done: None,
        }
    }

    /// The full router: Twilio routes + admin API.
    pub fn router(self: &Arc<Self>) -> Router {
        let auth = if self.cfg.telephony.validate_signatures { self.secrets.twilio_auth_token.clone() } else { None };
        let mut routes = RoutesConfig::new(self.cfg.server.public_url.clone(), auth);
        routes.params = TwilioParams {
            max_message_bytes: self.cfg.server.max_message_bytes,
            rest: if self.cfg.telephony.hang_up_on_end { self.rest.clone() } else { None },
            ..TwilioParams::default()
        };
        let admin = AdminState {
            store: self.store.clone(),
            token: self.secrets.admin_token.as_deref().map(Arc::from),
            counters: self.counters.clone(),
        };
        router(routes, Arc::new(Handler(self.clone()))).merge(admin::router(admin))
    }

    async fn run_call(self: Arc<Self>, session: TwilioSession) {
        let start = session.start().clone();
        let call_sid = start.call_sid.clone();
        let from = start.custom_parameters.get("from").cloned().unwrap_or_default();
        let c = &self.counters;
        if c.calls_active.load(Ordering::Relaxed) >= self.cfg.server.max_calls as u64 {
            c.calls_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(call_sid, "at capacity: call refused");
            return;
        }
        c.calls_started.fetch_add(1, Ordering::Relaxed);
        c.calls_active.fetch_add(1, Ordering::Relaxed);
        let started_ms = now_ms();
        let ctx = CallCtx::new(&call_sid, &from, self.rest.clone(), &self.cfg.telephony.transfer_number);
        let recorder = Recorder::new(&call_sid, &from, self.live.clone());
        let end_call = Arc::new(Notify::new());
        let parts = CallParts {
            cfg: self.cfg.clone(),
            secrets: self.secrets.clone(),
            store: self.store.clone(),
            ctx: ctx.clone(),
            recorder: recorder.clone(),
            end_call: end_call.clone(),
        };
        let (end_reason, outcome) = match bot::build(&parts, session.output()) {
            Ok((pipeline, _conversation)) => {
                let params = PipelineParams {
                    name: call_sid.clone(),
                    start: bot::start_info(&call_sid, self.cfg.interruptions.enabled),
                    idle_timeout: Some(Duration::from_secs(300)),
                    ..PipelineParams::default()
                };
                let task = PipelineTask::new(pipeline, params);
                let handle = task.handle();
                let mut events = handle.subscribe();
                let rec = recorder.clone();
                let ev_task = tokio::spawn(async move {
                    loop {
                        match events.recv().await {
                            Ok(ev) => {
                                if let Event::Error(e) = &ev {
                                    tracing::warn!(processor = %e.processor, fatal = e.fatal, "{}", e.message);
                                }
                                rec.event(&ev);
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => break,
                        }
                    }
                });
                // The bot speaks first.
                for f in bot::spoken_line(&self.cfg.persona.greeting) {
                    let _ = handle.push(f).await;
                }
                let done = CancellationToken::new();
                let end_handle = handle.clone();
                let ender = tokio::spawn(async move {
                    end_call.notified().await;
                    // `End` queues behind the goodbye: it drains through TTS and the output.
                    let _ = end_handle.end().await;
                });
                let pipeline_run = {
                    let done = done.clone();
                    tokio::spawn(async move {
                        let report = task.run().await;
                        done.cancel();
                        report
                    })
                };
                let report = session.run(handle.clone(), done).await;
                let task_report = pipeline_run.await.ok();
                ender.abort();
                ev_task.abort();
                if report.bad_messages > 0 {
                    c.stream_errors.fetch_add(report.bad_messages, Ordering::Relaxed);
                }
                let reason = match &report.reason {
                    EndReason::Stopped => "caller_hung_up".to_string(),
                    EndReason::Disconnected => "disconnected".to_string(),
                    EndReason::PipelineEnded => "bot_ended".to_string(),
                    EndReason::ProtocolViolation(why) => format!("protocol_violation: {why}"),
                };
                if let Some(TaskOutcome::Failed(why)) = task_report.as_ref().map(|r| &r.outcome) {
                    recorder.error(format!("pipeline failed: {why}"));
                }
                (
                    reason,
                    json!({"media_in": report.media_in, "media_out": report.media_out,
                                "bad_messages": report.bad_messages, "hung_up": report.hung_up,
                                "input_audio_dropped": report.input_audio_dropped}),
                )
            }
            Err(e) => {
                recorder.error(format!("pipeline setup failed: {e:#}"));
                ("setup_failed".to_string(), json!({}))
            }
        };
        c.calls_active.fetch_sub(1, Ordering::Relaxed);
        c.calls_finished.fetch_add(1, Ordering::Relaxed);
        self.finish_call(&ctx, &recorder, started_ms, &end_reason, outcome).await;
    }

    async fn finish_call(
        &self,
        ctx: &CallCtx,
        recorder: &Recorder,
        started_ms: i64,
        end_reason: &str,
        stream: serde_json::Value,
    ) {
        let record = recorder.snapshot();
        let transferred = *skills::lock(&ctx.transferred);
        let ended_by_bot = skills::lock(&ctx.end_requested).is_some();
        let wf: WorkflowOutcome = workflow::run(
            &self.cfg,
            &self.store,
            &self.summary_llm,
            WorkflowInput { record: &record, customer_id: ctx.customer_id(), end_reason, transferred, ended_by_bot },
        )
        .await;
        let ended_ms = now_ms();
        let mut record_json = serde_json::to_value(&record).unwrap_or_default();
        record_json["stream"] = stream;
        record_json["transferred"] = json!(transferred);
        let row = CallRow {
            call_sid: record.call_sid.clone(),
            from_number: record.from.clone(),
            started_ms,
            ended_ms,
            duration_ms: ended_ms - started_ms,
            end_reason: end_reason.to_string(),
            resolved: wf.resolved,
            errors: i64::try_from(record.errors.len()).unwrap_or(i64::MAX),
            summary: wf.summary.clone(),
            sentiment: wf.sentiment.clone(),
            record: record_json,
            workflow: serde_json::to_value(&wf).ok(),
        };
        if let Err(e) = self.store.save_call(&row).await {
            tracing::error!(call_sid = %row.call_sid, error = %format!("{e:#}"), "could not store the call");
        }
        tracing::info!(call_sid = %row.call_sid, end_reason, resolved = wf.resolved, "call finished");
        if let Some(f) = &self.on_call_done {
            f(&row);
        }
    }
}

/// The router's view of the app (calls need an owned `Arc<App>`).
struct Handler(Arc<App>);

impl CallHandler for Handler {
    fn handle_stream(&self, session: TwilioSession) -> BoxFuture {
        Box::pin(self.0.clone().run_call(session))
    }

    fn handle_status(&self, update: StatusUpdate) -> BoxFuture {
        let app = self.0.clone();
        Box::pin(async move {
            if !update.is_final() {
                return;
            }
            // The stream path already stored the call; attach Twilio's final status to it.
            if let Ok(Some(mut row)) = app.store.get_call(&update.call_sid).await {
                row.record["twilio_status"] =
                    json!({"status": update.call_status, "duration_secs": update.duration_secs});
                if let Err(e) = app.store.save_call(&row).await {
                    tracing::warn!(error = %format!("{e:#}"), "status update not stored");
                }
            } else {
                tracing::info!(call_sid = %update.call_sid, status = ?update.call_status, "status for a call without a stream");
            }
        })
    }
}
