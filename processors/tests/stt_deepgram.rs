//! `DeepgramStt` against the Deepgram emulator on 127.0.0.1, through the pipeline harness.
#![cfg(feature = "deepgram")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use voxline_emulators::deepgram::{
    ControlMessage, DeepgramConfig, DeepgramEmulator, DeepgramFault, TranscriptScript, Trigger,
};
use voxline_pipeline::testing::Harness;
use voxline_pipeline::{
    AudioFormat, AudioFrame, Event, Frame, MetricsEvent, Pipeline, PipelineParams, StartInfo, Transcript,
};
use voxline_processors::stt::{DeepgramSettings, DeepgramStt, Endpointing, SttStats};

const KEY: &str = "test-key";
const WAIT: Duration = Duration::from_secs(5);

fn settings(emu: &DeepgramEmulator) -> DeepgramSettings {
    let mut s = DeepgramSettings { api_key: Some(KEY.into()), base_url: emu.base_url(), ..Default::default() };
    s.live.finalize_timeout = Duration::from_millis(400);
    s.live.reconnect.initial_backoff = Duration::from_millis(50);
    s
}

fn harness(stt: DeepgramStt, input: AudioFormat) -> Harness {
    let params =
        PipelineParams { start: StartInfo { input_audio: input, ..StartInfo::default() }, ..PipelineParams::default() };
    Harness::with_params(Pipeline::new().with(stt), params)
}

fn start(s: DeepgramSettings, input: AudioFormat) -> (Harness, std::sync::Arc<SttStats>) {
    let stt = DeepgramStt::new(s).unwrap();
    let stats = stt.stats();
    (harness(stt, input), stats)
}

fn mulaw_frame() -> Frame {
    Frame::InputAudio(AudioFrame::new(Bytes::from(vec![0xFFu8; 160]), AudioFormat::mulaw_8k()))
}

