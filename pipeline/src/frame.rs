//! In-band frames: the data and ordered control that flow through a pipeline.
//!
//! A [`Frame`] travels in order with everything else pushed on the same edge. On an interruption
//! the runner discards queued frames of the old epoch unless they are marked uninterruptible
//! (tool results, `End`). Out-of-band signalling lives in [`crate::Event`], a different type, so an
//! interruption can never end up queued behind audio.
//!
//! Payloads are cheap to clone: audio is [`bytes::Bytes`], text is `Arc<str>`, contexts are `Arc`.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// Which way a frame travels through a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the input transport towards the output (the normal data flow).
    Downstream,
    /// Back towards the input (e.g. the output transport reporting what was played).
    Upstream,
}

impl Direction {
    /// The other direction.
    #[must_use]
    pub fn reverse(self) -> Self {
        match self {
            Self::Downstream => Self::Upstream,
            Self::Upstream => Self::Downstream,
        }
    }
}

/// How audio samples are encoded in an [`AudioFrame`] payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioEncoding {
    /// Signed 16-bit little-endian PCM, interleaved when multi-channel.
    Pcm16,
    /// 32-bit little-endian IEEE float PCM, interleaved.
    F32,
    /// ITU-T G.711 μ-law, one byte per sample.
    Mulaw,
    /// ITU-T G.711 A-law, one byte per sample.
    Alaw,
    /// Opus packets (one packet per frame).
    Opus,
}

impl AudioEncoding {
    /// Bytes per sample per channel, or `None` for a compressed encoding.
    #[must_use]
    pub fn bytes_per_sample(self) -> Option<usize> {
        match self {
            Self::Pcm16 => Some(2),
            Self::F32 => Some(4),
            Self::Mulaw | Self::Alaw => Some(1),
            Self::Opus => None,
        }
    }
}

/// The format an audio payload is in: what a processor checks before touching samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudioFormat {
    /// Sample encoding.
    pub encoding: AudioEncoding,
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// Interleaved channel count.
    pub channels: u16,
}

impl AudioFormat {
    /// Mono PCM16 at `sample_rate`.
    #[must_use]
    pub const fn pcm16(sample_rate: u32) -> Self {
        Self { encoding: AudioEncoding::Pcm16, sample_rate, channels: 1 }
    }
    /// Mono μ-law at 8 kHz, the telephone format (Twilio Media Streams).
    #[must_use]
    pub const fn mulaw_8k() -> Self {
        Self { encoding: AudioEncoding::Mulaw, sample_rate: 8000, channels: 1 }
    }
    /// Payload bytes per `ms` milliseconds, or `None` for compressed encodings.
    #[must_use]
    pub fn bytes_per_ms(&self, ms: u32) -> Option<usize> {
        let bps = self.encoding.bytes_per_sample()?;
        Some(self.sample_rate as usize * ms as usize / 1000 * bps * usize::from(self.channels))
    }
    /// Duration of a payload of `len` bytes, or `None` for compressed encodings.
    #[must_use]
    pub fn duration_of(&self, len: usize) -> Option<Duration> {
        let bps = self.encoding.bytes_per_sample()? * usize::from(self.channels.max(1));
        let samples = (len / bps) as u64;
        Some(Duration::from_nanos(samples * 1_000_000_000 / u64::from(self.sample_rate.max(1))))
    }
}

impl fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {} Hz x{}", self.encoding, self.sample_rate, self.channels)
    }
}

/// A word and when it is spoken, relative to the start of the utterance's audio.
#[derive(Debug, Clone, PartialEq)]
pub struct WordTiming {
    /// The word as it will be (or was) heard.
    pub word: Arc<str>,
    /// Start offset from the beginning of the utterance.
    pub start: Duration,
    /// End offset from the beginning of the utterance.
    pub end: Duration,
}

