//! `ElevenLabsTts` against the ElevenLabs emulator on 127.0.0.1, through the pipeline harness.
#![cfg(feature = "elevenlabs")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use voxline_emulators::elevenlabs::{ElevenLabsConfig, ElevenLabsEmulator, TtsFault};
use voxline_pipeline::testing::Harness;
use voxline_pipeline::{
    AudioEncoding, AudioFormat, Event, Frame, MetricsEvent, Pipeline, PipelineParams, StartInfo, TtsAudio, WordTiming,
};
use voxline_processors::tts::{ElevenLabsSettings, ElevenLabsTts, TtsMode, TtsStats};

const KEY: &str = "xi-test";
const WAIT: Duration = Duration::from_secs(5);

fn settings(emu: &ElevenLabsEmulator) -> ElevenLabsSettings {
    let mut s = ElevenLabsSettings {
        api_key: Some(KEY.into()),
        base_url: emu.base_url(),
        http_base_url: emu.http_base_url(),
        voice_id: "voice-1".into(),
        ..Default::default()
    };
    s.reconnect.initial_backoff = Duration::from_millis(20);
    s
}

fn start(s: ElevenLabsSettings, output: AudioFormat) -> (Harness, Arc<TtsStats>) {
    let tts = ElevenLabsTts::new(s).unwrap();
    let stats = tts.stats();
    let params = PipelineParams {
        start: StartInfo { output_audio: output, ..StartInfo::default() },
        ..PipelineParams::default()
    };
    (Harness::with_params(Pipeline::new().with(tts), params), stats)
}

async fn say(h: &Harness, text: &str) {
    h.push(Frame::LlmResponseStart).await;
    h.push(Frame::Text(text.into())).await;
    h.push(Frame::LlmResponseEnd).await;
}

fn audio_of(h: &Harness, ctx: &str) -> Vec<TtsAudio> {
    h.collected()
        .into_iter()
        .filter_map(|(_, f)| match f {
            Frame::TtsAudio(a) if &*a.context_id == ctx => Some(*a),
            _ => None,
        })
        .collect()
}

async fn wait_stopped(h: &Harness, ctx: &str) -> bool {
    h.wait_for(WAIT, |fs| fs.iter().any(|(_, f)| matches!(f, Frame::TtsStopped { context_id } if &**context_id == ctx)))
        .await
}

async fn wait_audio(h: &Harness, ctx: &str) -> bool {
    h.wait_for(WAIT, |fs| fs.iter().any(|(_, f)| matches!(f, Frame::TtsAudio(a) if &*a.context_id == ctx))).await
}

fn is_error(e: &Event, needle: &str) -> bool {
    matches!(e, Event::Error(err) if err.message.contains(needle) && !err.fatal)
}

