//! Wire-level tests of the ElevenLabs emulator (multi-context WS, single-context WS, HTTP).

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use voxline_emulators::audio::{OutputFormat, rms};
use voxline_emulators::elevenlabs::{ElevenLabsConfig, ElevenLabsEmulator, TtsFault};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    emu: &ElevenLabsEmulator,
    endpoint: &str,
    format: &str,
    key: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!(
        "{}/v1/text-to-speech/voice123/{endpoint}?model_id=eleven_flash_v2_5&output_format={format}",
        emu.base_url()
    );
    let mut req = url.into_client_request()?;
    if let Some(k) = key {
        req.headers_mut().insert("xi-api-key", k.parse().expect("header"));
    }
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.expect("send");
}

/// Next JSON message, or `Err(close code)` when the socket closes.
async fn next(ws: &mut Ws) -> Result<Value, Option<u16>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("timed out") {
            Some(Ok(Message::Text(t))) => {
                return Ok(serde_json::from_str(t.as_str()).expect("json"));
            }
            Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return Err(None),
        }
    }
}

#[tokio::test]
async fn multi_context_audio_alignment_and_final() {
    let emu = ElevenLabsEmulator::start(ElevenLabsConfig::default().with_api_key("xi")).expect("start");
    assert!(connect(&emu, "multi-stream-input", "ulaw_8000", Some("nope")).await.is_err());
    let mut ws = connect(&emu, "multi-stream-input", "ulaw_8000", Some("xi")).await.expect("connect");
    send(
        &mut ws,
        json!({"text": " ", "context_id": "t1", "voice_settings": {"stability": 0.5, "similarity_boost": 0.8}}),
    )
    .await;
    send(&mut ws, json!({"text": "Hello there. ", "context_id": "t1"})).await;
    send(&mut ws, json!({"context_id": "t1", "flush": true})).await;
    let fmt = OutputFormat::parse("ulaw_8000").expect("fmt");
    let mut chars = String::new();
    let mut total_bytes = 0usize;
    let mut samples = Vec::new();
    loop {
        let m = next(&mut ws).await.expect("message");
        assert_eq!(m["contextId"], "t1");
        if m["isFinal"] == true {
            break;
        }
        let audio = B64.decode(m["audio"].as_str().expect("audio")).expect("b64");
        let a = &m["alignment"];
        let n = a["chars"].as_array().expect("chars").len();
        assert_eq!(a["charStartTimesMs"].as_array().expect("starts").len(), n);
        assert_eq!(a["charDurationsMs"].as_array().expect("durs").len(), n);
        assert_eq!(a["charStartTimesMs"][0], 0, "times are relative to the chunk");
        let dur_ms: u64 = a["charDurationsMs"].as_array().expect("durs").iter().filter_map(Value::as_u64).sum();
        assert_eq!(audio.len() as u64, dur_ms * 8, "μ-law 8 kHz = 8 bytes per ms");
        assert_eq!(m["normalizedAlignment"], m["alignment"]);
        chars.extend(a["chars"].as_array().expect("chars").iter().filter_map(Value::as_str));
        total_bytes += audio.len();
        samples.extend(fmt.decode(&audio));
    }
    assert_eq!(chars, "Hello there. ");
    assert_eq!(total_bytes, 13 * 60 * 8);
    assert!(rms(&samples) > 1000.0, "audio must not be silence");

    send(&mut ws, json!({"text": "", "context_id": "t1"})).await;
    send(&mut ws, json!({"context_id": "t1", "close_context": true})).await;
    let fin = next(&mut ws).await.expect("final");
    assert_eq!(fin, json!({"isFinal": true, "contextId": "t1"}));
    send(&mut ws, json!({"close_socket": true})).await;
    assert_eq!(next(&mut ws).await.expect_err("closed"), Some(1000));

    let r = emu
        .wait_for(|r| r.connections.first().is_some_and(|c| c.closed), Duration::from_secs(2))
        .await
        .expect("closed");
    let c = &r.connections[0];
    assert_eq!(c.contexts_opened, vec!["t1"]);
    assert_eq!(c.contexts_closed, vec!["t1"]);
    assert_eq!(c.texts.len(), 1);
    assert_eq!(c.flushes, vec![Some("t1".to_string())]);
    assert_eq!(c.keepalives, 1);
    assert!(c.close_socket);
    assert_eq!(r.rejected_handshakes, vec![401]);
}

#[tokio::test]
async fn context_cap_and_close_context_drops_pending_audio() {
    let cfg =
        ElevenLabsConfig { chunk_delay: Duration::from_millis(50), chars_per_chunk: 2, ..ElevenLabsConfig::default() };
    let emu = ElevenLabsEmulator::start(cfg).expect("start");
    let mut ws = connect(&emu, "multi-stream-input", "pcm_16000", None).await.expect("connect");
    send(&mut ws, json!({"text": "A long sentence that takes a while. ", "context_id": "c0", "flush": true})).await;
    let first = next(&mut ws).await.expect("audio");
    assert_eq!(first["contextId"], "c0");
    send(&mut ws, json!({"context_id": "c0", "close_context": true})).await;
    // Whatever was in flight, the next c0 message after the close is the final; no audio after it.
    loop {
        let m = next(&mut ws).await.expect("msg");
        if m["isFinal"] == true {
            assert_eq!(m["contextId"], "c0");
            break;
        }
    }
    for i in 1..=5 {
        send(&mut ws, json!({"text": " ", "context_id": format!("c{i}")})).await;
    }
    send(&mut ws, json!({"text": " ", "context_id": "c6"})).await;
    let err = next(&mut ws).await.expect("error");
    assert_eq!(err["error"], "max_active_conversations");
    assert_eq!(next(&mut ws).await.expect_err("close"), Some(1008));
}

