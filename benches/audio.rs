//! Per-20 ms-frame costs of the audio front end: G.711 decode/encode, resampling, VAD.
//!
//! `cargo bench --bench audio`. Every benchmark processes exactly one 20 ms frame per iteration
//! through the same code the processors run (the processors' `convert`, or the segmenter the
//! VAD processor drives), so the figures are the per-frame budget a call costs.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use voxline::pipeline::{AudioFormat, AudioFrame};
use voxline::processors::audio::vad::VadSegmenter;
use voxline::processors::audio::{EarshotVad, Resampler, VadParams};
use voxline::processors::codec::{MulawDecoder, g711};

fn speechy(rate: u32, n: usize) -> Vec<i16> {
    // A vowel-like signal (150 Hz fundamental, decaying harmonics) so the codecs see all segments.
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let v: f64 = (1..12).map(|h| (2.0 * std::f64::consts::PI * 150.0 * h as f64 * t).sin() / h as f64).sum();
            (v * 6000.0) as i16
        })
        .collect()
}

fn pcm_bytes(s: &[i16]) -> Vec<u8> {
    s.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn g711_benches(c: &mut Criterion) {
    let pcm = pcm_bytes(&speechy(8000, 160));
    let ulaw: Vec<u8> = speechy(8000, 160).iter().map(|&s| g711::mulaw_encode(s)).collect();
    let alaw: Vec<u8> = speechy(8000, 160).iter().map(|&s| g711::alaw_encode(s)).collect();
    let mut out = BytesMut::with_capacity(1024);
    let mut g = c.benchmark_group("g711_per_20ms_frame");
    g.bench_function("mulaw_decode", |b| {
        b.iter(|| {
            out.clear();
            g711::decode_mulaw_into(black_box(&ulaw), &mut out);
        })
    });
    g.bench_function("mulaw_encode", |b| {
        b.iter(|| {
            out.clear();
            g711::encode_mulaw_into(black_box(&pcm), &mut out);
        })
    });
    g.bench_function("alaw_decode", |b| {
        b.iter(|| {
            out.clear();
            g711::decode_alaw_into(black_box(&alaw), &mut out);
        })
    });
    g.bench_function("alaw_encode", |b| {
        b.iter(|| {
            out.clear();
            g711::encode_alaw_into(black_box(&pcm), &mut out);
        })
    });
    g.finish();
}

fn resample_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("resample_per_20ms_frame");
    for (from, to) in [(8000u32, 16000u32), (24000, 8000)] {
        let frame =
            AudioFrame::new(Bytes::from(pcm_bytes(&speechy(from, from as usize / 50))), AudioFormat::pcm16(from));
        let Ok(mut r) = Resampler::new(from, to) else { continue };
        g.bench_function(format!("{}k_to_{}k", from / 1000, to / 1000), |b| {
            b.iter(|| black_box(r.convert(black_box(&frame)).ok()))
        });
    }
    g.finish();
}

fn vad_benches(c: &mut Criterion) {
    let samples = speechy(16000, 320);
    let Ok(mut seg) = VadSegmenter::new(Box::new(EarshotVad::new()), VadParams::default()) else { return };
    let mut g = c.benchmark_group("vad_per_20ms_frame");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("earshot_16k", |b| {
        b.iter(|| {
            seg.push(black_box(&samples), |ch| {
                black_box(ch);
            })
        })
    });
    g.finish();
}

/// The whole W2/W4 front end on the real test call (μ-law decode → 8→16 kHz → VAD), one 20 ms
/// frame per iteration, cycling through the call: the all-in per-frame processor cost, including
/// the windows the VAD skips on this call's pauses (the synthetic signals above never skip).
fn front_end_benches(c: &mut Criterion) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/audio/call_8k.ulaw");
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!("front end bench skipped: cannot read {}", path.display());
        return;
    };
    let frames: Vec<AudioFrame> =
        bytes.chunks_exact(160).map(|f| AudioFrame::new(Bytes::copy_from_slice(f), AudioFormat::mulaw_8k())).collect();
    let (Ok(mut rs), Ok(mut seg)) =
        (Resampler::new(8000, 16_000), VadSegmenter::new(Box::new(EarshotVad::new()), VadParams::default()))
    else {
        return;
    };
    let mut dec = MulawDecoder::new();
    let mut samples: Vec<i16> = Vec::with_capacity(320);
    let mut i = 0;
    let mut g = c.benchmark_group("front_end_per_20ms_frame");
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("call_ulaw_decode_resample_vad", |b| {
        b.iter(|| {
            let f = &frames[i % frames.len()];
            i += 1;
            if let Ok(Some(pcm)) = dec.convert(black_box(f))
                && let Ok(Some(up)) = rs.convert(&pcm)
            {
                samples.clear();
                samples.extend(up.data.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]])));
                seg.push(&samples, |ch| {
                    black_box(ch);
                });
            }
        })
    });
    g.finish();
}

criterion_group!(benches, g711_benches, resample_benches, vad_benches, front_end_benches);
criterion_main!(benches);
