//! G.711 μ-law / A-law: standard decode values, bit-exact encoding against a literal reference
//! implementation of Sun's `g711.c`, a sox golden check, and the processors' handling of bad
//! input. (The round trip of every code and full-scale clipping are tested next to the
//! implementation, in `voxline_pipeline::g711`.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use voxline_pipeline::testing::Harness;
use voxline_pipeline::{AudioEncoding, AudioFormat, AudioFrame, Event, Frame, TtsAudio};
use voxline_processors::audio::AudioPath;
use voxline_processors::codec::g711::{self, alaw_decode, alaw_encode, mulaw_decode, mulaw_encode};
use voxline_processors::codec::{AlawDecoder, AlawEncoder, MulawDecoder, MulawEncoder};

/// Sun g711.c `search`: index of the first table entry >= val.
fn search(val: i32, table: &[i32]) -> i32 {
    for (i, &t) in table.iter().enumerate() {
        if val <= t {
            return i as i32;
        }
    }
    table.len() as i32
}

/// Sun g711.c `linear2ulaw` on a 16-bit sample, as sox calls it (`sample >> 2`).
fn ref_linear2ulaw(sample: i16) -> u8 {
    const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
    let mut pcm_val = i32::from(sample) >> 2;
    let mask;
    if pcm_val < 0 {
        pcm_val = -pcm_val;
        mask = 0x7F;
    } else {
        mask = 0xFF;
    }
    if pcm_val > 8159 {
        pcm_val = 8159;
    }
    pcm_val += 0x84 >> 2;
    let seg = search(pcm_val, &SEG_UEND);
    if seg >= 8 {
        (0x7F ^ mask) as u8
    } else {
        let uval = (seg << 4) | ((pcm_val >> (seg + 1)) & 0xF);
        (uval ^ mask) as u8
    }
}

/// Sun g711.c `linear2alaw` on a 16-bit sample, as sox calls it (`sample >> 3`).
fn ref_linear2alaw(sample: i16) -> u8 {
    const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let mut pcm_val = i32::from(sample) >> 3;
    let mask;
    if pcm_val >= 0 {
        mask = 0xD5;
    } else {
        mask = 0x55;
        pcm_val = -pcm_val - 1;
    }
    let seg = search(pcm_val, &SEG_AEND);
    if seg >= 8 {
        (0x7F ^ mask) as u8
    } else {
        let mut aval = seg << 4;
        if seg < 2 {
            aval |= (pcm_val >> 1) & 0xF;
        } else {
            aval |= (pcm_val >> seg) & 0xF;
        }
        (aval ^ mask) as u8
    }
}

/// G.711 decoding written from the standard's segment/step description.
fn ref_ulaw2linear(code: u8) -> i16 {
    let u = !code;
    let seg = i32::from((u >> 4) & 7);
    let mant = i32::from(u & 0x0F);
    let mag = (((mant << 3) + 0x84) << seg) - 0x84;
    if u & 0x80 != 0 { -mag as i16 } else { mag as i16 }
}

fn ref_alaw2linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let seg = i32::from((a >> 4) & 7);
    let mant = i32::from(a & 0x0F);
    let mag = if seg == 0 { (mant << 4) + 8 } else { ((mant << 4) + 0x108) << (seg - 1) };
    if a & 0x80 != 0 { mag as i16 } else { -mag as i16 }
}

#[test]
fn all_256_codes_decode_to_standard_values() {
    for c in 0..=255u8 {
        assert_eq!(mulaw_decode(c), ref_ulaw2linear(c), "mu-law code {c:#04x}");
        assert_eq!(alaw_decode(c), ref_alaw2linear(c), "A-law code {c:#04x}");
    }
    // Endpoints published in every G.711 table.
    assert_eq!(mulaw_decode(0x80), 32124);
    assert_eq!(mulaw_decode(0x00), -32124);
    assert_eq!(mulaw_decode(0xFF), 0);
    assert_eq!(mulaw_decode(0x7F), 0);
    assert_eq!(mulaw_decode(0xFE), 8);
    assert_eq!(alaw_decode(0xAA), 32256);
    assert_eq!(alaw_decode(0x2A), -32256);
    assert_eq!(alaw_decode(0xD5), 8);
    assert_eq!(alaw_decode(0x55), -8);
}

#[test]
fn all_65536_inputs_encode_like_the_reference() {
    let mut mismatches = 0;
    for x in i16::MIN..=i16::MAX {
        if mulaw_encode(x) != ref_linear2ulaw(x) || alaw_encode(x) != ref_linear2alaw(x) {
            mismatches += 1;
        }
    }
    assert_eq!(mismatches, 0);
}