/// A chunk of audio with its format.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioFrame {
    /// Encoded samples.
    pub data: Bytes,
    /// How `data` is encoded.
    pub format: AudioFormat,
    /// Presentation offset within the stream or utterance, when the producer knows it.
    pub pts: Option<Duration>,
}

impl AudioFrame {
    /// A new frame without a presentation time.
    #[must_use]
    pub fn new(data: Bytes, format: AudioFormat) -> Self {
        Self { data, format, pts: None }
    }
    /// Playback duration (zero for compressed payloads).
    #[must_use]
    pub fn duration(&self) -> Duration {
        self.format.duration_of(self.data.len()).unwrap_or_default()
    }
}

/// Bot speech audio from a TTS service, with the words it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct TtsAudio {
    /// The audio.
    pub audio: AudioFrame,
    /// Id of the utterance (TTS context) this audio belongs to.
    pub context_id: Arc<str>,
    /// Words whose start falls inside this chunk; offsets are relative to the utterance start.
    pub words: Arc<[WordTiming]>,
    /// Offset of this chunk's first sample from the utterance start.
    pub offset: Duration,
}

/// A speech-to-text result.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// The recognised text.
    pub text: Arc<str>,
    /// `true` for a final result, `false` for an interim hypothesis that may change.
    pub is_final: bool,
    /// Recogniser confidence in 0..=1.
    pub confidence: f32,
    /// Per-word timings relative to the start of the audio stream.
    pub words: Arc<[WordTiming]>,
    /// Start of the transcribed span relative to the start of the audio stream.
    pub start: Duration,
    /// Length of the transcribed span.
    pub duration: Duration,
    /// Language code when the recogniser reports one.
    pub language: Option<Arc<str>>,
}

/// One tool call requested by the LLM.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Provider-assigned call id; the result must carry the same id.
    pub id: Arc<str>,
    /// Tool (function) name.
    pub name: Arc<str>,
    /// Arguments as the LLM produced them (JSON text; may be invalid: the executor validates).
    pub arguments: Arc<str>,
}

/// How a tool call settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolOutcome {
    /// The tool ran and returned a result.
    Ok,
    /// The tool failed or its arguments were invalid; the content explains why.
    Error,
    /// The tool did not finish within its timeout.
    Timeout,
    /// The call was cancelled (barge-in or pipeline end).
    Cancelled,
}

/// The settled result of one tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// Id of the call this answers.
    pub call_id: Arc<str>,
    /// Tool name.
    pub name: Arc<str>,
    /// JSON result text the LLM will read (an error is a result too, so the model can recover).
    pub content: Arc<str>,
    /// How the call settled.
    pub outcome: ToolOutcome,
    /// Whether the LLM should be run again once this batch has settled.
    pub run_llm: bool,
}

/// Who said a message in a conversation context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// System instructions.
    System,
    /// The caller.
    User,
    /// The bot.
    Assistant,
    /// A tool result.
    Tool,
}

/// One message of a provider-neutral conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// Author.
    pub role: Role,
    /// Text content (empty for an assistant message that only calls tools).
    pub content: String,
    /// Tool calls made by an assistant message.
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: the id of the call this result answers.
    pub tool_call_id: Option<Arc<str>>,
    /// For `Role::Tool`: the tool name (Anthropic and some servers want it).
    pub name: Option<Arc<str>>,
}

impl ChatMessage {
    /// A plain text message.
    #[must_use]
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None, name: None }
    }
}

/// A tool the LLM may call: its name, description and JSON schema of the arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Function name.
    pub name: Arc<str>,
    /// What the tool does, for the model.
    pub description: Arc<str>,
    /// JSON schema of the arguments object.
    pub parameters: Arc<serde_json::Value>,
}

/// A snapshot of the conversation to run the LLM on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmContext {
    /// Messages in order (system prompt first, if any).
    pub messages: Vec<ChatMessage>,
    /// Tools offered to the model.
    pub tools: Vec<ToolSpec>,
}

