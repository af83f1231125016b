//! Production-operations tests: two instances on shared Redis/PostgreSQL, SIGKILL mid-job,
//! SIGTERM drain, shared rate limits, PII at rest, audit, retention, secrets in logs.
//!
//! Instances that must be killed or signalled run as child processes: the `phone-bot` binary's
//! `serve`, with a config file written by the test. Tests needing Postgres/Redis read
//! `DATABASE_URL`/`REDIS_URL` and skip (saying so) when unset; each run uses its own Postgres
//! schema and Redis key prefix.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row as _;

use voxline_phone_bot::config::{Config, Secrets};
use voxline_phone_bot::fleet::shared_state::Shared;
use voxline_phone_bot::fleet::store::{CallRow, Store, new_id};
use voxline_phone_bot::server::App;
use voxline_phone_bot::server::security::Crypto;
use voxline_phone_bot::sim::simulate::{CALLER_LINES, Emulated, SIM_ADMIN_TOKEN, SIM_AUTH_TOKEN, speech};
use voxline_phone_bot::sim::soak::{Instance, fleet_config, free_port, soak_call, spawn_instance};
use voxline_phone_bot::sim::socket_bench::{BenchParams, bench_one};

/// The binary under test; child instances run its `serve`.
const PHONE_BOT: &str = env!("CARGO_BIN_EXE_phone-bot");

const PII_KEY_ENV: &str = "VOXLINE_TEST_PII_KEY";

fn services(test: &str) -> Option<(String, String)> {
    match (std::env::var("DATABASE_URL"), std::env::var("REDIS_URL")) {
        (Ok(d), Ok(r)) if d.starts_with("postgres") => Some((d, r)),
        _ => {
            eprintln!("{test}: skipped (needs DATABASE_URL=postgres://… and REDIS_URL)");
            None
        }
    }
}

fn schema_url(db: &str) -> (String, String) {
    let schema = new_id("t").to_lowercase().replace('-', "_");
    let sep = if db.contains('?') { '&' } else { '?' };
    (format!("{db}{sep}voxline_schema={schema}"), schema)
}

async fn drop_schema(store: &Store, schema: &str) {
    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(store.pool()).await;
}

async fn spawn_child(cfg: &Config, env: &[(String, String)], log: Arc<Mutex<Vec<String>>>) -> Instance {
    let sink: Arc<dyn Fn(&str) + Send + Sync> =
        Arc::new(move |l: &str| voxline_phone_bot::call::skills::lock(&log).push(l.to_string()));
    match spawn_instance(Path::new(PHONE_BOT), None, cfg, env, sink).await {
        Ok(i) => i,
        Err(e) => panic!("child instance: {e:#}"),
    }
}

/// An in-process instance serving until the test ends.
async fn start_in_process(
    cfg: Config,
    store: Store,
    shared: Shared,
) -> (Arc<App>, tokio::sync::mpsc::UnboundedReceiver<CallRow>) {
    let listener = match tokio::net::TcpListener::bind(&cfg.server.listen).await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let secrets = Secrets::resolve(&cfg, |k| {
        voxline_phone_bot::sim::soak::secret_env(&cfg).into_iter().find(|(n, _)| n == k).map(|(_, v)| v)
    });
    let mut app = App::new(cfg, secrets, store).with_shared(shared);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    app.on_call_done = Some(Arc::new(move |r: &CallRow| {
        let _ = tx.send(r.clone());
    }));
    let app = Arc::new(app);
    let a = app.clone();
    tokio::spawn(async move { a.serve(listener, std::future::pending()).await });
    (app, rx)
}

