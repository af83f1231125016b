//! The server: Twilio routes + admin API, and what happens to each call.
//!
//! Per call: build the pipeline around the Twilio output, greet first (a `Text` line the
//! assistant aggregator records and TTS speaks), pump the socket, and when either side ends run
//! the post-call workflow and store the call. A call that breaks (malformed stream, abrupt
//! disconnect) takes the same path, so it still gets its record.
//!
//! Fleet mode: the call is announced in the shared live-call registry while it lasts; at its end
//! the record is stored and its workflow enqueued as a durable job in one transaction, then this
//! instance runs the job at once (lowest latency). If it dies first, another instance's worker
//! takes the job over when the lease expires. `serve` adds the background work (heartbeat,
//! job workers, retention) and the SIGTERM drain of shutdown.rs.

pub mod admin;
pub mod security;
pub mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use serde_json::json;
use tokio::sync::Notify;
use tracing::Instrument as _;
use voxline::pipeline::{CancellationToken, Event, PipelineHandle, PipelineParams, PipelineTask, TaskOutcome};
use voxline::transports::twilio::routes::BoxFuture;
use voxline::transports::twilio::{
    CallHandler, CallReport, EndReason, RoutesConfig, StatusUpdate, TwilioParams, TwilioRest, TwilioSession, router,
    serve_call,
};

use crate::call::bot::{self, CallParts};
use crate::call::recorder::{CallRecord, LiveFn, Recorder};
use crate::call::skills::CallCtx;
use crate::config::{Config, Secrets};
use crate::fleet::jobs::{Claimed, Jobs};
use crate::fleet::shared_state::{HEARTBEAT_TTL, LiveCall, Shared};
use crate::fleet::store::{CallRow, Store, now_ms};
use crate::fleet::workflow::{self, JobRef, SummaryLlm, WorkflowInput, WorkflowOutcome};
use crate::observability::metrics;
use crate::server::admin::{AdminState, Counters};
use crate::server::security::RateLimit;
use crate::server::shutdown::{DrainGuard, Lifecycle};

/// Observer of finished calls, called once per call with its final record: how `simulate` and
/// the tests learn a call is over without polling the store.
pub type CallDoneFn = Arc<dyn Fn(&CallRow) + Send + Sync>;

/// Everything a call needs, shared by all calls.
///
/// One value per instance behind an `Arc`: every call's task holds it, so what is per call
/// (the pipeline, the record) lives in the call, and only what calls share (config, store,
/// counters, the fleet's shared state) lives here. Public fields are the ones the tests read or
/// set from outside; the rest are the crate's.
pub struct App {
    /// The validated configuration; an `Arc` because each call's context keeps its own handle.
    pub(crate) cfg: Arc<Config>,
    /// Provider keys and tokens, resolved from the environment once at startup.
    pub(crate) secrets: Secrets,
    /// Calls, customers, orders, jobs: the tests read a call's outbox from it.
    pub store: Store,
    /// Call counters (started, active, finished, rejected, stream errors) behind `/health` and
    /// `/admin/stats`; the tests read them to see a call really ended.
    pub counters: Arc<Counters>,
    /// The LLM endpoint of the post-call summary (same provider as the bot, no streaming).
    pub(crate) summary_llm: SummaryLlm,
    /// Twilio's REST API (hang-up, transfer), when an account SID is configured.
    pub(crate) rest: Option<TwilioRest>,
    /// Live transcript printer (simulation).
    pub(crate) live: Option<LiveFn>,
    /// Called with each finished call's record, after its post-call workflow (simulation, tests).
    pub on_call_done: Option<CallDoneFn>,
    /// Registry, rate limits, cache: Redis when configured.
    pub(crate) shared: Shared,
    /// The durable post-call job queue (this instance's worker identity and lease).
    pub(crate) jobs: Jobs,
    /// This instance's calls and whether it is draining: a new call asks here whether it may
    /// start, and a drain asks live calls here to end politely.
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// This instance's name in the registry and on job leases.
    pub(crate) instance: String,
    /// Stops the background work.
    pub(crate) stop: CancellationToken,
    /// The end-of-turn model shared by every call (see [`bot::turn_model`]).
    pub(crate) turn_model: Option<Arc<dyn voxline::processors::audio::turn::TurnModel>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// `hostname-pid`: unique per process, readable in the registry.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "voxline".into());
    format!("{host}-{}", std::process::id())
}

