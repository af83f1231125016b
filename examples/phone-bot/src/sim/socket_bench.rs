//! Concurrency at the socket: N simulated Twilio callers over loopback websockets against one
//! phone-bot instance with emulated providers.
//!
//! `phone-bot bench-socket [--callers 100,500,1000] [--ramp-secs S] [--hold-secs H]`
//!
//! Needs nothing external: the bot stores into a temporary SQLite file and keeps its shared state
//! in process. For each N a FRESH instance runs as a child process (`phone-bot serve`), pinned to core 0
//! with `taskset -c 0`; this process (the callers and the Deepgram/OpenAI/ElevenLabs/Twilio REST
//! emulators) pins itself to core 1 with `taskset -a -p`, so the load generator never takes the
//! bot's core, and its own CPU figure shows whether it, rather than the bot, was the limit. Without
//! `taskset` (or with one core) both run unpinned and the JSON says so.
//!
//! Calls arrive evenly over the ramp (default N/100 s, at least 1 s). Each caller listens to the
//! greeting, then holds in silence for `--hold-secs` (default ramp + 2 s) so that every call is
//! live at once before anyone speaks, then says the order-number line and the goodbye line (the
//! soak's script) and waits for the bot to end the call. One JSON line on stdout:
//! `{"bench":"socket","machine":…,"bot_pinned_core":0,"results":[…]}`, one result per N with
//! completed/failed calls, outbound jitter p50/p99 (the soak's definition: deviation of media
//! inter-arrival from 20 ms, after each utterance's send-ahead burst), per-turn latency (caller's
//! last voiced frame sent → first bot media after it), peak live calls (`/health` each second),
//! bot and driver CPU % while at least 90 % of the peak calls were live (`*_whole_run`: from the
//! first call placed to the last one ended), CPU-seconds per call (including the post-call record
//! and workflow, measured until the bot is idle again), idle/peak RSS and RSS per live call, the
//! busy % of each core (other work on the bot's core shows there), the bot's own per-stage turn
//! times from its call records, and a CPU timeline every 5 s. Progress goes to stderr.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use voxline::pipeline::sync::lock;
use voxline_emulators::twilio::Speech;

use crate::fleet::store::new_id;
use crate::server::admin::percentile;
use crate::sim::simulate::{CALLER_LINES, Emulated, speech};
use crate::sim::soak::{CallOutcome, converse, free_port, proc_usage, spawn_instance};

/// The core the bot instance is pinned to; the driver takes [`DRIVER_CORE`].
const BOT_CORE: usize = 0;
const DRIVER_CORE: usize = 1;

/// How one N is run: the workload shape and how to start the instance.
#[derive(Debug, Clone)]
pub struct BenchParams {
    /// Concurrent callers.
    pub callers: usize,
    /// Arrivals are spread evenly over this window.
    pub ramp: Duration,
    /// Silence each caller holds after the greeting before speaking.
    pub hold: Duration,
    /// The `phone-bot` executable; the instance is its `serve`.
    pub exe: PathBuf,
    /// Run the instance under `taskset -c CORE`.
    pub pin_core: Option<usize>,
}

impl BenchParams {
    /// The defaults of `bench-socket` for `callers`: ramp N/100 s (at least 1 s), hold ramp + 2 s.
    pub fn new(callers: usize, exe: PathBuf) -> Self {
        let ramp = Duration::from_secs_f64((callers as f64 / 100.0).max(1.0));
        Self { callers, ramp, hold: ramp + Duration::from_secs(2), exe, pin_core: None }
    }
}

/// One `/health` + `/proc` sample.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    active: Option<u64>,
    bot_rss: u64,
    bot_cpu: f64,
    driver_cpu: f64,
}

/// (busy, total) jiffies of each core, from `/proc/stat`.
fn core_jiffies() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let total: u64 = f.iter().take(8).sum();
            // idle + iowait
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            (total - idle.min(total), total)
        })
        .collect()
}

/// Busy % of each core between two [`core_jiffies`] readings. Beside the bot's own CPU it shows
/// whether other work (a build) shared the bot's core.
fn cores_busy_pct(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|((b0, t0), (b1, t1))| {
            let dt = t1.saturating_sub(*t0).max(1);
            (b1.saturating_sub(*b0) as f64 / dt as f64 * 100.0).round()
        })
        .collect()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

const MB: f64 = 1024.0 * 1024.0;