async fn admin_get(base: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(SIM_ADMIN_TOKEN).send().await;
    match r {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

async fn count(store: &Store, sql: &str, sid: &str) -> i64 {
    match sqlx::query(sql).bind(sid.to_string()).fetch_one(store.pool()).await {
        Ok(r) => r.try_get::<i64, _>(0).unwrap_or(-1),
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// A call on A is listed from B; A is SIGKILLed after its calls ended but in the middle of
/// their workflows (stalled after `crm_update`); B takes the jobs over after the lease and
/// finishes every workflow, with no step done twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_registry_and_sigkill_mid_workflow() {
    let Some((db, redis)) = services("two_instances_registry_and_sigkill_mid_workflow") else { return };
    let (db_url, schema) = schema_url(&db);
    let prefix = new_id("vt").to_lowercase();
    let emulated = match Emulated::start(Emulated::script(&[CALLER_LINES[2]])).await {
        Ok(e) => e,
        Err(e) => panic!("emulators: {e:#}"),
    };
    let mut a_cfg = fleet_config(&emulated, &db_url, &redis, &prefix, "A").unwrap_or_else(|e| panic!("{e:#}"));
    a_cfg.jobs.workers = 0;
    a_cfg.jobs.lease_ms = 1500;
    a_cfg.jobs.stall_after_step = Some("crm_update".into());
    let mut b_cfg = fleet_config(&emulated, &db_url, &redis, &prefix, "B").unwrap_or_else(|e| panic!("{e:#}"));
    b_cfg.jobs.lease_ms = 1500;
    b_cfg.jobs.poll_ms = 100;
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut a = spawn_child(&a_cfg, &[], log.clone()).await;
    let store = Store::connect(&db_url, false).await.unwrap_or_else(|e| panic!("{e:#}"));
    let shared = Shared::connect(Some(&redis), &prefix).await.unwrap_or_else(|e| panic!("{e:#}"));
    let b_base = b_cfg.server.public_url.clone();
    let (_b, mut b_done) = start_in_process(b_cfg, store.clone(), shared).await;

    let line = speech(CALLER_LINES[2], 2).unwrap_or_else(|e| panic!("{e:#}"));
    let sids: Vec<String> = (0..2).map(|i| format!("CA{:030x}{i:02}", std::process::id())).collect();
    let calls: Vec<_> = sids
        .iter()
        .map(|sid| {
            let (base, sid, line) = (a.base.clone(), sid.clone(), line.clone());
            tokio::spawn(async move { soak_call(&base, &sid, &[line]).await })
        })
        .collect();
    // Both calls, live on A, are listed by B.
    let mut listed = Value::Null;
    for _ in 0..100 {
        let (_, v) = admin_get(&b_base, "/admin/calls?live=true").await;
        let on_a = v["calls"].as_array().map_or(0, |c| c.iter().filter(|c| c["instance"] == "A").count());
        listed = v;
        if on_a == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_a: Vec<&str> =
        listed["calls"].as_array().into_iter().flatten().filter_map(|c| c["call_sid"].as_str()).collect();
    assert!(
        sids.iter().all(|s| on_a.contains(&s.as_str())),
        "B lists {listed}; A logged:\n{}",
        voxline_phone_bot::call::skills::lock(&log).join("\n")
    );
    for c in calls {
        let r = c.await.unwrap_or_default();
        assert!(r.completed && r.error.is_none(), "{r:?}");
    }
    // A ran summary and crm_update for both calls and stalls: kill it there.
    let mut stalled = false;
    for _ in 0..200 {
        let n = count(&store, "SELECT COUNT(*) FROM job_steps WHERE step = 'crm_update' AND job_id LIKE $1", "JOB-CA%")
            .await;
        if n == 2 {
            stalled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stalled, "A did not reach crm_update for both jobs");
    for sid in &sids {
        let done = count(&store, "SELECT COUNT(*) FROM jobs WHERE call_sid = $1 AND status = 'done'", sid).await;
        assert_eq!(done, 0, "{sid}: the workflow must still be unfinished when A dies");
    }
    let _ = a.child.start_kill();
    let _ = a.child.wait().await;

    let mut finished = Vec::new();
    while finished.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(30), b_done.recv()).await {
            Ok(Some(row)) => finished.push(row),
            _ => panic!("B did not finish the workflows (got {})", finished.len()),
        }
    }
    for sid in &sids {
        let row = finished.iter().find(|r| &r.call_sid == sid).unwrap_or_else(|| panic!("no record for {sid}"));
        let steps: Vec<(String, String)> = row
            .workflow
            .as_ref()
            .and_then(|w| w["steps"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|s| (s["step"].as_str().unwrap_or("").to_string(), s["status"].as_str().unwrap_or("").to_string()))
            .collect();
        assert_eq!(steps.len(), 4, "{steps:?}");
        assert_eq!(count(&store, "SELECT attempts FROM jobs WHERE call_sid = $1 AND status = 'done'", sid).await, 2);
        // Exactly once: one CRM note, one email, and the steps A did were not redone by B.
        assert_eq!(count(&store, "SELECT COUNT(*) FROM crm_log WHERE call_sid = $1", sid).await, 1);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM outbox WHERE call_sid = $1", sid).await, 1);
        let job = format!("JOB-{sid}");
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM job_steps WHERE job_id = $1 AND owner LIKE 'A/%'", &job).await,
            2
        );
        assert!(
            count(&store, "SELECT COUNT(*) FROM job_steps WHERE job_id = $1 AND owner LIKE 'B/%'", &job).await >= 1
        );
    }
    drop_schema(&store, &schema).await;
}

/// SIGTERM with 5 live calls: webhook refused (503), each call ends with the goodbye and a
/// hang-up, each gets its post-call record, the process exits 0, and the whole JSON log of the
/// instance carries the calls' `call_sid` and none of the secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_five_live_calls() {
    let emulated = match Emulated::start(Emulated::script(&[])).await {
        Ok(e) => e,
        Err(e) => panic!("emulators: {e:#}"),
    };
    let db = std::env::temp_dir().join(format!("voxline-drain-{}.db", new_id("t")));
    let port = free_port().unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://127.0.0.1:{port}");
    let mut cfg = emulated.config(&format!("sqlite://{}", db.display()), &base);
    cfg.server.listen = format!("127.0.0.1:{port}");
    cfg.server.drain_timeout_ms = 500;
    cfg.storage.pii_key_env = PII_KEY_ENV.into();
    let pii_key = Crypto::generate_key();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let env = vec![
        (PII_KEY_ENV.to_string(), pii_key.clone()),
        (
            "RUST_LOG".to_string(),
            "debug,tungstenite=info,tokio_tungstenite=info,hyper=info,hyper_util=info,h2=info,rustls=info,sqlx=info"
                .to_string(),
        ),
    ];
    let mut child = spawn_child(&cfg, &env, log.clone()).await;
    let sids: Vec<String> = (0..5).map(|i| format!("CA{:030x}{i:02}", std::process::id() + 7)).collect();
    let calls: Vec<_> = sids
        .iter()
        .map(|sid| {
            let (base, sid) = (base.clone(), sid.clone());
            // The caller says nothing and never hangs up: only the drain can end the call.
            tokio::spawn(async move { soak_call(&base, &sid, &[]).await })
        })
        .collect();
    let mut live = 0;
    for _ in 0..100 {
        live = admin_get(&base, "/health").await.1["active_calls"].as_u64().unwrap_or(0);
        if live == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live, 5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.pid.to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    assert!(killed.is_ok_and(|s| s.success()));
    // New calls are refused while draining.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let params = vec![("CallSid".to_string(), "CA_new".to_string()), ("From".to_string(), "+1".to_string())];
    let url = format!("{base}/voice/twilio");
    let sig = voxline::transports::twilio::signature::compute(SIM_AUTH_TOKEN, &url, &params);
    let refused = reqwest::Client::new().post(&url).header("X-Twilio-Signature", sig).form(&params).send().await;
    assert_eq!(refused.map(|r| r.status().as_u16()).ok(), Some(503));
    for c in calls {
        let r = c.await.unwrap_or_default();
        assert!(r.completed && r.error.is_none(), "{r:?}");
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "{status:?}");

    let crypto = Crypto::from_base64(&pii_key).ok();
    let store = Store::connect_with(&format!("sqlite://{}", db.display()), false, 2, crypto)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    for sid in &sids {
        let row = store.get_call(sid).await.ok().flatten().unwrap_or_else(|| panic!("no record for {sid}"));
        assert_eq!(row.end_reason, "shutdown");
        assert!(row.workflow.is_some(), "{sid}: no post-call workflow");
        let last_bot =
            row.record["transcript"].as_array().into_iter().flatten().rev().find(|l| l["role"] == "bot").cloned();
        assert!(last_bot.is_some_and(|l| l["text"].as_str().is_some_and(|t| t.contains("Goodbye"))), "{sid}");
    }
    assert_eq!(voxline_phone_bot::call::skills::lock(&emulated.hangups).len(), 5, "each call hung up through REST");

    let lines = voxline_phone_bot::call::skills::lock(&log).clone();
    let json_lines: Vec<Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(json_lines.len() > 20, "too few log lines: {}", lines.len());
    for sid in &sids {
        let n = json_lines.iter().filter(|l| l.to_string().contains(sid.as_str())).count();
        assert!(n >= 3, "{sid}: {n} log lines carry the call_sid");
    }
    let in_call =
        json_lines.iter().filter(|l| l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == "call")));
    for l in in_call {
        assert!(l["span"]["call_sid"].is_string() || l["spans"][0]["call_sid"].is_string(), "{l}");
        assert!(l["spans"][0].get("turn").is_some(), "{l}");
    }
    let all = lines.join("\n");
    for (name, value) in
        voxline_phone_bot::sim::soak::secret_env(&cfg).into_iter().chain([(PII_KEY_ENV.to_string(), pii_key)])
    {
        if value.starts_with("AC000") {
            continue; // The account SID is an identifier, not a secret (it is in every REST URL).
        }
        assert!(!all.contains(&value), "the log contains the value of {name}");
    }
}

/// Two instances share one rate-limit budget through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_shared_across_instances() {
    let Ok(redis) = std::env::var("REDIS_URL") else {
        eprintln!("rate_limit_is_shared_across_instances: skipped (REDIS_URL is not set)");
        return;
    };
    let prefix = new_id("vt").to_lowercase();
    let emulated = match Emulated::start(Emulated::script(&[])).await {
        Ok(e) => e,
        Err(e) => panic!("emulators: {e:#}"),
    };
    let mut bases = Vec::new();
    let mut apps = Vec::new();
    for name in ["A", "B"] {
        let db = std::env::temp_dir().join(format!("voxline-rl-{}.db", new_id("t")));
        let mut cfg = fleet_config(&emulated, &format!("sqlite://{}", db.display()), &redis, &prefix, name)
            .unwrap_or_else(|e| panic!("{e:#}"));
        cfg.security.admin_rate_per_minute = 3;
        let store = Store::connect(&cfg.storage.url, true).await.unwrap_or_else(|e| panic!("{e:#}"));
        let shared = Shared::connect(Some(&redis), &prefix).await.unwrap_or_else(|e| panic!("{e:#}"));
        bases.push(cfg.server.public_url.clone());
        apps.push(start_in_process(cfg, store, shared).await);
    }
    let statuses = [
        admin_get(&bases[0], "/admin/stats").await.0,
        admin_get(&bases[1], "/admin/stats").await.0,
        admin_get(&bases[0], "/admin/stats").await.0,
        admin_get(&bases[1], "/admin/stats").await.0,
        admin_get(&bases[0], "/admin/stats").await.0,
    ];
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
}