impl App {
    /// An instance over `store`, with state shared in process (see [`App::with_shared`] for a
    /// fleet) and no end-of-turn model yet (see `with_turn_model`): building the app does no
    /// I/O, so a test can adjust it before serving.
    pub fn new(cfg: Config, secrets: Secrets, store: Store) -> Self {
        let rest = secrets.twilio_account_sid.as_ref().map(|sid| {
            TwilioRest::new(
                cfg.telephony.api_base_url.clone(),
                sid.clone(),
                secrets.twilio_auth_token.clone().unwrap_or_default(),
            )
        });
        let summary_llm = SummaryLlm::from_config(&cfg, secrets.llm.clone());
        let instance = cfg.server.instance_id.clone().unwrap_or_else(default_instance_id);
        let shared = Shared::default();
        let store = store.with_cache(shared.clone(), Duration::from_secs(cfg.storage.cache_ttl_secs));
        let jobs = Jobs::new(store.clone(), &instance, Duration::from_millis(cfg.jobs.lease_ms), cfg.jobs.max_attempts);
        Self {
            cfg: Arc::new(cfg),
            secrets,
            store,
            counters: Arc::new(Counters::default()),
            summary_llm,
            rest,
            live: None,
            on_call_done: None,
            shared,
            jobs,
            lifecycle: Arc::new(Lifecycle::default()),
            instance,
            stop: CancellationToken::new(),
            turn_model: None,
        }
    }

    /// Load the configured end-of-turn model (`turn.model`); fails when it is configured but
    /// cannot be loaded.
    pub(crate) fn with_turn_model(mut self) -> anyhow::Result<Self> {
        self.turn_model = bot::turn_model(&self.cfg)?;
        Ok(self)
    }

    /// Share state through `shared` (Redis) instead of in process; the lookup cache moves too.
    pub fn with_shared(mut self, shared: Shared) -> Self {
        self.store =
            self.store.clone().with_cache(shared.clone(), Duration::from_secs(self.cfg.storage.cache_ttl_secs));
        self.jobs = Jobs::new(
            self.store.clone(),
            &self.instance,
            Duration::from_millis(self.cfg.jobs.lease_ms),
            self.cfg.jobs.max_attempts,
        );
        self.shared = shared;
        self
    }