/// Stream-wide information carried by [`Frame::Start`], replayed like GStreamer's sticky caps.
#[derive(Debug, Clone, PartialEq)]
pub struct StartInfo {
    /// Format of audio entering the pipeline.
    pub input_audio: AudioFormat,
    /// Format the output transport wants.
    pub output_audio: AudioFormat,
    /// Whether the user may interrupt the bot.
    pub allow_interruptions: bool,
    /// Free-form identifier of the session (e.g. a call SID), for logs.
    pub session_id: Arc<str>,
}

impl Default for StartInfo {
    fn default() -> Self {
        Self {
            input_audio: AudioFormat::pcm16(16_000),
            output_audio: AudioFormat::pcm16(16_000),
            allow_interruptions: true,
            session_id: Arc::from(""),
        }
    }
}

/// A user-defined frame: anything `Send + Sync`, recovered with [`CustomFrame::downcast`].
#[derive(Clone)]
pub struct CustomFrame {
    /// A short name for logs and observers.
    pub name: &'static str,
    /// The payload.
    pub payload: Arc<dyn Any + Send + Sync>,
}

impl CustomFrame {
    /// Wrap a value.
    pub fn new<T: Any + Send + Sync>(name: &'static str, value: T) -> Self {
        Self { name, payload: Arc::new(value) }
    }
    /// Borrow the payload as `T`, if it is one.
    #[must_use]
    pub fn downcast<T: Any>(&self) -> Option<&T> {
        self.payload.downcast_ref::<T>()
    }
}

impl fmt::Debug for CustomFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomFrame").field("name", &self.name).finish_non_exhaustive()
    }
}

/// An in-band frame.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Frame {
    /// First frame of a stream: formats and settings. Uninterruptible.
    Start(Arc<StartInfo>),
    /// Graceful end: everything before it is drained, then the pipeline stops. Uninterruptible.
    End,
    /// Audio from the caller (input transport).
    InputAudio(AudioFrame),
    /// Audio to the caller that is not TTS speech (e.g. hold music, prompts).
    OutputAudio(AudioFrame),
    /// Plain text (e.g. a line to speak, or text typed by a web client).
    Text(Arc<str>),
    /// A speech-to-text result (boxed: it is rare next to audio and would double every frame's size).
    Transcript(Box<Transcript>),
    /// The LLM started a response.
    LlmResponseStart,
    /// A streamed piece of LLM text.
    LlmText(Arc<str>),
    /// The LLM finished a response (after its last text or tool call).
    LlmResponseEnd,
    /// Run the LLM on this context.
    LlmRun(Arc<LlmContext>),
    /// Messages to append to the conversation context without running the LLM.
    LlmMessagesAppend(Arc<[ChatMessage]>),
    /// A TTS utterance began.
    TtsStarted {
        /// Utterance (TTS context) id.
        context_id: Arc<str>,
    },
    /// Text sent to TTS (a speakable chunk).
    TtsText {
        /// Utterance id.
        context_id: Arc<str>,
        /// The chunk.
        text: Arc<str>,
    },
    /// Synthesised speech with word timings (boxed for the same reason: the per-frame hot path moves
    /// caller audio, and every frame is as big as the largest variant).
    TtsAudio(Box<TtsAudio>),
    /// A TTS utterance finished (all its audio has been pushed).
    TtsStopped {
        /// Utterance id.
        context_id: Arc<str>,
    },
    /// The LLM asked for tool calls (one frame per batch, executed concurrently).
    ToolCalls(Arc<[ToolCall]>),
    /// A settled tool call. Pushed uninterruptible so the context stays consistent.
    ToolResult(ToolResult),
    /// A DTMF key press (`0-9`, `*`, `#`, `A-D`).
    Dtmf(char),
    /// The output transport reports how far the caller has heard an utterance (from Twilio marks
    /// or the pacing clock). Upstream, to the assistant aggregator.
    PlayedUpTo {
        /// Utterance id.
        context_id: Arc<str>,
        /// Audio played so far from the utterance start.
        position: Duration,
        /// `true` when the whole utterance was played.
        complete: bool,
    },
    /// A user-defined frame.
    Custom(CustomFrame),
}

