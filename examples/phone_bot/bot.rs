//! The per-call pipeline and the skills executor.
//!
//! ```text
//! twilio in → μ-law decode → VAD → Deepgram → record_input → UserAggregator → LLM
//!   → AssistantAggregator → SkillExecutor → SentenceAggregator → ElevenLabs (ulaw_8000)
//!   → PlayoutTap → record_output → AudioOutput(TwilioSink)
//! ```
//!
//! The whole call stays at 8 kHz: Twilio's μ-law is decoded once for the VAD and STT, and TTS is
//! asked for `ulaw_8000` (it follows `StartInfo.output_audio`), so nothing is resampled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;
use voxline_pipeline::{
    AudioFormat, Context, Direction, FlowResult, Frame, Pipeline, Processor, StartInfo, ToolCall, ToolOutcome,
    ToolResult, ToolSpec,
};
use voxline_processors::audio::VadProcessor;
use voxline_processors::codec::MulawDecoder;
use voxline_processors::llm::{
    AnthropicLlm, AnthropicSettings, AssistantAggregator, AssistantSettings, ConversationContext, LlmService,
    OpenAiLlm, OpenAiSettings, UserAggregator, UserAggregatorSettings,
};
use voxline_processors::stt::{DeepgramSettings, DeepgramStt};
use voxline_processors::text::{SentenceAggregator, SentenceSettings};
use voxline_processors::tts::{ElevenLabsSettings, ElevenLabsTts};

use crate::config::{Config, Secrets};
use crate::recorder::Recorder;
use crate::skills::{self, CallCtx};
use crate::store::Store;

/// What one call's pipeline needs.
pub struct CallParts {
    pub cfg: Arc<Config>,
    pub secrets: Secrets,
    pub store: Store,
    pub ctx: Arc<CallCtx>,
    pub recorder: Recorder,
    /// Notified when the bot decided to end the call (after queueing the goodbye).
    pub end_call: Arc<Notify>,
}

/// The stream format: μ-law 8 kHz in and out, PCM16 8 kHz after the decoder.
pub fn start_info(call_sid: &str, allow_interruptions: bool) -> StartInfo {
    StartInfo {
        input_audio: AudioFormat::pcm16(8000),
        output_audio: AudioFormat::mulaw_8k(),
        allow_interruptions,
        session_id: Arc::from(call_sid),
    }
}

fn llm_service(cfg: &Config, secrets: &Secrets) -> anyhow::Result<LlmService> {
    let key = secrets.llm.clone().unwrap_or_default();
    let svc = if cfg.llm.provider == "anthropic" {
        let mut s =
            AnthropicSettings::new(cfg.llm.model.clone()).with_base_url(cfg.llm.base_url.clone()).with_api_key(key);
        s.max_tokens = cfg.llm.max_tokens;
        s.temperature = Some(f64::from(cfg.llm.temperature));
        AnthropicLlm::new(s)
    } else {
        let mut s =
            OpenAiSettings::new(cfg.llm.model.clone()).with_base_url(cfg.llm.base_url.clone()).with_api_key(key);
        s.max_tokens = Some(cfg.llm.max_tokens);
        s.temperature = Some(f64::from(cfg.llm.temperature));
        OpenAiLlm::new(s)
    };
    svc.map_err(|e| anyhow::anyhow!("llm: {e}"))
}

