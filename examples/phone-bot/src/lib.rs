//! The Voxline phone bot: a Twilio call-center agent (STT → LLM with skills → TTS) with storage,
//! a post-call workflow, an admin API and load tooling. The binary is `phone-bot` (see
//! `src/main.rs` and `phone-bot --help`); this library is what the binary and the tests share.
//!
//! Modules by what they are:
//! - [`call`]: one call — the pipeline build, the skills (tools), call control, the recorder;
//! - [`server`]: the HTTP/websocket server — routes, call admission, admin API, security,
//!   graceful shutdown;
//! - [`fleet`]: what outlives a call and is shared by instances — the store, the job queue, the
//!   shared live-call registry and rate limits, the post-call workflow;
//! - [`sim`]: keyless simulation and load tooling — the simulated call, the soak, the socket
//!   bench (all against the in-process provider emulators);
//! - [`config`]: `config.yaml`, validated, with `VOXLINE__…` env overrides;
//! - [`observability`]: logs, metrics and spans.

pub mod call;
pub mod config;
pub mod fleet;
pub mod observability;
pub mod server;
pub mod sim;

use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{Config, Secrets};
use crate::fleet::shared_state::Shared;
use crate::fleet::store::{Store, redact};
use crate::server::App;
use crate::server::security::Crypto;

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