fn sox_available() -> bool {
    std::process::Command::new("sox").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn golden_against_sox() {
    if !sox_available() {
        println!("skipping golden_against_sox: sox not on PATH");
        return;
    }
    let dir = std::env::temp_dir().join(format!("voxline_g711_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("in.s16");
    // G.711 itself is defined on 14-bit (μ-law) / 13-bit (A-law) linear samples. sox *rounds*
    // 16-bit input to that width while Sun's g711.c (and G.191) *truncate*, so they disagree on
    // 0.8% of 16-bit inputs, all within one quantisation step of a decision boundary. On every
    // sample the codec actually defines (multiples of 8 cover both widths) they must agree.
    let inputs: Vec<i16> = (i16::MIN..=i16::MAX).step_by(8).collect();
    let mut pcm = Vec::new();
    for x in &inputs {
        pcm.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&raw, &pcm).unwrap();
    for (enc, ext) in [("u-law", "ul"), ("a-law", "al")] {
        let out = dir.join(format!("out.{ext}"));
        let st = std::process::Command::new("sox")
            // -D: no dither, or sox would perturb the samples before quantising.
            .args(["-D", "-t", "raw", "-r", "8000", "-e", "signed-integer", "-b", "16", "-c", "1", "-L"])
            .arg(&raw)
            .args(["-t", "raw", "-r", "8000", "-e", enc, "-b", "8", "-c", "1"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        let golden = std::fs::read(&out).unwrap();
        assert_eq!(golden.len(), inputs.len());
        let mut bad = 0;
        for (i, &x) in inputs.iter().enumerate() {
            let ours = if ext == "ul" { mulaw_encode(x) } else { alaw_encode(x) };
            if ours != golden[i] {
                bad += 1;
            }
        }
        assert_eq!(bad, 0, "{enc}: {bad} samples differ from sox");
        // And sox's decoder agrees with our tables on every code.
        let codes: Vec<u8> = (0..=255u8).collect();
        let cin = dir.join(format!("codes.{ext}"));
        std::fs::write(&cin, &codes).unwrap();
        let dec = dir.join(format!("dec_{ext}.s16"));
        let st = std::process::Command::new("sox")
            .args(["-t", "raw", "-r", "8000", "-e", enc, "-b", "8", "-c", "1"])
            .arg(&cin)
            .args(["-t", "raw", "-e", "signed-integer", "-b", "16", "-L"])
            .arg(&dec)
            .status()
            .unwrap();
        assert!(st.success());
        let d = std::fs::read(&dec).unwrap();
        for c in 0..=255u8 {
            let v = i16::from_le_bytes([d[2 * c as usize], d[2 * c as usize + 1]]);
            let ours = if ext == "ul" { mulaw_decode(c) } else { alaw_decode(c) };
            assert_eq!(v, ours, "{enc} decode of {c:#04x}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn buffer_helpers_match_sample_functions() {
    let codes: Vec<u8> = (0..=255u8).collect();
    let mut out = bytes::BytesMut::new();
    g711::decode_mulaw_into(&codes, &mut out);
    let mut back = bytes::BytesMut::new();
    g711::encode_mulaw_into(&out, &mut back);
    for (i, c) in codes.iter().enumerate() {
        assert_eq!(i16::from_le_bytes([out[2 * i], out[2 * i + 1]]), mulaw_decode(*c));
    }
    assert_eq!(back.len(), 256);
}

fn ulaw_frame(bytes: Vec<u8>) -> Frame {
    Frame::InputAudio(AudioFrame::new(Bytes::from(bytes), AudioFormat::mulaw_8k()))
}

#[tokio::test]
async fn decoder_processor_decodes_and_keeps_pts_and_other_frames() {
    let dec = MulawDecoder::new();
    let counters = dec.counters();
    let h = Harness::single(dec);
    let mut f = AudioFrame::new(Bytes::from(vec![0x00u8, 0x80, 0xFF]), AudioFormat::mulaw_8k());
    f.pts = Some(std::time::Duration::from_millis(40));
    h.push(Frame::InputAudio(f)).await;
    h.push(ulaw_frame(vec![])).await; // empty: dropped
    h.push(Frame::Text("pass".into())).await;
    let out = h.finish().await;
    let audio: Vec<_> = out
        .downstream
        .iter()
        .filter_map(|f| if let Frame::InputAudio(a) = f { Some(a.clone()) } else { None })
        .collect();
    assert_eq!(audio.len(), 1);
    assert_eq!(audio[0].format, AudioFormat::pcm16(8000));
    assert_eq!(audio[0].pts, Some(std::time::Duration::from_millis(40)));
    assert_eq!(&audio[0].data[..], &[0x84, 0x82, 0x7C, 0x7D, 0, 0]);
    assert_eq!(out.texts(), vec!["pass".to_string()]);
    assert_eq!(counters.dropped_empty(), 1);
}

#[tokio::test]
async fn wrong_format_is_not_negotiated_naming_both_formats() {
    let h = Harness::single(MulawDecoder::new());
    h.push(Frame::InputAudio(AudioFrame::new(Bytes::from(vec![0u8; 320]), AudioFormat::pcm16(8000)))).await;
    let out = h.finish().await;
    let err = out
        .events
        .iter()
        .find_map(|e| if let Event::Error(e) = e { Some(e.message.to_string()) } else { None })
        .expect("an error event");
    assert!(err.contains("not negotiated") && err.contains("Mulaw") && err.contains("Pcm16 8000 Hz x1"), "{err}");
    assert!(out.kinds().is_empty());
}

#[tokio::test]
async fn encoder_rejects_odd_lengths_and_wrong_rates_and_keeps_tts_metadata() {
    let enc = MulawEncoder::new();
    let counters = enc.counters();
    let h = Harness::single(enc);
    // Odd length: a producer bug, refused with a clear error rather than a shifted stream.
    h.push(Frame::OutputAudio(AudioFrame::new(Bytes::from(vec![0u8; 321]), AudioFormat::pcm16(8000)))).await;
    // Wrong rate.
    h.push(Frame::OutputAudio(AudioFrame::new(Bytes::from(vec![0u8; 640]), AudioFormat::pcm16(16000)))).await;
    // TTS audio keeps its words and context.
    let tts = TtsAudio {
        audio: AudioFrame::new(Bytes::from(vec![0u8; 320]), AudioFormat::pcm16(8000)),
        context_id: Arc::from("ctx-1"),
        words: Arc::from(vec![]),
        offset: std::time::Duration::from_millis(20),
    };
    h.push(Frame::from(tts)).await;
    // Input audio is not on the encoder's path: it passes untouched.
    h.push(Frame::InputAudio(AudioFrame::new(Bytes::from(vec![1u8, 2]), AudioFormat::pcm16(8000)))).await;
    let out = h.finish().await;
    let errors: Vec<String> = out
        .events
        .iter()
        .filter_map(|e| if let Event::Error(e) = e { Some(e.message.to_string()) } else { None })
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("321 bytes"));
    assert!(errors[1].contains("16000"));
    assert_eq!(counters.rejected(), 2);
    let mut saw_tts = false;
    for f in &out.downstream {
        if let Frame::TtsAudio(t) = f {
            saw_tts = true;
            assert_eq!(&*t.context_id, "ctx-1");
            assert_eq!(t.offset, std::time::Duration::from_millis(20));
            assert_eq!(t.audio.format, AudioFormat::mulaw_8k());
            assert!(t.audio.data.iter().all(|&b| b == 0xFF));
        }
    }
    assert!(saw_tts);
    assert!(
        out.downstream.iter().any(|f| matches!(f, Frame::InputAudio(a) if a.format.encoding == AudioEncoding::Pcm16))
    );
}

#[tokio::test]
async fn alaw_pair_round_trips_through_a_pipeline() {
    let pipeline =
        voxline_pipeline::Pipeline::new().with(AlawEncoder::new().on(AudioPath::Input)).with(AlawDecoder::new());
    let h = Harness::new(pipeline);
    let samples: Vec<i16> = (0..160).map(|i| ((i as f32 * 0.3).sin() * 12000.0) as i16).collect();
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    h.push(Frame::InputAudio(AudioFrame::new(Bytes::from(bytes), AudioFormat::pcm16(8000)))).await;
    let out = h.finish().await;
    let a =
        out.downstream.iter().find_map(|f| if let Frame::InputAudio(a) = f { Some(a.clone()) } else { None }).unwrap();
    assert_eq!(a.format, AudioFormat::pcm16(8000));
    for (i, s) in samples.iter().enumerate() {
        let got = i16::from_le_bytes([a.data[2 * i], a.data[2 * i + 1]]);
        assert_eq!(got, alaw_decode(alaw_encode(*s)));
        // A-law step at 12000 is 512: the error is at most half a step (plus the 13-bit truncation).
        assert!((i32::from(got) - i32::from(*s)).abs() <= 520, "{got} vs {s}");
    }
}
