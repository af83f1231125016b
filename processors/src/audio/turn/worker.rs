//! [`SmartTurnWorker`]: smart-turn inference for many calls on a few dedicated threads.
//!
//! Consumes `predict(audio)` requests from any task of any call, produces each answer through a
//! oneshot. Why dedicated threads and not `spawn_blocking`: the model wants a warm plan and
//! buffers per thread (an instance is ~2 MB of scratch plus the shared plan), and the number of
//! concurrent inferences must stay below the core count so the per-frame media path (VAD,
//! resampling, codecs) is never starved by a burst of end-of-turn checks. `spawn_blocking` would
//! grow up to 512 threads under a burst, each needing its own model state.
//!
//! Trade-offs:
//! - **One bounded queue, awaited.** A caller waits for room (backpressure, as every edge in the
//!   engine); waiting is cancel-safe: a dropped `predict` future either never queued its request
//!   or leaves a request whose answer nobody reads. Requests whose caller has gone (barge-in,
//!   hang-up) are skipped at dequeue rather than computed.
//! - **No batching.** The graph's batch axis is pinned to 1 when the plan is optimised (concrete
//!   shapes let tract pick its kernels statically). On 2 cores a batch of N costs about N single
//!   runs, so a queue gives the same throughput without holding early requests for late ones.
//! - Threads exit when the last clone of the worker is dropped (the queue closes).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::TurnError;
use super::detector::{TurnAnswer, TurnModel};
use super::model::SmartTurn;
use voxline_pipeline::sync::lock;

/// Default inference threads: one leaves the second core of a small box to the media path.
pub const DEFAULT_THREADS: usize = 1;
/// Default queue depth across all calls (at ~tens of ms an inference, ~1 s of backlog per thread).
pub const DEFAULT_QUEUE: usize = 32;

/// Sizing of a [`SmartTurnWorker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Inference threads (each with its own buffers, all sharing one plan). At least 1.
    pub threads: usize,
    /// Requests that may wait across all calls before `predict` itself waits. At least 1.
    pub queue: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { threads: DEFAULT_THREADS, queue: DEFAULT_QUEUE }
    }
}

struct Job {
    audio: Vec<f32>,
    queued: Instant,
    reply: oneshot::Sender<Result<f32, TurnError>>,
}

/// A cloneable handle to the shared smart-turn inference threads.
#[derive(Clone, Debug)]
pub struct SmartTurnWorker {
    tx: mpsc::Sender<Job>,
}

impl SmartTurnWorker {
    /// Start `config.threads` threads running `model` (extra threads share its plan).
    pub fn spawn(model: SmartTurn, config: WorkerConfig) -> Result<Self, TurnError> {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        // Several threads take from one queue: the lock is held only while waiting for the next
        // job, never during an inference.
        let rx = Arc::new(Mutex::new(rx));
        let mut models = Vec::with_capacity(config.threads.max(1));
        for _ in 1..config.threads.max(1) {
            models.push(model.share()?);
        }
        models.push(model);
        for (i, model) in models.into_iter().enumerate() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("smart-turn-{i}"))
                .spawn(move || run(model, &rx))
                .map_err(|e| TurnError::Inference { reason: format!("cannot start worker thread: {e}") })?;
        }
        Ok(Self { tx })
    }

    /// Probability that the turn in `audio_16k` (16 kHz mono, −1..1) is complete. Waits for
    /// room in the queue, then for the answer; cancel-safe.
    pub async fn predict(&self, audio_16k: Vec<f32>) -> Result<f32, TurnError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { audio: audio_16k, queued: Instant::now(), reply })
            .await
            .map_err(|_| TurnError::WorkerGone)?;
        answer.await.map_err(|_| TurnError::WorkerGone)?
    }
}

/// For the VAD's [`TurnDetector`](super::TurnDetector): queue without waiting (a full queue
/// is [`TurnError::Busy`], and the detector ends the turn rather than stall the audio path).
impl TurnModel for SmartTurnWorker {
    fn submit(&self, audio_16k: Vec<f32>) -> Result<TurnAnswer, TurnError> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send(Job { audio: audio_16k, queued: Instant::now(), reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TurnError::Busy,
            mpsc::error::TrySendError::Closed(_) => TurnError::WorkerGone,
        })?;
        Ok(answer)
    }
}

fn run(mut model: SmartTurn, rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // A poisoned lock only means another worker panicked while waiting; the receiver is fine.
        let job = lock(&rx).blocking_recv();
        let Some(job) = job else { return };
        if job.reply.is_closed() {
            continue;
        }
        let start = Instant::now();
        let result = model.predict(&job.audio);
        tracing::debug!(
            waited_ms = start.duration_since(job.queued).as_secs_f64() * 1e3,
            inference_ms = start.elapsed().as_secs_f64() * 1e3,
            ok = result.is_ok(),
            "smart-turn inference"
        );
        // The caller may have given up meanwhile; nothing to do then.
        let _ = job.reply.send(result);
    }
}
