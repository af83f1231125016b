//! The smallest Voxline program: a custom processor in a pipeline.
//!
//! `cargo run --example hello_pipeline`
//!
//! Text frames go in through the task's handle, a hand-written processor shouts them, a closure
//! stage prints them, and `End` drains the pipeline in order before the task returns its report.

use voxline::prelude::*;

/// Upper-cases every `Text` frame and counts them; every other frame passes through untouched.
#[derive(Debug, Default)]
struct Shout {
    seen: usize,
}

impl Processor for Shout {
    // A 1:1 synchronous stage implements only `process_now`: no future, one function call per
    // hop. It pushes with `push_now` (the runner only calls it when the next stage has room) and
    // returns `None`: handled. (Returning the frame would hand it to the async `process` instead.)
    fn process_now(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> Result<Option<Frame>, FlowError> {
        let frame = match frame {
            Frame::Text(t) => {
                self.seen += 1;
                Frame::Text(t.to_uppercase().into())
            }
            other => other,
        };
        cx.push_now(frame, dir);
        Ok(None)
    }

    // Runs once after the last frame: `End` reached this stage.
    async fn stop(&mut self, _cx: &mut Context) -> FlowResult {
        println!("shout: {} lines", self.seen);
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let print = processor_fn("print", |frame, dir, cx| {
        if let Frame::Text(t) = &frame {
            println!("{t}");
        }
        cx.push_now(frame, dir);
        Ok(())
    });
    let pipeline = Pipeline::new().with(Shout::default()).with(print);
    let task = PipelineTask::new(pipeline, PipelineParams::default());
    let handle = task.handle();
    let run = tokio::spawn(task.run());
    for line in ["hello", "from", "voxline"] {
        // Awaiting `push` is backpressure: it waits while the first stage's inbox is full.
        if handle.push(Frame::Text(line.into())).await.is_err() {
            break;
        }
    }
    let _ = handle.end().await;
    match run.await {
        Ok(report) => println!("pipeline: {:?}", report.outcome),
        Err(e) => eprintln!("pipeline task failed: {e}"),
    }
}