/// Build the pipeline around the transport's `output` stage.
pub fn build(parts: &CallParts, output: impl Processor) -> anyhow::Result<(Pipeline, ConversationContext)> {
    let cfg = &parts.cfg;
    let tools: Vec<ToolSpec> = skills::specs(&cfg.skills.enabled)
        .into_iter()
        .map(|s| ToolSpec {
            name: s.name.into(),
            description: s.description.into(),
            parameters: Arc::new(s.parameters),
        })
        .collect();
    let conversation = ConversationContext::new(cfg.persona.system_prompt.clone(), tools);

    let vad_params = voxline_processors::audio::VadParams {
        start_secs: cfg.vad.start_ms as f32 / 1000.0,
        stop_secs: cfg.vad.stop_ms as f32 / 1000.0,
        confidence: cfg.vad.threshold,
        min_barge_in_secs: cfg.vad.min_barge_in_ms as f32 / 1000.0,
        ..voxline_processors::audio::VadParams::default()
    };
    let vad = VadProcessor::with_params(vad_params).map_err(|e| anyhow::anyhow!("vad: {e}"))?;
    let stt = DeepgramStt::new(DeepgramSettings {
        api_key: parts.secrets.deepgram.clone(),
        base_url: cfg.stt.base_url.clone(),
        model: cfg.stt.model.clone(),
        language: cfg.stt.language.clone(),
        ..DeepgramSettings::default()
    })
    .map_err(|e| anyhow::anyhow!("stt: {e}"))?;
    let user = UserAggregator::new(conversation.clone(), UserAggregatorSettings::default());
    let llm = llm_service(cfg, &parts.secrets)?;
    let (assistant, playout_tap) = AssistantAggregator::new(conversation.clone(), AssistantSettings::default());
    let executor = SkillExecutor {
        conversation: conversation.clone(),
        store: parts.store.clone(),
        ctx: parts.ctx.clone(),
        recorder: parts.recorder.clone(),
        goodbye: cfg.persona.goodbye.clone(),
        end_call: parts.end_call.clone(),
        timeout: Duration::from_millis(cfg.skills.timeout_ms),
    };
    let (tts_http, tts_ws) = if cfg.tts.base_url.starts_with("http") {
        (cfg.tts.base_url.clone(), cfg.tts.base_url.replacen("http", "ws", 1))
    } else {
        (cfg.tts.base_url.replacen("ws", "http", 1), cfg.tts.base_url.clone())
    };
    let tts = ElevenLabsTts::new(ElevenLabsSettings {
        api_key: parts.secrets.elevenlabs.clone(),
        base_url: tts_ws,
        http_base_url: tts_http,
        voice_id: cfg.tts.voice_id.clone(),
        model_id: cfg.tts.model.clone(),
        ..ElevenLabsSettings::default()
    })
    .map_err(|e| anyhow::anyhow!("tts: {e}"))?;

    let pipeline = Pipeline::new()
        .with(MulawDecoder::new())
        .with(vad)
        .with(stt)
        .with(parts.recorder.input_tap())
        .with(user)
        .with(llm)
        .with(assistant)
        .with(executor)
        .with(SentenceAggregator::new(SentenceSettings::default()))
        .with(tts)
        .with(playout_tap)
        .with(parts.recorder.output_tap())
        .with(output);
    Ok((pipeline, conversation))
}

/// Runs the LLM's tool calls against the skills, stores the results in the conversation and
/// re-runs the LLM upstream.
///
/// Skills run in a spawned task so an interruption cannot leave an assistant tool-call message
/// without its results (providers reject such a context); the follow-up `LlmRun` is pushed with
/// the epoch of the turn, so after a barge-in it is stale and dropped.
struct SkillExecutor {
    conversation: ConversationContext,
    store: Store,
    ctx: Arc<CallCtx>,
    recorder: Recorder,
    goodbye: String,
    end_call: Arc<Notify>,
    timeout: Duration,
}

impl Processor for SkillExecutor {
    fn name(&self) -> &str {
        "skill_executor"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        let Frame::ToolCalls(calls) = frame else {
            cx.push(frame, direction).await;
            return Ok(());
        };
        if direction == Direction::Upstream {
            cx.push(Frame::ToolCalls(calls), direction).await;
            return Ok(());
        }
        let sender = cx.sender();
        let (conversation, store, ctx, recorder) =
            (self.conversation.clone(), self.store.clone(), self.ctx.clone(), self.recorder.clone());
        let (goodbye, end_call, timeout) = (self.goodbye.clone(), self.end_call.clone(), self.timeout);
        tokio::spawn(async move {
            let runs = calls.iter().map(|c| run_one(&store, &ctx, &recorder, c, timeout));
            let results: Vec<ToolResult> = futures::future::join_all(runs).await;
            conversation.add_tool_results(&results);
            let ending = skills::lock(&ctx.end_requested).is_some();
            let transferred = *skills::lock(&ctx.transferred);
            if ending {
                for f in spoken_line(&goodbye) {
                    sender.push(f, Direction::Downstream);
                }
                end_call.notify_one();
            } else if transferred {
                // Twilio ends the media stream itself once the <Dial> takes over.
            } else if results.iter().any(|r| r.run_llm) {
                sender.push(Frame::LlmRun(conversation.snapshot()), Direction::Upstream);
            }
        });
        Ok(())
    }
}

/// A fixed line to speak, framed as a response so TTS flushes it as one utterance (and the
/// output marks it) and the assistant aggregator records it.
pub fn spoken_line(text: &str) -> [Frame; 3] {
    [Frame::LlmResponseStart, Frame::Text(text.into()), Frame::LlmResponseEnd]
}

async fn run_one(store: &Store, ctx: &CallCtx, recorder: &Recorder, call: &ToolCall, timeout: Duration) -> ToolResult {
    let started = Instant::now();
    let args: Value = serde_json::from_str(&call.arguments).unwrap_or(Value::Null);
    let (result, outcome) = match tokio::time::timeout(timeout, skills::call(store, ctx, &call.name, &args)).await {
        Ok(v) => {
            let outcome = if v["success"] == true { ToolOutcome::Ok } else { ToolOutcome::Error };
            (v, outcome)
        }
        Err(_) => (skills::err(format!("{} timed out", call.name)), ToolOutcome::Timeout),
    };
    recorder.tool_call(&call.name, args, result.clone(), started);
    ToolResult {
        call_id: call.id.clone(),
        name: call.name.clone(),
        content: result.to_string().into(),
        outcome,
        run_llm: &*call.name != "end_call",
    }
}
