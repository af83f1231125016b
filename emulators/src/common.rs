//! Plumbing shared by all emulators: server lifecycle, recorded state, small helpers.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::serve::ListenerExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use voxline_pipeline::sync::lock;

/// A running axum server plus the token that stops it and every connection it spawned.
pub(crate) struct Server {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds 127.0.0.1:0 synchronously so the caller learns the port before any await.
    pub(crate) fn start(name: &'static str, router: Router, cancel: CancellationToken) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let serve_cancel = cancel.clone();
        let serve = async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(emulator = name, error = %e, "cannot register listener");
                    return;
                }
            };
            tracing::debug!(emulator = name, %addr, "emulator listening");
            let shutdown = serve_cancel.clone();
            // Small writes (an SSE token, a WS audio chunk) must leave at once: with Nagle on, a
            // write behind an unacknowledged one waits for the peer's delayed ACK (~40 ms), which
            // showed up as TTFB the engine does not add.
            let listener = listener.tap_io(move |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(emulator = name, error = %e, "TCP_NODELAY not set");
                }
            });
            if let Err(e) =
                axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
            {
                tracing::warn!(emulator = name, error = %e, "emulator server stopped with an error");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => Ok(Self { addr, cancel, task: Some(handle.spawn(serve)), thread: None }),
            Err(_) => {
                // No ambient runtime (plain #[test] or a sync caller): run on our own thread.
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
                let thread =
                    std::thread::Builder::new().name(format!("{name}-emulator")).spawn(move || rt.block_on(serve))?;
                Ok(Self { addr, cancel, task: None, thread: Some(thread) })
            }
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, tells open connections to wind down, and waits briefly for them.
    pub(crate) async fn shutdown(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                abort.abort();
            }
        }
        if let Some(thread) = self.thread.take() {
            // The thread exits once graceful shutdown completes; joining it here could
            // block the async caller, so it is detached instead.
            drop(thread);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Recorded state behind a mutex, with a change counter so tests can await conditions.
pub(crate) struct Recorder<T> {
    state: Mutex<T>,
    version: watch::Sender<u64>,
}

impl<T: Clone> Recorder<T> {
    pub(crate) fn new(initial: T) -> Self {
        Self { state: Mutex::new(initial), version: watch::channel(0).0 }
    }

    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = {
            let mut guard = lock(&self.state);
            f(&mut guard)
        };
        self.version.send_modify(|v| *v = v.wrapping_add(1));
        r
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&lock(&self.state))
    }

    pub(crate) fn snapshot(&self) -> T {
        lock(&self.state).clone()
    }

    pub(crate) async fn wait_for(&self, pred: impl Fn(&T) -> bool, timeout: Duration) -> Option<T> {
        let mut rx = self.version.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            {
                let guard = lock(&self.state);
                if pred(&guard) {
                    return Some(guard.clone());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}

/// Parses a raw query string keeping order and repeated keys (`keyterm=a&keyterm=b`).
pub(crate) fn parse_query(raw: Option<&str>) -> Vec<(String, String)> {
    let Some(raw) = raw else { return Vec::new() };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// First value of a query key.
pub(crate) fn query_get<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub(crate) fn query_bool(query: &[(String, String)], key: &str) -> bool {
    query_get(query, key).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Header map flattened to lowercase (name, value) pairs, in arrival order.
pub(crate) fn header_pairs(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

pub(crate) fn header_str<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

static ID_COUNTER: AtomicU64 = AtomicU64::new(1);

/// Process-unique, deterministic-looking id suffix for request ids, message ids, etc.
pub(crate) fn next_id() -> u64 {
    ID_COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A UUID-shaped request id (Deepgram and ElevenLabs use UUIDs).
pub(crate) fn uuid_like() -> String {
    let n = next_id();
    let t = unix_secs();
    format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", t as u32, (n >> 16) & 0xffff, n & 0xfff, (n >> 12) & 0xfff, n)
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Alphanumeric id body in the style of provider ids (`chatcmpl-…`, `msg_…`, `toolu_…`).
pub(crate) fn token_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = next_id().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ unix_secs();
    (0..len)
        .map(|_| {
            // xorshift keeps ids distinct without pulling in a RNG crate.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Sleeps until `deadline`, or forever when there is none (for use in `select!`).
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending::<()>().await,
    }
}

/// Runs `fut` unless the emulator shuts down first.
pub(crate) async fn or_cancelled<F: Future>(cancel: &CancellationToken, fut: F) -> Option<F::Output> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        out = fut => Some(out),
    }
}

/// A time-ordered queue of pending outbound actions for one WebSocket connection.
pub(crate) struct Outbox<A> {
    items: Vec<(Instant, u64, A)>,
    seq: u64,
}

impl<A> Outbox<A> {
    pub(crate) fn new() -> Self {
        Self { items: Vec::new(), seq: 0 }
    }

    pub(crate) fn push(&mut self, due: Instant, action: A) {
        self.seq += 1;
        self.items.push((due, self.seq, action));
    }

    /// Latest due time among queued items, so callers can keep per-stream ordering.
    pub(crate) fn last_due_where(&self, f: impl Fn(&A) -> bool) -> Option<Instant> {
        self.items.iter().filter(|(_, _, a)| f(a)).map(|(d, _, _)| *d).max()
    }

    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.items.iter().map(|(d, _, _)| *d).min()
    }

    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<A> {
        let idx = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, (d, _, _))| *d <= now)
            .min_by_key(|(_, (d, s, _))| (*d, *s))
            .map(|(i, _)| i)?;
        Some(self.items.remove(idx).2)
    }

    pub(crate) fn retain(&mut self, f: impl Fn(&A) -> bool) {
        self.items.retain(|(_, _, a)| f(a));
    }
}
