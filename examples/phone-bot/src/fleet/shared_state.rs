//! State shared by every instance of the bot: the live-call registry, rate-limit counters and
//! the lookup cache.
//!
//! One interface, two backends. With `storage.redis_url` set the state lives in Redis (one
//! multiplexed, auto-reconnecting connection per instance: Redis pipelines requests on it, so
//! a pool of sockets buys nothing); without it the same methods run on in-process maps, which is
//! exactly right for a single instance and needs no setup.
//!
//! The registry is a hash `call_sid → {instance, started}` plus a heartbeat key per instance
//! with a TTL. Listing filters out (and removes) calls whose instance stopped heart-beating, so a
//! SIGKILLed instance's calls disappear from `GET /admin/calls?live=true` within one TTL instead
//! of lingering forever. Rate limits are fixed windows (`INCR` + `PEXPIRE` in one atomic
//! pipeline): cheap, and the burst at a window edge is bounded by 2× the limit. Redis errors
//! never fail a call: the registry and cache degrade to "unknown"/"miss" and say so in the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::fleet::store::now_ms;
use voxline::pipeline::sync::lock;

/// A call in progress somewhere in the fleet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LiveCall {
    /// Twilio's id of the call (the registry's key).
    pub call_sid: String,
    /// The instance holding the call's media stream.
    pub instance: String,
    /// When the media stream was accepted, epoch milliseconds (listings are oldest first).
    pub started_ms: i64,
    /// The caller's number, sealed with the PII key when one is configured: if the instance
    /// dies, the survivor that reaps the call writes its record from this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_sealed: String,
}

/// How long an instance's heartbeat lives; instances refresh it at a third of this.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(6);

#[derive(Default)]
struct Local {
    calls: Mutex<HashMap<String, LiveCall>>,
    /// key → (window index, count)
    windows: Mutex<HashMap<String, (i64, u64)>>,
    cache: Mutex<HashMap<String, (Instant, String)>>,
}

struct Remote {
    conn: ConnectionManager,
    prefix: String,
}

/// Shared state: Redis when configured, in-process otherwise.
#[derive(Clone, Debug)]
pub enum Shared {
    /// One instance, no setup.
    Local(Arc<LocalState>),
    /// Every instance pointed at the same Redis shares it.
    Redis(Arc<RedisState>),
}

/// In-process backend.
pub struct LocalState(Local);

impl std::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalState").finish_non_exhaustive()
    }
}
/// Redis backend.
pub struct RedisState(Remote);

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState").finish_non_exhaustive()
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::Local(Arc::new(LocalState(Local::default())))
    }
}

impl Shared {
    /// Redis at `url` (keys under `prefix:`), or in-process when `url` is `None`.
    pub async fn connect(url: Option<&str>, prefix: &str) -> anyhow::Result<Self> {
        let Some(url) = url else { return Ok(Self::default()) };
        let client =
            redis::Client::open(url).with_context(|| format!("redis: bad url {}", crate::fleet::store::redact(url)))?;
        let conn = tokio::time::timeout(Duration::from_secs(10), client.get_connection_manager())
            .await
            .map_err(|_| anyhow::anyhow!("redis: connect timed out"))?
            .with_context(|| format!("redis: cannot connect to {}", crate::fleet::store::redact(url)))?;
        let me = Self::Redis(Arc::new(RedisState(Remote { conn, prefix: prefix.to_string() })));
        me.ping().await?;
        Ok(me)
    }

