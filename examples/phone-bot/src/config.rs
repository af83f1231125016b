//! Typed configuration: YAML file → env overrides → typed structs → validation.
//!
//! Overrides: every env var `VOXLINE__A__B=value` sets `a.b` in the YAML tree before it is
//! deserialized (segments lowercased), so any field can be overridden without code. A value is
//! kept as a string where the file has a string (numbers-as-text like phone numbers stay text),
//! otherwise parsed as a YAML scalar. Secrets never appear here: the config names the env var
//! that holds each one, and [`Secrets`] reads them without ever logging the values.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `server:` — listen address, public URL, call admission and drain.
    pub server: ServerConfig,
    /// `telephony:` — Twilio REST, signature checks, transfers.
    pub telephony: TelephonyConfig,
    /// `stt:` — speech-to-text (Deepgram) and its turn-taking hints.
    pub stt: SttConfig,
    /// `llm:` — the conversation model.
    pub llm: LlmConfig,
    /// `tts:` — text-to-speech (ElevenLabs).
    pub tts: TtsConfig,
    /// `vad:` — the local voice activity detector that decides when the caller speaks.
    pub vad: VadConfig,
    /// `turn:` — the optional end-of-turn model behind the VAD.
    pub turn: TurnConfig,
    /// `interruptions:` — barge-in and false-interruption handling.
    pub interruptions: InterruptionConfig,
    /// `persona:` — who the bot is and what it says.
    pub persona: PersonaConfig,
    /// `skills:` — the tools the LLM may call.
    pub skills: SkillsConfig,
    /// `workflow:` — the post-call steps.
    pub workflow: WorkflowConfig,
    /// `storage:` — database, Redis and PII encryption.
    pub storage: StorageConfig,
    /// `admin:` — the admin API's token.
    pub admin: AdminConfig,
    /// `jobs:` — the durable post-call job queue.
    pub jobs: JobsConfig,
    /// `security:` — rate limits, CORS, retention.
    pub security: SecurityConfig,
    /// `observability:` — log format and span export.
    pub observability: ObservabilityConfig,
}

/// `server:` — the HTTP/websocket server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Socket address the server binds, `host:port` (default `0.0.0.0:8080`).
    pub listen: String,
    /// Public base URL Twilio reaches us on: the TwiML's stream URL is built from it and
    /// `X-Twilio-Signature` is computed over it, so it must match what Twilio calls exactly.
    pub public_url: String,
    /// Largest websocket text message accepted from Twilio, in bytes (at least 1024; default
    /// 65536).
    pub max_message_bytes: usize,
    /// Concurrent calls accepted by this instance; more are refused (at least 1; default 100).
    pub max_calls: usize,
    /// This instance's name in the shared live-call registry (default: hostname-pid).
    pub instance_id: Option<String>,
    /// On SIGTERM/SIGINT, live calls get this many milliseconds to finish before the bot ends
    /// them politely (goodbye, then REST hang-up). Default 30000.
    pub drain_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            public_url: "http://localhost:8080".into(),
            max_message_bytes: 64 * 1024,
            max_calls: 100,
            instance_id: None,
            drain_timeout_ms: 30_000,
        }
    }
}

/// `telephony:` — the phone carrier (Twilio).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelephonyConfig {
    /// Only `twilio` for now.
    pub provider: String,
    /// Twilio REST base URL, for hang-ups and transfers (default `https://api.twilio.com`; tests
    /// point it at an emulator).
    pub api_base_url: String,
    /// Env var holding the account SID (default `TWILIO_ACCOUNT_SID`).
    pub account_sid_env: String,
    /// Env var holding the auth token, which signs webhooks and authenticates REST calls
    /// (default `TWILIO_AUTH_TOKEN`).
    pub auth_token_env: String,
    /// Check `X-Twilio-Signature` on webhooks (default true; turn off only for local experiments).
    pub validate_signatures: bool,
    /// Where `transfer_to_human` dials; required when that skill is enabled.
    pub transfer_number: String,
    /// Hang up through REST when the bot ends the call (default true).
    pub hang_up_on_end: bool,
}

impl Default for TelephonyConfig {
    fn default() -> Self {
        Self {
            provider: "twilio".into(),
            api_base_url: "https://api.twilio.com".into(),
            account_sid_env: "TWILIO_ACCOUNT_SID".into(),
            auth_token_env: "TWILIO_AUTH_TOKEN".into(),
            validate_signatures: true,
            transfer_number: String::new(),
            hang_up_on_end: true,
        }
    }
}

