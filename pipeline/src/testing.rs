//! A harness for testing processors and chains (feature `testing`).
//!
//! Push frames and events in either direction, then collect what left the pipeline each way and
//! the events it published, in order.
//!
//! ```
//! use voxline_pipeline::{prelude::*, testing::Harness, PassThrough};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let h = Harness::single(PassThrough);
//! h.push(Frame::Text("hi".into())).await;
//! let out = h.finish().await;
//! assert_eq!(out.texts(), vec!["hi".to_string()]);
//! # }
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::event::Event;
use crate::frame::{Direction, Frame, FrameKind};
use crate::pipeline::Pipeline;
use crate::processor::Processor;
use crate::runner::{PipelineHandle, PipelineParams, PipelineTask, TaskReport};
use crate::sync::lock;

type Collected = Arc<Mutex<Vec<(Direction, Frame)>>>;

/// A running pipeline under test.
pub struct Harness {
    handle: PipelineHandle,
    join: tokio::task::JoinHandle<TaskReport>,
    collected: Collected,
    events: broadcast::Receiver<Event>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

/// Everything a finished harness saw.
#[derive(Debug)]
pub struct Output {
    /// Frames that left the last stage, in order (`Start` and `End` included).
    pub downstream: Vec<Frame>,
    /// Frames that left the first stage upstream, in order.
    pub upstream: Vec<Frame>,
    /// Events published, in order.
    pub events: Vec<Event>,
    /// The task's report.
    pub report: TaskReport,
}

impl Output {
    /// Kinds of the downstream frames, without `Start` and `End`.
    #[must_use]
    pub fn kinds(&self) -> Vec<FrameKind> {
        self.downstream.iter().map(Frame::kind).filter(|k| !matches!(k, FrameKind::Start | FrameKind::End)).collect()
    }

    /// Text carried by downstream `Text`, `LlmText`, `TtsText` and final transcript frames.
    #[must_use]
    pub fn texts(&self) -> Vec<String> {
        self.downstream.iter().filter_map(frame_text).collect()
    }
}

/// The text a frame carries, if any.
#[must_use]
pub fn frame_text(f: &Frame) -> Option<String> {
    match f {
        Frame::Text(t) | Frame::LlmText(t) | Frame::TtsText { text: t, .. } => Some(t.to_string()),
        Frame::Transcript(t) if t.is_final => Some(t.text.to_string()),
        _ => None,
    }
}

impl Harness {
    /// Run `pipeline` with default parameters on the current runtime.
    #[must_use]
    pub fn new(pipeline: Pipeline) -> Self {
        Self::with_params(pipeline, PipelineParams::default())
    }

    /// Run one processor.
    #[must_use]
    pub fn single(processor: impl Processor) -> Self {
        Self::new(Pipeline::new().with(processor))
    }

    /// Run `pipeline` with `params`.
    #[must_use]
    pub fn with_params(pipeline: Pipeline, params: PipelineParams) -> Self {
        let collected: Collected = Arc::default();
        let sink = collected.clone();
        let task = PipelineTask::new(pipeline, params).on_exit(move |dir, f| lock(&sink).push((dir, f)));
        let handle = task.handle();
        let events = handle.subscribe();
        let join = tokio::spawn(task.run());
        Self { handle, join, collected, events }
    }

    /// The task's handle.
    #[must_use]
    pub fn handle(&self) -> &PipelineHandle {
        &self.handle
    }

    /// Push a frame downstream into the first stage.
    pub async fn push(&self, frame: Frame) {
        let _ = self.handle.push(frame).await;
    }

    /// Push a frame upstream into the last stage.
    pub async fn push_upstream(&self, frame: Frame) {
        let _ = self.handle.push_upstream(frame).await;
    }

    /// Emit an event.
    pub fn emit(&self, event: Event) {
        let _ = self.handle.emit(event);
    }

    /// Interrupt.
    pub fn interrupt(&self) {
        let _ = self.handle.interrupt();
    }

    /// Frames that have left the pipeline so far, each way.
    #[must_use]
    pub fn collected(&self) -> Vec<(Direction, Frame)> {
        lock(&self.collected).clone()
    }

    /// Wait (up to `timeout`) until `pred` holds for the frames collected so far.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[(Direction, Frame)]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Snapshot first so the predicate may call back into the harness without deadlocking.
            let snapshot = lock(&self.collected).clone();
            if pred(&snapshot) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Wait (up to `timeout`) for an event matching `pred`; returns it.
    pub async fn wait_event(&mut self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let fut = async {
            loop {
                match self.events.recv().await {
                    Ok(ev) if pred(&ev) => return Some(ev),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    }

    /// Send `End`, wait for the task, and return what it saw.
    pub async fn finish(self) -> Output {
        let _ = self.handle.end().await;
        self.join_output().await
    }

    /// Cancel, wait for the task, and return what it saw.
    pub async fn cancel(self) -> Output {
        let _ = self.handle.cancel();
        self.join_output().await
    }

    async fn join_output(mut self) -> Output {
        let report = match self.join.await {
            Ok(r) => r,
            Err(e) => TaskReport {
                outcome: crate::TaskOutcome::Failed(format!("task join error: {e}")),
                counters: Vec::new(),
                input_audio_dropped: 0,
                interruptions: 0,
            },
        };
        let mut events = Vec::new();
        while let Ok(ev) = self.events.try_recv() {
            events.push(ev);
        }
        let (mut downstream, mut upstream) = (Vec::new(), Vec::new());
        for (dir, f) in lock(&self.collected).drain(..) {
            match dir {
                Direction::Downstream => downstream.push(f),
                Direction::Upstream => upstream.push(f),
            }
        }
        Output { downstream, upstream, events, report }
    }
}
