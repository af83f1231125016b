//! Criterion: per-message cost of the Twilio Media Streams serializer.
//!
//! `cargo bench --bench twilio`
//! - `twilio/decode_media`: one inbound `media` message (160 bytes of μ-law, 20 ms) from websocket
//!   text to an `InputAudio` frame: JSON parse + base64 decode; paid 50 times a second per call;
//! - `twilio/encode_media`: one outbound 20 ms `media` message from μ-law bytes: base64 encode +
//!   JSON text; paid 50 times a second per call while the bot speaks.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use voxline::transports::twilio::serializer::{self, DEFAULT_MAX_MESSAGE_BYTES, Inbound, client};

const STREAM_SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";

fn chunk() -> Vec<u8> {
    // Speech-like μ-law bytes (not all one value), one 20 ms frame at 8 kHz.
    (0..160u32).map(|i| (i.wrapping_mul(37) % 256) as u8).collect()
}

fn bench(c: &mut Criterion) {
    let mulaw = chunk();
    let inbound = client::media(STREAM_SID, 4242, &mulaw);
    match serializer::decode(&inbound, DEFAULT_MAX_MESSAGE_BYTES) {
        Ok(Inbound::Media { .. }) => {}
        other => panic!("fixture does not decode as media: {other:?}"),
    }
    let mut g = c.benchmark_group("twilio");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_media", |b| {
        b.iter(|| serializer::decode(black_box(&inbound), DEFAULT_MAX_MESSAGE_BYTES));
    });
    g.bench_function("encode_media", |b| {
        b.iter(|| serializer::encode_media(black_box(STREAM_SID), black_box(&mulaw)));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