/// `stt:` — speech-to-text. The local VAD decides when the caller stopped and then asks
/// Deepgram to finalize; the Deepgram fields here only shape what Deepgram does on its own.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SttConfig {
    /// Only `deepgram` for now.
    pub provider: String,
    /// Deepgram model (default `nova-3`).
    pub model: String,
    /// Language of the caller's speech, a BCP-47 tag (default `en-US`).
    pub language: String,
    /// Deepgram websocket base URL, `ws://` or `wss://` (default `wss://api.deepgram.com`).
    pub base_url: String,
    /// Env var holding the Deepgram API key (default `DEEPGRAM_API_KEY`).
    pub api_key_env: String,
    /// Deepgram `endpointing`: ms of silence after which Deepgram finalizes an utterance on its
    /// own (`speech_final`). `0` or `false` turns it off (only `Finalize` on the local VAD's stop
    /// then closes an utterance). Otherwise within 10..=5000; default 300.
    #[serde(deserialize_with = "endpointing_ms")]
    pub endpointing_ms: u32,
    /// Deepgram `utterance_end_ms`: an `UtteranceEnd` message after this gap between words
    /// (needs interim results, which the bot always asks for). Within 1000..=5000, or
    /// `false`/`null` to leave it off; default 1000.
    #[serde(deserialize_with = "utterance_end_ms")]
    pub utterance_end_ms: Option<u32>,
    /// Deepgram `vad_events`: `SpeechStarted` messages on voice onset. Logged only; turns follow
    /// the local VAD, which does not fire on line noise. Default false.
    pub vad_events: bool,
}

/// Shortest `utterance_end_ms` worth asking for: Deepgram sends interims about once a second,
/// so a shorter gap cannot be measured (its docs say values under 1000 are not useful).
pub const MIN_UTTERANCE_END_MS: u32 = 1000;
/// Longest `stt.utterance_end_ms` / `stt.endpointing_ms` accepted: a phone turn that needs more
/// than 5 s of silence to end is a configuration mistake (the same cap as `vad.stop_ms`).
pub const MAX_STT_GAP_MS: u32 = 5000;
/// Shortest non-zero `stt.endpointing_ms` (Deepgram's own default).
pub const MIN_ENDPOINTING_MS: u32 = 10;

/// A millisecond count written as a number, or `false` for "off"; the error names `field`
/// (serde's own message for a nested type error does not). `true` is refused: it names no
/// duration.
fn ms_or_off(field: &str, v: Value) -> Result<Option<u32>, String> {
    match &v {
        Value::Null | Value::Bool(false) => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("{field} must be whole milliseconds or false, got {v}")),
        _ => Err(format!("{field} must be whole milliseconds or false, got {v}")),
    }
}

fn endpointing_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Err(serde::de::Error::custom("stt.endpointing_ms must be whole milliseconds or false, got null"));
    }
    ms_or_off("stt.endpointing_ms", v).map(Option::unwrap_or_default).map_err(serde::de::Error::custom)
}

fn utterance_end_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ms_or_off("stt.utterance_end_ms", Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

impl Default for SttConfig {
    fn default() -> Self {
        Self {
            provider: "deepgram".into(),
            model: "nova-3".into(),
            language: "en-US".into(),
            base_url: "wss://api.deepgram.com".into(),
            api_key_env: "DEEPGRAM_API_KEY".into(),
            endpointing_ms: 300,
            utterance_end_ms: Some(MIN_UTTERANCE_END_MS),
            vad_events: false,
        }
    }
}

/// `llm:` — the conversation model (also used for post-call summaries).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// `openai` (or any OpenAI-compatible server) or `anthropic`.
    pub provider: String,
    /// Model name sent with every request (default `gpt-4o-mini`).
    pub model: String,
    /// API base URL, http(s); pick an OpenAI-compatible server by URL (default
    /// `https://api.openai.com/v1`).
    pub base_url: String,
    /// Env var holding the API key (default `OPENAI_API_KEY`).
    pub api_key_env: String,
    /// Sampling temperature, 0..=2 (default 0.4).
    pub temperature: f32,
    /// Cap on tokens per answer; keeps spoken answers short (default 300).
    pub max_tokens: u32,
    /// Model for post-call summaries (defaults to `model`).
    pub summary_model: Option<String>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            base_url: "https://api.openai.com/v1".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            temperature: 0.4,
            max_tokens: 300,
            summary_model: None,
        }
    }
}

/// `tts:` — text-to-speech. Audio is asked for in the call's `ulaw_8000`, so nothing is
/// transcoded.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtsConfig {
    /// Only `elevenlabs` for now.
    pub provider: String,
    /// ElevenLabs model id (default `eleven_flash_v2_5`, the low-latency one).
    pub model: String,
    /// The bot's voice (ElevenLabs voice id; must not be empty).
    pub voice_id: String,
    /// ElevenLabs base URL, ws(s) or http(s): the other scheme is derived for the REST side
    /// (default `wss://api.elevenlabs.io`).
    pub base_url: String,
    /// Env var holding the ElevenLabs API key (default `ELEVENLABS_API_KEY`).
    pub api_key_env: String,
}

