//! Opus round trip (feature `opus`): speech-like audio at 16 and 48 kHz through the encoder and
//! decoder processors' `convert`, aligned by the codec delay, must still correlate with the input;
//! broken packets are a clear error, never a panic. Uses espeak-ng speech when installed, else a
//! harmonic "vowel" with a gliding pitch.
#![cfg(feature = "opus")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::Bytes;
use voxline_pipeline::{AudioEncoding, AudioFormat, AudioFrame, FlowError};
use voxline_processors::audio::StreamResampler;
use voxline_processors::codec::{OpusDecoder, OpusEncoder};

fn espeak(rate: u32) -> Option<Vec<i16>> {
    let dir = std::env::temp_dir().join(format!("voxline_opus_{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    // One file per call: tests in this file run concurrently in one process.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = dir.join(format!("s{rate}_{}.wav", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let text = "The quick brown fox jumps over the lazy dog, twice.";
    let st = std::process::Command::new("espeak-ng").args(["-v", "en-us", "-w"]).arg(&path).arg(text).output().ok()?;
    if !st.status.success() {
        return None;
    }
    let mut r = hound::WavReader::open(&path).ok()?;
    let from = r.spec().sample_rate;
    let raw: Vec<i16> = r.samples::<i16>().filter_map(Result::ok).collect();
    let mut rs = StreamResampler::new(from, rate).ok()?;
    let mut out = Vec::new();
    let pad = vec![0i16; from as usize / 25];
    rs.push(raw.iter().copied().chain(pad), |c| {
        out.extend(c.iter().map(|&x| (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16))
    })
    .ok()?;
    Some(out[rs.delay_samples()..].to_vec())
}

fn vowel(rate: u32) -> Vec<i16> {
    (0..rate as usize * 2)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let f0 = 140.0 + 30.0 * (2.0 * std::f64::consts::PI * 0.5 * t).sin();
            let v: f64 = (1..15).map(|h| (2.0 * std::f64::consts::PI * f0 * h as f64 * t).sin() / h as f64).sum();
            (v * 5000.0) as i16
        })
        .collect()
}

fn pcm(samples: &[i16], rate: u32) -> AudioFrame {
    AudioFrame::new(
        Bytes::from(samples.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()),
        AudioFormat::pcm16(rate),
    )
}

fn round_trip(input: &[i16], rate: u32) -> Vec<i16> {
    let mut enc = OpusEncoder::new(rate).unwrap();
    let mut dec = OpusDecoder::new(rate).unwrap();
    let frame = rate as usize / 50;
    let mut out = Vec::new();
    for chunk in input.chunks_exact(frame) {
        for packet in enc.convert(&pcm(chunk, rate)).unwrap() {
            assert_eq!(packet.format.encoding, AudioEncoding::Opus);
            assert!(packet.data.len() < 1500, "one packet per 20 ms, {} bytes", packet.data.len());
            let decoded = dec.convert(&packet).unwrap().unwrap();
            assert_eq!(decoded.data.len(), frame * 2, "20 ms out per packet");
            out.extend(decoded.data.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]])));
        }
    }
    out
}

/// Best (lag, normalised correlation) of `y` against `x` for lags 0..max_lag (y lags x).
fn align(x: &[i16], y: &[i16], max_lag: usize) -> (usize, f64) {
    let n = x.len().min(y.len()) - max_lag;
    let dot = |a: &[i16], b: &[i16]| a.iter().zip(b).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum::<f64>();
    (0..max_lag)
        .map(|lag| {
            let (a, b) = (&x[..n], &y[lag..lag + n]);
            (lag, dot(a, b) / (dot(a, a) * dot(b, b)).sqrt().max(1.0))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
}

fn snr_db(x: &[i16], y: &[i16]) -> f64 {
    let signal: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
    let noise: f64 = x.iter().zip(y).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
    10.0 * (signal / noise.max(1.0)).log10()
}

#[test]
fn speech_round_trips_at_16_and_48_khz() {
    for rate in [16_000u32, 48_000] {
        let (input, what) = match espeak(rate) {
            Some(s) => (s, "espeak"),
            None => (vowel(rate), "harmonic tone"),
        };
        let out = round_trip(&input, rate);
        assert!(out.len() + rate as usize / 50 > input.len() - rate as usize / 50);
        // Opus' algorithmic delay is 6.5 ms (plus look-ahead); search up to 20 ms.
        let (lag, corr) = align(&input, &out, rate as usize / 50);
        let n = input.len().min(out.len()) - lag;
        let snr = snr_db(&input[..n], &out[lag..lag + n]);
        eprintln!(
            "{rate} Hz {what}: delay {lag} samples ({:.1} ms), correlation {corr:.3}, SNR {snr:.1} dB",
            lag as f64 * 1e3 / f64::from(rate)
        );
        let delay_ms = lag as f64 * 1e3 / f64::from(rate);
        assert!((5.0..8.0).contains(&delay_ms), "delay {delay_ms} ms (Opus: 6.5 ms)");
        // A perceptual codec does not keep the waveform exactly, but speech at its default bitrate
        // stays close: measured 0.96 correlation and 11 dB SNR on espeak at both rates.
        assert!(corr > 0.9, "{rate} Hz: correlation {corr}");
        assert!(snr > 6.0, "{rate} Hz: SNR {snr} dB");
    }
}

#[test]
fn bad_packets_are_errors_not_panics() {
    let mut dec = OpusDecoder::new(16_000).unwrap();
    let opus = AudioFormat { encoding: AudioEncoding::Opus, sample_rate: 16_000, channels: 1 };
    // Garbage of several shapes, including a TOC byte announcing more frames than there are bytes.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut errors = 0;
    for len in 1..200usize {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        match dec.convert(&AudioFrame::new(Bytes::from(bytes), opus)) {
            Ok(Some(a)) => assert!(a.data.len() <= 16_000 * 120 / 1000 * 2),
            Ok(None) => panic!("a non-empty packet produced nothing"),
            Err(FlowError::BadInput(m)) => {
                assert!(m.contains("opus decode"), "{m}");
                errors += 1;
            }
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
    assert!(errors > 0, "random bytes should include invalid packets");
    let e = dec.convert(&AudioFrame::new(Bytes::from_static(&[0xFF, 0xFF]), opus)).unwrap_err();
    assert!(e.to_string().contains("2-byte packet"), "{e}");
    // The decoder still works after the garbage.
    let mut enc = OpusEncoder::new(16_000).unwrap();
    let packet = enc.convert(&pcm(&vowel(16_000)[..320], 16_000)).unwrap().remove(0);
    assert_eq!(dec.convert(&packet).unwrap().unwrap().data.len(), 640);
    // Empty payload: nothing, no error; wrong format: not negotiated.
    assert!(dec.convert(&AudioFrame::new(Bytes::new(), opus)).unwrap().is_none());
    let e = dec.convert(&pcm(&[0; 320], 16_000)).unwrap_err();
    assert!(matches!(e, FlowError::NotNegotiated { .. }), "{e}");
    // Unsupported rates are refused at construction.
    assert!(OpusDecoder::new(44_100).is_err());
    assert!(OpusEncoder::new(8000).is_err());
}