#[tokio::test]
async fn text_to_started_audio_with_word_timings_and_stopped() {
    let emu = ElevenLabsEmulator::start(ElevenLabsConfig::default().with_api_key(KEY)).unwrap();
    let (mut h, stats) = start(settings(&emu), AudioFormat::mulaw_8k());
    let text = "Your table for two is booked at seven tonight.";
    say(&h, text).await;
    assert!(wait_stopped(&h, "turn-1").await, "no TtsStopped: {:?}", h.collected());
    assert!(
        h.wait_event(
            WAIT,
            |e| matches!(e, Event::Metrics(MetricsEvent::Ttfb { processor, .. }) if &**processor == "elevenlabs_tts")
        )
        .await
        .is_some()
    );

    let frames: Vec<Frame> = h.collected().into_iter().map(|(_, f)| f).collect();
    let kinds: Vec<&str> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::TtsStarted { .. } => Some("started"),
            Frame::TtsAudio(_) => Some("audio"),
            Frame::TtsStopped { .. } => Some("stopped"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds.first(), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"stopped"));
    assert_eq!(kinds.iter().filter(|k| **k == "started").count(), 1);
    assert!(frames.iter().any(|f| matches!(f, Frame::LlmResponseEnd)), "LlmResponseEnd forwarded");

    let audio = audio_of(&h, "turn-1");
    assert!(audio.len() > 1);
    // μ-law transport: μ-law straight from the provider, offsets accumulate.
    let mut expect = Duration::ZERO;
    for a in &audio {
        assert_eq!(a.audio.format, AudioFormat::mulaw_8k());
        assert_eq!(a.offset, expect);
        expect += a.audio.duration();
    }
    let words: Vec<WordTiming> = audio.iter().flat_map(|a| a.words.iter().cloned()).collect();
    let got: Vec<&str> = words.iter().map(|w| &*w.word).collect();
    let want: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(got, want);
    assert!(words.windows(2).all(|w| w[0].end <= w[1].start), "not monotonic: {words:?}");
    assert!(words.iter().all(|w| w.start < w.end && w.end <= expect));
    let tts_text: Vec<String> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::TtsText { text, .. } => Some(text.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(tts_text.join(" "), text);

    let rec = emu.received();
    let c = &rec.connections[0];
    assert_eq!(c.api_key.as_deref(), Some(KEY));
    assert_eq!(c.voice_id, "voice-1");
    let q = |k: &str| c.query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(q("output_format"), Some("ulaw_8000"));
    assert_eq!(q("model_id"), Some("eleven_flash_v2_5"));
    assert_eq!(c.contexts_opened, vec!["turn-1".to_string()]);
    assert_eq!(c.texts.iter().map(|t| t.text.as_str()).collect::<String>(), format!("{text} "));
    assert_eq!(c.flushes, vec![Some("turn-1".to_string())]);
    assert_eq!(stats.snapshot().contexts_opened, 1);

    h.finish().await;
    let rec = emu.wait_for(|r| r.connections[0].closed, WAIT).await.expect("socket closed");
    assert!(rec.connections[0].close_socket, "close_socket sent at the end");
}

#[tokio::test]
async fn pcm_transport_gets_pcm() {
    let emu = ElevenLabsEmulator::start(ElevenLabsConfig::default()).unwrap();
    let (h, _) = start(settings(&emu), AudioFormat::pcm16(24_000));
    say(&h, "Hello.").await;
    assert!(wait_stopped(&h, "turn-1").await);
    let audio = audio_of(&h, "turn-1");
    assert!(audio.iter().all(|a| a.audio.format == AudioFormat::pcm16(24_000) && a.audio.data.len() % 2 == 0));
    let rec = emu.received();
    assert!(rec.connections[0].query.contains(&("output_format".into(), "pcm_24000".into())));
    h.finish().await;
}

#[tokio::test]
async fn interruption_closes_the_context_and_drops_its_audio() {
    let cfg = ElevenLabsConfig { chunk_delay: Duration::from_millis(40), ..Default::default() };
    let emu = ElevenLabsEmulator::start(cfg).unwrap();
    let (mut h, stats) = start(settings(&emu), AudioFormat::mulaw_8k());
    h.push(Frame::LlmResponseStart).await;
    h.push(Frame::Text("This is a long answer that the caller will cut off halfway through.".into())).await;
    assert!(wait_audio(&h, "turn-1").await);
    h.interrupt();
    assert!(h.wait_event(WAIT, |e| matches!(e, Event::Interrupt)).await.is_some());
    let n0 = audio_of(&h, "turn-1").len();
    let rec = emu.wait_for(|r| r.connections[0].contexts_closed.contains(&"turn-1".to_string()), WAIT).await;
    assert!(rec.is_some(), "context not closed at the provider");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(audio_of(&h, "turn-1").len(), n0, "audio of the interrupted context after the Interrupt");
    assert!(
        !h.collected().iter().any(|(_, f)| matches!(f, Frame::TtsStopped { context_id } if &**context_id == "turn-1")),
        "no TtsStopped for a cancelled utterance"
    );
    // The (late) end of the interrupted response must not reopen it; the next turn speaks.
    h.push(Frame::LlmResponseEnd).await;
    say(&h, "Sure, go ahead.").await;
    assert!(wait_stopped(&h, "turn-2").await, "{:?}", h.collected());
    assert_eq!(stats.snapshot().contexts_cancelled, 1);
    let out = h.finish().await;
    assert!(!out.events.iter().any(|e| matches!(e, Event::Error(_))), "{:?}", out.events);
}