impl Default for TtsConfig {
    fn default() -> Self {
        Self {
            provider: "elevenlabs".into(),
            model: "eleven_flash_v2_5".into(),
            voice_id: "21m00Tcm4TlvDq8ikWAM".into(),
            base_url: "wss://api.elevenlabs.io".into(),
            api_key_env: "ELEVENLABS_API_KEY".into(),
        }
    }
}

/// `vad:` — the local voice activity detector: it decides when the caller speaks and stops.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VadConfig {
    /// Speech must last this many ms before the caller counts as speaking (default 200: shorter
    /// lets busy/ringback tones and hold music start segments; barge-in is unaffected).
    pub start_ms: u32,
    /// Silence this many ms long ends a speech segment, which without a turn model is the end of
    /// the caller's turn (100..=5000; default 400, 200 with `turn.model: smart-turn`).
    pub stop_ms: u32,
    /// Speech-probability / energy threshold in 0..=1 (default 0.5).
    pub threshold: f32,
    /// Speech must last this many ms before it interrupts a speaking bot, so coughs and
    /// "uh-huh" do not (default 300).
    pub min_barge_in_ms: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self { start_ms: 200, stop_ms: 400, threshold: 0.5, min_barge_in_ms: 300 }
    }
}

/// The end-of-turn model behind the VAD (`processors::audio::turn`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// `none` (every VAD stop ends the turn) or `smart-turn` (smart-turn v3.2 in-process; needs a
    /// build with `--features smart-turn` and the model file).
    pub model: String,
    /// Model file; empty = `$VOXLINE_SMART_TURN_MODEL` or `~/.cache/voxline/smart-turn-v3.2-cpu.onnx`.
    pub model_path: String,
    /// Probability above which the turn is complete, in (0, 1) (default 0.5).
    pub threshold: f32,
    /// Silence in ms after a VAD stop that ends the turn whatever the model said (100..=10000;
    /// default 2000).
    pub fallback_ms: u32,
    /// Inference threads shared by all calls (1..=16; default 1).
    pub threads: usize,
    /// With a model: ask the LLM at the caller's pause with the transcript so far, before the
    /// model's verdict; its answer is held until the turn is confirmed and dropped if the caller
    /// goes on (default true; ignored with `model: none`).
    pub speculative: bool,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            model: "none".into(),
            model_path: String::new(),
            threshold: 0.5,
            fallback_ms: 2000,
            threads: 1,
            speculative: true,
        }
    }
}

/// `interruptions:` — the caller barging in on the bot.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterruptionConfig {
    /// Let the caller barge in on the bot (default true).
    pub enabled: bool,
    /// False interruptions: a barge-in silences the bot at once but only ends its turn when
    /// words confirm it; a cough, or only a backchannel ("mm-hmm", "yeah", "okay"), and the bot
    /// resumes where the caller stopped hearing it. This long after the caller stops without
    /// words, the bot resumes. 0 turns it off (the VAD alone ends the bot's turn). In ms,
    /// 0..=10000; default 1000.
    pub false_interruption_ms: u32,
}

impl Default for InterruptionConfig {
    fn default() -> Self {
        Self { enabled: true, false_interruption_ms: 1000 }
    }
}

/// `persona:` — who the bot is and its fixed lines.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersonaConfig {
    /// The agent's name (default `Ava`). Informational: the greeting, goodbye and system prompt
    /// spell it out themselves, so change them together.
    pub name: String,
    /// The company the bot answers for (default `Acme Supply`); informational, like `name`.
    pub company: String,
    /// Spoken first, before the caller says anything.
    pub greeting: String,
    /// Spoken by `end_call` (and on a drain) before hanging up.
    pub goodbye: String,
    /// The LLM's system prompt: role, tone, when to use which skill (must not be empty).
    pub system_prompt: String,
}

impl Default for PersonaConfig {
    fn default() -> Self {
        Self {
            name: "Ava".into(),
            company: "Acme Supply".into(),
            greeting: "Hello, thanks for calling Acme Supply. This is Ava. How can I help you today?".into(),
            goodbye: "Thank you for calling Acme Supply. Goodbye!".into(),
            system_prompt: "You are Ava, a friendly and efficient phone agent for Acme Supply. Keep answers short \
                            and conversational: this is a phone call. Use the tools to look up customers and orders, \
                            open tickets and schedule callbacks. Never invent order details."
                .into(),
        }
    }
}

/// The skills the bot may use.
pub const ALL_SKILLS: &[&str] = &[
    "lookup_customer",
    "check_order_status",
    "create_support_ticket",
    "schedule_callback",
    "transfer_to_human",
    "end_call",
];

