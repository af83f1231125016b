//! Load and soak: N simulated Twilio calls over loopback against two instances sharing Redis
//! and PostgreSQL, one of which is SIGKILLed mid-run.
//!
//! `phone-bot soak [--calls N] [--concurrency C] [--minutes M] [--kill-after-secs S]`
//! (`DATABASE_URL`, `REDIS_URL` required). The providers are the in-process emulators; the two
//! instances are child processes of this binary (`serve`), so the kill is a real SIGKILL and
//! each instance's RSS/CPU is read from `/proc`. With `--minutes`, calls keep being placed (up to
//! N in flight) until the time is up. The report (JSON on stdout): calls placed, completed
//! (server ended the call with the goodbye), lost (cut by the kill or failed), post-call records
//! written (must equal placed: the survivor records calls lost with their instance and retries
//! their jobs), outbound audio jitter p50/p99 (deviation of media inter-arrival from 20 ms,
//! after each utterance's send-ahead burst), and RSS/CPU per call over time.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio::time::Instant;

use voxline::pipeline::sync::lock;
use voxline_emulators::twilio::{CallerOptions, Conversation, DEFAULT_CONVERSATION_TIMEOUT, Speech, TwilioCaller};

use crate::config::Config;
use crate::fleet::store::{Store, new_id};
use crate::server::admin::percentile;
use crate::sim::simulate::{CALLER_LINES, Emulated, SIM_ADMIN_TOKEN, SIM_AUTH_TOKEN, ring_signed, speech};

