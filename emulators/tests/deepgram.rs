//! Wire-level tests of the Deepgram emulator with a raw tokio-tungstenite client.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use voxline_emulators::deepgram::{
    ControlMessage, DeepgramConfig, DeepgramEmulator, DeepgramFault, TranscriptScript, Trigger,
};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    emu: &DeepgramEmulator,
    query: &str,
    key: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("{}/v1/listen?{query}", emu.base_url()).into_client_request()?;
    if let Some(k) = key {
        req.headers_mut().insert("Authorization", format!("Token {k}").parse().expect("header"));
    }
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .expect("timed out")
            .expect("closed")
            .expect("ws error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
            Message::Close(f) => panic!("unexpected close {f:?}"),
            _ => {}
        }
    }
}

const Q: &str = "model=nova-3&encoding=mulaw&sample_rate=8000&channels=1&interim_results=true&utterance_end_ms=1000&vad_events=true";

#[tokio::test]
async fn rejects_bad_key_with_401() {
    let emu = DeepgramEmulator::start(DeepgramConfig::default().with_api_key("secret")).expect("start");
    let err = connect(&emu, Q, Some("wrong")).await.expect_err("must fail");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status().as_u16(), 401);
            assert!(resp.headers().get("dg-request-id").is_some());
            assert!(resp.headers().get("dg-error").is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(connect(&emu, Q, None).await.is_err());
    let ok = connect(&emu, Q, Some("secret")).await;
    assert!(ok.is_ok());
    let r = emu.received();
    assert_eq!(r.rejected.len(), 2);
    assert_eq!(r.connection_count(), 1);
    assert_eq!(r.connections[0].authorization.as_deref(), Some("Token secret"));
    assert_eq!(r.connections[0].query_param("encoding"), Some("mulaw"));
}

#[tokio::test]
async fn audio_triggered_utterance_with_interims_vad_and_utterance_end() {
    let cfg = DeepgramConfig {
        script: vec![TranscriptScript::new("Book a table for two.", Trigger::AudioBytes(1600)).with_interims(1)],
        ..DeepgramConfig::default()
    };
    let emu = DeepgramEmulator::start(cfg).expect("start");
    let mut ws = connect(&emu, Q, None).await.expect("connect");
    for _ in 0..10 {
        ws.send(Message::Binary(vec![0xFFu8; 160].into())).await.expect("send");
    }
    let started = next_json(&mut ws).await;
    assert_eq!(started["type"], "SpeechStarted");
    let interim = next_json(&mut ws).await;
    assert_eq!(interim["type"], "Results");
    assert_eq!(interim["is_final"], false);
    let fin = next_json(&mut ws).await;
    assert_eq!(fin["is_final"], true);
    assert_eq!(fin["speech_final"], true);
    assert_eq!(fin["from_finalize"], false);
    assert_eq!(fin["channel"]["alternatives"][0]["transcript"], "Book a table for two.");
    let words = fin["channel"]["alternatives"][0]["words"].as_array().expect("words");
    assert_eq!(words.len(), 5);
    assert_eq!(words[0]["word"], "book");
    assert_eq!(words[0]["punctuated_word"], "Book");
    assert!(words[0]["end"].as_f64() > words[0]["start"].as_f64());
    assert!((fin["duration"].as_f64().expect("duration") - 0.2).abs() < 1e-6, "1600 μ-law bytes = 0.2 s");
    let ue = next_json(&mut ws).await;
    assert_eq!(ue["type"], "UtteranceEnd");

    ws.send(Message::Text(json!({"type": "KeepAlive"}).to_string().into())).await.expect("send");
    ws.send(Message::Text(json!({"type": "CloseStream"}).to_string().into())).await.expect("send");
    let meta = next_json(&mut ws).await;
    assert_eq!(meta["type"], "Metadata");
    let close = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("timeout");
    match close {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1000),
        other => panic!("expected close 1000, got {other:?}"),
    }
    let r = emu
        .wait_for(|r| r.connections.first().is_some_and(|c| c.closed), Duration::from_secs(2))
        .await
        .expect("closed");
    let c = &r.connections[0];
    assert_eq!(c.audio_bytes, 1600);
    assert_eq!(c.controls, vec![ControlMessage::KeepAlive, ControlMessage::CloseStream]);
}

