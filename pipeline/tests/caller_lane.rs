//! The caller is never behind the bot: caller input overtakes queued data at every stage, the
//! output paces on an engine timer instead of holding its call, and the lane stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use voxline_pipeline::clock::{AudioOutput, AudioSink, OutputParams};
use voxline_pipeline::*;

const FRAME: Duration = Duration::from_millis(20);

/// Caller audio whose first four bytes carry its sequence number.
fn caller_frame(seq: u32) -> Frame {
    let mut data = vec![0u8; 320];
    data[..4].copy_from_slice(&seq.to_le_bytes());
    Frame::InputAudio(AudioFrame::new(Bytes::from(data), AudioFormat::pcm16(8000)))
}

fn seq_of(frame: &Frame) -> Option<u32> {
    match frame {
        Frame::InputAudio(a) if a.data.len() >= 4 => {
            Some(u32::from_le_bytes([a.data[0], a.data[1], a.data[2], a.data[3]]))
        }
        _ => None,
    }
}

/// Stands where the VAD stands: notes when each caller frame arrives, forwards everything.
struct Probe {
    seen: Arc<Mutex<Vec<(u32, Instant)>>>,
    first_kind: Arc<Mutex<Option<FrameKind>>>,
}

impl Processor for Probe {
    fn name(&self) -> &str {
        "vad_probe"
    }
    fn process_now(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> Result<Option<Frame>, FlowError> {
        self.first_kind.lock().unwrap().get_or_insert(frame.kind());
        if let Some(seq) = seq_of(&frame) {
            self.seen.lock().unwrap().push((seq, Instant::now()));
        }
        cx.push_now(frame, dir);
        Ok(None)
    }
}

/// Stands where the TTS stands: on `Text`, pushes `seconds` of 20 ms μ-law chunks at once.
struct Speaker {
    seconds: u32,
}

impl Processor for Speaker {
    fn name(&self) -> &str {
        "tts"
    }
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        if let Frame::Text(_) = frame {
            for i in 0..self.seconds * 50 {
                let audio = TtsAudio {
                    audio: AudioFrame::new(Bytes::from(vec![0x55u8; 160]), AudioFormat::mulaw_8k()),
                    context_id: "answer".into(),
                    words: Arc::from(Vec::new()),
                    offset: FRAME * i,
                };
                cx.push(Frame::from(audio), Direction::Downstream).await;
            }
            cx.push(Frame::TtsStopped { context_id: "answer".into() }, Direction::Downstream).await;
            return Ok(());
        }
        cx.push(frame, dir).await;
        Ok(())
    }
}

#[derive(Clone, Default)]
struct RecSink {
    writes: Arc<Mutex<Vec<Instant>>>,
    clears: Arc<Mutex<Vec<Instant>>>,
}

impl AudioSink for RecSink {
    async fn write(&mut self, _chunk: Bytes, _format: AudioFormat) -> FlowResult {
        self.writes.lock().unwrap().push(Instant::now());
        Ok(())
    }
    fn clear(&mut self) {
        self.clears.lock().unwrap().push(Instant::now());
    }
}

/// Caller audio at 20 ms cadence for `frames` frames; returns when each was pushed.
async fn feed(handle: PipelineHandle, frames: u32) -> Vec<Instant> {
    let mut sent = Vec::with_capacity(frames as usize);
    let t0 = Instant::now();
    for seq in 0..frames {
        tokio::time::sleep_until(t0 + FRAME * seq).await;
        sent.push(Instant::now());
        handle.push_input_audio(caller_frame(seq));
    }
    sent
}

/// The guarantee of issue 13: a paced sink fed 60 s of TTS audio at once while caller audio
/// arrives every 20 ms. Small inboxes everywhere make the old failure mode (caller audio
/// queued behind the bot's own audio, then dropped by the lossy lane) certain if it exists.
#[tokio::test(start_paused = true)]
async fn caller_audio_reaches_the_vad_at_once_while_the_output_paces_sixty_seconds() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let first_kind = Arc::new(Mutex::new(None));
    let sink = RecSink::default();
    let pipeline = Pipeline::new()
        .with_capacity(PassThrough, 2) // the decoder
        .with_capacity(Probe { seen: seen.clone(), first_kind: first_kind.clone() }, 2)
        .with_capacity(PassThrough, 2) // STT forwarding caller audio (the worst case)
        .with_capacity(PassThrough, 2) // aggregators, LLM
        .with_capacity(Speaker { seconds: 60 }, 2)
        .with_capacity(AudioOutput::new(sink.clone(), OutputParams::default()), 4);
    let task = PipelineTask::new(pipeline, PipelineParams::default());
    let handle = task.handle();
    let run = tokio::spawn(task.run());

    handle.push(Frame::Text("answer the caller at length".into())).await.unwrap();
    // Ten seconds of the caller talking over the answer, starting 100 ms into it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = feed(handle.clone(), 500).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 500, "every caller frame reached the VAD");
        for (k, (seq, at)) in seen.iter().enumerate() {
            assert_eq!(*seq as usize, k, "in order");
            let late = at.duration_since(sent[k]);
            assert!(late <= FRAME, "frame {k} reached the VAD {late:?} after it arrived");
        }
    }
    // Meanwhile the bot was still speaking, paced: about 10.2 s of its 60 s answer was written.
    let written = sink.writes.lock().unwrap().len();
    assert!((505..=520).contains(&written), "paced output kept its clock: {written} chunks");

    handle.end().await.unwrap();
    let report = run.await.unwrap();
    assert_eq!(report.outcome, TaskOutcome::Ended);
    assert_eq!(report.input_audio_dropped, 0, "no caller audio dropped");
    let writes = sink.writes.lock().unwrap();
    assert_eq!(writes.len(), 3000, "the whole 60 s answer played");
    let span = writes[2999].duration_since(writes[0]);
    assert!(span >= Duration::from_millis(59_900), "paced in real time, not dumped: {span:?}");
    assert_eq!(*first_kind.lock().unwrap(), Some(FrameKind::Start), "caller input never overtakes Start");
}

