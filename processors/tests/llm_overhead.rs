//! Engine overhead against the local emulator (run on a release build):
//! `cargo test --release -p voxline-processors --test llm_overhead -- --ignored --nocapture`
//!
//! - TTFB overhead: the emulator answers with zero time-to-first-token, so request → first
//!   `LlmText` at the pipeline exit is our cost plus loopback HTTP.
//! - Per-token overhead: a 2000-token response with no delay, LLM → sentence aggregator, timed
//!   from the first to the last token.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod llm_support;

use std::time::{Duration, Instant};

use llm_support::*;
use voxline_emulators::openai::{OpenAiConfig, OpenAiEmulator, Scripted};
use voxline_pipeline::testing::Harness;
use voxline_pipeline::{Frame, FrameKind, Pipeline};
use voxline_processors::llm::{OpenAiLlm, OpenAiSettings};
use voxline_processors::text::SentenceAggregator;

/// A minimal keep-alive HTTP/1.1 SSE server with `TCP_NODELAY`, answering every request with
/// `events` (one write each). The emulator's axum server leaves Nagle on, which with delayed ACKs
/// adds ~40 ms per request on a reused loopback connection; this isolates the client's own cost.
async fn nodelay_sse_server(events: Vec<String>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let events = std::sync::Arc::new(events);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            sock.set_nodelay(true).unwrap();
            let events = events.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    let hdr =
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                    if sock.write_all(hdr.as_bytes()).await.is_err() {
                        return;
                    }
                    for e in events.iter() {
                        let chunk = format!("{:x}\r\n{e}\r\n", e.len());
                        if sock.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    if sock.write_all(b"0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/v1")
}

fn openai_events(tokens: &[&str]) -> Vec<String> {
    let mut out = vec![
        r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#.to_string()
            + "\n\n",
    ];
    for t in tokens {
        let v = serde_json::json!({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]});
        out.push(format!("data: {v}\n\n"));
    }
    out.push(r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#.to_string() + "\n\n");
    out.push("data: [DONE]\n\n".to_string());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run on a release build with --ignored --nocapture"]
async fn measure_client_overhead_with_a_nodelay_server() {
    let tokens = ["Hello", " there,", " how", " can", " I", " help", " you", " today?"];
    let base = nodelay_sse_server(openai_events(&tokens)).await;
    let mut s = OpenAiSettings::compatible(base, "m");
    s.service = fast_service();
    let h = Harness::new(Pipeline::new().with(OpenAiLlm::new(s).unwrap()));
    let mut samples = Vec::new();
    for i in 0..200 {
        let t0 = Instant::now();
        h.push(Frame::LlmRun(user_ctx("hi"))).await;
        assert!(h.wait_for(WAIT, |f| count(f, FrameKind::LlmText) > i * tokens.len()).await);
        samples.push(t0.elapsed());
        assert!(h.wait_for(WAIT, |f| count(f, FrameKind::LlmResponseEnd) > i).await);
    }
    let _ = h.finish().await;
    samples.sort();
    println!(
        "TTFB request→first LlmText, nodelay loopback server, 200 turns: p50 {:?} p90 {:?} p99 {:?}",
        samples[100], samples[180], samples[198]
    );

    let words: Vec<String> =
        (0..5000).map(|i| if i % 12 == 11 { " end.".to_string() } else { format!(" w{i}") }).collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let base = nodelay_sse_server(openai_events(&refs)).await;
    let mut s = OpenAiSettings::compatible(base, "m");
    s.service = fast_service();
    let h = Harness::new(Pipeline::new().with(OpenAiLlm::new(s).unwrap()).with(SentenceAggregator::default()));
    let t0 = Instant::now();
    h.push(Frame::LlmRun(user_ctx("go"))).await;
    assert!(h.wait_for(WAIT, |f| count(f, FrameKind::LlmResponseEnd) >= 1).await);
    let total = t0.elapsed();
    let _ = h.finish().await;
    println!("Per token, nodelay server, LLM→sentence aggregator, 5000 tokens: {:?}/token", total / 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run on a release build with --ignored --nocapture"]
async fn measure_ttfb_and_per_token_overhead() {
    const REPLY: &str = "Hello there, how can I help you today?";
    let per_turn = Scripted::text(REPLY).text.len();
    let emu = OpenAiEmulator::start(OpenAiConfig::default().with_responder(|_| Scripted::text(REPLY))).unwrap();
    let mut s = OpenAiSettings::new("gpt-test").with_base_url(emu.base_url()).with_api_key("k");
    s.service = fast_service();
    let h = Harness::new(Pipeline::new().with(OpenAiLlm::new(s).unwrap()));
    let mut samples = Vec::new();
    for i in 0..50 {
        let t0 = Instant::now();
        h.push(Frame::LlmRun(user_ctx("hi"))).await;
        assert!(h.wait_for(WAIT, |f| count(f, FrameKind::LlmText) > i * per_turn).await);
        samples.push(t0.elapsed());
        assert!(h.wait_for(WAIT, |f| count(f, FrameKind::LlmResponseEnd) > i).await);
    }
    let out = h.finish().await;
    samples.sort();
    let metric: Vec<Duration> = ttfbs(&out);
    let mean_metric = metric.iter().sum::<Duration>() / metric.len() as u32;
    println!(
        "TTFB request→first LlmText (loopback, emulator ttft=0, 50 turns): p50 {:?} p90 {:?} min {:?}; Ttfb metric mean {:?}",
        samples[25], samples[45], samples[0], mean_metric
    );

    let n = 2000;
    let words: Vec<String> =
        (0..n).map(|i| if i % 12 == 11 { " end.".to_string() } else { format!(" w{i}") }).collect();
    let emu = OpenAiEmulator::start(OpenAiConfig::with_script(vec![Scripted::tokens(words)])).unwrap();
    let mut s = OpenAiSettings::new("gpt-test").with_base_url(emu.base_url()).with_api_key("k");
    s.service = fast_service();
    let h = Harness::new(Pipeline::new().with(OpenAiLlm::new(s).unwrap()).with(SentenceAggregator::default()));
    let t0 = Instant::now();
    h.push(Frame::LlmRun(user_ctx("go"))).await;
    assert!(h.wait_for(WAIT, |f| count(f, FrameKind::LlmResponseEnd) >= 1).await);
    let total = t0.elapsed();
    let out = h.finish().await;
    let chunks = out.downstream.iter().filter(|f| f.kind() == FrameKind::Text).count();
    println!(
        "Per token (2000 tokens, LLM→sentence aggregator, incl. emulator + loopback HTTP): {:?}/token, {} sentences",
        total / n,
        chunks
    );
}
