//! # voxline-processors
//!
//! The processors a voice agent is built from, one family per module:
//!
//! | module | what |
//! |---|---|
//! | [`codec`] | G.711 μ-law / A-law, Opus (feature `opus`) |
//! | [`audio`] | resampling, sample-format conversion, mixer, VAD, call recorder |
//! | [`stt`] | Deepgram live speech-to-text |
//! | [`llm`] | OpenAI-compatible and Anthropic streaming LLMs, context, aggregators |
//! | [`tts`] | ElevenLabs text-to-speech |
//! | [`tools`] | tool registry and the tool executor processor |
//! | [`text`] | sentence aggregation between LLM and TTS |
//! | [`service`] | what every provider shares: [`service::ApiKey`], [`service::ServiceConfigError`], [`service::ReconnectPolicy`] |
//!
//! Each provider is a Cargo feature, so an application compiles only the clients it calls (and
//! their HTTP/websocket dependencies). The default is what the phone bot uses: all four providers.
//!
//! | feature | default | what | cost |
//! |---|---|---|---|
//! | `deepgram` | yes | [`stt::DeepgramStt`]: Deepgram live STT over a websocket | `tokio-tungstenite` |
//! | `openai` | yes | [`llm::OpenAiLlm`]: OpenAI-compatible chat completions (SSE, tool calls) | `reqwest` |
//! | `anthropic` | yes | [`llm::AnthropicLlm`]: Anthropic Messages (SSE, tool use) | `reqwest` |
//! | `elevenlabs` | yes | [`tts::ElevenLabsTts`]: ElevenLabs stream-input websocket, HTTP fallback | `tokio-tungstenite`, `reqwest` |
//! | `opus` | no | Opus encode/decode through libopus | needs `libopus-dev` |
//! | `smart-turn` | no | in-process smart-turn v3.2 end-of-turn model ([`audio::turn`]) on tract | pure Rust; model file from `scripts/fetch-smart-turn.sh` |

pub mod audio;
pub mod codec;
pub mod llm;
pub mod service;
pub mod stt;
pub mod text;
pub mod tools;
pub mod tts;