/// PII columns hold ciphertext; without the key (or with another) they cannot be read.
#[tokio::test]
async fn pii_columns_unreadable_without_key() {
    let (url, schema) = match std::env::var("DATABASE_URL") {
        Ok(d) if d.starts_with("postgres") => {
            let (u, s) = schema_url(&d);
            (u, Some(s))
        }
        _ => {
            eprintln!("pii_columns_unreadable_without_key: DATABASE_URL unset, checking SQLite only");
            (
                format!("sqlite://{}", std::env::temp_dir().join(format!("voxline-pii-{}.db", new_id("t"))).display()),
                None,
            )
        }
    };
    let key = Crypto::from_base64(&Crypto::generate_key()).ok();
    let store = Store::connect_with(&url, true, 2, key).await.unwrap_or_else(|e| panic!("{e:#}"));
    let row = CallRow {
        call_sid: "CApii".into(),
        from_number: "+15550001111".into(),
        started_ms: 1,
        ended_ms: 2,
        duration_ms: 1,
        end_reason: "x".into(),
        resolved: true,
        errors: 0,
        summary: Some("Jane asked about order 12345".into()),
        sentiment: None,
        record: json!({"transcript": [{"role": "user", "text": "my card is 4111 1111"}]}),
        workflow: None,
    };
    store.save_call(&row).await.unwrap_or_else(|e| panic!("{e:#}"));
    let raw = sqlx::query("SELECT from_number, record_json, summary FROM calls WHERE call_sid = 'CApii'")
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for col in ["from_number", "record_json", "summary"] {
        let v: String = raw.try_get(col).unwrap_or_default();
        assert!(v.starts_with("enc:v1:") && !v.contains("5550001111") && !v.contains("4111"), "{col}: {v}");
    }
    let phones: Vec<String> = sqlx::query("SELECT phone FROM customers")
        .fetch_all(store.pool())
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| r.try_get("phone").unwrap_or_default())
        .collect();
    assert!(!phones.is_empty() && phones.iter().all(|p| p.starts_with("enc:v1:")), "{phones:?}");
    assert_eq!(store.get_call("CApii").await.ok().flatten().map(|r| r.from_number).as_deref(), Some("+15550001111"));
    assert_eq!(
        store.find_customer(Some("(555) 000-1111"), None).await.ok().flatten().map(|c| c.id).as_deref(),
        Some("C-1001")
    );
    let keyless = Store::connect_with(&url, false, 2, None).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(keyless.get_call("CApii").await.is_err());
    let other = Store::connect_with(&url, false, 2, Crypto::from_base64(&Crypto::generate_key()).ok())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(other.get_call("CApii").await.is_err());
    if let Some(s) = schema {
        drop_schema(&store, &s).await;
    }
}

