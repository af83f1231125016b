//! Local, scriptable emulators of the wire protocols Voxline talks to.
//!
//! Each emulator binds `127.0.0.1:0`, speaks the provider's real protocol (message shapes,
//! SSE framing, close codes, auth rejections) closely enough that a client written against
//! the public documentation works unchanged, and records what it received so tests can
//! assert on the client's side of the conversation.
//!
//! | module | provider | transport |
//! | --- | --- | --- |
//! | [`deepgram`] | Deepgram live STT (`/v1/listen`) | WebSocket |
//! | [`openai`] | OpenAI Chat Completions streaming | HTTP + SSE |
//! | [`anthropic`] | Anthropic Messages streaming | HTTP + SSE |
//! | [`elevenlabs`] | ElevenLabs TTS (multi-context / single-context WS, HTTP stream) | WebSocket + HTTP |
//! | [`twilio`] | a Twilio *caller*: voice webhook, then a Media Streams client (the far side of the transport) | HTTP + WebSocket client |
//!
//! `start` is synchronous: inside a Tokio runtime the server runs on that runtime, outside
//! of one it gets a dedicated thread with its own runtime. Every emulator stops when dropped
//! or on `shutdown().await`.

pub mod anthropic;
pub mod audio;
pub mod deepgram;
pub mod elevenlabs;
pub mod llm;
pub mod openai;
pub mod twilio;

mod common;
