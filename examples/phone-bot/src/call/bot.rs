//! The per-call pipeline, and the call control around the engine's tool executor.
//!
//! ```text
//! twilio in → μ-law decode → VAD → Deepgram → record_input → UserAggregator → LLM
//!   → AssistantAggregator → ToolLog → ToolExecutor → CallControl → SentenceAggregator
//!   → ElevenLabs (ulaw_8000) → PlayoutTap → record_output → AudioOutput(TwilioSink)
//! ```
//!
//! The LLM chain is the one documented in `voxline::processors::llm` (user aggregator, LLM,
//! assistant aggregator, tool executor, sentence aggregator, TTS, playout tap). The two thin
//! stages around the executor are the bot's: `ToolLog` notes each call's arguments and start
//! time and holds back the follow-up LLM run once the call is ending or transferred;
//! `CallControl` records each settled call and, when `end_call` succeeded, speaks the goodbye
//! and asks the server to end the call.
//!
//! The whole call stays at 8 kHz: Twilio's μ-law is decoded once for the VAD and STT, and TTS is
//! asked for `ulaw_8000` (it follows `StartInfo.output_audio`), so nothing is resampled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;
use voxline::pipeline::{
    AudioFormat, Context, Direction, FlowResult, Frame, Pipeline, Processor, StartInfo, ToolOutcome,
};
use voxline::processors::audio::VadProcessor;
use voxline::processors::audio::turn::{TurnDetector, TurnModel, TurnParams};
use voxline::processors::codec::MulawDecoder;
use voxline::processors::llm::{
    AnthropicLlm, AnthropicSettings, AssistantAggregator, AssistantSettings, ConversationContext, LlmService,
    OpenAiLlm, OpenAiSettings, SpeculationGate, UserAggregator, UserAggregatorSettings,
};
use voxline::processors::stt::{DeepgramSettings, DeepgramStt, Endpointing};
use voxline::processors::text::{SentenceAggregator, SentenceSettings};
use voxline::processors::tools::{ToolExecutor, ToolExecutorSettings};
use voxline::processors::tts::{ElevenLabsSettings, ElevenLabsTts};

use crate::call::recorder::Recorder;
use crate::call::skills::{self, CallCtx};
use crate::config::{Config, Secrets};
use crate::fleet::store::Store;

/// What one call's pipeline needs.
pub(crate) struct CallParts {
    pub(crate) cfg: Arc<Config>,
    pub(crate) secrets: Secrets,
    pub(crate) store: Store,
    pub(crate) ctx: Arc<CallCtx>,
    pub(crate) recorder: Recorder,
    /// Notified when the bot decided to end the call (after queueing the goodbye).
    pub(crate) end_call: Arc<Notify>,
    /// The end-of-turn model shared by all calls (`turn.model`), `None` for `none`.
    pub(crate) turn_model: Option<Arc<dyn TurnModel>>,
}

/// Load the end-of-turn model `turn.model` names, once per process: its worker threads serve
/// every call. A configured model that cannot load stops startup (the caller would otherwise
/// get a different bot than configured).
pub fn turn_model(cfg: &Config) -> anyhow::Result<Option<Arc<dyn TurnModel>>> {
    match cfg.turn.model.as_str() {
        #[cfg(feature = "smart-turn")]
        "smart-turn" => {
            use voxline::processors::audio::turn::{SmartTurn, SmartTurnWorker, WorkerConfig, default_model_path};
            let path = if cfg.turn.model_path.is_empty() {
                default_model_path().ok_or_else(|| anyhow::anyhow!("turn: no model path (set turn.model_path)"))?
            } else {
                std::path::PathBuf::from(&cfg.turn.model_path)
            };
            let model = SmartTurn::load(&path).map_err(|e| anyhow::anyhow!("turn: {e}"))?;
            let worker =
                SmartTurnWorker::spawn(model, WorkerConfig { threads: cfg.turn.threads, ..WorkerConfig::default() })
                    .map_err(|e| anyhow::anyhow!("turn: {e}"))?;
            tracing::info!(path = %path.display(), threads = cfg.turn.threads, "smart-turn end-of-turn model loaded");
            Ok(Some(Arc::new(worker)))
        }
        // Config validation refuses anything else (and smart-turn without the feature).
        _ => Ok(None),
    }
}