/// Run one N against a fresh instance and return its result object.
pub async fn bench_one(p: &BenchParams) -> anyhow::Result<Value> {
    let n = p.callers.max(1);
    let emulated = Emulated::start(Emulated::script(&[CALLER_LINES[1], CALLER_LINES[2]])).await?;
    // Encoded once: every caller shares the chunks.
    let script: Arc<[Speech]> = [1, 2]
        .iter()
        .map(|&i| speech(CALLER_LINES[i], i).map(|b| Speech::from_mulaw(&b)))
        .collect::<anyhow::Result<_>>()?;
    let db = std::env::temp_dir().join(format!("voxline-sockbench-{}.db", new_id("b")));
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut cfg = emulated.config(&format!("sqlite://{}", db.display()), &base);
    cfg.server.listen = format!("127.0.0.1:{port}");
    cfg.server.instance_id = Some("socket-bench".into());
    // Headroom over N: a refused call would measure the limit, not the bot.
    cfg.server.max_calls = n * 2 + 10;
    cfg.security.webhook_rate_per_minute = 0;
    cfg.security.admin_rate_per_minute = 0;
    cfg.storage.redis_url = None;
    cfg.validate()?;

    // The instance logs at warn: count what it says, keep the first lines for the report.
    let log: Arc<Mutex<(usize, Vec<String>)>> = Arc::default();
    let sink = {
        let log = log.clone();
        Arc::new(move |l: &str| {
            let mut g = lock(&log);
            g.0 += 1;
            if g.1.len() < 3 {
                g.1.push(l.chars().take(300).collect());
            }
        }) as Arc<dyn Fn(&str) + Send + Sync>
    };
    let env = vec![("RUST_LOG".to_string(), "warn".to_string())];
    let instance = spawn_instance(&p.exe, p.pin_core, &cfg, &env, sink).await?;
    let result = drive(p, n, &instance.base, instance.pid, &cfg.storage.url, script).await;
    drop(instance);
    drop(emulated);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let mut result = result?;
    let (lines, first) = std::mem::take(&mut *lock(&log));
    result["bot_log_lines"] = json!(lines);
    if !first.is_empty() {
        result["bot_log_first"] = json!(first);
    }
    Ok(result)
}

