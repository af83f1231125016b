//! Building pipelines: linear chains, nested pipelines, parallel branches.
//!
//! A [`Pipeline`] is a description; [`crate::PipelineTask`] runs it. Nested pipelines are
//! flattened into the parent chain when the task is built, so a nested stage costs exactly what
//! a top-level one does (no extra queue or task per level). Parallel branches become a fan-out
//! stage, the branch chains, and a fan-in stage:
//!
//! ```text
//!            ┌─ branch A ─┐
//!  … ─ fan-out             fan-in ─ …
//!            └─ branch B ─┘
//! ```
//!
//! The fan-out clones every downstream frame into each branch; the fan-in forwards what the
//! branches emit and synchronises `Start` and `End`: it forwards one of each, when every branch
//! has delivered its own. Upstream frames entering the fan-in go to every branch. Branches are
//! expected to filter: a frame that every branch passes through unchanged comes out once per
//! branch.

use std::sync::Arc;

use crate::context::Context;
use crate::error::FlowResult;
use crate::frame::{Direction, Frame};
use crate::processor::{DynProcessor, Processor};

/// One element of a pipeline description.
pub enum Node {
    /// A processor with an optional inbox capacity override.
    Processor(Box<dyn DynProcessor>, Option<usize>),
    /// A nested pipeline (flattened when run).
    Pipeline(Pipeline),
    /// Parallel branches between a fan-out and a fan-in.
    Parallel(Vec<Pipeline>),
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Processor(p, capacity) => {
                f.debug_struct("Processor").field("name", &p.dyn_name()).field("capacity", capacity).finish()
            }
            Self::Pipeline(p) => f.debug_tuple("Pipeline").field(p).finish(),
            Self::Parallel(branches) => f.debug_tuple("Parallel").field(branches).finish(),
        }
    }
}

/// An ordered chain of processors, nested pipelines and parallel branches.
#[derive(Default, Debug)]
pub struct Pipeline {
    pub(crate) nodes: Vec<Node>,
}

impl Pipeline {
    /// An empty pipeline (it passes frames straight through).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a processor.
    #[must_use]
    pub fn with(mut self, processor: impl Processor) -> Self {
        self.nodes.push(Node::Processor(Box::new(processor), None));
        self
    }

    /// Append a processor with its own inbox capacity (frames).
    #[must_use]
    pub fn with_capacity(mut self, processor: impl Processor, capacity: usize) -> Self {
        self.nodes.push(Node::Processor(Box::new(processor), Some(capacity.max(1))));
        self
    }

    /// Append an already boxed processor (e.g. one chosen from configuration).
    #[must_use]
    pub fn with_boxed(mut self, processor: Box<dyn DynProcessor>) -> Self {
        self.nodes.push(Node::Processor(processor, None));
        self
    }

    /// Append a nested pipeline.
    #[must_use]
    pub fn with_pipeline(mut self, pipeline: Pipeline) -> Self {
        self.nodes.push(Node::Pipeline(pipeline));
        self
    }

    /// Append parallel branches.
    #[must_use]
    pub fn with_parallel(mut self, branches: Vec<Pipeline>) -> Self {
        self.nodes.push(Node::Parallel(branches));
        self
    }

    /// Number of processors, counting nested ones (fan stages excluded).
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| match n {
                Node::Processor(..) => 1,
                Node::Pipeline(p) => p.len(),
                Node::Parallel(bs) => bs.iter().map(Pipeline::len).sum(),
            })
            .sum()
    }

    /// Whether the pipeline has no processors.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where frames leaving a stage in one direction go.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    Slot(usize),
    Fan(Arc<[usize]>),
    Exit,
}

pub(crate) struct SlotSpec {
    pub(crate) proc: Box<dyn DynProcessor>,
    pub(crate) capacity: Option<usize>,
    pub(crate) down: Route,
    pub(crate) up: Route,
}

/// Flatten a pipeline into stages with routes. Returns the stages in chain order.
pub(crate) fn flatten(pipeline: Pipeline) -> Vec<SlotSpec> {
    let mut slots = Vec::new();
    let span = flatten_into(pipeline, &mut slots);
    if let Some((first, last)) = span {
        slots[first].up = Route::Exit;
        slots[last].down = Route::Exit;
    }
    slots
}

fn push_slot(slots: &mut Vec<SlotSpec>, proc: Box<dyn DynProcessor>, capacity: Option<usize>) -> usize {
    slots.push(SlotSpec { proc, capacity, down: Route::Exit, up: Route::Exit });
    slots.len() - 1
}

fn flatten_into(pipeline: Pipeline, slots: &mut Vec<SlotSpec>) -> Option<(usize, usize)> {
    let mut segments: Vec<(usize, usize)> = Vec::new();
    for node in pipeline.nodes {
        let seg = match node {
            Node::Processor(p, cap) => {
                let i = push_slot(slots, p, cap);
                Some((i, i))
            }
            Node::Pipeline(inner) => flatten_into(inner, slots),
            Node::Parallel(branches) => {
                let n = branches.len().max(1);
                let fan_out = push_slot(slots, Box::new(FanOut), None);
                let mut firsts = Vec::new();
                let mut lasts = Vec::new();
                let mut spans = Vec::new();
                for b in branches {
                    spans.push(flatten_into(b, slots));
                }
                let fan_in = push_slot(slots, Box::new(FanIn::new(n)), None);
                for span in spans {
                    match span {
                        Some((f, l)) => {
                            slots[f].up = Route::Slot(fan_out);
                            slots[l].down = Route::Slot(fan_in);
                            firsts.push(f);
                            lasts.push(l);
                        }
                        None => {
                            firsts.push(fan_in);
                            lasts.push(fan_out);
                        }
                    }
                }
                if firsts.is_empty() {
                    firsts.push(fan_in);
                    lasts.push(fan_out);
                }
                slots[fan_out].down = Route::Fan(firsts.into());
                slots[fan_in].up = Route::Fan(lasts.into());
                Some((fan_out, fan_in))
            }
        };
        if let Some(s) = seg {
            segments.push(s);
        }
    }
    for w in segments.windows(2) {
        let (a, b) = (w[0], w[1]);
        slots[a.1].down = Route::Slot(b.0);
        slots[b.0].up = Route::Slot(a.1);
    }
    match (segments.first(), segments.last()) {
        (Some(f), Some(l)) => Some((f.0, l.1)),
        _ => None,
    }
}

/// The stage in front of parallel branches; the runner clones its output into every branch.
struct FanOut;

impl Processor for FanOut {
    fn name(&self) -> &str {
        "fan_out"
    }
    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        cx.push(frame, direction).await;
        Ok(())
    }
}

/// The stage after parallel branches: forwards one `Start`/`End` once every branch sent its own.
struct FanIn {
    branches: usize,
    starts: usize,
    ends: usize,
}

impl FanIn {
    fn new(branches: usize) -> Self {
        Self { branches, starts: 0, ends: 0 }
    }
}

impl Processor for FanIn {
    fn name(&self) -> &str {
        "fan_in"
    }
    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        if direction == Direction::Downstream {
            let counter = match frame {
                Frame::Start(_) => Some(&mut self.starts),
                Frame::End => Some(&mut self.ends),
                _ => None,
            };
            if let Some(c) = counter {
                *c += 1;
                if *c < self.branches {
                    return Ok(());
                }
                *c = 0;
            }
        }
        cx.push(frame, direction).await;
        Ok(())
    }
}