/// `skills:` — the tools the LLM may call (see `call::skills`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SkillsConfig {
    /// Names from [`ALL_SKILLS`] offered to the LLM (default: all of them);
    /// `transfer_to_human` needs `telephony.transfer_number`.
    pub enabled: Vec<String>,
    /// Per-tool timeout in ms; a tool that takes longer settles as a timeout error the model can
    /// relay (default 5000).
    pub timeout_ms: u64,
}

impl Default for SkillsConfig {
    fn default() -> Self {
        Self { enabled: ALL_SKILLS.iter().map(|s| (*s).to_string()).collect(), timeout_ms: 5000 }
    }
}

/// The post-call steps.
pub const ALL_STEPS: &[&str] = &["summary", "crm_update", "follow_up_email", "support_ticket"];

/// `workflow:` — the post-call workflow (see `fleet::workflow`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkflowConfig {
    /// Run the post-call steps after each call (default true); off, only resolution is decided.
    pub enabled: bool,
    /// Steps from [`ALL_STEPS`], in the order they run (default: all of them).
    pub steps: Vec<String>,
    /// Sender address of follow-up emails (default `support@acme.example`).
    pub email_from: String,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            steps: ALL_STEPS.iter().map(|s| (*s).to_string()).collect(),
            email_from: "support@acme.example".into(),
        }
    }
}

/// `storage:` — the database, the shared Redis state, and PII encryption at rest.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://path.db` (created and seeded on first run) or `postgres://…` (a fleet of
    /// instances needs Postgres). Default `sqlite://voxline.db`.
    pub url: String,
    /// Seed demo customers and orders when the tables are empty (default true).
    pub seed_demo_data: bool,
    /// Largest database connection pool (at least 1; default 16).
    pub pool_max_connections: u32,
    /// `redis://…`: live-call registry, rate limits and lookup cache shared by every instance.
    /// Unset: the same interfaces run in process (one instance).
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so several deployments can share one Redis (default `voxline`).
    pub redis_prefix: String,
    /// Lifetime of cached customer/order lookups, in seconds (default 60).
    pub cache_ttl_secs: u64,
    /// Env var holding the base64 AES-256 key that encrypts PII at rest (unset: stored in clear,
    /// with a warning at startup). Default `VOXLINE_PII_KEY`.
    pub pii_key_env: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://voxline.db".into(),
            seed_demo_data: true,
            pool_max_connections: 16,
            redis_url: None,
            redis_prefix: "voxline".into(),
            cache_ttl_secs: 60,
            pii_key_env: "VOXLINE_PII_KEY".into(),
        }
    }
}

/// Durable post-call jobs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// A claimed job is another instance's to retry when its lease is not renewed for this many
    /// ms (at least 200; default 30000).
    pub lease_ms: u64,
    /// How often idle workers look for queued or abandoned jobs, in ms (default 1000).
    pub poll_ms: u64,
    /// Background workers per instance (0: only the instance that ended the call runs its job;
    /// default 2).
    pub workers: usize,
    /// Attempts before a job is parked as `dead` (at least 1; default 5).
    pub max_attempts: u32,
    /// Testing only: stall a job forever after this step (to kill the instance mid-job).
    pub stall_after_step: Option<String>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self { lease_ms: 30_000, poll_ms: 1000, workers: 2, max_attempts: 5, stall_after_step: None }
    }
}

/// Rate limits, CORS, retention.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Webhook + status callback requests per client address per minute (0: unlimited;
    /// default 600).
    pub webhook_rate_per_minute: u64,
    /// Admin API requests per client address per minute (0: unlimited; default 120).
    pub admin_rate_per_minute: u64,
    /// Take the client address from the first `X-Forwarded-For` hop; only behind a proxy that
    /// sets it, else clients choose their own rate-limit key (default false).
    pub trust_forwarded_for: bool,
    /// Origins allowed to call the admin API from a browser (`*` for any; empty: none).
    pub cors_origins: Vec<String>,
    /// Call data older than this many days is deleted or redacted (0: kept forever).
    pub retention_days: u64,
    /// `delete` or `redact` (keep the statistics, drop numbers, transcripts, summaries);
    /// default `redact`.
    pub retention_mode: String,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            webhook_rate_per_minute: 600,
            admin_rate_per_minute: 120,
            trust_forwarded_for: false,
            cors_origins: Vec::new(),
            retention_days: 0,
            retention_mode: "redact".into(),
        }
    }
}

/// Logs and traces.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// `json` (one object per line, with the call's span fields) or `text`; default `json`.
    pub log_format: String,
    /// OTLP/HTTP endpoint for spans (needs the `otlp` feature), e.g. `http://collector:4318`.
    pub otlp_endpoint: Option<String>,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self { log_format: "json".into(), otlp_endpoint: None }
    }
}

/// `admin:` — the admin API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Env var holding the bearer token for `/admin/*` and `/metrics` (default
    /// `VOXLINE_ADMIN_TOKEN`); unset, those routes answer 503 rather than being open.
    pub token_env: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { token_env: "VOXLINE_ADMIN_TOKEN".into() }
    }
}

