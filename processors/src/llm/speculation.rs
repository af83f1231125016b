//! [`SpeculationGate`]: holds a speculative LLM response until its turn is confirmed.
//!
//! Sits right after the LLM. Between `Event::Speculation(Started)` and `Confirmed` every
//! downstream frame is held in order: nothing reaches the assistant aggregator (the record), the
//! tool executor (no tool runs on a guess) or the TTS (no audio of a guess). `Confirmed` releases
//! them, oldest first, and later frames follow them. `Cancelled`, or an `Interrupt`, drops them;
//! the interruption that accompanies a cancellation also aborts the request itself.
//!
//! Upstream frames pass untouched. The held frames are one response's text and tool calls, so the
//! buffer is bounded by the model's `max_tokens`.

use std::collections::VecDeque;

use tokio::time::Instant;
use voxline_pipeline::{Context, Direction, Event, FlowResult, Frame, Processor, Speculation};

/// Holds a speculative response's frames until its turn is confirmed. See the module docs.
#[derive(Debug, Default)]
pub struct SpeculationGate {
    holding: bool,
    held: VecDeque<Frame>,
}

impl SpeculationGate {
    /// A gate letting everything through until a speculation starts.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    async fn release(&mut self, cx: &mut Context) {
        while let Some(f) = self.held.pop_front() {
            cx.push(f, Direction::Downstream).await;
        }
    }
}

impl Processor for SpeculationGate {
    fn name(&self) -> &str {
        "speculation_gate"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        if direction == Direction::Upstream {
            cx.push(frame, direction).await;
            return Ok(());
        }
        match frame {
            // Lifecycle frames are not the response's: never held. At `End` an unconfirmed
            // speculation is moot.
            Frame::Start(_) => {
                cx.push(frame, direction).await;
                return Ok(());
            }
            Frame::End if self.holding => {
                self.holding = false;
                self.held.clear();
            }
            _ if self.holding => {
                self.held.push_back(frame);
                return Ok(());
            }
            _ => {}
        }
        // Released frames go first, in order.
        self.release(cx).await;
        cx.push(frame, direction).await;
        Ok(())
    }

    async fn on_timer(&mut self, cx: &mut Context) -> FlowResult {
        if !self.holding {
            self.release(cx).await;
        }
        Ok(())
    }

    fn on_event(&mut self, event: &Event, cx: &mut Context) -> FlowResult {
        match event {
            Event::Speculation(Speculation::Started) => self.holding = true,
            Event::Speculation(Speculation::Confirmed) => {
                self.holding = false;
                if !self.held.is_empty() {
                    // Pushed from the stage's own call, with backpressure, not from the handler.
                    cx.wake_at(Instant::now());
                }
            }
            Event::Speculation(Speculation::Cancelled) | Event::Interrupt => {
                self.holding = false;
                self.held.clear();
            }
            _ => {}
        }
        Ok(())
    }
}
