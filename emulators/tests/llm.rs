//! Wire-level tests of the OpenAI and Anthropic emulators with reqwest and manual SSE parsing.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use voxline_emulators::anthropic::{self, AnthropicConfig, AnthropicEmulator};
use voxline_emulators::llm::{LlmFault, Scripted, ScriptedToolCall, ToolCallStyle};
use voxline_emulators::openai::{self, OpenAiConfig, OpenAiEmulator};

/// (event name, data) pairs parsed from an SSE body; `Err` if the body was cut.
async fn sse(resp: reqwest::Response) -> (Vec<(Option<String>, String)>, bool) {
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    let mut cut = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => buf.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    let mut events = Vec::new();
    for block in buf.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push(d);
            } else {
                data.push(line);
            }
        }
        events.push((name, data.join("\n")));
    }
    (events, cut)
}

fn chat_body(messages: Value, include_usage: bool) -> Value {
    json!({"model": "gpt-4.1-mini", "stream": true, "stream_options": {"include_usage": include_usage}, "messages": messages,
           "tools": [{"type": "function", "function": {"name": "check_order_status", "parameters": {"type": "object"}}}]})
}

async fn post_openai(emu: &OpenAiEmulator, body: &Value, key: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(format!("{}/chat/completions", emu.base_url())).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.expect("send")
}

#[tokio::test]
async fn openai_text_stream_with_usage_and_done() {
    let emu = OpenAiEmulator::start(
        OpenAiConfig::with_script(vec![Scripted::text("Sure, one moment.")]).with_api_key("sk-test"),
    )
    .expect("start");
    let body = chat_body(json!([{"role": "user", "content": "hi"}]), true);
    let unauth = post_openai(&emu, &body, Some("sk-wrong")).await;
    assert_eq!(unauth.status(), 401);
    let err: Value = unauth.json().await.expect("json");
    assert_eq!(err["error"]["code"], "invalid_api_key");

    let resp = post_openai(&emu, &body, Some("sk-test")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().expect("ct").starts_with("text/event-stream"));
    let (events, cut) = sse(resp).await;
    assert!(!cut);
    assert!(events.iter().all(|(name, _)| name.is_none()), "OpenAI sends no event names");
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).expect("chunk")).collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "Sure, one moment.");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().expect("usage");
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().expect("tokens") > 0);
    let reqs = emu.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].header("authorization"), Some("Bearer sk-test"));
    assert_eq!(reqs[1].body["model"], "gpt-4.1-mini");
}

