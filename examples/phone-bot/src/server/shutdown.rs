//! Graceful shutdown: drain, then end what is left politely.
//!
//! On SIGTERM/SIGINT the instance (1) stops taking new calls: the voice webhook answers 503, so
//! Twilio tries the number's fallback URL (point it at the load balancer, which routes to an
//! instance that is not draining) and `/health` answers 503 so the balancer stops sending work;
//! (2) gives live calls `server.drain_timeout_ms` to end on their own; (3) asks the rest to end
//! the way the bot ends a call: speak the goodbye, then hang up through REST; (4) waits for every
//! call's record to be stored and its post-call job enqueued (and, time permitting, run) before
//! it stops serving and returns, so the process exits 0.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

use voxline::pipeline::sync::lock;

/// Calls of this instance and whether it is draining.
#[derive(Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    /// call_sid → "end this call politely" (a stored permit, so a request made before the
    /// call's task waits is not lost).
    calls: std::sync::Mutex<HashMap<String, Arc<Notify>>>,
    changed: Notify,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// No new calls from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`Lifecycle::start_draining`] was called (`/health` and the voice webhook then
    /// answer 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Track a call until [`Lifecycle::unregister`]; the returned notify asks it to end.
    pub fn register(&self, call_sid: &str) -> Arc<Notify> {
        let n = Arc::new(Notify::new());
        lock(&self.calls).insert(call_sid.to_string(), n.clone());
        n
    }

    /// The call, its record and its inline post-call job are done.
    pub fn unregister(&self, call_sid: &str) {
        lock(&self.calls).remove(call_sid);
        self.changed.notify_waiters();
    }

    /// Calls (including their post-call work) still in progress here.
    pub fn live(&self) -> usize {
        lock(&self.calls).len()
    }

    /// Ask every live call to say goodbye and hang up.
    pub fn end_all_politely(&self) -> usize {
        let calls = lock(&self.calls);
        for n in calls.values() {
            n.notify_one();
        }
        calls.len()
    }

    /// Wait until no call is left, up to `timeout`; `true` when idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            if self.live() == 0 {
                return true;
            }
            // Re-check periodically too: a notify can land between the check and the await.
            if tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)), changed)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return self.live() == 0;
            }
        }
    }
}

/// State of [`refuse_new_calls`].
#[derive(Clone)]
pub(crate) struct DrainGuard {
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// Path of the voice webhook, the only route refused while draining.
    pub(crate) voice_path: String,
}

/// Middleware on the Twilio routes: while draining, the voice webhook answers 503 (Twilio then
/// uses the fallback URL). Media streams of calls already answered are still accepted.
pub(crate) async fn refuse_new_calls(State(g): State<DrainGuard>, req: Request, next: Next) -> Response {
    if g.lifecycle.is_draining() && req.method() == Method::POST && req.uri().path() == g.voice_path {
        tracing::info!("draining: new call refused with 503");
        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], "instance is shutting down").into_response();
    }
    next.run(req).await
}

/// SIGTERM or SIGINT, whichever comes first.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracks_and_ends_calls() {
        let l = Arc::new(Lifecycle::default());
        let a = l.register("A");
        assert_eq!(l.live(), 1);
        assert!(!l.wait_idle(Duration::from_millis(50)).await);
        assert_eq!(l.end_all_politely(), 1);
        // The permit is stored: the call sees it even if it starts waiting later.
        assert!(tokio::time::timeout(Duration::from_millis(50), a.notified()).await.is_ok());
        let l2 = l.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            l2.unregister("A");
        });
        assert!(l.wait_idle(Duration::from_secs(2)).await);
    }
}