#[tokio::test]
async fn finalize_emits_from_finalize_final_for_simulation_queue() {
    let emu =
        DeepgramEmulator::start(DeepgramConfig::with_utterances(["Hi there", "My order is 12345"])).expect("start");
    let mut ws = connect(&emu, "model=nova-3&encoding=linear16&sample_rate=16000", None).await.expect("connect");
    ws.send(Message::Binary(vec![0u8; 3200].into())).await.expect("send");
    ws.send(Message::Text(r#"{"type":"Finalize"}"#.into())).await.expect("send");
    let fin = next_json(&mut ws).await;
    assert_eq!(fin["from_finalize"], true);
    assert_eq!(fin["is_final"], true);
    assert_eq!(fin["speech_final"], true);
    assert_eq!(fin["channel"]["alternatives"][0]["transcript"], "Hi there");
    ws.send(Message::Binary(vec![0u8; 3200].into())).await.expect("send");
    ws.send(Message::Text(r#"{"type":"Finalize"}"#.into())).await.expect("send");
    let fin = next_json(&mut ws).await;
    assert_eq!(fin["channel"]["alternatives"][0]["transcript"], "My order is 12345");
    assert!((fin["start"].as_f64().expect("start") - 0.1).abs() < 1e-6);
    // Queue exhausted: audio left over produces an empty from_finalize result.
    ws.send(Message::Binary(vec![0u8; 320].into())).await.expect("send");
    ws.send(Message::Text(r#"{"type":"Finalize"}"#.into())).await.expect("send");
    let empty = next_json(&mut ws).await;
    assert_eq!(empty["from_finalize"], true);
    assert_eq!(empty["channel"]["alternatives"][0]["transcript"], "");
    // Unknown client message type gets a Deepgram Error frame.
    ws.send(Message::Text(r#"{"type":"Bogus"}"#.into())).await.expect("send");
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "Error");
}

#[tokio::test]
async fn faults_drop_after_bytes_then_reconnect_works() {
    let cfg = DeepgramConfig {
        faults: vec![DeepgramFault::DropAfterBytes(500), DeepgramFault::MalformedJson],
        ..DeepgramConfig::with_utterances(["hello"])
    };
    let emu = DeepgramEmulator::start(cfg).expect("start");
    let mut ws = connect(&emu, Q, None).await.expect("connect");
    ws.send(Message::Binary(vec![0xFFu8; 600].into())).await.expect("send");
    let end = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("timeout");
    assert!(matches!(end, None | Some(Err(_))), "expected abrupt drop, got {end:?}");

    let mut ws2 = connect(&emu, Q, None).await.expect("reconnect");
    let bad =
        tokio::time::timeout(Duration::from_secs(2), ws2.next()).await.expect("timeout").expect("msg").expect("ok");
    match bad {
        Message::Text(t) => assert!(serde_json::from_str::<Value>(t.as_str()).is_err()),
        other => panic!("unexpected {other:?}"),
    }
    let mut ws3 = connect(&emu, Q, None).await.expect("third");
    ws3.send(Message::Binary(vec![0xFFu8; 160].into())).await.expect("send");
    ws3.send(Message::Text(r#"{"type":"Finalize"}"#.into())).await.expect("send");
    loop {
        let v = next_json(&mut ws3).await;
        if v["type"] == "Results" {
            assert_eq!(v["channel"]["alternatives"][0]["transcript"], "hello");
            break;
        }
    }
    assert_eq!(emu.received().connection_count(), 3);
}

#[tokio::test]
async fn idle_socket_closed_with_net0001() {
    let cfg = DeepgramConfig { idle_timeout: Some(Duration::from_millis(150)), ..DeepgramConfig::default() };
    let emu = DeepgramEmulator::start(cfg).expect("start");
    let mut ws = connect(&emu, Q, None).await.expect("connect");
    let msg = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("timeout");
    match msg {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 1011);
            assert!(f.reason.as_str().contains("net0001"));
        }
        other => panic!("expected close, got {other:?}"),
    }
}

#[tokio::test]
async fn rejects_handshake_on_fault_status() {
    let cfg = DeepgramConfig { faults: vec![DeepgramFault::RejectHandshake(429)], ..DeepgramConfig::default() };
    let emu = DeepgramEmulator::start(cfg).expect("start");
    match connect(&emu, Q, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429)
        }
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }
    assert!(connect(&emu, Q, None).await.is_ok());
    emu.shutdown().await;
}

#[tokio::test]
async fn refuses_malformed_turn_taking_query_values() {
    let emu = DeepgramEmulator::start(DeepgramConfig::default()).expect("start");
    for (bad, key) in [
        ("endpointing=soon", "endpointing"),
        ("utterance_end_ms=1s", "utterance_end_ms"),
        ("vad_events=yes", "vad_events"),
        ("interim_results=1", "interim_results"),
    ] {
        let q = format!("model=nova-3&encoding=mulaw&sample_rate=8000&{bad}");
        match connect(&emu, &q, None).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 400, "{bad}");
                let reason = resp.headers().get("dg-error").and_then(|v| v.to_str().ok()).unwrap_or("");
                assert!(reason.contains(key), "{bad}: {reason}");
            }
            other => panic!("{bad}: expected 400, got {:?}", other.map(|_| ())),
        }
    }
    for good in ["endpointing=300", "endpointing=false", "endpointing=true&utterance_end_ms=1000&vad_events=true"] {
        let q = format!("model=nova-3&encoding=mulaw&sample_rate=8000&interim_results=true&{good}");
        assert!(connect(&emu, &q, None).await.is_ok(), "{good}");
    }
    assert_eq!(emu.received().rejected.len(), 4);
}

#[tokio::test]
async fn endpointing_false_finalizes_without_speech_final_and_keeps_utterance_end() {
    let cfg = DeepgramConfig {
        script: vec![TranscriptScript::new("hello there", Trigger::AudioBytes(800))],
        ..DeepgramConfig::default()
    };
    let emu = DeepgramEmulator::start(cfg).expect("start");
    let mut ws = connect(&emu, &format!("{Q}&endpointing=false"), None).await.expect("connect");
    for _ in 0..5 {
        ws.send(Message::Binary(vec![0xFFu8; 160].into())).await.expect("send");
    }
    assert_eq!(next_json(&mut ws).await["type"], "SpeechStarted");
    let fin = next_json(&mut ws).await;
    assert_eq!(fin["is_final"], true);
    assert_eq!(fin["speech_final"], false, "no endpointing, no speech_final");
    assert_eq!(next_json(&mut ws).await["type"], "UtteranceEnd");
}

#[tokio::test]
async fn finalize_after_own_endpoint_over_silence_can_go_unanswered() {
    let cfg = DeepgramConfig {
        script: vec![TranscriptScript::new("yes please", Trigger::AudioBytes(800))],
        empty_finalize_reply: false,
        ..DeepgramConfig::default()
    };
    let emu = DeepgramEmulator::start(cfg).expect("start");
    let mut ws = connect(&emu, "model=nova-3&encoding=mulaw&sample_rate=8000", None).await.expect("connect");
    for _ in 0..5 {
        ws.send(Message::Binary(vec![0xFFu8; 160].into())).await.expect("send");
    }
    let fin = next_json(&mut ws).await;
    assert_eq!(fin["channel"]["alternatives"][0]["transcript"], "yes please");
    // Silence after the endpoint, then the client's Finalize: nothing comes back.
    for _ in 0..5 {
        ws.send(Message::Binary(vec![0xFFu8; 160].into())).await.expect("send");
    }
    ws.send(Message::Text(r#"{"type":"Finalize"}"#.into())).await.expect("send");
    let next = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(next.is_err(), "expected no reply to the Finalize, got {next:?}");
    let r = emu.received();
    assert_eq!(r.connections[0].count_controls(|c| *c == ControlMessage::Finalize), 1);
    assert_eq!(r.connections[0].audio_bytes, 1600);
}