/// Prefix of the env vars that override config fields: `VOXLINE__LLM__MODEL` sets `llm.model`.
pub const ENV_PREFIX: &str = "VOXLINE__";

impl Config {
    /// Load `yaml`, apply `VOXLINE__…` overrides from `env`, deserialize and validate.
    pub fn from_yaml(yaml: &str, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let mut tree: Value = if yaml.trim().is_empty() {
            Value::Object(serde_json::Map::new())
        } else {
            serde_saphyr::from_str(yaml).context("config: invalid YAML")?
        };
        if tree.is_null() {
            tree = Value::Object(serde_json::Map::new());
        }
        // Start from the defaults so an override knows the type of a field the file leaves out
        // (a phone number given as digits must stay a string).
        let mut base = serde_json::to_value(Config::default()).context("config: defaults")?;
        merge(&mut base, tree);
        let mut tree = base;
        let overrides: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        for (key, value) in overrides {
            let path: Vec<String> = key[ENV_PREFIX.len()..].split("__").map(str::to_lowercase).collect();
            if path.iter().any(String::is_empty) {
                bail!("config: bad override variable {key}");
            }
            set_path(&mut tree, &path, &value).with_context(|| format!("config: override {key}"))?;
        }
        let cfg: Config = serde_json::from_value(tree).map_err(|e| anyhow::anyhow!("config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Load a file with the process environment's overrides.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let yaml = std::fs::read_to_string(path).with_context(|| format!("config: cannot read {}", path.display()))?;
        Self::from_yaml(&yaml, std::env::vars())
    }

    /// Startup checks; the message names the offending field.
    pub fn validate(&self) -> anyhow::Result<()> {
        let url_ok = |u: &str, schemes: &[&str]| schemes.iter().any(|s| u.starts_with(s));
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!("config: server.listen {:?} is not an address like 0.0.0.0:8080", self.server.listen);
        }
        if !url_ok(&self.server.public_url, &["http://", "https://"]) {
            bail!("config: server.public_url must start with http:// or https://");
        }
        if self.server.max_message_bytes < 1024 {
            bail!("config: server.max_message_bytes must be at least 1024");
        }
        if self.server.max_calls == 0 {
            bail!("config: server.max_calls must be at least 1");
        }
        if self.telephony.provider != "twilio" {
            bail!("config: telephony.provider {:?} is not supported (twilio)", self.telephony.provider);
        }
        if !url_ok(&self.telephony.api_base_url, &["http://", "https://"]) {
            bail!("config: telephony.api_base_url must be an http(s) URL");
        }
        if self.stt.provider != "deepgram" {
            bail!("config: stt.provider {:?} is not supported (deepgram)", self.stt.provider);
        }
        if !url_ok(&self.stt.base_url, &["ws://", "wss://"]) {
            bail!("config: stt.base_url must be a ws(s) URL");
        }
        let ep = self.stt.endpointing_ms;
        if ep != 0 && !(MIN_ENDPOINTING_MS..=MAX_STT_GAP_MS).contains(&ep) {
            bail!(
                "config: stt.endpointing_ms must be 0 or false (off) or within {MIN_ENDPOINTING_MS}..={MAX_STT_GAP_MS}, got {ep}"
            );
        }
        if let Some(ue) = self.stt.utterance_end_ms
            && !(MIN_UTTERANCE_END_MS..=MAX_STT_GAP_MS).contains(&ue)
        {
            bail!(
                "config: stt.utterance_end_ms must be within {MIN_UTTERANCE_END_MS}..={MAX_STT_GAP_MS} \
                 (Deepgram: under 1000 is not useful), or false to leave it off; got {ue}"
            );
        }
        if !matches!(self.llm.provider.as_str(), "openai" | "anthropic") {
            bail!("config: llm.provider {:?} is not supported (openai, anthropic)", self.llm.provider);
        }
        if self.llm.model.trim().is_empty() {
            bail!("config: llm.model is empty");
        }
        if !url_ok(&self.llm.base_url, &["http://", "https://"]) {
            bail!("config: llm.base_url must be an http(s) URL");
        }
        if !(0.0..=2.0).contains(&self.llm.temperature) {
            bail!("config: llm.temperature must be within 0..=2");
        }
        if self.tts.provider != "elevenlabs" {
            bail!("config: tts.provider {:?} is not supported (elevenlabs)", self.tts.provider);
        }
        if self.tts.voice_id.trim().is_empty() {
            bail!("config: tts.voice_id is empty");
        }
        if !url_ok(&self.tts.base_url, &["ws://", "wss://", "http://", "https://"]) {
            bail!("config: tts.base_url must be a ws(s) or http(s) URL");
        }
        if !(0.0..=1.0).contains(&self.vad.threshold) {
            bail!("config: vad.threshold must be within 0..=1");
        }
        if self.vad.stop_ms < 100 || self.vad.stop_ms > 5000 {
            bail!("config: vad.stop_ms must be within 100..=5000");
        }
        if self.interruptions.false_interruption_ms > 10_000 {
            bail!("config: interruptions.false_interruption_ms must be within 0..=10000 (0 = off)");
        }
        match self.turn.model.as_str() {
            "none" => {}
            "smart-turn" if cfg!(feature = "smart-turn") => {}
            "smart-turn" => bail!(
                "config: turn.model smart-turn needs a build with the smart-turn feature \
                 (cargo build --release -p voxline-phone-bot --features smart-turn)"
            ),
            other => bail!("config: turn.model {other:?} is not supported (none, smart-turn)"),
        }
        if !(self.turn.threshold > 0.0 && self.turn.threshold < 1.0) {
            bail!("config: turn.threshold must be within (0, 1)");
        }
        if !(100..=10_000).contains(&self.turn.fallback_ms) {
            bail!("config: turn.fallback_ms must be within 100..=10000");
        }
        if !(1..=16).contains(&self.turn.threads) {
            bail!("config: turn.threads must be within 1..=16");
        }
        if self.persona.system_prompt.trim().is_empty() {
            bail!("config: persona.system_prompt is empty");
        }
        for (i, s) in self.skills.enabled.iter().enumerate() {
            if !ALL_SKILLS.contains(&s.as_str()) {
                bail!("config: skills.enabled[{i}] {s:?} is not a known skill ({})", ALL_SKILLS.join(", "));
            }
        }
        if self.skills.enabled.iter().any(|s| s == "transfer_to_human") && self.telephony.transfer_number.is_empty() {
            bail!("config: telephony.transfer_number is required when transfer_to_human is enabled");
        }
        for (i, s) in self.workflow.steps.iter().enumerate() {
            if !ALL_STEPS.contains(&s.as_str()) {
                bail!("config: workflow.steps[{i}] {s:?} is not a known step ({})", ALL_STEPS.join(", "));
            }
        }
        if !url_ok(&self.storage.url, &["sqlite:", "postgres://", "postgresql://"]) {
            bail!("config: storage.url must be sqlite:… or postgres://…");
        }
        if let Some(r) = &self.storage.redis_url
            && !url_ok(r, &["redis://", "rediss://"])
        {
            bail!("config: storage.redis_url must be redis://… or rediss://…");
        }
        if self.storage.pool_max_connections == 0 {
            bail!("config: storage.pool_max_connections must be at least 1");
        }
        if self.jobs.lease_ms < 200 || self.jobs.poll_ms == 0 || self.jobs.max_attempts == 0 {
            bail!("config: jobs.lease_ms must be at least 200, jobs.poll_ms and jobs.max_attempts at least 1");
        }
        if !matches!(self.security.retention_mode.as_str(), "delete" | "redact") {
            bail!("config: security.retention_mode must be delete or redact");
        }
        if !matches!(self.observability.log_format.as_str(), "json" | "text") {
            bail!("config: observability.log_format must be json or text");
        }
        for (field, name) in [
            ("telephony.account_sid_env", &self.telephony.account_sid_env),
            ("telephony.auth_token_env", &self.telephony.auth_token_env),
            ("stt.api_key_env", &self.stt.api_key_env),
            ("llm.api_key_env", &self.llm.api_key_env),
            ("tts.api_key_env", &self.tts.api_key_env),
            ("admin.token_env", &self.admin.token_env),
            ("storage.pii_key_env", &self.storage.pii_key_env),
        ] {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("config: {field} must name an environment variable, got {name:?}");
            }
        }
        Ok(())
    }
}