/// The kind of a frame without its payload: cheap to copy, for observers and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum FrameKind {
    Start,
    End,
    InputAudio,
    OutputAudio,
    Text,
    Transcript,
    LlmResponseStart,
    LlmText,
    LlmResponseEnd,
    LlmRun,
    LlmMessagesAppend,
    TtsStarted,
    TtsText,
    TtsAudio,
    TtsStopped,
    ToolCalls,
    ToolResult,
    Dtmf,
    PlayedUpTo,
    Custom,
}

impl Frame {
    /// Whether this frame is caller input (audio or a key press from the caller). Caller input
    /// travels the runner's caller lane: every stage takes it ahead of its queued data frames and
    /// forwards it without waiting for room downstream, so what the caller says is never stuck
    /// behind the bot's own output.
    #[inline]
    #[must_use]
    pub fn is_caller_input(&self) -> bool {
        matches!(self, Self::InputAudio(_) | Self::Dtmf(_))
    }

    /// The payload-free kind of this frame.
    #[must_use]
    pub fn kind(&self) -> FrameKind {
        match self {
            Self::Start(_) => FrameKind::Start,
            Self::End => FrameKind::End,
            Self::InputAudio(_) => FrameKind::InputAudio,
            Self::OutputAudio(_) => FrameKind::OutputAudio,
            Self::Text(_) => FrameKind::Text,
            Self::Transcript(_) => FrameKind::Transcript,
            Self::LlmResponseStart => FrameKind::LlmResponseStart,
            Self::LlmText(_) => FrameKind::LlmText,
            Self::LlmResponseEnd => FrameKind::LlmResponseEnd,
            Self::LlmRun(_) => FrameKind::LlmRun,
            Self::LlmMessagesAppend(_) => FrameKind::LlmMessagesAppend,
            Self::TtsStarted { .. } => FrameKind::TtsStarted,
            Self::TtsText { .. } => FrameKind::TtsText,
            Self::TtsAudio(_) => FrameKind::TtsAudio,
            Self::TtsStopped { .. } => FrameKind::TtsStopped,
            Self::ToolCalls(_) => FrameKind::ToolCalls,
            Self::ToolResult(_) => FrameKind::ToolResult,
            Self::Dtmf(_) => FrameKind::Dtmf,
            Self::PlayedUpTo { .. } => FrameKind::PlayedUpTo,
            Self::Custom(_) => FrameKind::Custom,
        }
    }

    /// Whether this frame survives an interruption by default: ordered control, results that
    /// keep the conversation consistent, and everything the *caller* produced (their audio,
    /// words and key presses are exactly what a barge-in is about; only the bot's side of the
    /// turn is discarded).
    #[must_use]
    pub fn uninterruptible_by_default(&self) -> bool {
        matches!(
            self,
            Self::Start(_)
                | Self::End
                | Self::InputAudio(_)
                | Self::Transcript(_)
                | Self::Dtmf(_)
                | Self::ToolResult(_)
                | Self::LlmMessagesAppend(_)
                | Self::PlayedUpTo { .. }
        )
    }
}

/// Epoch counter: bumped by every interruption. Frames carry the epoch they were pushed in.
pub type Epoch = u64;

/// A frame as it travels on an edge: the frame plus the runner's bookkeeping.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The frame.
    pub frame: Frame,
    /// Epoch the frame was pushed in; stale frames are dropped at the next hop.
    pub epoch: Epoch,
    /// Survives interruptions (kept in queues, its `process` call is not cancelled).
    pub uninterruptible: bool,
}

impl From<TtsAudio> for Frame {
    fn from(t: TtsAudio) -> Self {
        Self::TtsAudio(Box::new(t))
    }
}

impl From<Transcript> for Frame {
    fn from(t: Transcript) -> Self {
        Self::Transcript(Box::new(t))
    }
}
