//! A Twilio parrot: says back what the caller just said. `cargo run --example twilio_echo`, then
//! point a Twilio number's voice webhook at `PUBLIC_URL/voice/twilio` (e.g. through a tunnel).
use std::sync::Arc;

use voxline::pipeline::{AudioFormat, AudioFrame, PipelineParams, PipelineTask};
use voxline::prelude::*;
use voxline::processors::audio::VadProcessor;
use voxline::processors::codec::MulawDecoder;
use voxline::transports::twilio::routes::BoxFuture;
use voxline::transports::twilio::{CallHandler, RoutesConfig, TwilioSession, router, serve_call};

/// Keeps the caller's audio; when they stop speaking, plays it back.
#[derive(Debug, Default)]
struct Parrot {
    heard: Vec<u8>,
    replay: bool,
}

impl Processor for Parrot {
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        if let Frame::InputAudio(a) = &frame {
            self.heard.extend_from_slice(&a.data);
            if std::mem::take(&mut self.replay) {
                let said = AudioFrame::new(std::mem::take(&mut self.heard).into(), AudioFormat::pcm16(8000));
                cx.push(Frame::OutputAudio(said), Direction::Downstream).await;
            }
            return Ok(()); // the caller's audio is consumed, not forwarded to the output
        }
        cx.push(frame, dir).await;
        Ok(())
    }

    fn on_event(&mut self, event: &Event, _cx: &mut Context) -> FlowResult {
        match event {
            // Keep 300 ms from before the VAD confirmed speech: its start delay.
            Event::UserStartedSpeaking => drop(self.heard.drain(..self.heard.len().saturating_sub(4800))),
            Event::UserStoppedSpeaking => self.replay = true,
            _ => {}
        }
        Ok(())
    }
}

struct Echo;

impl CallHandler for Echo {
    fn handle_stream(&self, session: TwilioSession) -> BoxFuture {
        Box::pin(async move {
            let pipeline = Pipeline::new()
                .with(MulawDecoder::new())
                .with(VadProcessor::new())
                .with(Parrot::default())
                .with(session.output());
            let report = serve_call(session, PipelineTask::new(pipeline, PipelineParams::default())).await;
            println!("call {} ended: {:?}", report.call_sid, report.reason);
        })
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let public_url = std::env::var("PUBLIC_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let auth_token = std::env::var("TWILIO_AUTH_TOKEN").ok(); // validates webhook signatures
    let app = router(RoutesConfig::new(public_url, auth_token), Arc::new(Echo));
    axum::serve(tokio::net::TcpListener::bind("0.0.0.0:8080").await?, app).await
}