/// Barge-in while the output holds a long queue: it stops at once (nothing written after the
/// interrupt), tells the far end to clear, and reports how much the caller heard.
#[tokio::test(start_paused = true)]
async fn interrupt_clears_the_queued_answer_at_once() {
    let sink = RecSink::default();
    let pipeline = Pipeline::new()
        .with(Speaker { seconds: 30 })
        .with(AudioOutput::new(sink.clone(), OutputParams { send_ahead: Duration::ZERO, ..OutputParams::default() }));
    let task = PipelineTask::new(pipeline, PipelineParams::default());
    let handle = task.handle();
    let played = Arc::new(Mutex::new(Vec::new()));
    let p = played.clone();
    let task = task.on_exit(move |dir, f| {
        if let (Direction::Upstream, Frame::PlayedUpTo { position, complete, .. }) = (dir, f) {
            p.lock().unwrap().push((position, complete));
        }
    });
    let run = tokio::spawn(task.run());
    handle.push(Frame::Text("go".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_010)).await;
    let t_interrupt = Instant::now();
    handle.interrupt().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    handle.end().await.unwrap();
    let report = run.await.unwrap();
    assert_eq!(report.outcome, TaskOutcome::Ended);
    let writes = sink.writes.lock().unwrap();
    assert!(writes.iter().all(|t| *t <= t_interrupt), "nothing written after the interrupt");
    assert!((100..=102).contains(&writes.len()), "about 2 s played: {}", writes.len());
    assert_eq!(sink.clears.lock().unwrap().len(), 1);
    let played = played.lock().unwrap();
    let (heard, complete) = played.first().copied().expect("heard position reported");
    assert!(!complete);
    assert!(heard >= Duration::from_millis(1_990) && heard <= Duration::from_millis(2_030), "{heard:?}");
}

/// Parks on every `Text` frame forever: a stage that stalls with caller input behind it.
struct Stall;

impl Processor for Stall {
    fn name(&self) -> &str {
        "stall"
    }
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        if matches!(frame, Frame::Text(_)) {
            std::future::pending::<()>().await;
        }
        cx.push(frame, dir).await;
        Ok(())
    }
}

