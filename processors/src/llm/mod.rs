//! LLM services, the conversation context and the context aggregators.
//!
//! | item | role |
//! |---|---|
//! | [`LlmService`] | the LLM processor: `LlmRun` in, streamed response frames out (shared plumbing) |
//! | [`OpenAiLlm`] | OpenAI Chat Completions and compatibles (Azure, Groq, Together, Ollama, vLLM) |
//! | [`AnthropicLlm`] | Anthropic Messages |
//! | [`ConversationContext`] | the shared, provider-neutral conversation of one call |
//! | [`UserAggregator`] | transcripts + VAD → user turns → `LlmRun` |
//! | [`AssistantAggregator`] + [`PlayoutTap`] | record the bot's turns, trimmed to what the caller heard |
//! | [`sse`] | the SSE decoder both providers use |
//!
//! # Where things go in a pipeline
//!
//! ```text
//! transport.in → vad → stt → UserAggregator → LlmService → AssistantAggregator → ToolExecutor
//!     → SentenceAggregator → tts → PlayoutTap → transport.out
//! ```
//!
//! - [`UserAggregator`] after STT: it needs transcripts (downstream) and the VAD's
//!   `UserStartedSpeaking`/`UserStoppedSpeaking` events.
//! - [`AssistantAggregator`] right after the LLM, *before* the tool executor and TTS: it sees the
//!   response in generation order (text, then the `ToolCalls` batch), so it records the assistant
//!   message holding the calls before the executor stores their results, and the order the
//!   providers require holds by construction. `PlayedUpTo` from the output transport travels
//!   upstream through TTS and reaches it.
//! - [`PlayoutTap`] between TTS and the output transport: the only place that sees the word
//!   timings of `TtsAudio` (downstream, from TTS) *and* `PlayedUpTo` (upstream, from the output)
//!   for the same utterance. It feeds the words the caller actually heard to the aggregator
//!   (they share state; build them together with [`AssistantAggregator::new`]).
//!
//! Why not Pipecat's single aggregator after the output transport: in Voxline the output stage
//! reports play-out *upstream*, so nothing after it ever sees `PlayedUpTo`, and text frames are
//! consumed on the way (the sentence aggregator eats `LlmText`, TTS eats `Text`). Recording at
//! generation time and trimming with play-out reports needs no cooperation from TTS beyond the
//! `TtsAudio.words` it already produces.

#[cfg(feature = "anthropic")]
mod anthropic;
mod assistant_aggregator;
mod context;
#[cfg(feature = "openai")]
mod openai;
#[cfg(any(feature = "openai", feature = "anthropic"))]
mod service;
mod speculation;
#[cfg(any(feature = "openai", feature = "anthropic"))]
pub mod sse;
#[cfg(any(feature = "openai", feature = "anthropic"))]
mod tool_calls;
mod user_aggregator;

#[cfg(feature = "anthropic")]
pub use anthropic::{
    AnthropicLlm, AnthropicSettings, AnthropicStreamParser, CONVERSATION_START_MARKER, DEFAULT_ANTHROPIC_BASE_URL,
    DEFAULT_ANTHROPIC_KEY_ENV, DEFAULT_ANTHROPIC_MAX_TOKENS, DEFAULT_ANTHROPIC_MODEL, DEFAULT_ANTHROPIC_VERSION,
};
pub use assistant_aggregator::{
    AssistantAggregator, AssistantSettings, DEFAULT_LOOKAHEAD, DEFAULT_MAX_PENDING, PlayoutTap,
};
pub use context::{ConversationContext, MessageId, PENDING_TOOL_RESULT};
#[cfg(feature = "openai")]
pub use openai::{
    DEFAULT_OPENAI_BASE_URL, DEFAULT_OPENAI_KEY_ENV, DEFAULT_OPENAI_MODEL, DEFAULT_OPENAI_PATH, OpenAiAuth, OpenAiLlm,
    OpenAiSettings, OpenAiStreamParser, TokenLimitField,
};
#[cfg(any(feature = "openai", feature = "anthropic"))]
pub use service::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_FALLBACK_TEXT, DEFAULT_FIRST_TOKEN_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_RETRIES, DEFAULT_MAX_RETRY_AFTER, LlmProvider,
    LlmProviderSettings, LlmService, LlmServiceSettings, RetrySettings, StreamError, StreamItem, StreamParser,
    ToolChoice,
};
pub use speculation::SpeculationGate;
#[cfg(any(feature = "openai", feature = "anthropic"))]
pub use tool_calls::ToolCallAccumulator;
pub use user_aggregator::{
    DEFAULT_FALSE_INTERRUPTION_TIMEOUT, DEFAULT_FINAL_TRANSCRIPT_TIMEOUT, DEFAULT_INCOMPLETE_TIMEOUT, SpeculationStats,
    UserAggregator, UserAggregatorSettings, is_backchannel, reads_unfinished,
};
