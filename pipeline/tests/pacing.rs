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

/// With a sink that reports play-out itself (Twilio marks), the output is still the one owner of
/// "bot speaking": one start for back-to-back utterances, and the stop only when the far end
/// confirms the last utterance written (a confirmation of an earlier one ends nothing).
#[tokio::test(start_paused = true)]
async fn with_playout_reports_the_output_announces_one_turn_of_speech() {
    let h = Harness::new(Pipeline::new().with(AudioOutput::new(EchoSink, OutputParams::default())));
    for u in ["u1", "u2", "u3"] {
        h.push(tts(u, 640 * 3)).await;
        h.push(Frame::TtsStopped { context_id: u.into() }).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let confirm =
        |u: &str| Frame::PlayedUpTo { context_id: u.into(), position: Duration::from_millis(60), complete: true };
    h.push_upstream(confirm("u2")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.push_upstream(confirm("u3")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.push(tts("u4", 640 * 3)).await;
    h.push(Frame::TtsStopped { context_id: "u4".into() }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.push_upstream(confirm("u4")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = h.finish().await;
    let seq: Vec<&str> = out
        .events
        .iter()
        .filter_map(|e| match e {
            Event::BotStartedSpeaking => Some("start"),
            Event::BotStoppedSpeaking => Some("stop"),
            _ => None,
        })
        .collect();
    assert_eq!(seq, ["start", "stop", "start", "stop"], "one start per turn of speech, stop on the last confirmation");
    assert_eq!(out.upstream.iter().filter(|f| matches!(f, Frame::PlayedUpTo { complete: true, .. })).count(), 3);
}

/// A sink that records each chunk's first byte (its index in the utterance) and the clears.
#[derive(Clone, Default)]
struct IndexSink {
    writes: Arc<Mutex<Vec<(Instant, u8)>>>,
    clears: Arc<Mutex<Vec<Instant>>>,
}

impl AudioSink for IndexSink {
    async fn write(&mut self, chunk: Bytes, _format: AudioFormat) -> FlowResult {
        self.writes.lock().unwrap().push((Instant::now(), chunk[0]));
        Ok(())
    }
    fn clear(&mut self) {
        self.clears.lock().unwrap().push(Instant::now());
    }
}

/// 200 chunks of 20 ms (4 s at 16 kHz), chunk `i` filled with byte `i`.
fn indexed_utterance(ctx: &str) -> Frame {
    let data: Vec<u8> = (0..200u8).flat_map(|i| std::iter::repeat_n(i, 640)).collect();
    Frame::from(TtsAudio {
        audio: AudioFrame::new(Bytes::from(data), AudioFormat::pcm16(16_000)),
        context_id: ctx.into(),
        words: Arc::from(Vec::new()),
        offset: Duration::ZERO,
    })
}

fn send_ahead_params() -> OutputParams {
    OutputParams { chunk: Duration::from_millis(20), send_ahead: Duration::from_millis(60), ..OutputParams::default() }
}

/// A tentative barge-in silences the far end at once; withdrawn, the bot goes on from the chunk
/// that was playing at the clear (what the clear discarded is sent again), with nothing skipped.
/// (No onset pause here: with one, the send-ahead has played out by the time the barge-in is
/// pending and there is nothing to send again.)
#[tokio::test(start_paused = true)]
async fn a_withdrawn_barge_in_resumes_where_the_caller_stopped_hearing() {
    let sink = IndexSink::default();
    let h = Harness::new(Pipeline::new().with(AudioOutput::new(sink.clone(), send_ahead_params())));
    h.push(indexed_utterance("u1")).await;
    h.push(Frame::TtsStopped { context_id: "u1".into() }).await;
    tokio::time::sleep(Duration::from_millis(1_005)).await;
    let t_pending = Instant::now();
    h.emit(Event::InterruptPending);
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.emit(Event::UserStoppedSpeaking);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.writes.lock().unwrap().iter().all(|(t, _)| *t <= t_pending), "silent while pending");
    let t_resume = Instant::now();
    h.emit(Event::InterruptWithdrawn);
    let out = h.finish().await;
    assert_eq!(sink.clears.lock().unwrap().len(), 1, "the far end was cleared once, at the pending barge-in");
    let writes = sink.writes.lock().unwrap();
    let before: Vec<u8> = writes.iter().filter(|(t, _)| *t <= t_pending).map(|(_, i)| *i).collect();
    let after: Vec<u8> = writes.iter().filter(|(t, _)| *t >= t_resume).map(|(_, i)| *i).collect();
    // At 1.005 s chunk 50 is playing; the 60 ms send-ahead had chunks up to 53 out.
    assert_eq!(before.last().copied(), Some(53), "send-ahead was out: {before:?}");
    assert_eq!(after.first().copied(), Some(50), "resumes at the chunk playing at the clear: {after:?}");
    assert_eq!(after.last().copied(), Some(199), "and plays to the end");
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "in order, nothing skipped or doubled");
    assert!(out.upstream.iter().any(|f| matches!(f, Frame::PlayedUpTo { complete: true, .. })));
    assert!(!out.events.iter().any(|e| matches!(e, Event::Interrupt)));
}

/// With the onset pause first (the VAD's `UserStartedSpeaking`), the send-ahead plays out while
/// the barge-in is confirmed; withdrawn, the bot continues with the next chunk.
#[tokio::test(start_paused = true)]
async fn a_withdrawn_barge_in_after_an_onset_pause_continues_with_the_next_chunk() {
    let sink = IndexSink::default();
    let h = Harness::new(Pipeline::new().with(AudioOutput::new(sink.clone(), send_ahead_params())));
    h.push(indexed_utterance("u1")).await;
    tokio::time::sleep(Duration::from_millis(1_005)).await;
    h.emit(Event::UserStartedSpeaking);
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.emit(Event::InterruptPending);
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.emit(Event::UserStoppedSpeaking);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t_resume = Instant::now();
    h.emit(Event::InterruptWithdrawn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = h.finish().await;
    let writes = sink.writes.lock().unwrap();
    let idx: Vec<u8> = writes.iter().map(|(_, i)| *i).collect();
    assert!(idx.windows(2).all(|w| w[1] == w[0] + 1), "nothing skipped or doubled: {idx:?}");
    let resumed = writes.iter().find(|(t, _)| *t >= t_resume).map(|(_, i)| *i);
    assert_eq!(resumed, Some(54), "the next chunk after the send-ahead that played out");
}

/// Confirmed, the pending barge-in is an interruption whose heard position is what played
/// before the clear, not what was sent.
#[tokio::test(start_paused = true)]
async fn a_confirmed_barge_in_reports_what_played_before_the_clear() {
    let sink = IndexSink::default();
    let h = Harness::new(Pipeline::new().with(AudioOutput::new(sink.clone(), send_ahead_params())));
    h.push(indexed_utterance("u1")).await;
    tokio::time::sleep(Duration::from_millis(1_005)).await;
    h.emit(Event::InterruptPending);
    tokio::time::sleep(Duration::from_millis(400)).await;
    h.interrupt();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = h.finish().await;
    let heard = out.upstream.iter().find_map(|f| match f {
        Frame::PlayedUpTo { position, complete: false, .. } => Some(*position),
        _ => None,
    });
    let heard = heard.expect("heard position reported");
    // 1.005 s played; the chunk playing at the clear counts from its start (it is sent again
    // on a resume), so the position is within one chunk below.
    assert!(heard >= Duration::from_millis(985) && heard <= Duration::from_millis(1_005), "{heard:?}");
    assert!(sink.writes.lock().unwrap().iter().map(|(_, i)| *i).max() == Some(53), "nothing after the clear");
}