/// Memory stays bounded: a stalled stage holds at most `caller_lane_capacity` frames of caller
/// input; the oldest beyond it are dropped and counted.
#[tokio::test(start_paused = true)]
async fn a_stalled_stage_holds_a_bounded_caller_lane() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let pipeline =
        Pipeline::new().with(Stall).with(Probe { seen: seen.clone(), first_kind: Arc::new(Mutex::new(None)) });
    let params = PipelineParams { caller_lane_capacity: 10, ..PipelineParams::default() };
    let task = PipelineTask::new(pipeline, params);
    let handle = task.handle();
    let run = tokio::spawn(task.run());
    handle.push(Frame::Text("stall".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await; // the stage is now parked on the text
    let _ = feed(handle.clone(), 30).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(seen.lock().unwrap().is_empty(), "the stalled stage holds caller input");
    assert_eq!(handle.input_audio_dropped(), 20, "30 frames into a lane of 10");
    handle.cancel().unwrap();
    let report = run.await.unwrap();
    assert_eq!(report.input_audio_dropped, 20);
}

/// Counts timer calls and when they came.
struct Ticker {
    fired: Arc<Mutex<Vec<Instant>>>,
    every: Duration,
    left: u32,
}

impl Processor for Ticker {
    fn name(&self) -> &str {
        "ticker"
    }
    fn process_now(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> Result<Option<Frame>, FlowError> {
        if matches!(frame, Frame::Text(_)) {
            cx.wake_at(Instant::now() + self.every);
        }
        cx.push_now(frame, dir);
        Ok(None)
    }
    async fn on_timer(&mut self, cx: &mut Context) -> FlowResult {
        self.fired.lock().unwrap().push(Instant::now());
        self.left = self.left.saturating_sub(1);
        if self.left > 0 {
            cx.wake_at(Instant::now() + self.every);
        }
        Ok(())
    }
}

/// Engine timers fire on time, re-arm from `on_timer`, and a cancelled timer never fires.
#[tokio::test(start_paused = true)]
async fn engine_timers_fire_on_time_and_rearm() {
    let fired = Arc::new(Mutex::new(Vec::new()));
    let task = PipelineTask::new(
        Pipeline::new().with(Ticker { fired: fired.clone(), every: Duration::from_millis(30), left: 5 }),
        PipelineParams::default(),
    );
    let handle = task.handle();
    let run = tokio::spawn(task.run());
    let t0 = Instant::now();
    handle.push(Frame::Text("tick".into())).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    handle.end().await.unwrap();
    let _ = run.await.unwrap();
    let fired = fired.lock().unwrap();
    let rel: Vec<u128> = fired.iter().map(|t| t.duration_since(t0).as_millis()).collect();
    assert_eq!(rel, vec![30, 60, 90, 120, 150]);
}

/// An output written the old way: it sleeps out each 20 ms chunk inside `process`, so it is
/// busy nearly all the time and every inbox before it fills with the bot's audio.
struct SleepingPacer {
    written: Arc<Mutex<u32>>,
}

impl Processor for SleepingPacer {
    fn name(&self) -> &str {
        "sleeping_pacer"
    }
    async fn process(&mut self, frame: Frame, dir: Direction, cx: &mut Context) -> FlowResult {
        if let Frame::TtsAudio(_) = frame {
            tokio::time::sleep(FRAME).await;
            *self.written.lock().unwrap() += 1;
            return Ok(());
        }
        cx.push(frame, dir).await;
        Ok(())
    }
}

/// The lane itself: even when the last stage paces inside `process` and every inbox between it
/// and the VAD is full of the bot's audio, caller audio still overtakes it all.
#[tokio::test(start_paused = true)]
async fn caller_audio_overtakes_a_backed_up_chain() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let written = Arc::new(Mutex::new(0));
    let pipeline = Pipeline::new()
        .with_capacity(Probe { seen: seen.clone(), first_kind: Arc::new(Mutex::new(None)) }, 2)
        .with_capacity(PassThrough, 2)
        .with_capacity(Speaker { seconds: 60 }, 2)
        .with_capacity(PassThrough, 2)
        .with_capacity(SleepingPacer { written: written.clone() }, 2);
    let task = PipelineTask::new(pipeline, PipelineParams::default());
    let handle = task.handle();
    let run = tokio::spawn(task.run());
    handle.push(Frame::Text("answer".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = feed(handle.clone(), 200).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 200, "every caller frame reached the VAD");
        for (k, (_, at)) in seen.iter().enumerate() {
            let late = at.duration_since(sent[k]);
            assert!(late <= FRAME, "frame {k} reached the VAD {late:?} after it arrived");
        }
    }
    assert!(*written.lock().unwrap() < 250, "the bot was still speaking");
    assert_eq!(handle.input_audio_dropped(), 0);
    handle.cancel().unwrap();
    let _ = run.await.unwrap();
}

/// A cough over the bot: the output holds its release from the VAD's onset and resumes where it
/// stopped when no barge-in follows, so the caller loses a short gap, not the answer.
#[tokio::test(start_paused = true)]
async fn output_pauses_at_user_speech_and_resumes_without_a_barge_in() {
    let sink = RecSink::default();
    let params = OutputParams { send_ahead: Duration::ZERO, ..OutputParams::default() };
    let pipeline = Pipeline::new().with(Speaker { seconds: 4 }).with(AudioOutput::new(sink.clone(), params));
    let task = PipelineTask::new(pipeline, PipelineParams::default());
    let handle = task.handle();
    let run = tokio::spawn(task.run());
    handle.push(Frame::Text("go".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_010)).await;
    handle.emit(Event::UserStartedSpeaking).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = sink.writes.lock().unwrap().len();
    assert!((51..=52).contains(&during), "nothing released while the caller spoke: {during}");
    handle.emit(Event::UserStoppedSpeaking).unwrap();
    handle.end().await.unwrap();
    let report = run.await.unwrap();
    assert_eq!(report.outcome, TaskOutcome::Ended);
    let writes = sink.writes.lock().unwrap();
    assert_eq!(writes.len(), 200, "the whole answer played after the pause");
    assert!(sink.clears.lock().unwrap().is_empty(), "no clear without a barge-in");
    let gap = writes.windows(2).map(|w| w[1].duration_since(w[0])).max().unwrap_or_default();
    assert!(gap >= Duration::from_millis(290) && gap <= Duration::from_millis(330), "one pause: {gap:?}");
}

/// Caller input pushed before `End` is taken before it, by every stage (the lane overtakes
/// data, never the other way round).
#[tokio::test]
async fn end_never_overtakes_caller_input() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let pipeline =
        Pipeline::new().with(PassThrough).with(Probe { seen: seen.clone(), first_kind: Arc::new(Mutex::new(None)) });
    let task = PipelineTask::new(pipeline, PipelineParams::default());
    let handle = task.handle();
    for seq in 0..20 {
        handle.push(caller_frame(seq)).await.unwrap();
    }
    handle.end().await.unwrap();
    let report = task.run().await;
    assert_eq!(report.outcome, TaskOutcome::Ended);
    assert_eq!(seen.lock().unwrap().len(), 20);
}
