//! `audio::convert`: the buffer functions and the `FormatConverter` processor.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::Bytes;
use voxline_pipeline::testing::Harness;
use voxline_pipeline::{AudioEncoding, AudioFormat, AudioFrame, Event, Frame, TtsAudio};
use voxline_processors::audio::convert::{self, db_to_gain};
use voxline_processors::audio::{AudioPath, FormatConverter};

fn pcm16(samples: &[i16], channels: u16) -> AudioFrame {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    AudioFrame::new(Bytes::from(data), AudioFormat { encoding: AudioEncoding::Pcm16, sample_rate: 16000, channels })
}

fn f32_frame(samples: &[f32], channels: u16) -> AudioFrame {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    AudioFrame::new(Bytes::from(data), AudioFormat { encoding: AudioEncoding::F32, sample_rate: 16000, channels })
}

fn i16s(a: &AudioFrame) -> Vec<i16> {
    a.data.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]])).collect()
}

fn f32s(a: &AudioFrame) -> Vec<f32> {
    a.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

#[test]
fn i16_f32_round_trip_is_exact_for_every_value() {
    let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
    let mut f = Vec::new();
    convert::i16_to_f32(&all, &mut f);
    assert_eq!(f[0], -1.0);
    assert!(f.iter().all(|x| (-1.0..1.0).contains(x)));
    let mut back = Vec::new();
    assert_eq!(convert::f32_to_i16(&f, &mut back), 0);
    assert_eq!(back, all);
}

#[test]
fn f32_to_i16_rounds_saturates_and_silences_non_finite() {
    let mut out = Vec::new();
    let bad = convert::f32_to_i16(
        &[0.5, 1.0, 2.0, -3.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.1 / 32768.0],
        &mut out,
    );
    assert_eq!(bad, 3);
    assert_eq!(out, vec![16384, 32767, 32767, -32768, 0, 0, 0, 0]);
    let mut v = vec![1.0, f32::NAN, -0.5];
    assert_eq!(convert::sanitize_f32(&mut v), 1);
    assert_eq!(v, vec![1.0, 0.0, -0.5]);
}

#[test]
fn channels_and_gain() {
    let mut st = Vec::new();
    convert::mono_to_stereo(&[1i16, -2, 3], &mut st);
    assert_eq!(st, vec![1, 1, -2, -2, 3, 3]);
    let mut mono = Vec::new();
    convert::stereo_to_mono_i16(&[32767, 32767, -32768, -32768, 100, -100, 7], &mut mono);
    assert_eq!(mono, vec![32767, -32768, 0]);
    let mut monof = Vec::new();
    convert::stereo_to_mono_f32(&[1.0, 0.0, -1.0, -1.0], &mut monof);
    assert_eq!(monof, vec![0.5, -1.0]);
    assert!((db_to_gain(-6.0) - 0.501_187).abs() < 1e-5);
    let mut s = vec![1000i16, -1000, 30000, -30000];
    convert::apply_gain_i16(&mut s, db_to_gain(6.0));
    assert_eq!(s, vec![1995, -1995, 32767, -32768]);
    let mut f = vec![0.5f32, 1e38];
    convert::apply_gain_f32(&mut f, 1e10);
    assert_eq!(f, vec![5e9, 0.0]);
}

#[test]
fn converter_formats() {
    // PCM16 mono → F32 stereo.
    let mut c = FormatConverter::new(AudioEncoding::F32, 2).unwrap();
    let mut a = pcm16(&[16384, -32768], 1);
    a.pts = Some(std::time::Duration::from_millis(40));
    let out = c.convert(&a).unwrap().unwrap();
    assert_eq!(out.format, AudioFormat { encoding: AudioEncoding::F32, sample_rate: 16000, channels: 2 });
    assert_eq!(f32s(&out), vec![0.5, 0.5, -1.0, -1.0]);
    assert_eq!(out.pts, a.pts);
    // F32 stereo with NaN/inf → PCM16 mono: non-finite samples are silence, and counted.
    let mut c = FormatConverter::new(AudioEncoding::Pcm16, 1).unwrap();
    let stats = c.stats();
    let out = c
        .convert(&f32_frame(&[0.5, 0.5, f32::NAN, 0.25, f32::INFINITY, f32::NEG_INFINITY, 2.0, 2.0], 2))
        .unwrap()
        .unwrap();
    assert_eq!(i16s(&out), vec![16384, 4096, 0, 32767]);
    assert_eq!(stats.non_finite(), 3);
    // Gain on PCM16, same layout.
    let mut c = FormatConverter::new(AudioEncoding::Pcm16, 1).unwrap().with_gain_db(-6.0206).unwrap();
    assert_eq!(i16s(&c.convert(&pcm16(&[20000, -20000, 1], 1)).unwrap().unwrap()), vec![10000, -10000, 1]);
    // Empty payload: nothing.
    assert!(c.convert(&pcm16(&[], 1)).unwrap().is_none());
    assert_eq!(c.counters().dropped_empty(), 1);
}

#[test]
fn converter_refuses_what_it_cannot_do() {
    assert!(FormatConverter::new(AudioEncoding::Mulaw, 1).is_err());
    assert!(FormatConverter::new(AudioEncoding::Pcm16, 3).is_err());
    assert!(FormatConverter::new(AudioEncoding::Pcm16, 1).unwrap().with_gain_db(f32::NAN).is_err());
    assert!(FormatConverter::new(AudioEncoding::Pcm16, 1).unwrap().with_gain_db(80.0).is_err());
    let mut c = FormatConverter::new(AudioEncoding::Pcm16, 1).unwrap();
    let ulaw = AudioFrame::new(Bytes::from_static(&[0xFF; 160]), AudioFormat::mulaw_8k());
    let e = c.convert(&ulaw).unwrap_err().to_string();
    assert!(e.contains("Mulaw") && e.contains("Pcm16 or F32"), "{e}");
    // Stereo PCM16 of 3 bytes is not whole sample frames.
    let e = c.convert(&AudioFrame::new(
        Bytes::from_static(&[0; 6]),
        AudioFormat { channels: 2, ..AudioFormat::pcm16(8000) },
    ));
    assert!(e.unwrap_err().to_string().contains("4-byte"));
    assert_eq!(c.counters().rejected(), 2);
}

#[tokio::test]
async fn converter_in_a_pipeline_keeps_tts_metadata_and_other_frames() {
    let c = FormatConverter::new(AudioEncoding::F32, 1).unwrap().on(AudioPath::Output);
    let h = Harness::single(c);
    let tts = TtsAudio {
        audio: pcm16(&[16384], 1),
        context_id: "u1".into(),
        words: Vec::new().into(),
        offset: Default::default(),
    };
    h.push(Frame::from(tts)).await;
    h.push(Frame::InputAudio(pcm16(&[1], 1))).await;
    h.push(Frame::Text("hi".into())).await;
    h.push(Frame::OutputAudio(f32_frame(&[f32::NAN], 1))).await;
    let out = h.finish().await;
    let frames: Vec<Frame> =
        out.downstream.iter().filter(|f| !matches!(f, Frame::Start(_) | Frame::End)).cloned().collect();
    assert_eq!(frames.len(), 4, "{frames:?}");
    // Caller input travels the runner's caller lane and may overtake the data frames: check it
    // apart from their order.
    let (input, frames): (Vec<Frame>, Vec<Frame>) = frames.into_iter().partition(|f| f.is_caller_input());
    assert!(matches!(&input[..], [Frame::InputAudio(a)] if a.format.encoding == AudioEncoding::Pcm16));
    match &frames[0] {
        Frame::TtsAudio(t) => {
            assert_eq!(&*t.context_id, "u1");
            assert_eq!(f32s(&t.audio), vec![0.5]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&frames[1], Frame::Text(_)));
    assert!(matches!(&frames[2], Frame::OutputAudio(a) if f32s(a) == vec![0.0]));
    assert!(!out.events.iter().any(|e| matches!(e, Event::Error(_))));
}