/// Overlay `over` onto `base`: objects merge key by key, anything else replaces. Unknown keys
/// are kept so `deny_unknown_fields` still reports them.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn set_path(tree: &mut Value, path: &[String], raw: &str) -> anyhow::Result<()> {
    let mut node = tree;
    for (i, seg) in path.iter().enumerate() {
        let Value::Object(map) = node else { bail!("{} is not a section", path[..i].join(".")) };
        if i + 1 == path.len() {
            let keep_string = matches!(map.get(seg), Some(Value::String(_)));
            let v = if keep_string { Value::String(raw.to_string()) } else { parse_scalar(raw) };
            map.insert(seg.clone(), v);
            return Ok(());
        }
        node = map.entry(seg.clone()).or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
    Ok(())
}

fn parse_scalar(raw: &str) -> Value {
    // Lists are given as YAML/JSON (`["a","b"]`) or comma-separated.
    if (raw.starts_with('[') || raw.starts_with('{'))
        && let Ok(v) = serde_saphyr::from_str::<Value>(raw)
    {
        return v;
    }
    match raw {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(n) = raw.parse::<i64>() {
        return Value::from(n);
    }
    if let Ok(f) = raw.parse::<f64>() {
        return Value::from(f);
    }
    if raw.contains(',') {
        return Value::Array(raw.split(',').map(|s| Value::String(s.trim().to_string())).collect());
    }
    Value::String(raw.to_string())
}

/// Secrets resolved from the environment. `Debug` shows only which are set.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Deepgram API key (`stt.api_key_env`).
    pub deepgram: Option<String>,
    /// LLM API key (`llm.api_key_env`), also used for post-call summaries.
    pub llm: Option<String>,
    /// ElevenLabs API key (`tts.api_key_env`).
    pub elevenlabs: Option<String>,
    /// Twilio account SID for REST hang-ups and transfers (`telephony.account_sid_env`).
    pub twilio_account_sid: Option<String>,
    /// Twilio auth token: webhook signatures and REST auth (`telephony.auth_token_env`).
    pub twilio_auth_token: Option<String>,
    /// Bearer token of the admin API and `/metrics` (`admin.token_env`).
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |o: &Option<String>| if o.is_some() { "set" } else { "unset" };
        f.debug_struct("Secrets")
            .field("deepgram", &s(&self.deepgram))
            .field("llm", &s(&self.llm))
            .field("elevenlabs", &s(&self.elevenlabs))
            .field("twilio_account_sid", &s(&self.twilio_account_sid))
            .field("twilio_auth_token", &s(&self.twilio_auth_token))
            .field("admin_token", &s(&self.admin_token))
            .finish()
    }
}