    /// The full router: Twilio routes + admin API.
    pub(crate) fn router(self: &Arc<Self>) -> Router {
        let auth = if self.cfg.telephony.validate_signatures { self.secrets.twilio_auth_token.clone() } else { None };
        let mut routes = RoutesConfig::new(self.cfg.server.public_url.clone(), auth);
        routes.params = TwilioParams {
            max_message_bytes: self.cfg.server.max_message_bytes,
            rest: if self.cfg.telephony.hang_up_on_end { self.rest.clone() } else { None },
            ..TwilioParams::default()
        };
        let voice_path = routes.voice_path.clone();
        let admin = AdminState {
            store: self.store.clone(),
            token: self.secrets.admin_token.as_deref().map(Arc::from),
            counters: self.counters.clone(),
            shared: self.shared.clone(),
            jobs: self.jobs.clone(),
            lifecycle: self.lifecycle.clone(),
            instance: self.instance.clone(),
            trust_forwarded_for: self.cfg.security.trust_forwarded_for,
        };
        let sec = &self.cfg.security;
        let limit = |class: &'static str, limit: u64| RateLimit {
            shared: self.shared.clone(),
            class,
            limit,
            window: Duration::from_secs(60),
            trust_forwarded_for: sec.trust_forwarded_for,
        };
        let drain = DrainGuard { lifecycle: self.lifecycle.clone(), voice_path };
        let twilio = router(routes, Arc::new(Handler(self.clone())))
            .layer(from_fn_with_state(drain, crate::server::shutdown::refuse_new_calls))
            .layer(from_fn_with_state(limit("webhook", sec.webhook_rate_per_minute), security::rate_limit));
        let mut admin = admin::router(admin)
            .layer(from_fn_with_state(limit("admin", sec.admin_rate_per_minute), security::rate_limit));
        if let Some(cors) = security::cors(&sec.cors_origins) {
            admin = admin.layer(cors);
        }
        twilio.merge(admin)
    }

    /// Serve on `listener` until `shutdown` resolves, then drain (see shutdown.rs) and return.
    pub async fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = &'static str>,
    ) -> anyhow::Result<()> {
        let background = self.start_background();
        let stop_accepting = CancellationToken::new();
        let server = axum::serve(listener, self.router().into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stop_accepting.clone().cancelled_owned());
        let mut server = tokio::spawn(async move { server.await });
        tokio::select! {
            sig = shutdown => {
                tracing::info!(signal = sig, instance = %self.instance, live_calls = self.lifecycle.live(), "draining");
                self.drain().await;
            }
            r = &mut server => {
                self.stop.cancel();
                return r.map_err(|e| anyhow::anyhow!("server task: {e}"))?.map_err(Into::into);
            }
        }
        stop_accepting.cancel();
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        for b in background {
            let _ = tokio::time::timeout(Duration::from_secs(2), b).await;
        }
        tracing::info!(instance = %self.instance, "stopped");
        Ok(())
    }

    /// Stop taking calls, let live ones finish up to the drain timeout, end the rest politely,
    /// and wait for their records and post-call jobs.
    pub(crate) async fn drain(&self) {
        self.lifecycle.start_draining();
        let timeout = Duration::from_millis(self.cfg.server.drain_timeout_ms);
        if !self.lifecycle.wait_idle(timeout).await {
            let n = self.lifecycle.end_all_politely();
            tracing::info!(calls = n, "drain timeout: ending the remaining calls politely");
            // Goodbye line + hang-up + record + job: bounded so a stuck call cannot hold the exit.
            if !self.lifecycle.wait_idle(Duration::from_secs(45)).await {
                tracing::warn!(calls = self.lifecycle.live(), "calls still open at exit; their jobs stay queued");
            }
        }
    }

    /// Heartbeat, job workers and retention, until `self.stop`.
    pub(crate) fn start_background(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let app = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if let Err(e) = app.shared.heartbeat(&app.instance).await {
                    tracing::warn!(error = %format!("{e:#}"), "registry heartbeat failed");
                }
                if !app.lifecycle.is_draining() {
                    app.reap_dead_calls().await;
                }
                tokio::select! {
                    _ = app.stop.cancelled() => break,
                    _ = tokio::time::sleep(HEARTBEAT_TTL / 3) => {}
                }
            }
        }));
        for _ in 0..self.cfg.jobs.workers {
            let app = self.clone();
            tasks.push(tokio::spawn(async move {
                let poll = Duration::from_millis(app.cfg.jobs.poll_ms);
                loop {
                    // A draining instance leaves queued jobs to the others.
                    let claimed = if app.lifecycle.is_draining() { Ok(None) } else { app.jobs.claim(None).await };
                    match claimed {
                        Ok(Some(job)) => {
                            app.run_job(job).await;
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "job claim failed"),
                    }
                    tokio::select! {
                        _ = app.stop.cancelled() => break,
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
            }));
        }
        if self.cfg.security.retention_days > 0 {
            let app = self.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let days = i64::try_from(app.cfg.security.retention_days).unwrap_or(i64::MAX);
                    let cutoff = now_ms().saturating_sub(days.saturating_mul(86_400_000));
                    let redact = app.cfg.security.retention_mode == "redact";
                    match app.store.apply_retention(cutoff, redact).await {
                        Ok(n) if n > 0 => tracing::info!(calls = n, redact, "retention applied"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "retention failed"),
                    }
                    tokio::select! {
                        _ = app.stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    }
                }
            }));
        }
        tasks
    }

    async fn run_call(self: Arc<Self>, session: TwilioSession) {
        let start = session.start().clone();
        let call_sid = start.call_sid.clone();
        let from = start.custom_parameters.get("from").cloned().unwrap_or_default();
        let Some(polite_end) = self.admit(&call_sid, &from).await else { return };
        let started_ms = now_ms();
        let call_span = tracing::Span::current();
        let ended_for_shutdown = Arc::new(AtomicBool::new(false));
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
            turn_model: self.turn_model.clone(),
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
                let recording = tokio::spawn(
                    record_events(handle.subscribe(), recorder.clone(), ctx.clone(), call_span.clone())
                        .instrument(call_span.clone()),
                );
                // The bot speaks first: queued before the pipeline runs, so it is said first.
                for f in bot::spoken_line(&self.cfg.persona.greeting) {
                    let _ = handle.push(f).await;
                }
                let goodbye = self.cfg.persona.goodbye.clone();
                let ender = tokio::spawn(
                    end_when_asked(handle, end_call, polite_end, goodbye, ended_for_shutdown.clone())
                        .instrument(call_span.clone()),
                );
                let report = serve_call(session, task).await;
                ender.abort();
                recording.abort();
                self.account(&report, &recorder, ended_for_shutdown.load(Ordering::SeqCst))
            }
            Err(e) => {
                recorder.error(format!("pipeline setup failed: {e:#}"));
                ("setup_failed".to_string(), json!({}))
            }
        };
        self.release(&call_sid, started_ms, &end_reason, &recorder).await;
        self.finish_call(&ctx, &recorder, started_ms, &end_reason, outcome).await;
        self.lifecycle.unregister(&call_sid);
    }

    /// Admission: refuse the call at capacity; otherwise count it, watch it for the shutdown
    /// (the returned notify asks it to say goodbye) and announce it in the shared registry.
    async fn admit(&self, call_sid: &str, from: &str) -> Option<Arc<Notify>> {
        let c = &self.counters;
        if c.calls_active.load(Ordering::Relaxed) >= self.cfg.server.max_calls as u64 {
            c.calls_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(call_sid, "at capacity: call refused");
            return None;
        }
        c.calls_started.fetch_add(1, Ordering::Relaxed);
        c.calls_active.fetch_add(1, Ordering::Relaxed);
        metrics().call_started();
        let polite_end = self.lifecycle.register(call_sid);
        let live = LiveCall {
            call_sid: call_sid.to_string(),
            instance: self.instance.clone(),
            started_ms: now_ms(),
            from_sealed: self.store.seal(from).unwrap_or_default(),
        };
        if let Err(e) = self.shared.register_call(&live).await {
            tracing::warn!(error = %format!("{e:#}"), "registry: call not announced");
        }
        Some(polite_end)
    }

    /// What the transport reports about a finished call: counters, the end reason the record
    /// and metrics use, and the stream figures stored with the call.
    fn account(&self, report: &CallReport, recorder: &Recorder, for_shutdown: bool) -> (String, serde_json::Value) {
        self.counters.stream_errors.fetch_add(report.bad_messages, Ordering::Relaxed);
        metrics().frames_dropped(report.input_audio_dropped);
        if let Some(TaskOutcome::Failed(why)) = report.pipeline.as_ref().map(|r| &r.outcome) {
            recorder.error(format!("pipeline failed: {why}"));
        }
        let reason = match &report.reason {
            EndReason::Stopped => "caller_hung_up".to_string(),
            EndReason::Disconnected => "disconnected".to_string(),
            EndReason::PipelineEnded if for_shutdown => "shutdown".to_string(),
            EndReason::PipelineEnded => "bot_ended".to_string(),
            EndReason::ProtocolViolation(why) => format!("protocol_violation: {why}"),
        };
        let stream = json!({"media_in": report.media_in, "media_out": report.media_out,
                            "bad_messages": report.bad_messages, "hung_up": report.hung_up,
                            "drained": report.drained, "input_audio_dropped": report.input_audio_dropped});
        (reason, stream)
    }

    /// The call is over: uncount it, take it out of the shared registry, record its metrics.
    async fn release(&self, call_sid: &str, started_ms: i64, end_reason: &str, recorder: &Recorder) {
        let c = &self.counters;
        c.calls_active.fetch_sub(1, Ordering::Relaxed);
        c.calls_finished.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.shared.unregister_call(call_sid).await {
            tracing::warn!(error = %format!("{e:#}"), "registry: call not removed");
        }
        metrics().call_ended(end_reason, (now_ms() - started_ms) as f64 / 1e3);
        for t in recorder.snapshot().turns {
            metrics().turn(t.stt_ms, t.llm_ttfb_ms, t.tts_ttfb_ms, t.total_ms);
        }
    }

    /// Store the call and enqueue its workflow in one transaction, then run the job here.
    async fn finish_call(
        &self,
        ctx: &CallCtx,
        recorder: &Recorder,
        started_ms: i64,
        end_reason: &str,
        stream: serde_json::Value,
    ) {
        let record = recorder.snapshot();
        let transferred = *voxline::pipeline::sync::lock(&ctx.transferred);
        let ended_by_bot = voxline::pipeline::sync::lock(&ctx.end_requested).is_some();
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
            resolved: false,
            errors: i64::try_from(record.errors.len()).unwrap_or(i64::MAX),
            summary: None,
            sentiment: None,
            record: record_json,
            workflow: None,
        };
        let payload = json!({"customer_id": ctx.customer_id(), "end_reason": end_reason,
                             "transferred": transferred, "ended_by_bot": ended_by_bot});
        // A database hiccup must not lose the call: retry the transaction a few times.
        let mut job_id = None;
        for attempt in 0..5u32 {
            match self.store_and_enqueue(&row, &payload).await {
                Ok(id) => {
                    job_id = Some(id);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), attempt, "could not store the call");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        tracing::info!(end_reason, "call ended; post-call job enqueued");
        let Some(job_id) = job_id else { return };
        match self.jobs.claim(Some(&job_id)).await {
            Ok(Some(job)) => self.run_job(job).await,
            // Another worker was faster: it runs the job.
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "job claim failed; a worker will retry"),
        }
    }

    /// Calls of a dead instance get a record (what is known: number, start) and a post-call
    /// job, so every call placed ends up with a post-call record.
    async fn reap_dead_calls(&self) {
        let dead = match self.shared.reap_dead().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "registry scan failed");
                return;
            }
        };
        for call in dead {
            if matches!(self.store.get_call(&call.call_sid).await, Ok(Some(_))) {
                continue;
            }
            let now = now_ms();
            let from = self.store.open(&call.from_sealed).unwrap_or_default();
            let record = CallRecord {
                call_sid: call.call_sid.clone(),
                from: from.clone(),
                started_ms: call.started_ms,
                ..CallRecord::default()
            };
            let mut record_json = serde_json::to_value(&record).unwrap_or_default();
            record_json["lost_with_instance"] = json!(call.instance);
            let row = CallRow {
                call_sid: call.call_sid.clone(),
                from_number: from,
                started_ms: call.started_ms,
                ended_ms: now,
                duration_ms: now - call.started_ms,
                end_reason: "instance_lost".into(),
                resolved: false,
                errors: 1,
                summary: None,
                sentiment: None,
                record: record_json,
                workflow: None,
            };
            let payload = json!({"customer_id": null, "end_reason": "instance_lost", "transferred": false, "ended_by_bot": false});
            match self.store_and_enqueue(&row, &payload).await {
                Ok(_) => {
                    tracing::warn!(call_sid = %call.call_sid, dead_instance = %call.instance, "call lost with its instance: record written")
                }
                Err(e) => {
                    tracing::error!(call_sid = %call.call_sid, error = %format!("{e:#}"), "could not record a lost call")
                }
            }
        }
    }

    async fn store_and_enqueue(&self, row: &CallRow, payload: &serde_json::Value) -> anyhow::Result<String> {
        let mut tx = self.store.pool().begin().await?;
        self.store.save_call_in(&mut tx, row).await?;
        let id = Jobs::enqueue_in(&mut tx, &row.call_sid, payload).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Run a claimed post-call job: the workflow (idempotent steps), then the final record.
    pub(crate) async fn run_job(&self, job: Claimed) {
        let span = tracing::info_span!("post_call_job", call_sid = %job.call_sid, job_id = %job.id,
                                       attempt = job.attempts, instance = %self.instance);
        let renewer = {
            let jobs = self.jobs.clone();
            let job = job.clone();
            let every = Duration::from_millis(self.cfg.jobs.lease_ms / 3);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match jobs.renew(&job).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(job_id = %job.id, "lease lost: another instance took the job over");
                            break;
                        }
                        Err(e) => tracing::warn!(job_id = %job.id, error = %format!("{e:#}"), "lease renewal failed"),
                    }
                }
            })
        };
        let result = self.run_job_inner(&job).instrument(span.clone()).await;
        renewer.abort();
        let _enter = span.enter();
        match result {
            Ok(row) => {
                if let Err(e) = self.jobs.complete(&job).await {
                    tracing::warn!(error = %format!("{e:#}"), "job done but not marked; a retry will replay it");
                }
                metrics().job("done");
                tracing::info!(end_reason = %row.end_reason, resolved = row.resolved, "post-call record written");
                if let Some(f) = &self.on_call_done {
                    f(&row);
                }
            }
            Err(e) => {
                metrics().job("failed");
                tracing::warn!(error = %format!("{e:#}"), "post-call job failed; will retry");
                if let Err(e) = self.jobs.fail(&job, &format!("{e:#}")).await {
                    tracing::warn!(error = %format!("{e:#}"), "could not requeue the job");
                }
            }
        }
    }

    async fn run_job_inner(&self, job: &Claimed) -> anyhow::Result<CallRow> {
        let mut row = self
            .store
            .get_call(&job.call_sid)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no stored call {}", job.call_sid))?;
        let record: CallRecord = serde_json::from_value(row.record.clone())?;
        let p = &job.payload;
        let input = WorkflowInput {
            record: &record,
            customer_id: p["customer_id"].as_str().map(str::to_string),
            end_reason: p["end_reason"].as_str().unwrap_or(&row.end_reason),
            transferred: p["transferred"].as_bool().unwrap_or(false),
            ended_by_bot: p["ended_by_bot"].as_bool().unwrap_or(false),
        };
        let jref = JobRef { id: &job.id, owner: &job.owner, stall_after: self.cfg.jobs.stall_after_step.as_deref() };
        let wf: WorkflowOutcome = workflow::run(&self.cfg, &self.store, &self.summary_llm, input, &jref).await;
        if wf.steps.iter().any(|s| s.step == "load") {
            anyhow::bail!("workflow progress unreadable");
        }
        row.resolved = wf.resolved;
        row.summary = wf.summary.clone();
        row.sentiment = wf.sentiment.clone();
        row.workflow = serde_json::to_value(&wf).ok();
        self.store.save_call(&row).await?;
        metrics().call_resolved(wf.resolved);
        Ok(row)
    }
}