#[tokio::test]
async fn provider_error_is_an_event_and_the_pipeline_continues() {
    let cfg = ElevenLabsConfig {
        faults: vec![TtsFault::Error { error: "quota_exceeded".into(), message: "You exceeded your quota.".into() }],
        ..Default::default()
    };
    let emu = ElevenLabsEmulator::start(cfg).unwrap();
    let (mut h, _) = start(settings(&emu), AudioFormat::mulaw_8k());
    say(&h, "First try.").await;
    assert!(h.wait_event(WAIT, |e| is_error(e, "quota_exceeded")).await.is_some());
    // The server closed that socket; the next turn reconnects and is spoken.
    tokio::time::sleep(Duration::from_millis(100)).await;
    say(&h, "Second try.").await;
    assert!(wait_stopped(&h, "turn-2").await, "{:?}", h.collected());
    assert_eq!(emu.received().connections.len(), 2);
    let out = h.finish().await;
    assert_eq!(out.report.outcome, voxline_pipeline::TaskOutcome::Ended);
}

#[tokio::test]
async fn http_streaming_fallback() {
    let emu = ElevenLabsEmulator::start(ElevenLabsConfig::default().with_api_key(KEY)).unwrap();
    let mut s = settings(&emu);
    s.mode = TtsMode::HttpStreaming;
    let (h, stats) = start(s, AudioFormat::pcm16(16_000));
    h.push(Frame::LlmResponseStart).await;
    h.push(Frame::Text("One sentence.".into())).await;
    h.push(Frame::Text("Another one.".into())).await;
    h.push(Frame::LlmResponseEnd).await;
    assert!(wait_stopped(&h, "turn-1").await, "{:?}", h.collected());
    let frames: Vec<Frame> = h.collected().into_iter().map(|(_, f)| f).collect();
    let started = frames.iter().filter(|f| matches!(f, Frame::TtsStarted { .. })).count();
    assert_eq!(started, 1);
    let texts: Vec<String> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::TtsText { text, .. } => Some(text.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, vec!["One sentence.", "Another one."]);
    let audio = audio_of(&h, "turn-1");
    let bytes: usize = audio.iter().map(|a| a.audio.data.len()).sum();
    // 60 ms per character at 16 kHz PCM16.
    assert_eq!(bytes, ("One sentence. ".len() + "Another one. ".len()) * 60 * 32);
    assert!(audio.iter().all(|a| a.audio.format.encoding == AudioEncoding::Pcm16));
    let rec = emu.received();
    assert_eq!(rec.http_requests.len(), 2);
    let r = &rec.http_requests[0];
    assert_eq!(r.path, "/v1/text-to-speech/voice-1/stream");
    assert!(r.query.contains(&("output_format".into(), "pcm_16000".into())));
    assert!(r.headers.contains(&("xi-api-key".into(), KEY.into())));
    assert_eq!(r.body["text"], "One sentence. ");
    assert_eq!(stats.snapshot().requests, 2);
    h.finish().await;
}

#[tokio::test]
async fn http_error_is_reported_and_next_turn_works() {
    let cfg = ElevenLabsConfig { http_faults: vec![TtsFault::Status(429)], ..Default::default() };
    let emu = ElevenLabsEmulator::start(cfg).unwrap();
    let mut s = settings(&emu);
    s.mode = TtsMode::HttpStreaming;
    let (mut h, _) = start(s, AudioFormat::mulaw_8k());
    say(&h, "Busy now.").await;
    assert!(h.wait_event(WAIT, |e| is_error(e, "too_many_concurrent_requests")).await.is_some());
    say(&h, "Working now.").await;
    assert!(wait_stopped(&h, "turn-2").await);
    h.finish().await;
}

