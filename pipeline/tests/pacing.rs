//! The media clock: exact 20 ms chunks, no drift, re-chunking, stop within one chunk on barge-in.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use voxline_pipeline::clock::{AudioOutput, AudioSink, MediaClock, OutputParams};
use voxline_pipeline::testing::Harness;
use voxline_pipeline::*;

#[derive(Clone, Default)]
struct RecSink {
    writes: Arc<Mutex<Vec<(Instant, usize)>>>,
    clears: Arc<Mutex<Vec<Instant>>>,
}

impl AudioSink for RecSink {
    async fn write(&mut self, chunk: Bytes, _format: AudioFormat) -> FlowResult {
        self.writes.lock().unwrap().push((Instant::now(), chunk.len()));
        Ok(())
    }
    fn clear(&mut self) {
        self.clears.lock().unwrap().push(Instant::now());
    }
}

fn tts(ctx: &str, bytes: usize) -> Frame {
    Frame::from(TtsAudio {
        audio: AudioFrame::new(Bytes::from(vec![7u8; bytes]), AudioFormat::pcm16(16_000)),
        context_id: ctx.into(),
        words: Arc::from(Vec::new()),
        offset: Duration::ZERO,
    })
}

#[tokio::test(start_paused = true)]
async fn ten_minutes_of_audio_with_zero_drift_in_exact_20ms_chunks() {
    let sink = RecSink::default();
    let params =
        OutputParams { chunk: Duration::from_millis(20), send_ahead: Duration::ZERO, ..OutputParams::default() };
    let h = Harness::new(Pipeline::new().with(AudioOutput::new(sink.clone(), params)));
    // 10 minutes of 16 kHz PCM16 in odd-sized TTS chunks (333 ms each, not a multiple of 20 ms).
    let total_bytes = 600 * 16_000 * 2;
    let piece = 10_656; // 333 ms
    let mut sent = 0;
    while sent < total_bytes {
        let n = piece.min(total_bytes - sent);
        h.push(tts("u1", n)).await;
        sent += n;
    }
    h.push(Frame::TtsStopped { context_id: "u1".into() }).await;
    let out = h.finish().await;
    assert_eq!(out.report.outcome, TaskOutcome::Ended);
    let writes = sink.writes.lock().unwrap();
    assert_eq!(writes.len(), 30_000, "10 min = 30,000 chunks");
    assert!(writes.iter().all(|(_, n)| *n == 640), "every chunk is exactly 20 ms");
    for w in writes.windows(2) {
        assert_eq!(w[1].0 - w[0].0, Duration::from_millis(20));
    }
    assert_eq!(writes[29_999].0 - writes[0].0, Duration::from_millis(20) * 29_999, "zero cumulative drift");
    // PlayedUpTo(complete) went upstream, and speaking state was reported.
    assert!(out.upstream.iter().any(|f| matches!(f, Frame::PlayedUpTo { complete: true, .. })));
    assert!(out.events.iter().any(|e| matches!(e, Event::BotStartedSpeaking)));
    assert!(out.events.iter().any(|e| matches!(e, Event::BotStoppedSpeaking)));
}

#[tokio::test(start_paused = true)]
async fn send_ahead_front_loads_then_paces() {
    let sink = RecSink::default();
    let params = OutputParams {
        chunk: Duration::from_millis(20),
        send_ahead: Duration::from_millis(60),
        ..OutputParams::default()
    };
    let h = Harness::new(Pipeline::new().with(AudioOutput::new(sink.clone(), params)));
    h.push(tts("u1", 640 * 10)).await;
    h.push(Frame::TtsStopped { context_id: "u1".into() }).await;
    let _ = h.finish().await;
    let w = sink.writes.lock().unwrap();
    let t0 = w[0].0;
    let rel: Vec<u128> = w.iter().map(|(t, _)| (*t - t0).as_millis()).collect();
    assert_eq!(rel, vec![0, 0, 0, 0, 20, 40, 60, 80, 100, 120]);
}

#[tokio::test(start_paused = true)]
async fn interruption_stops_release_within_one_chunk_and_reports_heard_position() {
    let sink = RecSink::default();
    let params =
        OutputParams { chunk: Duration::from_millis(20), send_ahead: Duration::ZERO, ..OutputParams::default() };
    let h = Harness::new(Pipeline::new().with(AudioOutput::new(sink.clone(), params)));
    h.push(tts("u1", 640 * 500)).await; // 10 s
    tokio::time::sleep(Duration::from_millis(1_010)).await;
    let t_inject = Instant::now();
    h.interrupt();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = h.finish().await;
    let writes = sink.writes.lock().unwrap();
    let after: Vec<_> = writes.iter().filter(|(t, _)| *t > t_inject).collect();
    assert!(after.is_empty(), "no chunk released after the interruption: {}", after.len());
    assert!(writes.len() >= 50 && writes.len() <= 52, "about 1 s was played: {}", writes.len());
    assert_eq!(sink.clears.lock().unwrap().len(), 1, "the far end was told to clear");
    let heard = out.upstream.iter().find_map(|f| match f {
        Frame::PlayedUpTo { position, complete: false, .. } => Some(*position),
        _ => None,
    });
    let heard = heard.expect("heard position reported upstream");
    assert!(heard >= Duration::from_millis(990) && heard <= Duration::from_millis(1_030), "{heard:?}");
    assert!(out.events.iter().any(|e| matches!(e, Event::BotStoppedSpeaking)));
}

#[test]
fn clock_rebases_after_an_underrun() {
    let mut c = MediaClock::new(Duration::from_millis(20), Duration::ZERO);
    let t0 = Instant::now();
    assert_eq!(c.next_release(t0), t0);
    c.advance();
    assert_eq!(c.next_release(t0), t0 + Duration::from_millis(20));
    c.advance();
    // Producer stalls for a second: the far end ran dry, so the timeline restarts at "now".
    let late = t0 + Duration::from_secs(1);
    assert_eq!(c.next_release(late), late);
}

#[derive(Clone, Default)]
struct EchoSink;

impl AudioSink for EchoSink {
    async fn write(&mut self, _chunk: Bytes, _format: AudioFormat) -> FlowResult {
        Ok(())
    }
    fn reports_playout(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn every_utterance_announces_its_start_when_the_sink_reports_playout() {
    let h = Harness::new(Pipeline::new().with(AudioOutput::new(EchoSink, OutputParams::default())));
    for u in ["u1", "u2", "u3"] {
        h.push(tts(u, 640 * 3)).await;
        h.push(Frame::TtsStopped { context_id: u.into() }).await;
    }
    let out = h.finish().await;
    let starts = out.events.iter().filter(|e| matches!(e, Event::BotStartedSpeaking)).count();
    assert_eq!(starts, 3);
    assert!(!out.events.iter().any(|e| matches!(e, Event::BotStoppedSpeaking)), "the transport reports stops");
}
