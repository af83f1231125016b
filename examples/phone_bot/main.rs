//! Voxline phone bot: a Twilio call-center agent (STT → LLM with skills → TTS) with storage,
//! a post-call workflow and an admin API.
//!
//! - Production: `cargo run --release --example phone_bot -- --config config.yaml`
//!   (secrets from the env vars the config names; see `config.yaml`).
//! - Keyless simulation: `cargo run --release --example phone_bot -- --simulate` starts the real
//!   server against in-process EMULATED providers and places a simulated Twilio call.

// Modules of a binary: `pub` marks what other modules use, not a public API.
#![allow(unreachable_pub)]

mod admin;
mod bot;
mod config;
mod recorder;
mod server;
mod simulate;
mod skills;
mod store;
#[cfg(test)]
mod tests;
mod workflow;

use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{Config, Secrets};
use crate::server::App;
use crate::store::Store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let simulate = args.iter().any(|a| a == "--simulate");
    let default_filter = if simulate { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    if simulate {
        return simulate::run().await;
    }
    let path = args.windows(2).find(|w| w[0] == "--config").map_or_else(|| "config.yaml".to_string(), |w| w[1].clone());
    let cfg = Config::load(std::path::Path::new(&path))?;
    let secrets = Secrets::resolve(&cfg, |k| std::env::var(k).ok());
    secrets.require_all(&cfg)?;
    tracing::info!(?secrets, listen = %cfg.server.listen, public_url = %cfg.server.public_url, "starting");
    let store = Store::connect(&cfg.storage.url, cfg.storage.seed_demo_data).await?;
    let listen = cfg.server.listen.clone();
    let app = Arc::new(App::new(cfg, secrets, store));
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("bind {listen}"))?;
    axum::serve(listener, app.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