/// The stream format: μ-law 8 kHz in and out, PCM16 8 kHz after the decoder.
pub(crate) fn start_info(call_sid: &str, allow_interruptions: bool) -> StartInfo {
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

/// Deepgram's settings from `stt.*` (the config has validated the ranges).
pub(crate) fn stt_settings(cfg: &Config, secrets: &Secrets) -> DeepgramSettings {
    DeepgramSettings {
        api_key: secrets.deepgram.clone().map(Into::into),
        base_url: cfg.stt.base_url.clone(),
        model: cfg.stt.model.clone(),
        language: cfg.stt.language.clone(),
        endpointing: match cfg.stt.endpointing_ms {
            0 => Endpointing::Disabled,
            ms => Endpointing::SilenceMs(ms),
        },
        utterance_end_ms: cfg.stt.utterance_end_ms,
        vad_events: cfg.stt.vad_events,
        ..DeepgramSettings::default()
    }
}

/// Build the pipeline around the transport's `output` stage.
pub(crate) fn build(parts: &CallParts, output: impl Processor) -> anyhow::Result<(Pipeline, ConversationContext)> {
    let cfg = &parts.cfg;
    let timeout = Duration::from_millis(cfg.skills.timeout_ms);
    let registry = skills::registry(&cfg.skills.enabled, &parts.store, &parts.ctx, timeout);
    let conversation = ConversationContext::new(cfg.persona.system_prompt.clone(), registry.specs());

    let vad_params = voxline::processors::audio::VadParams {
        start_secs: cfg.vad.start_ms as f32 / 1000.0,
        stop_secs: cfg.vad.stop_ms as f32 / 1000.0,
        confidence: cfg.vad.threshold,
        min_barge_in_secs: cfg.vad.min_barge_in_ms as f32 / 1000.0,
        ..voxline::processors::audio::VadParams::default()
    };
    let mut vad = VadProcessor::with_params(vad_params).map_err(|e| anyhow::anyhow!("vad: {e}"))?;
    if let Some(model) = &parts.turn_model {
        let params = TurnParams {
            threshold: cfg.turn.threshold,
            fallback: Duration::from_millis(u64::from(cfg.turn.fallback_ms)),
            ..TurnParams::default()
        };
        let detector = TurnDetector::new(Box::new(model.clone()), params).map_err(|e| anyhow::anyhow!("turn: {e}"))?;
        vad = vad.with_turn_detector(detector);
    }
    let stt = DeepgramStt::new(stt_settings(cfg, &parts.secrets)).map_err(|e| anyhow::anyhow!("stt: {e}"))?;
    // False interruptions: the VAD barges in tentatively and the user aggregator confirms with
    // words or withdraws (see `interruptions.false_interruption_ms`).
    let false_interruption = Duration::from_millis(u64::from(cfg.interruptions.false_interruption_ms));
    vad = vad.with_tentative_barge_in(cfg.interruptions.enabled && !false_interruption.is_zero());
    let user = UserAggregator::new(
        conversation.clone(),
        UserAggregatorSettings {
            false_interruption_timeout: false_interruption,
            // Speculation pays when a turn model stands between the pause and the turn end.
            speculative: cfg.turn.speculative && parts.turn_model.is_some(),
            ..UserAggregatorSettings::default()
        },
    );
    let llm = llm_service(cfg, &parts.secrets)?;
    let (assistant, playout_tap) = AssistantAggregator::new(conversation.clone(), AssistantSettings::default());
    let executor = ToolExecutor::new(
        registry,
        conversation.clone(),
        ToolExecutorSettings { default_timeout: timeout, ..ToolExecutorSettings::default() },
    );
    let started: Started = Arc::default();
    let tool_log = ToolLog { ctx: parts.ctx.clone(), started: started.clone() };
    let control = CallControl {
        ctx: parts.ctx.clone(),
        recorder: parts.recorder.clone(),
        started,
        goodbye: cfg.persona.goodbye.clone(),
        end_call: parts.end_call.clone(),
    };
    let (tts_http, tts_ws) = if cfg.tts.base_url.starts_with("http") {
        (cfg.tts.base_url.clone(), cfg.tts.base_url.replacen("http", "ws", 1))
    } else {
        (cfg.tts.base_url.replacen("ws", "http", 1), cfg.tts.base_url.clone())
    };
    let tts = ElevenLabsTts::new(ElevenLabsSettings {
        api_key: parts.secrets.elevenlabs.clone().map(Into::into),
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
        .with(SpeculationGate::new())
        .with(assistant)
        .with(tool_log)
        .with(executor)
        .with(control)
        .with(SentenceAggregator::new(SentenceSettings::default()))
        .with(tts)
        .with(playout_tap)
        .with(parts.recorder.output_tap())
        .with(output);
    Ok((pipeline, conversation))
}

/// Arguments and start time of each tool call in flight, by call id.
type Started = Arc<Mutex<HashMap<Arc<str>, (Arc<str>, Instant)>>>;

/// Before the executor: notes what each call was asked (the executor consumes `ToolCalls`), and
/// drops the executor's follow-up `LlmRun` once the bot ended or transferred the call, so a
/// batch like `[create_support_ticket, end_call]` does not make the bot talk past its goodbye.
struct ToolLog {
    ctx: Arc<CallCtx>,
    started: Started,
}

impl Processor for ToolLog {
    fn name(&self) -> &str {
        "tool_log"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        match (&frame, direction) {
            (Frame::ToolCalls(calls), Direction::Downstream) => {
                let now = Instant::now();
                let mut started = voxline::pipeline::sync::lock(&self.started);
                for c in calls.iter() {
                    started.insert(c.id.clone(), (c.arguments.clone(), now));
                }
            }
            (Frame::LlmRun(_), Direction::Upstream)
                if voxline::pipeline::sync::lock(&self.ctx.end_requested).is_some()
                    || *voxline::pipeline::sync::lock(&self.ctx.transferred) =>
            {
                tracing::debug!(call_sid = %self.ctx.call_sid, "call ending or transferred: no follow-up LLM run");
                return Ok(());
            }
            _ => {}
        }
        cx.push(frame, direction).await;
        Ok(())
    }
}

/// After the executor: records each settled call, and turns a successful `end_call` into the
/// goodbye line followed by the end of the call.
///
/// This reacts to the `ToolResult` frame rather than running inside the tool: results are
/// uninterruptible, and the goodbye is pushed by this stage when the result reaches it (not by a
/// `FrameSender` captured when the batch started, whose epoch a barge-in during the batch would
/// make stale and whose frames would be silently dropped). The goodbye is uninterruptible too:
/// the bot has decided to hang up, and `End` follows it whatever the caller does. `end_call` is
/// notified only after the goodbye is queued, so the server's `End` travels behind it.
struct CallControl {
    ctx: Arc<CallCtx>,
    recorder: Recorder,
    started: Started,
    goodbye: String,
    end_call: Arc<Notify>,
}

impl Processor for CallControl {
    fn name(&self) -> &str {
        "call_control"
    }

    async fn process(&mut self, frame: Frame, direction: Direction, cx: &mut Context) -> FlowResult {
        let Frame::ToolResult(r) = &frame else {
            cx.push(frame, direction).await;
            return Ok(());
        };
        let (arguments, started) = voxline::pipeline::sync::lock(&self.started)
            .remove(&r.call_id)
            .unwrap_or_else(|| ("".into(), Instant::now()));
        let args: Value = serde_json::from_str(&arguments).unwrap_or(Value::Null);
        self.recorder.tool_call(&r.name, args, skills::normalize_result(&r.content), started);
        let ending = &*r.name == "end_call" && r.outcome == ToolOutcome::Ok;
        if ending {
            tracing::info!(call_sid = %self.ctx.call_sid, "end_call: saying goodbye, then hanging up");
        }
        cx.push(frame, direction).await;
        if ending {
            for f in spoken_line(&self.goodbye) {
                cx.push_uninterruptible(f, Direction::Downstream).await;
            }
            self.end_call.notify_one();
        }
        Ok(())
    }
}

/// A fixed line to speak, framed as a response so TTS flushes it as one utterance (and the
/// output marks it) and the assistant aggregator records it.
pub(crate) fn spoken_line(text: &str) -> [Frame; 3] {
    [Frame::LlmResponseStart, Frame::Text(text.into()), Frame::LlmResponseEnd]
}