/// Reads of customer data are audited; retention redacts old calls; the cache is invalidated
/// by a workflow write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_and_cache_invalidation() {
    let emulated = match Emulated::start(Emulated::script(&[])).await {
        Ok(e) => e,
        Err(e) => panic!("emulators: {e:#}"),
    };
    let db = std::env::temp_dir().join(format!("voxline-audit-{}.db", new_id("t")));
    let port = free_port().unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = emulated.config(&format!("sqlite://{}", db.display()), &format!("http://127.0.0.1:{port}"));
    cfg.server.listen = format!("127.0.0.1:{port}");
    let base = cfg.server.public_url.clone();
    let store = Store::connect(&cfg.storage.url, true).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (app, _rx) = start_in_process(cfg, store, Shared::default()).await;
    let row = CallRow {
        call_sid: "CAold".into(),
        from_number: "+15550002222".into(),
        started_ms: 1,
        ended_ms: 2,
        duration_ms: 1,
        end_reason: "x".into(),
        resolved: true,
        errors: 0,
        summary: Some("s".into()),
        sentiment: None,
        record: json!({"transcript": []}),
        workflow: None,
    };
    app.store.save_call(&row).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(admin_get(&base, "/admin/calls/CAold").await.0, 200);
    let (_, audit) = admin_get(&base, "/admin/audit").await;
    assert_eq!(audit["audit"][0]["action"], "get_call");
    assert_eq!(audit["audit"][0]["target"], "CAold");
    assert_eq!(audit["audit"][0]["client"], "127.0.0.1");

    // Cache: a read fills it, a workflow write invalidates it.
    let before = app.store.customer("C-1001").await.ok().flatten().and_then(|c| c.last_call_summary);
    assert_eq!(before, None);
    let effect =
        voxline_phone_bot::fleet::jobs::Effect::Crm { customer_id: "C-1001", call_sid: "CAold", note: "new note" };
    let wrote =
        voxline_phone_bot::fleet::jobs::step_once(&app.store, "JOB-CAold", "crm_update", "t", "ok", &json!({}), effect)
            .await;
    assert!(matches!(wrote, Ok(true)));
    let after = app.store.customer("C-1001").await.ok().flatten().and_then(|c| c.last_call_summary);
    assert_eq!(after.as_deref(), Some("new note"));

    let n = app.store.apply_retention(voxline_phone_bot::fleet::store::now_ms() - 1000, true).await.unwrap_or_default();
    assert_eq!(n, 1);
    let red = app.store.get_call("CAold").await.ok().flatten();
    assert!(red.is_some_and(|r| r.from_number == "[redacted]" && r.summary.is_none() && r.record["redacted"] == true));
}