async fn drive(
    p: &BenchParams,
    n: usize,
    base: &str,
    bot_pid: u32,
    db_url: &str,
    script: Arc<[Speech]>,
) -> anyhow::Result<Value> {
    let me = std::process::id();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    // Idle: the instance is up and has not seen a call.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_idle, _) = proc_usage(bot_pid).context("bot /proc")?;

    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let (stop, samples, http, health) = (stop.clone(), samples.clone(), http.clone(), format!("{base}/health"));
        let start = Instant::now();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            while !stop.load(Ordering::Relaxed) {
                every.tick().await;
                let r = tokio::time::timeout(Duration::from_secs(2), http.get(&health).send()).await;
                let active = match r {
                    Ok(Ok(r)) => r.json::<Value>().await.ok().and_then(|v| v["active_calls"].as_u64()),
                    _ => None,
                };
                let Some((bot_rss, bot_cpu)) = proc_usage(bot_pid) else { break };
                let driver_cpu = proc_usage(me).map_or(0.0, |(_, c)| c);
                lock(&samples).push(Sample { t: start.elapsed().as_secs_f64(), active, bot_rss, bot_cpu, driver_cpu });
            }
        })
    };

    let t0 = Instant::now();
    let (_, bot_cpu0) = proc_usage(bot_pid).context("bot /proc")?;
    let (_, drv_cpu0) = proc_usage(me).context("own /proc")?;
    let cores0 = core_jiffies();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let done = Arc::new(AtomicUsize::new(0));
    let mut joins = Vec::with_capacity(n);
    let run = u128::from(me) << 64 | u128::from(u64::from(rand_u32()));
    for i in 0..n {
        tokio::time::sleep_until(t0 + p.ramp.mul_f64(i as f64 / n as f64)).await;
        let (http, base, script, done) = (http.clone(), base.to_string(), script.clone(), done.clone());
        let sid = format!("CA{:032x}", run.wrapping_add(i as u128));
        let hold = p.hold;
        joins.push(tokio::spawn(async move {
            let r = converse(&http, &base, &sid, &script, hold).await;
            done.fetch_add(1, Ordering::Relaxed);
            r
        }));
    }
    eprintln!("socket bench N={n}: {n} calls placed in {:.1} s", t0.elapsed().as_secs_f64());
    let mut outcomes = Vec::with_capacity(n);
    let mut last_report = Instant::now();
    for j in joins {
        let mut j = j;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), &mut j).await {
                Ok(r) => {
                    outcomes.push(r.unwrap_or_else(|e| CallOutcome {
                        error: Some(format!("caller task: {e}")),
                        ..Default::default()
                    }));
                    break;
                }
                Err(_) => {
                    if last_report.elapsed() >= Duration::from_secs(5) {
                        last_report = Instant::now();
                        let live = lock(&samples).last().and_then(|s| s.active);
                        eprintln!(
                            "socket bench N={n}: t={:.0} s, {} calls ended, bot live calls {live:?}",
                            t0.elapsed().as_secs_f64(),
                            done.load(Ordering::Relaxed)
                        );
                    }
                }
            }
        }
    }
    let live_elapsed = t0.elapsed().as_secs_f64();
    let (_, bot_cpu_live) = proc_usage(bot_pid).context("bot /proc")?;
    let (_, drv_cpu_live) = proc_usage(me).context("own /proc")?;
    let cores_busy = cores_busy_pct(&cores0, &core_jiffies());
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;

    // The call record and post-call workflow run after the stream closes: they are part of a
    // call's cost, so CPU per call is read once the bot has gone quiet again (or after 60 s).
    let mut bot_cpu_end = bot_cpu_live;
    let settle_from = Instant::now();
    while settle_from.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some((_, c)) = proc_usage(bot_pid) else { break };
        let idle = c - bot_cpu_end < 0.03;
        bot_cpu_end = c;
        if idle {
            break;
        }
    }

    let samples = std::mem::take(&mut *lock(&samples));
    let completed = outcomes.iter().filter(|o| o.completed).count();
    let errors: Vec<&str> = outcomes.iter().filter_map(|o| o.error.as_deref()).take(5).collect();
    let mut jitter: Vec<f64> = outcomes.iter().flat_map(|o| o.jitter_ms.iter().copied()).collect();
    let mut turns: Vec<f64> = outcomes.iter().flat_map(|o| o.turn_ms.iter().copied()).collect();
    jitter.sort_by(f64::total_cmp);
    turns.sort_by(f64::total_cmp);
    let peak_live = samples.iter().filter_map(|s| s.active).max().unwrap_or(0);
    let rss_peak = samples.iter().map(|s| s.bot_rss).max().unwrap_or(rss_idle).max(rss_idle);
    let rss_idle_mb = rss_idle as f64 / MB;
    let rss_peak_mb = rss_peak as f64 / MB;
    let opt = |x: Option<f64>| x.map(round2);
    // CPU at full concurrency: the seconds when at least 90 % of the peak calls were live, so
    // neither the ramp nor calls left hanging after the others ended dilute the figure.
    let (mut dt, mut d_bot, mut d_drv) = (0.0, 0.0, 0.0);
    for w in samples.windows(2) {
        let full = |s: &Sample| s.active.is_some_and(|a| a * 10 >= peak_live * 9);
        if peak_live > 0 && full(&w[0]) && full(&w[1]) {
            dt += w[1].t - w[0].t;
            d_bot += w[1].bot_cpu - w[0].bot_cpu;
            d_drv += w[1].driver_cpu - w[0].driver_cpu;
        }
    }
    let peak_pct = |d: f64| (dt > 0.0).then(|| round2(d / dt * 100.0));
    // Where the bot's turn time went (its call records): says which stage a slow turn waited on.
    let server = server_breakdown(db_url).await.unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
    // CPU of both processes every 5 s: shows which side ran out of core, and when.
    let timeline: Vec<Value> = samples
        .windows(2)
        .step_by(5)
        .map(|w| {
            let dt = (w[1].t - w[0].t).max(1e-3);
            json!({
                "t_s": w[1].t.round(),
                "live": w[1].active,
                "bot_cpu_pct": ((w[1].bot_cpu - w[0].bot_cpu) / dt * 100.0).round(),
                "driver_cpu_pct": ((w[1].driver_cpu - w[0].driver_cpu) / dt * 100.0).round(),
                "bot_rss_mb": (w[1].bot_rss as f64 / MB).round(),
            })
        })
        .collect();
    Ok(json!({
        "callers": n,
        "completed": completed,
        "failed": n - completed,
        "errors": errors,
        "ramp_s": p.ramp.as_secs_f64(),
        "hold_s": p.hold.as_secs_f64(),
        "outbound_jitter_p50_ms": opt(percentile(&jitter, 0.5)),
        "outbound_jitter_p99_ms": opt(percentile(&jitter, 0.99)),
        "outbound_jitter_max_ms": opt(percentile(&jitter, 1.0)),
        "jitter_samples": jitter.len(),
        "turn_latency_p50_ms": opt(percentile(&turns, 0.5)),
        "turn_latency_p99_ms": opt(percentile(&turns, 0.99)),
        "turns": turns.len(),
        "peak_live_calls": peak_live,
        "cpu_pct": peak_pct(d_bot),
        "cpu_pct_whole_run": round2((bot_cpu_live - bot_cpu0) / live_elapsed * 100.0),
        "peak_window_s": round2(dt),
        "cpu_s_per_call": (bot_cpu_end - bot_cpu0) / n as f64,
        "rss_idle_mb": round2(rss_idle_mb),
        "rss_peak_mb": round2(rss_peak_mb),
        "rss_per_call_mb": if peak_live > 0 { Some((rss_peak_mb - rss_idle_mb) / peak_live as f64) } else { None },
        "driver_cpu_pct": peak_pct(d_drv),
        "driver_cpu_pct_whole_run": round2((drv_cpu_live - drv_cpu0) / live_elapsed * 100.0),
        "cores_busy_pct": cores_busy,
        "loadavg_before": loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "elapsed_s": round2(live_elapsed),
        "server": server,
        "timeline": timeline,
    }))
}