impl Secrets {
    /// Read every secret the config names from `get` (normally `std::env::var`).
    pub fn resolve(cfg: &Config, get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| get(name).filter(|v| !v.is_empty());
        Self {
            deepgram: get(&cfg.stt.api_key_env),
            llm: get(&cfg.llm.api_key_env),
            elevenlabs: get(&cfg.tts.api_key_env),
            twilio_account_sid: get(&cfg.telephony.account_sid_env),
            twilio_auth_token: get(&cfg.telephony.auth_token_env),
            admin_token: get(&cfg.admin.token_env),
        }
    }

    /// Production needs every key; the message names the env var, never a value.
    pub fn require_all(&self, cfg: &Config) -> anyhow::Result<()> {
        for (name, v) in [
            (&cfg.stt.api_key_env, &self.deepgram),
            (&cfg.llm.api_key_env, &self.llm),
            (&cfg.tts.api_key_env, &self.elevenlabs),
            (&cfg.telephony.account_sid_env, &self.twilio_account_sid),
            (&cfg.admin.token_env, &self.admin_token),
        ] {
            if v.is_none() {
                bail!("config: environment variable {name} is not set");
            }
        }
        if cfg.telephony.validate_signatures && self.twilio_auth_token.is_none() {
            bail!(
                "config: environment variable {} is not set (needed for telephony.validate_signatures)",
                cfg.telephony.auth_token_env
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    #[test]
    fn shipped_config_is_valid() {
        // config.yaml stays at the workspace root, where the README's commands run.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config.yaml");
        let yaml = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let cfg = Config::from_yaml(&yaml, Vec::new());
        assert!(cfg.is_ok(), "{cfg:?}");
    }

    #[test]
    fn env_overrides() {
        let cfg = Config::from_yaml(
            "llm:\n  model: a\ntelephony:\n  transfer_number: '+1555'\n",
            env(&[
                ("VOXLINE__LLM__MODEL", "gpt-x"),
                ("VOXLINE__LLM__MAX_TOKENS", "99"),
                ("VOXLINE__TELEPHONY__TRANSFER_NUMBER", "15550001"),
                ("VOXLINE__WORKFLOW__STEPS", "summary,crm_update"),
                ("OTHER", "x"),
            ]),
        );
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => panic!("{e:#}"),
        };
        assert_eq!(cfg.llm.model, "gpt-x");
        assert_eq!(cfg.llm.max_tokens, 99);
        assert_eq!(cfg.telephony.transfer_number, "15550001");
        assert_eq!(cfg.workflow.steps, vec!["summary", "crm_update"]);
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_yaml("llm:\n  modle: x\n", Vec::new()).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(e.contains("modle"), "{e}");
        let e = Config::from_yaml("llm:\n  temperature: 5\ntelephony:\n  transfer_number: '1'\n", Vec::new())
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("llm.temperature"), "{e}");
        let e = Config::from_yaml("skills:\n  enabled: [fly]\n", env(&[("VOXLINE__TELEPHONY__TRANSFER_NUMBER", "1")]))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("skills.enabled[0]"), "{e}");
    }

