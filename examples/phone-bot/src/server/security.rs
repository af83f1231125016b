//! Security plumbing: PII encryption at rest, rate limiting, CORS.
//!
//! - PII (caller numbers, emails, transcripts, job payloads) is sealed with AES-256-GCM under a
//!   key from the environment (`storage.pii_key_env`, 32 bytes base64). A sealed value is text,
//!   `enc:v1:` + base64(nonce ‖ ciphertext ‖ tag), so it fits the existing TEXT columns on both
//!   SQLite and Postgres; a random 96-bit nonce per value is safe far beyond this volume. Values
//!   without the prefix are read as clear text, so turning encryption on needs no migration.
//! - Rate limits are axum middleware (a tower layer) over [`Shared::rate_hit`], so with Redis
//!   every instance counts against the same window.
//! - CORS is a `tower-http` layer on the admin API, closed unless origins are configured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use anyhow::{Context as _, bail};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::fleet::shared_state::Shared;

const SEALED: &str = "enc:v1:";

/// AES-256-GCM sealing of PII columns.
#[derive(Clone)]
pub struct Crypto {
    cipher: Arc<Aes256Gcm>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypto(<key>)")
    }
}

impl Crypto {
    /// From a base64 32-byte key. The error never echoes the key.
    pub fn from_base64(key_b64: &str) -> anyhow::Result<Self> {
        let raw = B64.decode(key_b64.trim()).map_err(|_| anyhow::anyhow!("PII key is not valid base64"))?;
        if raw.len() != 32 {
            bail!("PII key must be 32 bytes (base64 of 32 random bytes), got {} bytes", raw.len());
        }
        let key = Key::<Aes256Gcm>::from_slice(&raw);
        Ok(Self { cipher: Arc::new(Aes256Gcm::new(key)) })
    }

    /// The key named by `var`, if that env var is set.
    pub fn from_env_var(var: &str) -> anyhow::Result<Option<Self>> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Self::from_base64(&v).with_context(|| format!("env {var}")).map(Some),
            _ => Ok(None),
        }
    }

    /// A fresh random key, base64 (for `README` instructions and tests).
    pub fn generate_key() -> String {
        B64.encode(Aes256Gcm::generate_key(&mut OsRng))
    }

    /// Seal `plain` (fails only if the AEAD does, which it does not for in-memory input).
    pub fn seal(&self, plain: &str) -> anyhow::Result<String> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self.cipher.encrypt(&nonce, plain.as_bytes()).map_err(|_| anyhow::anyhow!("encryption failed"))?;
        let mut buf = nonce.to_vec();
        buf.extend_from_slice(&ct);
        Ok(format!("{SEALED}{}", B64.encode(buf)))
    }

    /// Open a sealed value; clear text passes through.
    pub fn open(&self, stored: &str) -> anyhow::Result<String> {
        let Some(b) = stored.strip_prefix(SEALED) else { return Ok(stored.to_string()) };
        let raw = B64.decode(b).map_err(|_| anyhow::anyhow!("sealed value is not base64"))?;
        if raw.len() < 12 {
            bail!("sealed value is too short");
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| anyhow::anyhow!("cannot decrypt (wrong key or tampered value)"))?;
        String::from_utf8(plain).context("decrypted value is not UTF-8")
    }
}

/// Seal with `c` when configured.
pub(crate) fn seal_opt(c: Option<&Crypto>, plain: &str) -> anyhow::Result<String> {
    match c {
        Some(c) => c.seal(plain),
        None => Ok(plain.to_string()),
    }
}

/// Open with `c`; a sealed value without a key is an error, never silently shown as ciphertext.
pub(crate) fn open_opt(c: Option<&Crypto>, stored: &str) -> anyhow::Result<String> {
    match c {
        Some(c) => c.open(stored),
        None if stored.starts_with(SEALED) => bail!("value is encrypted and no PII key is configured"),
        None => Ok(stored.to_string()),
    }
}

/// One rate-limited route class.
#[derive(Clone)]
pub(crate) struct RateLimit {
    /// Where the counters live (Redis: one budget for the whole fleet).
    pub(crate) shared: Shared,
    /// `webhook`, `admin`: separate budgets.
    pub(crate) class: &'static str,
    /// Requests per client per window (0: unlimited).
    pub(crate) limit: u64,
    pub(crate) window: Duration,
    /// Count against the first `X-Forwarded-For` hop instead of the peer address.
    pub(crate) trust_forwarded_for: bool,
}

/// The client address a request is counted against.
fn client_key(req: &Request, trust_forwarded_for: bool) -> String {
    if trust_forwarded_for
        && let Some(first) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    {
        return first.to_string();
    }
    req.extensions().get::<ConnectInfo<SocketAddr>>().map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string())
}

/// Middleware: 429 with `Retry-After` once a client exceeds its budget. If the shared store is
/// unreachable the request is let through: an outage of Redis must not take calls down.
pub(crate) async fn rate_limit(State(rl): State<RateLimit>, req: Request, next: Next) -> Response {
    if rl.limit == 0 {
        return next.run(req).await;
    }
    let key = format!("{}:{}", rl.class, client_key(&req, rl.trust_forwarded_for));
    match rl.shared.rate_hit(&key, rl.limit, rl.window).await {
        Ok(true) => next.run(req).await,
        Ok(false) => {
            crate::observability::metrics().rate_limited(rl.class);
            tracing::warn!(class = rl.class, "rate limit exceeded");
            let retry = rl.window.as_secs().max(1).to_string();
            (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, retry)], "rate limit exceeded").into_response()
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "rate limiter unavailable; request allowed");
            next.run(req).await
        }
    }
}

/// CORS for the admin API: `None` when no origin is configured (browsers get same-origin only).
pub(crate) fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_wrong_key() -> anyhow::Result<()> {
        let a = Crypto::from_base64(&Crypto::generate_key())?;
        let b = Crypto::from_base64(&Crypto::generate_key())?;
        let s = a.seal("+15550001111")?;
        assert!(s.starts_with(SEALED) && !s.contains("5550001111"));
        assert_ne!(s, a.seal("+15550001111")?, "nonces must differ");
        assert_eq!(a.open(&s)?, "+15550001111");
        assert!(b.open(&s).is_err());
        assert!(open_opt(None, &s).is_err());
        assert_eq!(a.open("clear")?, "clear");
        let e = Crypto::from_base64("c2hvcnQ=").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("32 bytes"));
        Ok(())
    }

    #[test]
    fn cors_closed_by_default() {
        assert!(cors(&[]).is_none());
        assert!(cors(&["https://admin.example.com".into()]).is_some());
    }
}