async fn push_audio(h: &Harness, frames: usize, frame: impl Fn() -> Frame) {
    for _ in 0..frames {
        h.push(frame()).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn transcripts(h: &Harness) -> Vec<Transcript> {
    h.collected()
        .into_iter()
        .filter_map(|(_, f)| match f {
            Frame::Transcript(t) => Some(*t),
            _ => None,
        })
        .collect()
}

fn finals(h: &Harness) -> Vec<String> {
    transcripts(h).into_iter().filter(|t| t.is_final).map(|t| t.text.to_string()).collect()
}

async fn wait_final(h: &Harness, text: &str) -> bool {
    h.wait_for(WAIT, |fs| fs.iter().any(|(_, f)| matches!(f, Frame::Transcript(t) if t.is_final && &*t.text == text)))
        .await
}

fn is_error(e: &Event, needle: &str) -> bool {
    matches!(e, Event::Error(err) if err.message.contains(needle) && !err.fatal)
}

#[tokio::test]
async fn mulaw_stream_params_auth_interims_and_final() {
    let script = vec![TranscriptScript::new("Book a table for two.", Trigger::AudioMs(600)).with_interims(2)];
    let emu =
        DeepgramEmulator::start(DeepgramConfig { script, ..DeepgramConfig::default().with_api_key(KEY) }).unwrap();
    let (h, stats) = start(settings(&emu), AudioFormat::mulaw_8k());
    push_audio(&h, 40, mulaw_frame).await;
    assert!(wait_final(&h, "Book a table for two.").await, "no final: {:?}", transcripts(&h));

    let ts = transcripts(&h);
    let interims: Vec<_> = ts.iter().filter(|t| !t.is_final).collect();
    assert_eq!(interims.len(), 2, "{ts:?}");
    let fin = ts.iter().find(|t| t.is_final).unwrap();
    assert_eq!(fin.words.len(), 5);
    assert_eq!(&*fin.words[0].word, "Book");
    assert!(fin.words.windows(2).all(|w| w[0].start <= w[1].start && w[0].start < w[0].end));
    assert_eq!(fin.language.as_deref(), Some("en"));
    assert!(fin.confidence > 0.9);

    let rec = emu.wait_for(|r| r.total_audio_bytes() >= 40 * 160, WAIT).await.expect("audio not received");
    let c = &rec.connections[0];
    assert_eq!(c.authorization.as_deref(), Some("Token test-key"));
    for (k, v) in [
        ("model", "nova-3"),
        ("language", "en"),
        ("encoding", "mulaw"),
        ("sample_rate", "8000"),
        ("channels", "1"),
        ("interim_results", "true"),
        ("punctuate", "true"),
        ("smart_format", "false"),
        ("vad_events", "false"),
        ("utterance_end_ms", "1000"),
    ] {
        assert_eq!(c.query_param(k), Some(v), "query param {k}");
    }
    assert_eq!(c.audio_frames, 40, "one binary frame per input frame");

    let out = h.finish().await;
    // The recogniser consumes caller audio by default (`pass_through_audio` is off): it must not
    // ride down to the LLM and TTS stages.
    let audio = out.downstream.iter().filter(|f| matches!(f, Frame::InputAudio(_))).count();
    assert_eq!(audio, 0);
    let rec = emu.wait_for(|r| r.connections[0].closed, WAIT).await.expect("socket not closed");
    assert_eq!(rec.connections[0].count_controls(|c| *c == ControlMessage::CloseStream), 1);
    assert_eq!(stats.snapshot().audio_bytes_sent, 40 * 160);
    assert_eq!(stats.snapshot().connections, 1);
}

#[tokio::test]
async fn pcm16_is_linear16_and_pass_through_can_be_on() {
    let emu = DeepgramEmulator::start(DeepgramConfig::default()).unwrap();
    let mut s = settings(&emu);
    s.live.pass_through_audio = true;
    let (h, _) = start(s, AudioFormat::pcm16(16_000));
    let pcm = || Frame::InputAudio(AudioFrame::new(Bytes::from(vec![0u8; 640]), AudioFormat::pcm16(16_000)));
    push_audio(&h, 5, pcm).await;
    let rec = emu.wait_for(|r| r.total_audio_bytes() >= 5 * 640, WAIT).await.expect("audio");
    assert_eq!(rec.connections[0].query_param("encoding"), Some("linear16"));
    assert_eq!(rec.connections[0].query_param("sample_rate"), Some("16000"));
    let out = h.finish().await;
    assert_eq!(out.downstream.iter().filter(|f| matches!(f, Frame::InputAudio(_))).count(), 5, "forwarded when asked");
}

#[tokio::test]
async fn format_learnt_from_frames_reopens_the_stream() {
    let emu = DeepgramEmulator::start(DeepgramConfig::default()).unwrap();
    // StartInfo says PCM16, but the transport actually delivers μ-law.
    let (h, _) = start(settings(&emu), AudioFormat::pcm16(16_000));
    push_audio(&h, 5, mulaw_frame).await;
    let rec = emu
        .wait_for(
            |r| r.connections.iter().any(|c| c.query_param("encoding") == Some("mulaw") && c.audio_bytes >= 800),
            WAIT,
        )
        .await
        .expect("mulaw stream");
    // The PCM stream opened at Start (if it got that far) carried no audio.
    assert!(rec.connections.iter().all(|c| c.query_param("encoding") == Some("mulaw") || c.audio_bytes == 0));
    h.finish().await;
}

#[tokio::test]
async fn finalize_on_user_stopped_speaking_and_ttfb() {
    let script = vec![TranscriptScript::new("I need a refund", Trigger::Finalize)];
    let emu = DeepgramEmulator::start(DeepgramConfig { script, ..Default::default() }).unwrap();
    let (mut h, stats) = start(settings(&emu), AudioFormat::mulaw_8k());
    push_audio(&h, 20, mulaw_frame).await;
    emu.wait_for(|r| r.total_audio_bytes() >= 20 * 160, WAIT).await.expect("audio");
    h.emit(Event::UserStoppedSpeaking);
    assert!(wait_final(&h, "I need a refund").await);
    let ttfb = h
        .wait_event(
            WAIT,
            |e| matches!(e, Event::Metrics(MetricsEvent::Ttfb { processor, .. }) if &**processor == "deepgram_stt"),
        )
        .await;
    assert!(ttfb.is_some(), "no TTFB metric");
    let rec = emu.received();
    assert_eq!(rec.connections[0].count_controls(|c| *c == ControlMessage::Finalize), 1);
    assert_eq!(stats.snapshot().finalizes_sent, 1);
    assert_eq!(stats.snapshot().finalize_timeouts, 0);
    h.finish().await;
}

#[tokio::test]
async fn keepalive_when_idle() {
    let emu = DeepgramEmulator::start(DeepgramConfig::default()).unwrap();
    let mut s = settings(&emu);
    s.live.keepalive_interval = Duration::from_millis(100);
    let (h, stats) = start(s, AudioFormat::mulaw_8k());
    let rec = emu
        .wait_for(
            |r| r.connections.first().is_some_and(|c| c.count_controls(|c| *c == ControlMessage::KeepAlive) >= 3),
            WAIT,
        )
        .await;
    assert!(rec.is_some(), "no keepalives: {:?}", emu.received());
    // While audio flows, no keepalive is needed.
    let before = emu.received().connections[0].count_controls(|c| *c == ControlMessage::KeepAlive);
    for _ in 0..15 {
        h.push(mulaw_frame()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = emu.received().connections[0].count_controls(|c| *c == ControlMessage::KeepAlive);
    assert!(after <= before + 1, "keepalives while streaming: {before} -> {after}");
    assert!(stats.snapshot().keepalives_sent >= 3);
    h.finish().await;
}

#[tokio::test]
async fn reconnects_replays_buffered_audio_and_keeps_transcribing() {
    // Connection 0 drops after 10 frames; the next handshake is refused once (so audio piles
    // up in the replay buffer during the backoff); the third attempt works.
    let cfg = DeepgramConfig {
        faults: vec![DeepgramFault::DropAfterBytes(1600), DeepgramFault::RejectHandshake(503)],
        connection_scripts: vec![vec![], vec![TranscriptScript::new("still here", Trigger::AudioMs(400))]],
        ..Default::default()
    };
    let emu = DeepgramEmulator::start(cfg).unwrap();
    let mut s = settings(&emu);
    s.live.reconnect.initial_backoff = Duration::from_millis(150);
    let (h, stats) = start(s, AudioFormat::mulaw_8k());
    for _ in 0..80 {
        h.push(mulaw_frame()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(wait_final(&h, "still here").await, "no transcript after reconnect: {:?}", transcripts(&h));
    let snap = stats.snapshot();
    assert_eq!(snap.reconnects, 1, "{snap:?}");
    assert!(snap.audio_bytes_replayed > 0, "nothing replayed: {snap:?}");
    let rec = emu.received();
    assert_eq!(rec.connection_count(), 2);
    assert_eq!(rec.rejected.len(), 1);
    assert!(rec.connections[1].audio_bytes >= snap.audio_bytes_replayed);
    // Call-time offsets: the second connection's timeline starts after the first one's audio.
    let fin = transcripts(&h).into_iter().find(|t| t.is_final).unwrap();
    assert!(fin.start >= Duration::from_millis(200), "offset not applied: {:?}", fin.start);
    let out = h.finish().await;
    assert!(out.events.iter().any(|e| is_error(e, "reconnecting")), "{:?}", out.events);
}

#[tokio::test]
async fn unknown_message_type_is_ignored() {
    let cfg = DeepgramConfig {
        faults: vec![DeepgramFault::UnknownMessage],
        script: vec![TranscriptScript::new("hello", Trigger::AudioMs(200))],
        ..Default::default()
    };
    let emu = DeepgramEmulator::start(cfg).unwrap();
    let (h, stats) = start(settings(&emu), AudioFormat::mulaw_8k());
    push_audio(&h, 15, mulaw_frame).await;
    assert!(wait_final(&h, "hello").await);
    assert_eq!(stats.snapshot().unknown_messages, 1);
    let out = h.finish().await;
    assert!(!out.events.iter().any(|e| matches!(e, Event::Error(_))), "{:?}", out.events);
}

#[tokio::test]
async fn malformed_json_is_an_error_event_not_a_crash() {
    let cfg = DeepgramConfig {
        faults: vec![DeepgramFault::MalformedJson],
        script: vec![TranscriptScript::new("still working", Trigger::AudioMs(200))],
        ..Default::default()
    };
    let emu = DeepgramEmulator::start(cfg).unwrap();
    let (mut h, stats) = start(settings(&emu), AudioFormat::mulaw_8k());
    push_audio(&h, 15, mulaw_frame).await;
    assert!(h.wait_event(WAIT, |e| is_error(e, "malformed")).await.is_some());
    assert!(wait_final(&h, "still working").await);
    assert_eq!(stats.snapshot().malformed_messages, 1);
    let out = h.finish().await;
    assert_eq!(out.report.outcome, voxline_pipeline::TaskOutcome::Ended);
}

#[tokio::test]
async fn never_answering_server_times_out_with_an_error() {
    let cfg = DeepgramConfig { faults: vec![DeepgramFault::NeverAnswer], ..Default::default() };
    let emu = DeepgramEmulator::start(cfg).unwrap();
    let (mut h, stats) = start(settings(&emu), AudioFormat::mulaw_8k());
    push_audio(&h, 20, mulaw_frame).await;
    emu.wait_for(|r| r.total_audio_bytes() >= 20 * 160, WAIT).await.expect("audio");
    let t0 = std::time::Instant::now();
    h.emit(Event::UserStoppedSpeaking);
    assert!(h.wait_event(WAIT, |e| is_error(e, "no transcript within")).await.is_some());
    assert!(t0.elapsed() >= Duration::from_millis(350), "fired early: {:?}", t0.elapsed());
    assert_eq!(stats.snapshot().finalize_timeouts, 1);
    h.finish().await;
}

#[tokio::test]
async fn missing_final_promotes_the_last_interim() {
    // The Finalize answer is scripted as a lone interim: no final ever comes.
    let mut lone = TranscriptScript::new("cancel my order", Trigger::Finalize);
    lone.is_final = false;
    let emu = DeepgramEmulator::start(DeepgramConfig { script: vec![lone], ..Default::default() }).unwrap();
    let (mut h, stats) = start(settings(&emu), AudioFormat::mulaw_8k());
    push_audio(&h, 10, mulaw_frame).await;
    emu.wait_for(|r| r.total_audio_bytes() >= 1600, WAIT).await.expect("audio");
    h.emit(Event::UserStoppedSpeaking);
    assert!(wait_final(&h, "cancel my order").await, "{:?}", transcripts(&h));
    assert!(h.wait_event(WAIT, |e| matches!(e, Event::Metrics(MetricsEvent::Ttfb { .. }))).await.is_some());
    assert_eq!(stats.snapshot().interims_promoted, 1);
    let ts = transcripts(&h);
    assert_eq!(ts.iter().filter(|t| !t.is_final).count(), 1);
    h.finish().await;
}

#[tokio::test]
async fn transcripts_survive_an_interruption() {
    let script = vec![
        TranscriptScript::new("first words", Trigger::Finalize),
        TranscriptScript::new("wait stop", Trigger::Finalize),
    ];
    let emu = DeepgramEmulator::start(DeepgramConfig { script, ..Default::default() }).unwrap();
    let (h, _) = start(settings(&emu), AudioFormat::mulaw_8k());
    push_audio(&h, 10, mulaw_frame).await;
    emu.wait_for(|r| r.total_audio_bytes() >= 1600, WAIT).await.expect("audio");
    h.emit(Event::UserStoppedSpeaking);
    assert!(wait_final(&h, "first words").await);
    // Barge-in: the epoch moves on; the next transcript must still come out.
    h.interrupt();
    push_audio(&h, 10, mulaw_frame).await;
    emu.wait_for(|r| r.total_audio_bytes() >= 3200, WAIT).await.expect("audio");
    h.emit(Event::UserStoppedSpeaking);
    assert!(wait_final(&h, "wait stop").await, "transcript lost after interruption: {:?}", finals(&h));
    let out = h.finish().await;
    assert_eq!(out.report.interruptions, 1);
}

#[tokio::test]
async fn rejected_key_gives_up_without_crashing() {
    let emu = DeepgramEmulator::start(DeepgramConfig::default().with_api_key("right")).unwrap();
    let mut s = settings(&emu);
    s.api_key = Some("wrong".into());
    s.live.reconnect.initial_backoff = Duration::from_millis(10);
    let (mut h, _) = start(s, AudioFormat::mulaw_8k());
    push_audio(&h, 5, mulaw_frame).await;
    assert!(h.wait_event(WAIT, |e| is_error(e, "giving up")).await.is_some());
    let rec = emu.received();
    assert_eq!(rec.rejected.len(), 3, "stops after max_permanent_failures");
    assert!(rec.rejected.iter().all(|r| r.status == 401));
    // The stage keeps taking audio (consumed, not forwarded) and the pipeline ends cleanly.
    push_audio(&h, 5, mulaw_frame).await;
    let out = h.finish().await;
    assert_eq!(out.downstream.iter().filter(|f| matches!(f, Frame::InputAudio(_))).count(), 0);
    assert_eq!(out.report.outcome, voxline_pipeline::TaskOutcome::Ended);
}

/// Pushes `n` frames of the line's continuous audio and waits until the emulator has them all.
async fn stream(h: &Harness, emu: &DeepgramEmulator, n: usize) {
    let before = emu.received().total_audio_bytes();
    push_audio(h, n, mulaw_frame).await;
    emu.wait_for(|r| r.total_audio_bytes() >= before + n as u64 * 160, WAIT).await.expect("audio");
}

/// The VAD's speech start, once the stream is open (a VAD event before that has no session to
/// reach, as in a call where the line's first audio opens the stream).
async fn user_starts(h: &Harness, emu: &DeepgramEmulator) {
    stream(h, emu, 1).await;
    h.emit(Event::UserStartedSpeaking);
}

/// Waits past the finalize timeout (400 ms here) for an error event.
async fn error_after_finalize(h: &mut Harness) -> Option<Event> {
    h.wait_event(Duration::from_millis(900), |e| matches!(e, Event::Error(_))).await
}

#[tokio::test]
async fn finalize_after_the_providers_own_endpoint_is_not_an_error() {
    // Deepgram endpoints on its own and sends the final; the line keeps streaming silence; the
    // local VAD then says the user stopped. Deepgram has nothing to flush and does not answer.
    let script = vec![TranscriptScript::new("I need a refund", Trigger::AudioMs(200)).with_interims(1)];
    let emu =
        DeepgramEmulator::start(DeepgramConfig { script, empty_finalize_reply: false, ..Default::default() }).unwrap();
    let (mut h, stats) = start(settings(&emu), AudioFormat::mulaw_8k());
    user_starts(&h, &emu).await;
    stream(&h, &emu, 9).await;
    assert!(wait_final(&h, "I need a refund").await, "{:?}", transcripts(&h));
    stream(&h, &emu, 10).await;
    h.emit(Event::UserStoppedSpeaking);
    emu.wait_for(|r| r.connections[0].count_controls(|c| *c == ControlMessage::Finalize) == 1, WAIT)
        .await
        .expect("Finalize sent");
    let err = error_after_finalize(&mut h).await;
    assert!(err.is_none(), "an unanswered Finalize with nothing pending was reported: {err:?}");
    let snap = stats.snapshot();
    assert_eq!(snap.finalize_timeouts, 0, "{snap:?}");
    assert_eq!(snap.interims_promoted, 0, "{snap:?}");
    assert_eq!(finals(&h), vec!["I need a refund"]);
    h.finish().await;
}

#[tokio::test]
async fn a_lost_final_after_an_earlier_endpoint_is_still_reported() {
    // Turn 1 ends on Deepgram's own endpoint (quiet Finalize). In turn 2 the user speaks again
    // and Deepgram never answers: words are owed, so that is an error.
    let script = vec![TranscriptScript::new("first part", Trigger::AudioMs(200))];
    let emu =
        DeepgramEmulator::start(DeepgramConfig { script, empty_finalize_reply: false, ..Default::default() }).unwrap();
    let (mut h, stats) = start(settings(&emu), AudioFormat::mulaw_8k());
    user_starts(&h, &emu).await;
    stream(&h, &emu, 9).await;
    assert!(wait_final(&h, "first part").await);
    stream(&h, &emu, 5).await;
    h.emit(Event::UserStoppedSpeaking);
    assert!(error_after_finalize(&mut h).await.is_none(), "turn 1 had nothing pending");

    h.emit(Event::UserStartedSpeaking);
    stream(&h, &emu, 10).await;
    h.emit(Event::UserStoppedSpeaking);
    let err = h.wait_event(WAIT, |e| matches!(e, Event::Error(_))).await;
    assert!(err.as_ref().is_some_and(|e| is_error(e, "no transcript within")), "{err:?}");
    assert_eq!(stats.snapshot().finalize_timeouts, 1);
    assert_eq!(emu.received().connections[0].count_controls(|c| *c == ControlMessage::Finalize), 2);
    h.finish().await;
}

#[tokio::test]
async fn an_empty_finalize_answer_stops_the_ttfb_clock() {
    // Turn 1 was finalized by Deepgram's endpoint; the Finalize gets an empty from_finalize
    // answer. Turn 2's own-endpoint final must not be timed from turn 1's stop.
    let script = vec![
        TranscriptScript::new("hello", Trigger::AudioMs(200)),
        TranscriptScript::new("second turn", Trigger::AudioMs(200)),
    ];
    let emu = DeepgramEmulator::start(DeepgramConfig { script, ..Default::default() }).unwrap();
    let (mut h, _) = start(settings(&emu), AudioFormat::mulaw_8k());
    user_starts(&h, &emu).await;
    stream(&h, &emu, 9).await;
    assert!(wait_final(&h, "hello").await);
    stream(&h, &emu, 3).await;
    h.emit(Event::UserStoppedSpeaking);
    // The empty from_finalize answer arrives well within the timeout.
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.emit(Event::UserStartedSpeaking);
    stream(&h, &emu, 7).await;
    assert!(wait_final(&h, "second turn").await, "{:?}", finals(&h));
    let ttfb =
        h.wait_event(Duration::from_millis(300), |e| matches!(e, Event::Metrics(MetricsEvent::Ttfb { .. }))).await;
    assert!(ttfb.is_none(), "TTFB taken across turns: {ttfb:?}");
    let out = h.finish().await;
    assert!(!out.events.iter().any(|e| matches!(e, Event::Error(_))), "{:?}", out.events);
}

#[tokio::test]
async fn turn_taking_params_reach_deepgram_and_its_events_are_handled_quietly() {
    let script = vec![TranscriptScript::new("where is my order", Trigger::AudioMs(300)).with_interims(2)];
    let emu = DeepgramEmulator::start(DeepgramConfig { script, ..Default::default() }).unwrap();
    let mut s = settings(&emu);
    s.endpointing = Endpointing::SilenceMs(300);
    s.utterance_end_ms = Some(1000);
    s.vad_events = true;
    let (mut h, stats) = start(s, AudioFormat::mulaw_8k());
    user_starts(&h, &emu).await;
    stream(&h, &emu, 19).await;
    assert!(wait_final(&h, "where is my order").await, "{:?}", transcripts(&h));
    h.emit(Event::UserStoppedSpeaking);
    let c = &emu.received().connections[0];
    for (k, v) in [("endpointing", "300"), ("utterance_end_ms", "1000"), ("vad_events", "true")] {
        assert_eq!(c.query_param(k), Some(v), "query param {k}");
    }
    assert!(error_after_finalize(&mut h).await.is_none());
    let snap = stats.snapshot();
    assert_eq!((snap.unknown_messages, snap.malformed_messages), (0, 0), "{snap:?}");
    h.finish().await;
}

/// Run with `cargo test --release -p voxline-processors --test stt_deepgram -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn measure_ttfb() {
    let n = 20;
    let script = (0..n).map(|i| TranscriptScript::new(&format!("utterance number {i}"), Trigger::Finalize)).collect();
    let emu = DeepgramEmulator::start(DeepgramConfig { script, ..Default::default() }).unwrap();
    let (mut h, _) = start(settings(&emu), AudioFormat::mulaw_8k());
    let mut samples = Vec::new();
    for i in 0..n {
        push_audio(&h, 10, mulaw_frame).await;
        emu.wait_for(|r| r.total_audio_bytes() >= (i as u64 + 1) * 1600, WAIT).await.unwrap();
        h.emit(Event::UserStoppedSpeaking);
        if let Some(Event::Metrics(MetricsEvent::Ttfb { value, .. })) =
            h.wait_event(WAIT, |e| matches!(e, Event::Metrics(MetricsEvent::Ttfb { .. }))).await
        {
            samples.push(value);
        }
    }
    samples.sort();
    let us = |d: Duration| d.as_micros();
    println!(
        "deepgram emulator TTFB (UserStoppedSpeaking -> final), n={}: min {} us, p50 {} us, max {} us",
        samples.len(),
        us(samples[0]),
        us(samples[samples.len() / 2]),
        us(samples[samples.len() - 1])
    );
    h.finish().await;
}