#[tokio::test]
async fn openai_parallel_tool_calls_interleaved_by_index() {
    let calls = vec![
        ScriptedToolCall::new("check_order_status", &json!({"order_id": "12345"})).with_id("call_a"),
        ScriptedToolCall::new("lookup_customer", &json!({"phone": "+15550001111"})).with_id("call_b"),
    ];
    let script = vec![
        Scripted::tool_calls(calls.clone()).with_tool_call_style(ToolCallStyle::Interleaved),
        Scripted::tool_calls(calls),
    ];
    let emu = OpenAiEmulator::start(OpenAiConfig::with_script(script)).expect("start");
    let body = chat_body(json!([{"role": "user", "content": "order 12345"}]), false);
    for _ in 0..2 {
        let (events, _) = sse(post_openai(&emu, &body, None).await).await;
        let chunks: Vec<Value> = events
            .iter()
            .filter(|(_, d)| d != "[DONE]")
            .map(|(_, d)| serde_json::from_str(d).expect("chunk"))
            .collect();
        let mut args: Vec<String> = vec![String::new(); 2];
        let mut names: Vec<String> = vec![String::new(); 2];
        let mut seen_order = Vec::new();
        for c in &chunks {
            for tc in c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().expect("index") as usize;
                seen_order.push(i);
                if let Some(n) = tc["function"]["name"].as_str() {
                    assert_eq!(tc["function"]["arguments"], "", "header carries empty arguments");
                    assert_eq!(tc["type"], "function");
                    assert!(tc["id"].as_str().is_some());
                    names[i] = n.to_string();
                }
                args[i].push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        assert_eq!(names, vec!["check_order_status", "lookup_customer"]);
        assert_eq!(serde_json::from_str::<Value>(&args[0]).expect("args0"), json!({"order_id": "12345"}));
        assert_eq!(serde_json::from_str::<Value>(&args[1]).expect("args1"), json!({"phone": "+15550001111"}));
        assert!(seen_order.len() > 4);
        assert_eq!(chunks.last().expect("last")["choices"][0]["finish_reason"], "tool_calls");
    }
}

#[tokio::test]
async fn openai_faults() {
    let script = vec![
        Scripted::fault(LlmFault::ServerError),
        Scripted::fault(LlmFault::RateLimited { retry_after_secs: 2 }),
        Scripted::text("a b c d e f").with_fault(LlmFault::CloseMidStream { after_events: 2 }),
        Scripted::text("a b c").with_fault(LlmFault::MalformedData { after_events: 1 }),
        Scripted::tool_call("check_order_status", &json!({"order_id": "999"}))
            .with_fault(LlmFault::TruncatedToolArguments),
        Scripted::text("x").with_fault(LlmFault::StreamError { after_events: 1 }),
    ];
    let emu = OpenAiEmulator::start(OpenAiConfig::with_script(script)).expect("start");
    let body = chat_body(json!([{"role": "user", "content": "hi"}]), false);
    assert_eq!(post_openai(&emu, &body, None).await.status(), 500);
    let r = post_openai(&emu, &body, None).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    let (events, cut) = sse(post_openai(&emu, &body, None).await).await;
    assert!(cut, "stream must be cut");
    assert_eq!(events.len(), 2);
    let (events, _) = sse(post_openai(&emu, &body, None).await).await;
    assert!(serde_json::from_str::<Value>(&events[1].1).is_err(), "second event is malformed");
    let (events, _) = sse(post_openai(&emu, &body, None).await).await;
    let args: String = events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str().map(str::to_string))
        .collect();
    assert!(serde_json::from_str::<Value>(&args).is_err(), "truncated args: {args}");
    let (events, _) = sse(post_openai(&emu, &body, None).await).await;
    assert!(events.last().expect("last").1.contains("\"error\""));
    assert!(events.iter().all(|(_, d)| d != "[DONE]"));

    // History validation: a tool call without a tool message is a 400.
    let bad = chat_body(
        json!([{"role": "user", "content": "x"},
               {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
               {"role": "user", "content": "y"}]),
        false,
    );
    assert_eq!(post_openai(&emu, &bad, None).await.status(), 400);
}

#[tokio::test]
async fn openai_ttft_and_responder() {
    let cfg = OpenAiConfig {
        script: vec![Scripted::text("slow").with_ttft(Duration::from_millis(200))],
        responder: Some(openai::call_center_responder()),
        ..OpenAiConfig::default()
    };
    let emu = OpenAiEmulator::start(cfg).expect("start");
    let t0 = Instant::now();
    let (events, _) =
        sse(post_openai(&emu, &chat_body(json!([{"role": "user", "content": "hi"}]), false), None).await).await;
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert!(!events.is_empty());

    let body = chat_body(json!([{"role": "user", "content": "Where is my order 12345?"}]), false);
    let (events, _) = sse(post_openai(&emu, &body, None).await).await;
    let args: String = events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str().map(str::to_string))
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&args).expect("args"), json!({"order_id": "12345"}));

    let body = chat_body(
        json!([{"role": "user", "content": "Where is my order 12345?"},
               {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "check_order_status", "arguments": "{\"order_id\":\"12345\"}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "{\"order_id\":\"12345\",\"status\":\"shipped\",\"eta\":\"tomorrow\"}"}]),
        false,
    );
    let (events, _) = sse(post_openai(&emu, &body, None).await).await;
    let text: String = events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert!(text.contains("Your order 12345 is shipped"), "{text}");
}

async fn post_anthropic(emu: &AnthropicEmulator, body: &Value, key: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/messages", emu.base_url()))
        .header("anthropic-version", "2023-06-01")
        .json(body);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    req.send().await.expect("send")
}