    /// Which backend, for logs and `/health`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Local(_) => "in-process",
            Self::Redis(_) => "redis",
        }
    }

    /// Round-trip to the backend.
    pub async fn ping(&self) -> anyhow::Result<()> {
        if let Self::Redis(r) = self {
            let mut c = r.0.conn.clone();
            let _: String = redis::cmd("PING").query_async(&mut c).await.context("redis: ping")?;
        }
        Ok(())
    }

    fn key(r: &Remote, parts: &[&str]) -> String {
        let mut k = r.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// Announce that `instance` is alive (called periodically).
    pub async fn heartbeat(&self, instance: &str) -> anyhow::Result<()> {
        if let Self::Redis(r) = self {
            let mut c = r.0.conn.clone();
            let ttl = u64::try_from(HEARTBEAT_TTL.as_millis()).unwrap_or(u64::MAX);
            let () = redis::cmd("SET")
                .arg(Self::key(&r.0, &["instance", instance]))
                .arg(now_ms())
                .arg("PX")
                .arg(ttl)
                .query_async(&mut c)
                .await?;
        }
        Ok(())
    }

    /// Put a call in the registry.
    pub async fn register_call(&self, call: &LiveCall) -> anyhow::Result<()> {
        match self {
            Self::Local(l) => {
                lock(&l.0.calls).insert(call.call_sid.clone(), call.clone());
                Ok(())
            }
            Self::Redis(r) => {
                let mut c = r.0.conn.clone();
                let () = redis::cmd("HSET")
                    .arg(Self::key(&r.0, &["live"]))
                    .arg(&call.call_sid)
                    .arg(serde_json::to_string(call)?)
                    .query_async(&mut c)
                    .await?;
                Ok(())
            }
        }
    }

    /// Take a call out of the registry.
    pub async fn unregister_call(&self, call_sid: &str) -> anyhow::Result<()> {
        match self {
            Self::Local(l) => {
                lock(&l.0.calls).remove(call_sid);
                Ok(())
            }
            Self::Redis(r) => {
                let mut c = r.0.conn.clone();
                let _: i64 =
                    redis::cmd("HDEL").arg(Self::key(&r.0, &["live"])).arg(call_sid).query_async(&mut c).await?;
                Ok(())
            }
        }
    }

    /// Every live call of every instance that is still alive, oldest first.
    pub async fn live_calls(&self) -> anyhow::Result<Vec<LiveCall>> {
        Ok(self.scan().await?.0)
    }

    /// Calls whose instance died: each is returned to exactly one caller (the `HDEL` that
    /// removed it), who owes it a record.
    pub async fn reap_dead(&self) -> anyhow::Result<Vec<LiveCall>> {
        Ok(self.scan().await?.1)
    }

    async fn scan(&self) -> anyhow::Result<(Vec<LiveCall>, Vec<LiveCall>)> {
        let mut reaped = Vec::new();
        let mut calls: Vec<LiveCall> = match self {
            Self::Local(l) => lock(&l.0.calls).values().cloned().collect(),
            Self::Redis(r) => {
                let mut c = r.0.conn.clone();
                let live_key = Self::key(&r.0, &["live"]);
                let all: HashMap<String, String> = redis::cmd("HGETALL").arg(&live_key).query_async(&mut c).await?;
                let calls: Vec<LiveCall> = all.values().filter_map(|v| serde_json::from_str(v).ok()).collect();
                let mut instances: Vec<&str> = calls.iter().map(|c| c.instance.as_str()).collect();
                instances.sort_unstable();
                instances.dedup();
                let mut alive = std::collections::HashSet::new();
                for i in instances {
                    let n: i64 =
                        redis::cmd("EXISTS").arg(Self::key(&r.0, &["instance", i])).query_async(&mut c).await?;
                    if n > 0 {
                        alive.insert(i.to_string());
                    }
                }
                let (keep, dead): (Vec<LiveCall>, Vec<LiveCall>) =
                    calls.into_iter().partition(|c| alive.contains(&c.instance));
                for d in dead {
                    // The instance died holding this call: the call is gone with it.
                    let n: i64 = redis::cmd("HDEL").arg(&live_key).arg(&d.call_sid).query_async(&mut c).await?;
                    if n == 1 {
                        reaped.push(d);
                    }
                }
                keep
            }
        };
        calls.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then_with(|| a.call_sid.cmp(&b.call_sid)));
        Ok((calls, reaped))
    }

    /// Count one request against `key`; `true` while at most `limit` were counted in the
    /// current `window`. Shared by every instance on Redis.
    pub async fn rate_hit(&self, key: &str, limit: u64, window: Duration) -> anyhow::Result<bool> {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
        let idx = now_ms() / window_ms;
        let count = match self {
            Self::Local(l) => {
                let mut w = lock(&l.0.windows);
                // Keep the map from growing with every client ever seen.
                if w.len() > 10_000 {
                    w.retain(|_, (i, _)| *i == idx);
                }
                let e = w.entry(key.to_string()).or_insert((idx, 0));
                if e.0 != idx {
                    *e = (idx, 0);
                }
                e.1 += 1;
                e.1
            }
            Self::Redis(r) => {
                let mut c = r.0.conn.clone();
                let k = Self::key(&r.0, &["rl", key, &idx.to_string()]);
                let (count, _): (u64, i64) = redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg(&k)
                    .cmd("PEXPIRE")
                    .arg(&k)
                    .arg(window_ms.saturating_mul(2))
                    .query_async(&mut c)
                    .await?;
                count
            }
        };
        Ok(count <= limit)
    }

    /// A cached value.
    pub async fn cache_get(&self, key: &str) -> Option<String> {
        match self {
            Self::Local(l) => {
                let mut m = lock(&l.0.cache);
                match m.get(key) {
                    Some((exp, v)) if *exp > Instant::now() => Some(v.clone()),
                    Some(_) => {
                        m.remove(key);
                        None
                    }
                    None => None,
                }
            }
            Self::Redis(r) => {
                let mut c = r.0.conn.clone();
                let got: Result<Option<String>, _> =
                    redis::cmd("GET").arg(Self::key(&r.0, &["cache", key])).query_async(&mut c).await;
                got.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cache read failed (treated as a miss)");
                    None
                })
            }
        }
    }

    /// Cache `value` under `key` for `ttl`.
    pub async fn cache_put(&self, key: &str, value: &str, ttl: Duration) {
        match self {
            Self::Local(l) => {
                let mut m = lock(&l.0.cache);
                if m.len() > 10_000 {
                    let now = Instant::now();
                    m.retain(|_, (exp, _)| *exp > now);
                }
                m.insert(key.to_string(), (Instant::now() + ttl, value.to_string()));
            }
            Self::Redis(r) => {
                let mut c = r.0.conn.clone();
                let res: Result<(), _> = redis::cmd("SET")
                    .arg(Self::key(&r.0, &["cache", key]))
                    .arg(value)
                    .arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
                    .query_async(&mut c)
                    .await;
                if let Err(e) = res {
                    tracing::warn!(error = %e, "cache write failed");
                }
            }
        }
    }

    /// Drop a cached value (the record behind it changed).
    pub async fn cache_invalidate(&self, key: &str) {
        match self {
            Self::Local(l) => {
                lock(&l.0.cache).remove(key);
            }
            Self::Redis(r) => {
                let mut c = r.0.conn.clone();
                let res: Result<i64, _> =
                    redis::cmd("DEL").arg(Self::key(&r.0, &["cache", key])).query_async(&mut c).await;
                if let Err(e) = res {
                    // A stale entry would outlive the write for one TTL; say so.
                    tracing::warn!(error = %e, "cache invalidation failed");
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Redis from `REDIS_URL` with a fresh key prefix, or `None` (printing why) when unset.
    pub(crate) async fn redis_or_skip(test: &str) -> Option<(Shared, String)> {
        let Ok(url) = std::env::var("REDIS_URL") else {
            eprintln!("{test}: skipped (REDIS_URL is not set)");
            return None;
        };
        let prefix = format!("voxline-test-{}", crate::fleet::store::new_id("r"));
        match Shared::connect(Some(&url), &prefix).await {
            Ok(s) => Some((s, prefix)),
            Err(e) => panic!("{test}: REDIS_URL is set but Redis is unusable: {e:#}"),
        }
    }

    async fn exercise(a: &Shared, b: &Shared) -> anyhow::Result<()> {
        a.heartbeat("A").await?;
        let call = LiveCall { call_sid: "CA1".into(), instance: "A".into(), started_ms: 1, from_sealed: String::new() };
        a.register_call(&call).await?;
        assert_eq!(b.live_calls().await?, vec![call]);
        a.unregister_call("CA1").await?;
        assert!(b.live_calls().await?.is_empty());
        for _ in 0..3 {
            assert!(a.rate_hit("k", 4, Duration::from_secs(60)).await?);
        }
        assert!(b.rate_hit("k", 4, Duration::from_secs(60)).await?);
        assert!(!b.rate_hit("k", 4, Duration::from_secs(60)).await?);
        assert!(!a.rate_hit("k", 4, Duration::from_secs(60)).await?);
        a.cache_put("x", "1", Duration::from_secs(60)).await;
        assert_eq!(b.cache_get("x").await.as_deref(), Some("1"));
        b.cache_invalidate("x").await;
        assert_eq!(a.cache_get("x").await, None);
        a.cache_put("y", "1", Duration::from_millis(1)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(a.cache_get("y").await, None);
        Ok(())
    }

    #[tokio::test]
    async fn in_process_backend() -> anyhow::Result<()> {
        let s = Shared::default();
        exercise(&s, &s).await
    }

    #[tokio::test]
    async fn redis_backend_is_shared_between_instances() -> anyhow::Result<()> {
        let Some((a, prefix)) = redis_or_skip("redis_backend_is_shared_between_instances").await else {
            return Ok(());
        };
        let url = std::env::var("REDIS_URL")?;
        let b = Shared::connect(Some(&url), &prefix).await?;
        exercise(&a, &b).await?;
        // A dead instance's calls drop out of the listing.
        let ghost =
            LiveCall { call_sid: "CA2".into(), instance: "ghost".into(), started_ms: 2, from_sealed: "x".into() };
        a.register_call(&ghost).await?;
        assert_eq!(b.reap_dead().await?, vec![ghost]);
        assert!(a.reap_dead().await?.is_empty(), "reaped once");
        assert!(b.live_calls().await?.is_empty());
        Ok(())
    }
}
