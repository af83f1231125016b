//! Criterion: per-message costs of the LLM-side services.
//!
//! `cargo bench --bench services`
//! - `sse/*`: one provider SSE event from raw bytes to a provider-neutral item (decode + JSON
//!   parse + mapping), i.e. the cost paid per streamed token;
//! - `sentence/per_token`: feeding one LLM token to the sentence splitter (boundary search,
//!   abbreviation checks, chunk emission), measured over a realistic 3-sentence reply;
//! - `tool_calls/accumulate`: assembling a two-call parallel batch from 20 deltas.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use voxline::processors::llm::sse::SseDecoder;
use voxline::processors::llm::{
    AnthropicStreamParser, OpenAiStreamParser, StreamItem, StreamParser, ToolCallAccumulator,
};
use voxline::processors::text::SentenceSplitter;

const OPENAI_CHUNK: &[u8] = br#"data: {"id":"chatcmpl-AbCdEf0123456789","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4.1-mini","system_fingerprint":"fp_abc","choices":[{"index":0,"delta":{"content":" shipped"},"logprobs":null,"finish_reason":null}],"usage":null}

"#;

const ANTHROPIC_EVENT: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" shipped\"}}\n\n";

const REPLY: &str = "Sure, Mr. Smith. Your order ORD-1234.5 shipped on Monday at 10:30 a.m. and should arrive \
by Tuesday, e.g. before noon. You can track it at https://example.com/track or email help@example.com, etc. \
Is there anything else I can help you with today?";

fn sse(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("openai_chunk", |b| {
        let mut decoder = SseDecoder::default();
        let mut parser = OpenAiStreamParser::default();
        let mut events = Vec::with_capacity(4);
        let mut items: Vec<StreamItem> = Vec::with_capacity(4);
        b.iter(|| {
            let _ = decoder.feed(black_box(OPENAI_CHUNK), |e| events.push(e));
            for e in events.drain(..) {
                let _ = parser.on_event(&e, &mut items);
            }
            black_box(items.drain(..).count())
        });
    });
    g.bench_function("anthropic_delta", |b| {
        let mut decoder = SseDecoder::default();
        let mut parser = AnthropicStreamParser::default();
        let mut events = Vec::with_capacity(4);
        let mut items: Vec<StreamItem> = Vec::with_capacity(4);
        b.iter(|| {
            let _ = decoder.feed(black_box(ANTHROPIC_EVENT), |e| events.push(e));
            for e in events.drain(..) {
                let _ = parser.on_event(&e, &mut items);
            }
            black_box(items.drain(..).count())
        });
    });
    g.bench_function("decode_only_split_reads", |b| {
        // The same chunk arriving in three TCP reads.
        let (a, rest) = OPENAI_CHUNK.split_at(40);
        let (m, z) = rest.split_at(120);
        let mut decoder = SseDecoder::default();
        b.iter(|| {
            let mut n = 0;
            for part in [a, m, z] {
                let _ = decoder.feed(black_box(part), |_| n += 1);
            }
            black_box(n)
        });
    });
    g.finish();
}

fn sentence(c: &mut Criterion) {
    let tokens: Vec<String> = {
        let mut out = Vec::new();
        let mut cur = String::new();
        for ch in REPLY.chars() {
            if ch == ' ' && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur.push(ch);
        }
        out.push(cur);
        out
    };
    let mut g = c.benchmark_group("sentence");
    g.throughput(Throughput::Elements(tokens.len() as u64));
    g.bench_function("per_token", |b| {
        let mut splitter = SentenceSplitter::default();
        b.iter(|| {
            let mut chunks = 0usize;
            for t in &tokens {
                splitter.push(black_box(t), |c| chunks += black_box(c).len());
            }
            chunks += splitter.flush().map_or(0, |c| c.len());
            black_box(chunks)
        });
    });
    g.finish();
}

fn tool_calls(c: &mut Criterion) {
    let mut deltas = vec![
        json!({"index": 0, "id": "call_a", "type": "function", "function": {"name": "check_order_status", "arguments": ""}}),
        json!({"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": ""}}),
    ];
    let a = r#"{"order_id": "ORD-1234", "include_items": true}"#;
    let w = r#"{"city": "Paris", "unit": "celsius", "days": 2}"#;
    for (i, args) in [a, w].iter().enumerate() {
        let chars: Vec<char> = args.chars().collect();
        for frag in chars.chunks(6) {
            deltas.push(json!({"index": i, "function": {"arguments": frag.iter().collect::<String>()}}));
        }
    }
    let mut g = c.benchmark_group("tool_calls");
    g.throughput(Throughput::Elements(deltas.len() as u64));
    g.bench_function("accumulate", |b| {
        b.iter(|| {
            let mut acc = ToolCallAccumulator::default();
            for d in &deltas {
                acc.apply(black_box(d));
            }
            black_box(acc.finish().map(|c| c.len()).unwrap_or(0))
        });
    });
    g.finish();
}

criterion_group!(benches, sse, sentence, tool_calls);
criterion_main!(benches);