#[tokio::test]
async fn anthropic_event_sequence_text_then_tool_use() {
    let script = vec![
        Scripted::text("One moment.")
            .with_tool_calls(vec![ScriptedToolCall::new("check_order_status", &json!({"order_id": "42"}))]),
    ];
    let emu = AnthropicEmulator::start(AnthropicConfig::with_script(script).with_api_key("ak")).expect("start");
    let body = json!({"model": "claude-x", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "order 42"}]});
    let unauth = post_anthropic(&emu, &body, Some("bad")).await;
    assert_eq!(unauth.status(), 401);
    let err: Value = unauth.json().await.expect("json");
    assert_eq!(err["error"]["type"], "authentication_error");

    let (events, cut) = sse(post_anthropic(&emu, &body, Some("ak")).await).await;
    assert!(!cut);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().expect("event name")).collect();
    for (name, data) in &events {
        let v: Value = serde_json::from_str(data).expect("json");
        assert_eq!(v["type"].as_str(), name.as_deref(), "data type repeats event name");
    }
    let filtered: Vec<&str> = names.iter().copied().filter(|n| *n != "ping").collect();
    assert_eq!(filtered.first(), Some(&"message_start"));
    assert_eq!(filtered.last(), Some(&"message_stop"));
    assert!(names.contains(&"ping"));
    let data: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).expect("json")).collect();
    let tool_start = data.iter().find(|v| v["content_block"]["type"] == "tool_use").expect("tool_use");
    assert_eq!(tool_start["index"], 1);
    assert_eq!(tool_start["content_block"]["input"], json!({}));
    assert!(tool_start["content_block"]["id"].as_str().expect("id").starts_with("toolu_"));
    let partial: String = data
        .iter()
        .filter(|v| v["delta"]["type"] == "input_json_delta")
        .filter_map(|v| v["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&partial).expect("json"), json!({"order_id": "42"}));
    let text: String = data
        .iter()
        .filter(|v| v["delta"]["type"] == "text_delta")
        .filter_map(|v| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "One moment.");
    let md = data.iter().find(|v| v["type"] == "message_delta").expect("message_delta");
    assert_eq!(md["delta"]["stop_reason"], "tool_use");
    assert!(md["usage"]["output_tokens"].as_u64().is_some());
    let reqs = emu.requests();
    assert_eq!(reqs[1].header("x-api-key"), Some("ak"));
    assert_eq!(reqs[1].header("anthropic-version"), Some("2023-06-01"));
}

#[tokio::test]
async fn anthropic_errors_and_responder() {
    let cfg = AnthropicConfig {
        script: vec![
            Scripted::fault(LlmFault::Overloaded),
            Scripted::text("a b c").with_fault(LlmFault::StreamError { after_events: 2 }),
        ],
        responder: Some(anthropic::call_center_responder()),
        ..AnthropicConfig::default()
    };
    let emu = AnthropicEmulator::start(cfg).expect("start");
    let body = json!({"model": "claude-x", "max_tokens": 100, "stream": true,
                      "tools": [{"name": "check_order_status", "input_schema": {"type": "object"}}],
                      "messages": [{"role": "user", "content": "my order is 777"}]});
    let r = post_anthropic(&emu, &body, None).await;
    assert_eq!(r.status().as_u16(), 529);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": v["request_id"]})
    );
    let (events, _) = sse(post_anthropic(&emu, &body, None).await).await;
    let last = events.last().expect("last");
    assert_eq!(last.0.as_deref(), Some("error"));
    assert_eq!(serde_json::from_str::<Value>(&last.1).expect("json")["error"]["type"], "overloaded_error");

    let (events, _) = sse(post_anthropic(&emu, &body, None).await).await;
    let data: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).expect("json")).collect();
    let tool = data.iter().find(|v| v["content_block"]["type"] == "tool_use").expect("tool_use");
    assert_eq!(tool["content_block"]["name"], "check_order_status");
    let tool_id = tool["content_block"]["id"].as_str().expect("id").to_string();

    let follow = json!({"model": "claude-x", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "my order is 777"},
                     {"role": "assistant", "content": [{"type": "tool_use", "id": tool_id, "name": "check_order_status", "input": {"order_id": "777"}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "{\"order_id\":\"777\",\"status\":\"delivered\"}"}]}]});
    let (events, _) = sse(post_anthropic(&emu, &follow, None).await).await;
    let text: String = events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert!(text.contains("Your order 777 is delivered"), "{text}");

    // Missing version header and unanswered tool_use are 400s.
    let r =
        reqwest::Client::new().post(format!("{}/v1/messages", emu.base_url())).json(&body).send().await.expect("send");
    assert_eq!(r.status(), 400);
    let bad = json!({"model": "claude-x", "max_tokens": 100,
        "messages": [{"role": "user", "content": "x"},
                     {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
                     {"role": "user", "content": "y"}]});
    assert_eq!(post_anthropic(&emu, &bad, None).await.status(), 400);
}