/// The soak tool at a small N (the README gives the long run): two instances, A SIGKILLed
/// mid-run, every placed call ends up with a post-call record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_small_n_with_kill() {
    let Some((db, redis)) = services("soak_small_n_with_kill") else { return };
    let report = voxline_phone_bot::sim::soak::soak(4, 4, None, Some(3.0), &db, &redis, Path::new(PHONE_BOT)).await;
    let r = report.unwrap_or_else(|e| panic!("soak: {e:#}"));
    assert_eq!(r["calls_placed"], 4, "{r}");
    assert_eq!(r["records_equal_placed"], true, "{r}");
    assert!(r["calls_completed"].as_u64().unwrap_or(0) >= 2, "B's calls complete: {r}");
    assert!(r["jitter_ms"]["samples"].as_u64().unwrap_or(0) > 0, "{r}");
}

/// Unpinned: the test binary runs other tests beside it.
fn test_params(callers: usize) -> BenchParams {
    let mut p = BenchParams::new(callers, PHONE_BOT.into());
    p.ramp = Duration::from_secs(1);
    p.hold = Duration::from_secs(1);
    p
}

/// Three callers, all overlapping, against a child instance: every call completes, the
/// instance saw them live together, and jitter, latency, CPU and RSS are finite and plausible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_bench_three_callers() {
    let r = match bench_one(&test_params(3)).await {
        Ok(r) => r,
        Err(e) => panic!("bench: {e:#}"),
    };
    eprintln!("{r}");
    assert_eq!(r["completed"], 3, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["peak_live_calls"].as_u64().is_some_and(|n| (2..=3).contains(&n)), "{r}");
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    // The bot paces 20 ms chunks and three calls are no load: chunks two behind at p99 would
    // mean broken pacing (the margin is for CI running other real-time tests beside this).
    assert!(f("outbound_jitter_p50_ms") >= 0.0 && f("outbound_jitter_p50_ms") < 10.0, "{r}");
    assert!(f("outbound_jitter_p99_ms") >= 0.0 && f("outbound_jitter_p99_ms") < 40.0, "{r}");
    assert!(r["jitter_samples"].as_u64().is_some_and(|n| n > 100), "{r}");
    // Two answered lines per call; the VAD alone waits a few hundred ms before the bot can.
    assert!(r["turns"].as_u64().is_some_and(|n| n >= 6), "{r}");
    assert!(f("turn_latency_p50_ms") > 100.0 && f("turn_latency_p99_ms") < 5000.0, "{r}");
    assert!(f("rss_idle_mb") > 1.0 && f("rss_peak_mb") >= f("rss_idle_mb") && f("rss_peak_mb") < 2000.0, "{r}");
    assert!(f("rss_per_call_mb").is_finite() && f("rss_per_call_mb") >= 0.0, "{r}");
    assert!(f("cpu_s_per_call") > 0.0 && f("cpu_s_per_call") < 30.0, "{r}");
    assert!(f("cpu_pct") > 0.0 && f("driver_cpu_pct") > 0.0, "{r}");
}