#[tokio::test]
async fn open_context_cap_is_respected_under_rapid_barge_ins() {
    // The provider frees closed contexts late: a naive client hits max_active_conversations.
    let cfg = ElevenLabsConfig {
        context_release_delay: Duration::from_millis(800),
        chunk_delay: Duration::from_millis(30),
        ..Default::default()
    };
    let emu = ElevenLabsEmulator::start(cfg).unwrap();
    let (mut h, stats) = start(settings(&emu), AudioFormat::mulaw_8k());
    for turn in 1..=8 {
        h.push(Frame::LlmResponseStart).await;
        h.push(Frame::Text(format!("Turn {turn} is speaking a fairly long sentence now.").into())).await;
        let ctx = format!("turn-{turn}");
        assert!(wait_audio(&h, &ctx).await, "turn {turn} got no audio");
        h.interrupt();
        assert!(h.wait_event(WAIT, |e| matches!(e, Event::Interrupt)).await.is_some());
    }
    let rec = emu.received();
    assert!(rec.connections.iter().all(|c| c.errors_sent.is_empty()), "{:?}", rec.connections);
    assert!(rec.connections.iter().all(|c| c.contexts_opened.len() <= 5));
    assert!(stats.snapshot().cap_reconnects >= 1);
    let out = h.finish().await;
    assert!(!out.events.iter().any(|e| is_error(e, "max_active")), "{:?}", out.events);
}

#[tokio::test]
async fn keepalive_when_idle() {
    let emu = ElevenLabsEmulator::start(ElevenLabsConfig::default()).unwrap();
    let mut s = settings(&emu);
    s.keepalive_interval = Duration::from_millis(100);
    let (h, _) = start(s, AudioFormat::mulaw_8k());
    let rec = emu.wait_for(|r| r.connections.first().is_some_and(|c| c.keepalives >= 3), WAIT).await;
    assert!(rec.is_some(), "{:?}", emu.received());
    // A keepalive before any context must not open one.
    assert!(emu.received().connections[0].contexts_opened.is_empty());
    h.finish().await;
}

#[tokio::test]
async fn llm_tokens_without_an_aggregator_are_spoken() {
    let emu = ElevenLabsEmulator::start(ElevenLabsConfig::default()).unwrap();
    let (h, _) = start(settings(&emu), AudioFormat::mulaw_8k());
    h.push(Frame::LlmResponseStart).await;
    for tok in ["Hel", "lo ", "there", "."] {
        h.push(Frame::LlmText(tok.into())).await;
    }
    h.push(Frame::LlmResponseEnd).await;
    assert!(wait_stopped(&h, "turn-1").await);
    let words: Vec<String> =
        audio_of(&h, "turn-1").iter().flat_map(|a| a.words.iter().map(|w| w.word.to_string())).collect();
    let tail: Vec<String> = h
        .collected()
        .into_iter()
        .filter_map(|(_, f)| match f {
            Frame::TtsText { text, .. } => Some(text.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(tail.join(" "), "Hello there.");
    assert_eq!(words.first().map(String::as_str), Some("Hello"));
    h.finish().await;
}

/// Run with `cargo test --release -p voxline-processors --test tts_elevenlabs -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn measure_ttfb() {
    for mode in [TtsMode::WebSocket, TtsMode::HttpStreaming] {
        let emu = ElevenLabsEmulator::start(ElevenLabsConfig::default()).unwrap();
        let mut s = settings(&emu);
        s.mode = mode;
        let (mut h, _) = start(s, AudioFormat::mulaw_8k());
        let mut samples = Vec::new();
        for turn in 1..=20 {
            say(&h, "Your order ships tomorrow morning.").await;
            if let Some(Event::Metrics(MetricsEvent::Ttfb { value, .. })) =
                h.wait_event(WAIT, |e| matches!(e, Event::Metrics(MetricsEvent::Ttfb { .. }))).await
            {
                samples.push(value);
            }
            assert!(wait_stopped(&h, &format!("turn-{turn}")).await);
        }
        samples.sort();
        let us = |d: Duration| d.as_micros();
        println!(
            "elevenlabs emulator TTFB ({mode:?}, text sent -> first audio), n={}: min {} us, p50 {} us, max {} us",
            samples.len(),
            us(samples[0]),
            us(samples[samples.len() / 2]),
            us(samples[samples.len() - 1])
        );
        h.finish().await;
    }
}
