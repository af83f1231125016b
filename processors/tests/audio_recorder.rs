//! CallRecorder: a one-hour call keeps memory flat and the file has exactly the caller's length,
//! with the bot track aligned by the caller clock.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use voxline_pipeline::testing::Harness;
use voxline_pipeline::{AudioFormat, AudioFrame, Event, Frame, TtsAudio};
use voxline_processors::audio::CallRecorder;

fn pcm(samples: &[i16], rate: u32) -> AudioFrame {
    AudioFrame::new(
        Bytes::from(samples.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()),
        AudioFormat::pcm16(rate),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hour_call_keeps_memory_flat_and_the_file_has_the_right_length() {
    let path = std::env::temp_dir().join(format!("voxline_rec_{}.wav", std::process::id()));
    let rec = CallRecorder::new(&path, 8000).unwrap();
    let stats = rec.stats();
    let h = Harness::single(rec);
    let caller = pcm(&[1000; 160], 8000);
    // Bot speech: a 5 s utterance arriving in one burst every 60 s, at 16 kHz (resampled inline).
    let bot = pcm(&vec![-2000i16; 80_000], 16000);
    const FRAMES: usize = 180_000; // one hour of 20 ms frames
    for i in 0..FRAMES {
        if i % 3000 == 100 {
            let t = TtsAudio {
                audio: bot.clone(),
                context_id: Arc::from("c"),
                words: Arc::from(vec![]),
                offset: Duration::ZERO,
            };
            h.push(Frame::from(t)).await;
        }
        h.push(Frame::InputAudio(caller.clone())).await;
    }
    let out = h.finish().await;
    assert!(out.events.iter().all(|e| !matches!(e, Event::Error(_))));
    // Memory: the bot queue never held more than one utterance, the scratch one burst.
    assert!(stats.bot_queue_peak() <= 40_000, "bot queue peak {}", stats.bot_queue_peak());
    assert!(stats.scratch_peak() <= 40_000, "scratch peak {}", stats.scratch_peak());
    assert_eq!(stats.bot_dropped(), 0);
    assert_eq!(stats.frames_written(), (FRAMES * 160) as u64);
    let reader = hound::WavReader::open(&path).unwrap();
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (2, 8000, 16));
    assert_eq!(reader.duration() as usize, FRAMES * 160);
    // Alignment: bot silent before its first utterance (frame 100 = 2.0 s), speaking right after.
    let mut r = hound::WavReader::open(&path).unwrap();
    let head: Vec<i16> = r.samples::<i16>().take(2 * 8000 * 3).map(Result::unwrap).collect();
    assert_eq!(head[2 * 15_999 + 1], 0, "bot silent at 1.99 s");
    assert_eq!(head[2 * 1000], 1000, "caller track");
    let bot_at = |s: usize| head[2 * s + 1];
    assert!((bot_at(16_500) - -2000).abs() < 50, "bot speaking at 2.06 s: {}", bot_at(16_500));
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn interrupt_clears_unplayed_bot_audio_and_bad_input_is_refused() {
    let path = std::env::temp_dir().join(format!("voxline_rec_int_{}.wav", std::process::id()));
    let rec = CallRecorder::new(&path, 8000).unwrap();
    let stats = rec.stats();
    let h = Harness::single(rec);
    h.push(Frame::OutputAudio(pcm(&[500; 8000], 8000))).await;
    h.push(Frame::InputAudio(pcm(&[0; 160], 8000))).await;
    // Events overtake frames: let both frames (after Start) through before interrupting.
    assert!(h.wait_for(Duration::from_secs(5), |f| f.len() >= 3).await);
    h.interrupt();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..10 {
        h.push(Frame::InputAudio(pcm(&[0; 160], 8000))).await;
    }
    // Stereo and odd-length payloads: refused, not recorded.
    let mut st = pcm(&[0; 320], 8000);
    st.format.channels = 2;
    h.push(Frame::InputAudio(st)).await;
    h.push(Frame::InputAudio(AudioFrame::new(Bytes::from(vec![0u8; 3]), AudioFormat::pcm16(8000)))).await;
    let out = h.finish().await;
    let errors = out.events.iter().filter(|e| matches!(e, Event::Error(_))).count();
    assert_eq!(errors, 2);
    assert_eq!(stats.frames_written(), 11 * 160);
    let mut r = hound::WavReader::open(&path).unwrap();
    let s: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    // The first frame carried bot audio; after the interruption the bot track is silent.
    assert_eq!(s[1], 500);
    assert!(s[2 * 160..].chunks(2).all(|p| p[1] == 0));
    let _ = std::fs::remove_file(&path);
}
