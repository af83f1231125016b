//! `Mixer`: levels, looping, saturation, pause behaviour, idle background and interruptions.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use voxline_pipeline::testing::Harness;
use voxline_pipeline::{AudioFormat, AudioFrame, Event, Frame, TtsAudio};
use voxline_processors::audio::{Mixer, MixerConfig};

fn frame(samples: &[i16], rate: u32) -> AudioFrame {
    AudioFrame::new(
        Bytes::from(samples.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()),
        AudioFormat::pcm16(rate),
    )
}

fn samples(a: &AudioFrame) -> Vec<i16> {
    a.data.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]])).collect()
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

fn tone(rate: u32, hz: f64, n: usize, amp: f64) -> Vec<i16> {
    (0..n).map(|i| ((2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin() * amp) as i16).collect()
}

fn paused(level_db: f32) -> MixerConfig {
    MixerConfig { sample_rate: 16_000, level_db, pause_when_silent: true }
}

#[test]
fn level_is_applied_and_the_track_loops() {
    // A ramp of 500 samples makes position errors visible.
    let track: Vec<i16> = (0..500).map(|i| i * 40).collect();
    let mut m = Mixer::from_samples(&track, 16_000, paused(-6.0206)).unwrap();
    let silence = vec![0i16; 320];
    let mut heard = Vec::new();
    for _ in 0..5 {
        heard.extend(samples(&m.mix(&frame(&silence, 16_000)).unwrap()));
    }
    // 1600 samples of a 500-sample loop at half amplitude.
    for (i, &v) in heard.iter().enumerate() {
        assert_eq!(v, ((i % 500) as i16 * 40 + 1) / 2, "sample {i}");
    }
    // RMS level of a tone at -20 dB.
    let t = tone(16_000, 440.0, 16_000, 10_000.0);
    let mut m = Mixer::from_samples(&t, 16_000, paused(-20.0)).unwrap();
    let out = samples(&m.mix(&frame(&vec![0; 16_000], 16_000)).unwrap());
    let ratio = rms(&out) / rms(&t);
    assert!((20.0 * ratio.log10() + 20.0).abs() < 0.05, "level {:.2} dB", 20.0 * ratio.log10());
}

#[test]
fn mixing_saturates_instead_of_wrapping() {
    let mut m = Mixer::from_samples(&[20_000, -20_000], 16_000, paused(0.0)).unwrap();
    let out = samples(&m.mix(&frame(&[20_000, -20_000, 100, -100], 16_000)).unwrap());
    assert_eq!(out, vec![32767, -32768, 20_100, -20_100]);
}

#[test]
fn wav_is_resampled_once_to_the_output_rate() {
    let dir = std::env::temp_dir().join(format!("voxline_mixer_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bg.wav");
    // Stereo 48 kHz, 1 kHz tone in both channels, 1 s.
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for s in tone(48_000, 1000.0, 48_000, 16_000.0) {
        w.write_sample(s).unwrap();
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    let m = Mixer::from_wav(&path, MixerConfig { sample_rate: 8000, level_db: 0.0, pause_when_silent: true }).unwrap();
    let track = m.track();
    assert_eq!(track.len(), 8000);
    // Same level, and a 1 kHz period of 8 samples at 8 kHz: correlate with a shifted copy.
    assert!((rms(&track[100..7900]) / (16_000.0 / 2f64.sqrt()) - 1.0).abs() < 0.02);
    let c: f64 = track[100..7900].iter().zip(&track[108..7908]).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
    assert!(c > 0.95 * rms(&track[100..7900]).powi(2) * 7800.0);
    // Missing file and bad settings are clear errors.
    let e = Mixer::from_wav(dir.join("nope.wav"), MixerConfig::default()).err().unwrap().to_string();
    assert!(e.contains("nope.wav"), "{e}");
    assert!(Mixer::from_samples(&[], 16_000, MixerConfig::default()).is_err());
    assert!(Mixer::from_samples(&[1], 16_000, MixerConfig { level_db: f32::NAN, ..MixerConfig::default() }).is_err());
    assert!(Mixer::from_samples(&[1], 11_025, MixerConfig::default()).is_err());
}

fn tts(samples_: &[i16]) -> Frame {
    Frame::from(TtsAudio {
        audio: frame(samples_, 16_000),
        context_id: "u1".into(),
        words: Vec::new().into(),
        offset: Duration::ZERO,
    })
}

fn output_audio(out: &[(voxline_pipeline::Direction, Frame)]) -> usize {
    out.iter().filter(|(_, f)| matches!(f, Frame::OutputAudio(_))).count()
}

#[tokio::test]
async fn paused_mixer_is_silent_between_turns_and_keeps_tts_metadata() {
    let m = Mixer::from_samples(&[1000; 100], 16_000, paused(0.0)).unwrap();
    let h = Harness::single(m);
    h.push(tts(&[0; 320])).await;
    h.push(Frame::Text("x".into())).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let got = h.collected();
    assert_eq!(output_audio(&got), 0, "no idle frames when pausing");
    let t = got.iter().find_map(|(_, f)| if let Frame::TtsAudio(t) = f { Some(t.clone()) } else { None }).unwrap();
    assert_eq!(&*t.context_id, "u1");
    assert!(samples(&t.audio).iter().all(|&v| v == 1000));
    // Wrong rate: refused, naming both formats.
    h.push(Frame::OutputAudio(frame(&[0; 160], 8000))).await;
    let out = h.finish().await;
    let err = out.events.iter().find_map(|e| if let Event::Error(e) = e { Some(e.message.to_string()) } else { None });
    assert!(err.is_some_and(|m| m.contains("16000") && m.contains("8000")));
}

#[tokio::test]
async fn idle_background_stops_for_the_bot_and_survives_an_interruption() {
    let m = Mixer::from_samples(&[500; 1000], 16_000, MixerConfig { level_db: 0.0, ..MixerConfig::default() }).unwrap();
    let stats = m.stats();
    let h = Harness::single(m);
    // Idle: background frames at 20 ms, 20 ms each, full of the track.
    assert!(h.wait_for(Duration::from_secs(2), |f| output_audio(f) >= 5).await, "no idle background");
    let first = h
        .collected()
        .into_iter()
        .find_map(|(_, f)| if let Frame::OutputAudio(a) = f { Some(a) } else { None })
        .unwrap();
    assert_eq!(samples(&first), vec![500; 320]);
    // The bot speaks: idle frames stop, bot frames carry the background.
    h.emit(Event::BotStartedSpeaking);
    h.push(tts(&[100; 320])).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let idle_before = stats.idle_frames();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(stats.idle_frames(), idle_before, "idle frames while the bot speaks");
    assert_eq!(stats.mixed_frames(), 1);
    // Barge-in: bot audio discarded, background resumes (with a sender of the new epoch).
    let heard = output_audio(&h.collected());
    h.interrupt();
    // Counted at the pipeline's exit: frames of a stale epoch would be dropped before it.
    assert!(
        h.wait_for(Duration::from_secs(2), |f| output_audio(f) >= heard + 3).await,
        "no background after the interruption"
    );
    // And after a normal end of turn too.
    h.emit(Event::BotStartedSpeaking);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let n = stats.idle_frames();
    h.emit(Event::BotStoppedSpeaking);
    assert!(h.wait_for(Duration::from_secs(2), |_| stats.idle_frames() >= n + 3).await);
    let out = h.finish().await;
    assert!(!out.events.iter().any(|e| matches!(e, Event::Error(_))));
}