#[tokio::test]
async fn first_audio_delay_and_faults() {
    let cfg = ElevenLabsConfig {
        first_audio_delay: Duration::from_millis(150),
        faults: vec![
            TtsFault::None,
            TtsFault::CloseMidStream { after_chunks: 1 },
            TtsFault::Error { error: "quota_exceeded".into(), message: "Quota exceeded".into() },
        ],
        ..ElevenLabsConfig::default()
    };
    let emu = ElevenLabsEmulator::start(cfg).expect("start");
    let mut ws = connect(&emu, "multi-stream-input", "pcm_24000", None).await.expect("connect");
    let t0 = Instant::now();
    send(&mut ws, json!({"text": "Hi. ", "context_id": "a", "flush": true})).await;
    let m = next(&mut ws).await.expect("audio");
    assert!(m["audio"].is_string());
    assert!(t0.elapsed() >= Duration::from_millis(150));

    let mut ws = connect(&emu, "multi-stream-input", "pcm_24000", None).await.expect("connect");
    send(&mut ws, json!({"text": "This is long enough for several chunks. ", "context_id": "a", "flush": true})).await;
    assert!(next(&mut ws).await.is_ok());
    assert_eq!(next(&mut ws).await.expect_err("cut"), None, "abrupt drop, no close frame");

    let mut ws = connect(&emu, "multi-stream-input", "pcm_24000", None).await.expect("connect");
    send(&mut ws, json!({"text": "Hi. ", "context_id": "a"})).await;
    let err = next(&mut ws).await.expect("error");
    assert_eq!(err["error"], "quota_exceeded");
    assert_eq!(err["code"], 1008);
    assert_eq!(next(&mut ws).await.expect_err("close"), Some(1008));
}

#[tokio::test]
async fn single_context_eos() {
    let emu = ElevenLabsEmulator::start(ElevenLabsConfig::default()).expect("start");
    let mut ws = connect(&emu, "stream-input", "pcm_22050", None).await.expect("connect");
    send(&mut ws, json!({"text": " ", "voice_settings": {"stability": 0.5, "similarity_boost": 0.8}})).await;
    send(&mut ws, json!({"text": "Okay. "})).await;
    send(&mut ws, json!({"text": ""})).await;
    let mut bytes = 0;
    loop {
        match next(&mut ws).await {
            Ok(m) if m["isFinal"] == true => {}
            Ok(m) => {
                assert!(m.get("contextId").is_none());
                bytes += B64.decode(m["audio"].as_str().expect("audio")).expect("b64").len();
            }
            Err(code) => {
                assert_eq!(code, Some(1000));
                break;
            }
        }
    }
    assert_eq!(bytes, 6 * 1323 * 2, "60 ms at 22050 Hz = 1323 samples per char");
}

#[tokio::test]
async fn http_streaming_and_errors() {
    let cfg =
        ElevenLabsConfig { http_faults: vec![TtsFault::Status(429)], ..ElevenLabsConfig::default().with_api_key("xi") };
    let emu = ElevenLabsEmulator::start(cfg).expect("start");
    let client = reqwest::Client::new();
    let url = format!("{}/v1/text-to-speech/v1/stream?output_format=pcm_16000", emu.http_base_url());
    let r = client.post(&url).header("xi-api-key", "xi").json(&json!({"text": "Hello"})).send().await.expect("send");
    assert_eq!(r.status(), 429);
    let r = client.post(&url).json(&json!({"text": "Hello"})).send().await.expect("send");
    assert_eq!(r.status(), 401);
    let r = client.post(&url).header("xi-api-key", "xi").json(&json!({"text": "Hello"})).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.expect("body");
    assert_eq!(body.len(), 5 * 60 * 32);
    let r = client.post(&url).header("xi-api-key", "xi").json(&json!({"nope": 1})).send().await.expect("send");
    assert_eq!(r.status(), 422);
    let ts = format!("{}/v1/text-to-speech/v1/stream/with-timestamps?output_format=ulaw_8000", emu.http_base_url());
    let r = client.post(&ts).header("xi-api-key", "xi").json(&json!({"text": "Hi"})).send().await.expect("send");
    let text = r.text().await.expect("text");
    let line: Value = serde_json::from_str(text.lines().next().expect("line")).expect("json");
    assert_eq!(line["alignment"]["characters"], json!(["H", "i"]));
    assert_eq!(line["alignment"]["character_end_times_seconds"], json!([0.06, 0.12]));
    assert_eq!(emu.received().http_requests.len(), 5);
}
