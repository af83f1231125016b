//! `phone-bot`: the Voxline call-center phone bot.
//!
//! - `phone-bot serve [--config config.yaml]` (the default): the production server. Secrets come
//!   from the env vars the config names (see `config.yaml` and the README's "Running in
//!   production"); SIGTERM/SIGINT drain the instance and exit 0.
//! - `phone-bot simulate`: the real server against in-process EMULATED providers and one
//!   simulated Twilio call, printed live (no keys); `--bench-turns T` measures turn latency.
//! - `phone-bot soak`: two instances on shared Redis + PostgreSQL, one SIGKILLed mid-run.
//! - `phone-bot bench-socket`: N simulated callers against one pinned instance.
//! - `phone-bot gen-pii-key`: a key for `storage.pii_key_env`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use voxline_phone_bot::config::{Config, Secrets};
use voxline_phone_bot::server::security::Crypto;
use voxline_phone_bot::server::shutdown;
use voxline_phone_bot::sim::{simulate, soak, socket_bench};
use voxline_phone_bot::{observability, run_instance};

/// The Voxline call-center phone bot (Twilio Media Streams).
#[derive(Debug, Parser)]
#[command(name = "phone-bot", version, about, propagate_version = true, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options of `serve`, the default command.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Twilio calls and the admin API (the default).
    Serve(ServeArgs),
    /// Keyless simulation: the real server against emulated providers and one simulated call.
    Simulate(SimulateArgs),
    /// Two instances on shared Redis + PostgreSQL (DATABASE_URL, REDIS_URL), one SIGKILLed.
    Soak(SoakArgs),
    /// Concurrency at the socket: N simulated callers against one pinned instance.
    BenchSocket(BenchSocketArgs),
    /// Print a new key for `storage.pii_key_env` (32 random bytes, base64).
    GenPiiKey,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The configuration file (YAML; JSON is YAML too). `VOXLINE__SECTION__KEY` env vars
    /// override its fields.
    #[arg(long, default_value = "config.yaml", value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// Measure end-to-end turn latency over this many turns per call instead of one call.
    #[arg(long, value_name = "T")]
    bench_turns: Option<usize>,
    /// Concurrent calls of the turn benchmark.
    #[arg(long, value_name = "C", default_value_t = 4, requires = "bench_turns")]
    bench_calls: usize,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// Calls to place.
    #[arg(long, default_value_t = 20)]
    calls: usize,
    /// Calls in flight at once (default: min(calls, 20)).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Keep placing calls for this many minutes.
    #[arg(long)]
    minutes: Option<f64>,
    /// SIGKILL instance A this many seconds in (default 8, or half of --minutes).
    #[arg(long)]
    kill_after_secs: Option<f64>,
}

#[derive(Debug, Args)]
struct BenchSocketArgs {
    /// Caller counts to run, one fresh instance each.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 500, 1000])]
    callers: Vec<usize>,
    /// Arrivals spread over this many seconds (default N/100, at least 1).
    #[arg(long, value_parser = seconds)]
    ramp_secs: Option<Duration>,
    /// Silence each caller holds after the greeting (default ramp + 2 s).
    #[arg(long, value_parser = seconds)]
    hold_secs: Option<Duration>,
}

fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(v).map_err(|e| format!("{e}"))
}

fn init_plain_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        // stdout carries the tools' output (the live call, JSON reports).
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Simulate(args)) => {
            init_plain_tracing();
            match args.bench_turns {
                Some(turns) => simulate::bench_turns(args.bench_calls, turns).await,
                None => simulate::run().await,
            }
        }
        Some(Command::Soak(a)) => {
            init_plain_tracing();
            let concurrency = a.concurrency.unwrap_or(a.calls.min(20));
            soak::run(a.calls, concurrency, a.minutes, a.kill_after_secs).await
        }
        Some(Command::BenchSocket(a)) => {
            init_plain_tracing();
            socket_bench::run(&a.callers, a.ramp_secs, a.hold_secs).await
        }
        Some(Command::GenPiiKey) => {
            println!("{}", Crypto::generate_key());
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config)?;
    let _tracing = observability::init(&cfg.observability, "info")?;
    let secrets = Secrets::resolve(&cfg, |k| std::env::var(k).ok());
    secrets.require_all(&cfg)?;
    run_instance(cfg, secrets, shutdown::signal()).await
}
