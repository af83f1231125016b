//! Voxline phone bot: a Twilio call-center agent (STT → LLM with skills → TTS) with storage,
//! a post-call workflow and an admin API.
//!
//! - Production: `cargo run --release --example phone_bot -- --config config.yaml`
//!   (secrets from the env vars the config names; see `config.yaml` and the README's "Running in
//!   production"). SIGTERM/SIGINT drain the instance and exit 0.
//! - Keyless simulation: `cargo run --release --example phone_bot -- --simulate` starts the real
//!   server against in-process EMULATED providers and places a simulated Twilio call.
//! - Load and soak: `cargo run --release --example phone_bot -- --soak --calls 20` runs two
//!   instances on shared Redis + Postgres, kills one mid-run and reports (see soak.rs).
//! - Concurrency at the socket: `cargo run --release --example phone_bot -- --bench-socket
//!   [--callers 100,500,1000]` runs N simulated callers against one pinned instance, nothing
//!   external needed (see socket_bench.rs).

// Modules of a binary: `pub` marks what other modules use, not a public API.
#![allow(unreachable_pub)]

mod admin;
mod bot;
mod caller;
mod config;
mod jobs;
mod observability;
#[cfg(test)]
mod ops_tests;
mod recorder;
mod security;
mod server;
mod shared_state;
mod shutdown;
mod simulate;
mod skills;
mod soak;
mod socket_bench;
mod store;
#[cfg(test)]
mod tests;
mod workflow;

use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{Config, Secrets};
use crate::security::Crypto;
use crate::server::App;
use crate::shared_state::Shared;
use crate::store::{Store, redact};

/// Env var carrying a whole config as JSON for `--instance` (the soak tool's child processes).
pub const INSTANCE_CONFIG_ENV: &str = "VOXLINE_INSTANCE_CONFIG";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--simulate") {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .init();
        return simulate::run().await;
    }
    if args.iter().any(|a| a == "--gen-pii-key") {
        // For `storage.pii_key_env`: 32 random bytes, base64.
        println!("{}", Crypto::generate_key());
        return Ok(());
    }
    if args.iter().any(|a| a == "--soak") {
        return soak::run(&args).await;
    }
    if args.iter().any(|a| a == "--bench-socket") {
        return socket_bench::run(&args).await;
    }
    let cfg = if args.iter().any(|a| a == "--instance") {
        let json =
            std::env::var(INSTANCE_CONFIG_ENV).with_context(|| format!("--instance needs {INSTANCE_CONFIG_ENV}"))?;
        let cfg: Config = serde_json::from_str(&json).context("instance config")?;
        cfg.validate()?;
        cfg
    } else {
        let path =
            args.windows(2).find(|w| w[0] == "--config").map_or_else(|| "config.yaml".to_string(), |w| w[1].clone());
        Config::load(std::path::Path::new(&path))?
    };
    let _tracing = observability::init(&cfg.observability, "info")?;
    let secrets = Secrets::resolve(&cfg, |k| std::env::var(k).ok());
    secrets.require_all(&cfg)?;
    run_instance(cfg, secrets, shutdown::signal()).await
}

/// Connect the stores, serve until `shutdown`, drain, return (the process then exits 0).
pub async fn run_instance(
    cfg: Config,
    secrets: Secrets,
    shutdown: impl std::future::Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let crypto = Crypto::from_env_var(&cfg.storage.pii_key_env)?;
    if crypto.is_none() {
        tracing::warn!(env = %cfg.storage.pii_key_env, "no PII key: numbers and transcripts are stored in clear");
    }
    tracing::info!(?secrets, listen = %cfg.server.listen, public_url = %cfg.server.public_url,
                   storage = %redact(&cfg.storage.url),
                   redis = %cfg.storage.redis_url.as_deref().map(redact).unwrap_or_else(|| "-".into()),
                   pii_encryption = crypto.is_some(), "starting");
    let store =
        Store::connect_with(&cfg.storage.url, cfg.storage.seed_demo_data, cfg.storage.pool_max_connections, crypto)
            .await?;
    let shared = Shared::connect(cfg.storage.redis_url.as_deref(), &cfg.storage.redis_prefix).await?;
    let listen = cfg.server.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("bind {listen}"))?;
    let app = Arc::new(App::new(cfg, secrets, store).with_shared(shared).with_turn_model()?);
    // Child processes (soak tool, tests) learn the port from this line.
    tracing::info!(addr = %listener.local_addr()?, instance = %app.instance, "listening");
    app.serve(listener, shutdown).await
}
