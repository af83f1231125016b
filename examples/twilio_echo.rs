//! A Twilio parrot: says back what the caller just said. `cargo run --example twilio_echo`, then
//! point a Twilio number's voice webhook at `PUBLIC_URL/voice/twilio` (e.g. through a tunnel).
use std::sync::Arc;
use voxline::pipeline::{AudioFormat, AudioFrame, PipelineParams, PipelineTask};
use voxline::prelude::*;
use voxline::processors::{audio::VadProcessor, codec::MulawDecoder};
use voxline::transports::twilio::{CallHandler, RoutesConfig, TwilioSession, router, routes::BoxFuture, serve_call};

/// Keeps what the caller says (and the 300 ms before the VAD confirmed it); plays it back.
#[derive(Debug, Default)]
struct Parrot {
    heard: Vec<u8>,
    speaking: bool,
}

impl Processor for Parrot {
    fn process_now(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> Result<Option<Frame>, FlowError> {
        match &frame {
            Frame::InputAudio(a) => self.heard.extend_from_slice(&a.data), // kept, not forwarded
            _ => cx.push_now(frame, dir),
        }
        if !self.speaking {
            self.heard.drain(..self.heard.len().saturating_sub(4800));
        }
        Ok(None)
    }

    fn on_event(&mut self, event: &Event, cx: &mut Context) -> FlowResult {
        match event {
            Event::UserStartedSpeaking => self.speaking = true,
            Event::UserStoppedSpeaking => {
                self.speaking = false;
                let said = AudioFrame::new(std::mem::take(&mut self.heard).into(), AudioFormat::pcm16(8000));
                cx.push_now(Frame::OutputAudio(said), Direction::Downstream); // an event cannot wait
            }
            _ => {}
        }
        Ok(())
    }
}

struct Echo;
impl CallHandler for Echo {
    fn handle_stream(&self, session: TwilioSession) -> BoxFuture {
        Box::pin(async move {
            let pipeline = Pipeline::new().with(MulawDecoder::new()).with(VadProcessor::new()).with(Parrot::default());
            let task = PipelineTask::new(pipeline.with(session.output()), PipelineParams::default());
            let report = serve_call(session, task).await;
            println!("call {} ended: {:?}", report.call_sid, report.reason);
        })
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let public_url = std::env::var("PUBLIC_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let app = router(RoutesConfig::new(public_url, std::env::var("TWILIO_AUTH_TOKEN").ok()), Arc::new(Echo));
    axum::serve(tokio::net::TcpListener::bind("0.0.0.0:8080").await?, app).await
}