    #[test]
    fn turn_model_keys() {
        let load = |yaml: &str| {
            Config::from_yaml(yaml, env(&[("VOXLINE__TELEPHONY__TRANSFER_NUMBER", "1")]))
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        };
        assert!(load("turn:\n  model: magic\n").contains("turn.model"));
        assert!(load("turn:\n  threshold: 1.0\n").contains("turn.threshold"));
        assert!(load("turn:\n  fallback_ms: 50\n").contains("turn.fallback_ms"));
        assert!(load("turn:\n  threads: 0\n").contains("turn.threads"));
        let smart = load("turn:\n  model: smart-turn\n");
        if cfg!(feature = "smart-turn") {
            assert_eq!(smart, "", "smart-turn is accepted in a build with the feature");
        } else {
            assert!(smart.contains("--features smart-turn"), "{smart}");
        }
        let cfg = Config::from_yaml(
            "",
            env(&[("VOXLINE__TELEPHONY__TRANSFER_NUMBER", "1"), ("VOXLINE__TURN__FALLBACK_MS", "1500")]),
        );
        assert_eq!(cfg.map(|c| c.turn.fallback_ms).unwrap_or_default(), 1500);
    }

    #[test]
    fn stt_turn_taking_keys() {
        // transfer_to_human is enabled by default and needs a number.
        let load = |yaml: &str, vars: &[(&str, &str)]| {
            let mut vars = env(vars);
            vars.push(("VOXLINE__TELEPHONY__TRANSFER_NUMBER".into(), "1".into()));
            Config::from_yaml(yaml, vars)
        };
        let ok = |yaml: &str, vars: &[(&str, &str)]| match load(yaml, vars) {
            Ok(c) => c.stt,
            Err(e) => panic!("{yaml:?} {vars:?}: {e:#}"),
        };
        let err =
            |yaml: &str, vars: &[(&str, &str)]| load(yaml, vars).err().map(|e| format!("{e:#}")).unwrap_or_default();
        let d = ok("", &[]);
        assert_eq!((d.endpointing_ms, d.utterance_end_ms, d.vad_events), (300, Some(1000), false));

        let s = ok("stt:\n  endpointing_ms: 450\n  utterance_end_ms: 1500\n  vad_events: true\n", &[]);
        assert_eq!((s.endpointing_ms, s.utterance_end_ms, s.vad_events), (450, Some(1500), true));
        let s = ok("stt:\n  endpointing_ms: false\n  utterance_end_ms: false\n", &[]);
        assert_eq!((s.endpointing_ms, s.utterance_end_ms), (0, None));
        let s = ok("stt:\n  endpointing_ms: 0\n  utterance_end_ms: null\n", &[]);
        assert_eq!((s.endpointing_ms, s.utterance_end_ms), (0, None));
        let s = ok(
            "",
            &[
                ("VOXLINE__STT__ENDPOINTING_MS", "false"),
                ("VOXLINE__STT__UTTERANCE_END_MS", "2000"),
                ("VOXLINE__STT__VAD_EVENTS", "true"),
            ],
        );
        assert_eq!((s.endpointing_ms, s.utterance_end_ms, s.vad_events), (0, Some(2000), true));
        let s = ok("", &[("VOXLINE__STT__ENDPOINTING_MS", "25"), ("VOXLINE__STT__UTTERANCE_END_MS", "false")]);
        assert_eq!((s.endpointing_ms, s.utterance_end_ms), (25, None));

        for (yaml, vars, needle) in [
            ("stt:\n  utterance_end_ms: 500\n", &[][..], "stt.utterance_end_ms"),
            ("stt:\n  utterance_end_ms: 0\n", &[][..], "stt.utterance_end_ms"),
            ("", &[("VOXLINE__STT__UTTERANCE_END_MS", "999")][..], "stt.utterance_end_ms"),
            ("stt:\n  endpointing_ms: 5\n", &[][..], "stt.endpointing_ms"),
            ("stt:\n  endpointing_ms: 60000\n", &[][..], "stt.endpointing_ms"),
            ("stt:\n  endpointing_ms: true\n", &[][..], "stt.endpointing_ms must be whole milliseconds or false"),
            ("stt:\n  endpointing_ms: -1\n", &[][..], "stt.endpointing_ms"),
            ("stt:\n  utterance_end_ms: soon\n", &[][..], "stt.utterance_end_ms must be whole milliseconds"),
            ("", &[("VOXLINE__STT__VAD_EVENTS", "maybe")][..], "expected a boolean"),
        ] {
            let e = err(yaml, vars);
            assert!(e.contains(needle), "{yaml:?} {vars:?}: {e:?}");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let cfg = Config::default();
        let s = Secrets::resolve(&cfg, |k| (k == "OPENAI_API_KEY").then(|| "sk-very-secret".to_string()));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("sk-very-secret"));
        assert!(dbg.contains("llm: \"set\""));
        let e = s.require_all(&cfg).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("DEEPGRAM_API_KEY") && !e.contains("sk-very"));
    }
}