/// From the bot's call records: calls recorded, end reasons, and p50/p99 of each turn stage
/// (`total_ms`: the VAD's end of speech → first bot audio; STT, LLM and TTS first byte).
async fn server_breakdown(db_url: &str) -> anyhow::Result<Value> {
    let store = crate::fleet::store::Store::connect(db_url, false).await?;
    let calls = store.list_calls(1_000_000).await?;
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for c in &calls {
        *reasons.entry(c.end_reason.clone()).or_default() += 1;
    }
    let mut stages = serde_json::Map::new();
    for k in ["total_ms", "stt_ms", "llm_ttfb_ms", "tts_ttfb_ms"] {
        let mut v: Vec<f64> = calls
            .iter()
            .flat_map(|c| c.record["turns"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t[k].as_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&v, 0.5).map(round2), percentile(&v, 0.99).map(round2));
        stages.insert(k.to_string(), json!({"p50": p50, "p99": p99}));
    }
    store.pool().close().await;
    Ok(json!({"records": calls.len(), "end_reasons": reasons, "turn_ms": stages}))
}

/// Distinct call SIDs across runs without a random-number dependency.
fn rand_u32() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
}

/// Pin every thread of this process to `core` (threads created later inherit it).
fn pin_self(core: usize) -> bool {
    std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn taskset_available() -> bool {
    std::process::Command::new("taskset")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// (logical CPUs, model name) from `/proc/cpuinfo`: counted there rather than with
/// `available_parallelism`, which shrinks to 1 once this process is pinned.
fn machine() -> Value {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let nproc = info.lines().filter(|l| l.starts_with("processor")).count();
    let model = info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(str::trim);
    json!({"nproc": nproc, "model": model})
}

/// `phone-bot bench-socket`: see the module docs. `ramp`/`hold` override the defaults.
pub async fn run(callers: &[usize], ramp: Option<Duration>, hold: Option<Duration>) -> anyhow::Result<()> {
    let machine = machine();
    let pinned = machine["nproc"].as_u64().unwrap_or(0) >= 2 && taskset_available();
    let driver_pinned = pinned && pin_self(DRIVER_CORE);
    if !pinned {
        eprintln!("socket bench: taskset unavailable or one core: bot and driver run unpinned");
    }
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    for &n in callers {
        let mut p = BenchParams::new(n, exe.clone());
        if let Some(r) = ramp {
            p.ramp = r;
        }
        p.hold = hold.unwrap_or(p.ramp + Duration::from_secs(2));
        p.pin_core = pinned.then_some(BOT_CORE);
        eprintln!("socket bench N={n}: ramp {:?}, hold {:?}", p.ramp, p.hold);
        let r = match bench_one(&p).await {
            Ok(r) => r,
            Err(e) => json!({"callers": n, "error": format!("{e:#}")}),
        };
        eprintln!("socket bench N={n}: {r}");
        results.push(r);
    }
    let report = json!({
        "bench": "socket",
        "machine": machine,
        "bot_pinned_core": pinned.then_some(BOT_CORE),
        "driver_pinned_core": driver_pinned.then_some(DRIVER_CORE),
        "results": results,
    });
    println!("{report}");
    Ok(())
}