/// The router's view of the app (calls need an owned `Arc<App>`).
struct Handler(Arc<App>);

impl CallHandler for Handler {
    fn handle_stream(&self, session: TwilioSession) -> BoxFuture {
        let span = tracing::info_span!("call", call_sid = %session.start().call_sid, customer_id = tracing::field::Empty,
                                       turn = 0u64, instance = %self.0.instance);
        Box::pin(self.0.clone().run_call(session).instrument(span))
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

/// The call's events into its record, its span fields and the error metrics, until the pipeline
/// is gone: one span per turn, from the end of the caller's speech to the end of the next one.
async fn record_events(
    mut events: tokio::sync::broadcast::Receiver<Event>,
    rec: Recorder,
    ctx: Arc<CallCtx>,
    span: tracing::Span,
) {
    let mut turn_span: Option<tracing::Span> = None;
    let mut customer_known = false;
    loop {
        match events.recv().await {
            Ok(ev) => {
                if let Event::Error(e) = &ev {
                    metrics().provider_error(&e.processor);
                    tracing::warn!(processor = %e.processor, fatal = e.fatal, "{}", e.message);
                }
                rec.event(&ev);
                if matches!(ev, Event::UserStoppedSpeaking) {
                    let turn = rec.turns();
                    span.record("turn", turn);
                    turn_span = Some(tracing::info_span!(parent: &span, "turn", turn));
                }
                if !customer_known && let Some(id) = ctx.customer_id() {
                    span.record("customer_id", id.as_str());
                    customer_known = true;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    drop(turn_span);
}

/// End the pipeline when the bot asks (`end_call`: the goodbye is already queued) or the
/// instance shuts down (say the goodbye first). `End` queues behind the goodbye, so it drains
/// through TTS and the output before the transport hangs up.
async fn end_when_asked(
    handle: PipelineHandle,
    end_call: Arc<Notify>,
    polite_end: Arc<Notify>,
    goodbye: String,
    for_shutdown: Arc<AtomicBool>,
) {
    tokio::select! {
        _ = end_call.notified() => {}
        _ = polite_end.notified() => {
            for_shutdown.store(true, Ordering::SeqCst);
            tracing::info!("instance shutting down: saying goodbye");
            for f in bot::spoken_line(&goodbye) {
                let _ = handle.push(f).await;
            }
        }
    }
    let _ = handle.end().await;
}