/// A child instance process: a real `phone-bot serve`, so a SIGKILL is a real crash and its
/// RSS and CPU are its own, not the load generator's.
#[derive(Debug)]
pub struct Instance {
    /// The process; killed when this value drops (`kill_on_drop`), so a failed run leaves no
    /// stray server behind.
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`: where to ring it.
    pub base: String,
    /// For `/proc` (RSS, CPU) and `kill`.
    pub pid: u32,
}

/// A free loopback port: the public URL (which webhooks are signed against) must carry the port
/// before the instance starts, so the port is picked here rather than by binding `:0` there.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Env vars holding the emulated secrets, named as `cfg` expects them: a child instance reads
/// its secrets from the environment like a production one, never from its config file.
pub fn secret_env(cfg: &Config) -> Vec<(String, String)> {
    vec![
        (cfg.stt.api_key_env.clone(), "dg-soak-secret-key".into()),
        (cfg.llm.api_key_env.clone(), "sk-soak-secret-key".into()),
        (cfg.tts.api_key_env.clone(), "el-soak-secret-key".into()),
        (cfg.telephony.account_sid_env.clone(), "AC00000000000000000000000000000000".into()),
        (cfg.telephony.auth_token_env.clone(), SIM_AUTH_TOKEN.into()),
        (cfg.admin.token_env.clone(), SIM_ADMIN_TOKEN.into()),
    ]
}

/// Start `exe serve` as an instance with `cfg` (written to a temporary config file), under
/// `taskset -c CORE` when `pin_core` is set; `on_line` sees every stdout line (logs).
pub async fn spawn_instance(
    exe: &std::path::Path,
    pin_core: Option<usize>,
    cfg: &Config,
    extra_env: &[(String, String)],
    on_line: Arc<dyn Fn(&str) + Send + Sync>,
) -> anyhow::Result<Instance> {
    // JSON is YAML, so the instance loads it as any config file (with its env overrides).
    let file = std::env::temp_dir().join(format!("voxline-instance-{}.json", new_id("cfg")));
    std::fs::write(&file, serde_json::to_vec_pretty(cfg)?).with_context(|| format!("write {}", file.display()))?;
    let _remove = RemoveOnDrop(file.clone());
    let mut cmd = match pin_core {
        Some(core) => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(exe);
            c
        }
        None => tokio::process::Command::new(exe),
    };
    cmd.arg("serve")
        .arg("--config")
        .arg(&file)
        .envs(secret_env(cfg))
        .envs(extra_env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("spawn {}", exe.display()))?;
    let pid = child.id().context("child pid")?;
    let stdout = child.stdout.take().context("child stdout")?;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            on_line(&l);
        }
    });
    let base = cfg.server.public_url.clone();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("instance at {base} did not become healthy");
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("instance exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Instance { child, base, pid })
}

/// Deletes the instance's config file once it is up (or failed to start).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A config for an instance of the fleet: emulated providers, shared stores, fast leases.
pub fn fleet_config(
    emulated: &Emulated,
    db_url: &str,
    redis_url: &str,
    prefix: &str,
    name: &str,
) -> anyhow::Result<Config> {
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut cfg = emulated.config(db_url, &base);
    cfg.server.listen = format!("127.0.0.1:{port}");
    cfg.server.instance_id = Some(name.to_string());
    cfg.server.max_calls = 1000;
    cfg.storage.redis_url = Some(redis_url.to_string());
    cfg.storage.redis_prefix = prefix.to_string();
    cfg.storage.seed_demo_data = true;
    cfg.jobs.lease_ms = 3000;
    cfg.jobs.poll_ms = 250;
    cfg.security.webhook_rate_per_minute = 0;
    cfg.security.admin_rate_per_minute = 0;
    cfg.validate()?;
    Ok(cfg)
}

/// What one simulated caller of the soak or the socket bench saw: whether the call went the
/// whole way, and the two figures the reports aggregate over every call.
#[derive(Debug, Default)]
pub struct CallOutcome {
    /// Every line was said, the bot answered, and then the bot ended the call (the goodbye).
    pub completed: bool,
    /// Why the call did not complete.
    pub error: Option<String>,
    /// Outbound jitter samples in ms: |media inter-arrival − 20 ms| after each utterance's
    /// send-ahead burst.
    pub jitter_ms: Vec<f64>,
    /// Per caller line: its last voiced frame sent → the first bot media after it, in ms.
    pub turn_ms: Vec<f64>,
}

/// One simulated call saying `lines` (μ-law) once the greeting is over; the server ends the call.
/// The ops tests use it to place single calls against a fleet instance.
pub async fn soak_call(base: &str, call_sid: &str, lines: &[Vec<u8>]) -> CallOutcome {
    let lines: Vec<Speech> = lines.iter().map(|l| Speech::from_mulaw(l)).collect();
    converse(&reqwest::Client::new(), base, call_sid, &lines, Duration::ZERO).await
}

/// The caller of the soak and the socket bench: the signed webhook, then the emulator's
/// [`Conversation`] (listen to the greeting, hold `hold`, say each line once the bot has answered
/// the previous one and been quiet for 400 ms) recording only what a load test reads, in the
/// calling task. Never fails: what went wrong is in [`CallOutcome::error`].
pub(crate) async fn converse(
    http: &reqwest::Client,
    base: &str,
    call_sid: &str,
    lines: &[Speech],
    hold: Duration,
) -> CallOutcome {
    let mut conversation = Conversation::new(lines.to_vec());
    conversation.hold = hold;
    conversation.timeout = hold + DEFAULT_CONVERSATION_TIMEOUT;
    let timeout = conversation.timeout;
    let heard = async {
        let answer = ring_signed(http, base, call_sid, "+15550001111").await?;
        let options = CallerOptions::for_call(call_sid).with_parameters(answer.parameters).for_load();
        anyhow::Ok(TwilioCaller::converse(&answer.stream_url, options, conversation).await?)
    };
    let heard = match heard.await {
        Ok(h) => h,
        Err(e) => return CallOutcome { error: Some(format!("{e:#}")), ..CallOutcome::default() },
    };
    let said = heard.said.iter().filter(|s| s.ended.is_some()).count();
    let error = if !heard.ended_by_bot {
        Some(format!("call not ended by the bot within {timeout:?} (said {said} lines)"))
    } else if said < lines.len() || heard.media_messages == 0 {
        Some(format!("bot ended the call after {said} of {} caller lines", lines.len()))
    } else {
        None
    };
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    CallOutcome {
        completed: error.is_none(),
        error,
        jitter_ms: heard.jitter.iter().map(ms).collect(),
        turn_ms: heard.said.iter().filter_map(|s| s.answer.as_ref().map(ms)).collect(),
    }
}

/// (RSS bytes, CPU seconds) of a process, from `/proc` (Linux).
pub(crate) fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, utime/stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((rss_kb * 1024, ticks / 100.0))
}

/// `phone-bot soak`: see the module docs. The instances are this executable's `serve`.
/// Prints the report as JSON on stdout.
pub async fn run(
    calls: usize,
    concurrency: usize,
    minutes: Option<f64>,
    kill_after_secs: Option<f64>,
) -> anyhow::Result<()> {
    let (db, redis) = match (std::env::var("DATABASE_URL"), std::env::var("REDIS_URL")) {
        (Ok(d), Ok(r)) => (d, r),
        _ => bail!("soak needs DATABASE_URL (postgres://…) and REDIS_URL"),
    };
    let exe = std::env::current_exe()?;
    let report = soak(calls, concurrency.max(1), minutes, kill_after_secs, &db, &redis, &exe).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Run a soak and return its report (see the module docs). Separate from [`run`] so the ops test
/// can run a short one against its own executable and assert on the figures.
pub async fn soak(
    calls: usize,
    concurrency: usize,
    minutes: Option<f64>,
    kill_after_secs: Option<f64>,
    db: &str,
    redis: &str,
    exe: &std::path::Path,
) -> anyhow::Result<Value> {
    let emulated = Emulated::start(Emulated::script(&[CALLER_LINES[1], CALLER_LINES[2]])).await?;
    let run = new_id("soak").to_lowercase().replace('-', "_");
    let sep = if db.contains('?') { '&' } else { '?' };
    let db_url = format!("{db}{sep}voxline_schema={run}");
    let quiet: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(|_| {});
    let env = vec![("RUST_LOG".to_string(), "warn".to_string())];
    let mut a_cfg = fleet_config(&emulated, &db_url, redis, &run, "A")?;
    // A soak instance leaves its jobs to the run-once path: the kill hits calls, not job loops.
    a_cfg.jobs.workers = 1;
    let b_cfg = fleet_config(&emulated, &db_url, redis, &run, "B")?;
    let mut a = spawn_instance(exe, None, &a_cfg, &env, quiet.clone()).await?;
    let b = spawn_instance(exe, None, &b_cfg, &env, quiet).await?;
    let lines = vec![speech(CALLER_LINES[1], 1)?, speech(CALLER_LINES[2], 2)?];
    let started = Instant::now();
    let until = minutes.map(|m| started + Duration::from_secs_f64(m * 60.0));
    let kill_at = started
        + Duration::from_secs_f64(kill_after_secs.unwrap_or(if let Some(m) = minutes { m * 30.0 } else { 8.0 }));
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let results: Arc<std::sync::Mutex<Vec<CallOutcome>>> = Arc::default();
    let mut joins = Vec::new();
    let mut samples = Vec::new();
    let mut killed = false;
    let bases = [a.base.clone(), b.base.clone()];
    let (a_pid, b_pid) = (a.pid, b.pid);
    let mut placed = 0usize;
    let mut last_sample = Instant::now() - Duration::from_secs(10);
    let http = reqwest::Client::new();
    loop {
        let now = Instant::now();
        let more = match until {
            Some(u) => now < u,
            None => placed < calls,
        };
        if !killed && now >= kill_at {
            let _ = a.child.start_kill();
            killed = true;
            eprintln!(
                "soak: SIGKILL instance A after {:.1} s, {placed} calls placed",
                now.duration_since(started).as_secs_f64()
            );
        }
        if now.duration_since(last_sample) >= Duration::from_secs(2) {
            last_sample = now;
            let mut s = json!({"t_s": (now.duration_since(started).as_secs_f64() * 10.0).round() / 10.0});
            for (name, pid, base) in [("A", a_pid, &bases[0]), ("B", b_pid, &bases[1])] {
                if name == "A" && killed {
                    continue;
                }
                let active = match http.get(format!("{base}/health")).send().await {
                    Ok(r) => r.json::<Value>().await.ok().and_then(|v| v["active_calls"].as_u64()).unwrap_or(0),
                    Err(_) => 0,
                };
                if let Some((rss, cpu)) = proc_usage(pid) {
                    s[name] = json!({"active_calls": active, "rss_mb": rss as f64 / 1048576.0, "cpu_s": cpu});
                }
            }
            samples.push(s);
        }
        if !more {
            break;
        }
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // After the kill, only B takes calls (the load balancer's health check would see A down).
        let base = if killed { bases[1].clone() } else { bases[placed % 2].clone() };
        let sid = format!("CA{:032x}", (u128::from(std::process::id()) << 64) | placed as u128);
        let (lines, results) = (lines.clone(), results.clone());
        joins.push(tokio::spawn(async move {
            let r = soak_call(&base, &sid, &lines).await;
            lock(&results).push(r);
            drop(permit);
        }));
        placed += 1;
        // Spread call arrivals a little (20 per second at most).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for j in joins {
        let _ = j.await;
    }
    // Post-call records: every placed call, including those lost with A (reaped by B).
    let store = Store::connect(&db_url, false).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = 0usize;
    while Instant::now() < deadline {
        records = store.list_calls(1_000_000).await?.iter().filter(|c| c.workflow.is_some()).count();
        if records >= placed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let res = std::mem::take(&mut *lock(&results));
    let completed = res.iter().filter(|r| r.completed).count();
    let mut jitter: Vec<f64> = res.iter().flat_map(|r| r.jitter_ms.iter().copied()).collect();
    jitter.sort_by(f64::total_cmp);
    let errors: Vec<&str> = res.iter().filter_map(|r| r.error.as_deref()).take(5).collect();
    let retried: i64 = {
        use sqlx::Row as _;
        sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE attempts > 1").fetch_one(store.pool()).await?.try_get("n")?
    };
    // Per call: RSS above the instance's idle RSS (first sample), divided by its live calls.
    let idle = |n: &str| samples.first().and_then(|s| s[n]["rss_mb"].as_f64()).unwrap_or(0.0);
    let per_call: Vec<Value> = samples
        .iter()
        .map(|s| {
            let mut o = json!({"t_s": s["t_s"]});
            for n in ["A", "B"] {
                let active = s[n]["active_calls"].as_f64().unwrap_or(0.0);
                if active > 0.0 {
                    let rss = s[n]["rss_mb"].as_f64().unwrap_or(0.0);
                    o[n] = json!({"active": active, "rss_mb": rss, "rss_mb_per_call": (rss - idle(n)) / active});
                }
            }
            o
        })
        .collect();
    let cpu_total: f64 =
        ["A", "B"].iter().map(|n| samples.iter().rev().find_map(|s| s[*n]["cpu_s"].as_f64()).unwrap_or(0.0)).sum();
    let report = json!({
        "calls_placed": placed,
        "calls_completed": completed,
        "calls_lost": placed - completed,
        "post_call_records": records,
        "records_equal_placed": records == placed,
        "jobs_retried_after_kill": retried,
        "jitter_ms": {"p50": percentile(&jitter, 0.5), "p99": percentile(&jitter, 0.99), "samples": jitter.len()},
        "cpu_seconds_per_call": if placed > 0 { cpu_total / placed as f64 } else { 0.0 },
        "samples": samples,
        "rss_per_call": per_call,
        "errors": errors,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    drop(b);
    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {run} CASCADE")).execute(store.pool()).await;
    Ok(report)
}
