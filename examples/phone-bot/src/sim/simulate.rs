//! Keyless simulation: the real server, EMULATED providers, and a simulated Twilio caller.
//!
//! The Deepgram, OpenAI and ElevenLabs emulators (voxline-emulators) start in-process on
//! 127.0.0.1:0, and a tiny fake Twilio REST endpoint records hang-ups. The caller speaks like
//! Twilio does: a signed webhook, then the Media Streams websocket with real μ-law speech
//! (espeak-ng + sox at run time when present, else the committed fixtures), continuous silence in
//! between, and mark echoes timed like Twilio's playback buffer (so "bot stopped speaking" comes
//! from the echo, as on a real call). What the emulated STT "recognises" is scripted: it fires
//! the next scripted sentence when the engine sends `Finalize` at the end of each spoken turn.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::routing::post;
use futures::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use voxline::transports::twilio::serializer::{Outbound, client, decode_outbound};
use voxline_emulators::deepgram::{DeepgramConfig, DeepgramEmulator, TranscriptScript, Trigger};
use voxline_emulators::elevenlabs::{ElevenLabsConfig, ElevenLabsEmulator};
use voxline_emulators::openai::{OpenAiConfig, OpenAiEmulator, Responder, Scripted, call_center_responder};

use crate::config::{Config, Secrets};
use crate::fleet::store::{CallRow, Store};
use crate::server::App;
use crate::sim::caller::{Answered, ring};

/// What the simulated caller says, in order.
pub const CALLER_LINES: &[&str] =
    &["Hi, I'm calling about my order.", "My order number is 1 2 3 4 5.", "No, that's all. Thank you, goodbye."];

pub const SIM_AUTH_TOKEN: &str = "simulated-twilio-auth-token";
pub const SIM_ADMIN_TOKEN: &str = "simulated-admin-token";

/// The emulators and the fake Twilio REST API, alive as long as this value.
pub struct Emulated {
    pub deepgram: DeepgramEmulator,
    pub openai: OpenAiEmulator,
    pub elevenlabs: ElevenLabsEmulator,
    pub twilio_rest: String,
    pub hangups: Arc<Mutex<Vec<String>>>,
    _twilio: tokio::task::JoinHandle<()>,
}

impl Emulated {
    pub async fn start(script: Vec<TranscriptScript>) -> anyhow::Result<Self> {
        Self::start_with(script, call_center_responder()).await
    }

    /// Like [`start`](Self::start) with another LLM responder. Every emulator runs with zero
    /// configured delay.
    pub async fn start_with(script: Vec<TranscriptScript>, responder: Responder) -> anyhow::Result<Self> {
        let deepgram = DeepgramEmulator::start(DeepgramConfig { script, ..DeepgramConfig::default() })?;
        let openai = OpenAiEmulator::start(OpenAiConfig { responder: Some(responder), ..OpenAiConfig::default() })?;
        let elevenlabs = ElevenLabsEmulator::start(ElevenLabsConfig::default())?;
        let hangups: Arc<Mutex<Vec<String>>> = Arc::default();
        let h = hangups.clone();
        let app = axum::Router::new().route(
            "/2010-04-01/Accounts/{account}/Calls/{call}",
            post(move |axum::extract::Path((_a, call)): axum::extract::Path<(String, String)>, body: String| {
                let h = h.clone();
                async move {
                    voxline::pipeline::sync::lock(&h).push(format!("{call} {body}"));
                    axum::Json(serde_json::json!({"sid": call.trim_end_matches(".json"), "status": "completed"}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(nodelay(listener), app).await;
        });
        Ok(Self { deepgram, openai, elevenlabs, twilio_rest: format!("http://{addr}"), hangups, _twilio: task })
    }

    /// Finalize-triggered utterances: one per spoken caller turn.
    pub fn script(lines: &[&str]) -> Vec<TranscriptScript> {
        lines.iter().map(|l| TranscriptScript::new(l, Trigger::Finalize)).collect()
    }

    /// A config pointing every provider at the emulators.
    pub fn config(&self, storage_url: &str, public_url: &str) -> Config {
        let mut cfg = Config::default();
        cfg.server.listen = "127.0.0.1:0".into();
        cfg.server.public_url = public_url.into();
        cfg.telephony.api_base_url = self.twilio_rest.clone();
        cfg.telephony.transfer_number = "+15550100200".into();
        cfg.stt.base_url = self.deepgram.base_url().replacen("http", "ws", 1);
        cfg.llm.base_url = format!("{}/v1", self.openai.base_url().trim_end_matches("/v1").trim_end_matches('/'));
        cfg.tts.base_url = self.elevenlabs.base_url().replacen("http", "ws", 1);
        cfg.storage.url = storage_url.into();
        cfg
    }

    pub fn secrets() -> Secrets {
        Secrets {
            deepgram: Some("emulated".into()),
            llm: Some("emulated".into()),
            elevenlabs: Some("emulated".into()),
            twilio_account_sid: Some("AC00000000000000000000000000000000".into()),
            twilio_auth_token: Some(SIM_AUTH_TOKEN.into()),
            admin_token: Some(SIM_ADMIN_TOKEN.into()),
        }
    }
}

/// A running server on 127.0.0.1.
pub struct Server {
    pub base: String,
    pub app: Arc<App>,
    pub done_rx: tokio::sync::mpsc::UnboundedReceiver<CallRow>,
    _task: tokio::task::JoinHandle<()>,
}

/// Bind first (the public URL must carry the port), then build the app and serve.
pub async fn start_server(
    emulated: &Emulated,
    storage_url: &str,
    live: Option<crate::call::recorder::LiveFn>,
    tweak: impl FnOnce(&mut Config),
) -> anyhow::Result<Server> {
    start_server_with(emulated, storage_url, live, tweak, None).await
}

/// [`start_server`] with an end-of-turn model supplied by the caller (tests use a scripted one;
/// `None` loads what `turn.model` names).
pub async fn start_server_with(
    emulated: &Emulated,
    storage_url: &str,
    live: Option<crate::call::recorder::LiveFn>,
    tweak: impl FnOnce(&mut Config),
    turn_model: Option<Arc<dyn voxline::processors::audio::turn::TurnModel>>,
) -> anyhow::Result<Server> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    let mut cfg = emulated.config(storage_url, &base);
    tweak(&mut cfg);
    cfg.validate()?;
    let store = Store::connect(&cfg.storage.url, cfg.storage.seed_demo_data).await?;
    let mut app = App::new(cfg, Emulated::secrets(), store).with_turn_model()?;
    if turn_model.is_some() {
        app.turn_model = turn_model;
    }
    app.live = live;
    let (tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
    app.on_call_done = Some(Arc::new(move |row: &CallRow| {
        let _ = tx.send(row.clone());
    }));
    let app = Arc::new(app);
    let router = app.router();
    let task = tokio::spawn(async move {
        let _ = axum::serve(nodelay(listener), router).await;
    });
    Ok(Server { base, app, done_rx, _task: task })
}

/// Accepted sockets send small writes (one 20 ms media message) at once instead of waiting for
/// the peer's delayed ACK (Nagle), which would add up to ~40 ms to what the bot's latency shows.
pub fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    })
}

/// Speech for `text` as raw μ-law 8 kHz: espeak-ng + sox when available, else a fixture.
///
/// Safe to call from many concurrent calls: each text is synthesized once per process and
/// cached. Synthesis used to write `u{index}.wav`/`u{index}.ulaw` shared by every caller, so
/// twenty concurrent callers truncated each other's files and some "spoke" an empty or cut
/// utterance (no VAD turn, so the scripted STT never fired): that was the intermittent
/// "server did not end the call" of the 20-call test. Files are now unique per synthesis, the
/// cache lock serializes synthesis, and an empty or implausibly short result falls back to the
/// committed fixture.
pub fn speech(text: &str, index: usize) -> anyhow::Result<Vec<u8>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Vec<u8>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    // Held across synthesis on purpose: concurrent first calls for one text wait for a single
    // synthesis instead of racing their own.
    let mut cache = voxline::pipeline::sync::lock(cache);
    if let Some(bytes) = cache.get(text) {
        return Ok(bytes.as_ref().clone());
    }
    let bytes = match synthesize(text) {
        Some(b) => b,
        None => {
            let fixture: PathBuf =
                [env!("CARGO_MANIFEST_DIR"), "fixtures", &format!("caller_{}.ulaw", index + 1)].iter().collect();
            std::fs::read(&fixture).with_context(|| format!("no espeak-ng/sox and no fixture {}", fixture.display()))?
        }
    };
    cache.insert(text.to_string(), Arc::new(bytes.clone()));
    Ok(bytes)
}

/// espeak-ng + sox into files no other synthesis shares; `None` when either tool is missing or
/// the output is implausibly short (under 200 ms).
fn synthesize(text: &str) -> Option<Vec<u8>> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("voxline-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let wav = dir.join(format!("s{n}.wav"));
    let raw = dir.join(format!("s{n}.ulaw"));
    let espeak = std::process::Command::new("espeak-ng").args(["-s", "165", "-w"]).arg(&wav).arg(text).output();
    let mut out = None;
    if espeak.is_ok_and(|o| o.status.success()) {
        let sox = std::process::Command::new("sox")
            .arg(&wav)
            .args(["-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw"])
            .arg(&raw)
            .args(["norm", "-3"])
            .output();
        if sox.is_ok_and(|o| o.status.success()) {
            out = std::fs::read(&raw).ok().filter(|b| b.len() >= 1600);
        }
    }
    let _ = std::fs::remove_file(&wav);
    let _ = std::fs::remove_file(&raw);
    out
}

/// What the simulated Twilio side saw.
#[derive(Debug, Default, Clone)]
pub struct CallerLog {
    pub media_frames: usize,
    pub marks: Vec<String>,
    pub clears: usize,
    /// Time from the start of each caller utterance's speech to the first `clear` after it.
    pub clear_after_speech: Vec<Duration>,
    pub closed_by_server: bool,
    pub bot_audio_ms: u64,
    /// Per `Say` step: from sending the frame holding its last voiced sample to the first bot
    /// media message after it (`None` if the bot never answered before the next `Say`).
    pub answer_after_voice: Vec<Option<Duration>>,
    /// When each bot media message arrived.
    pub media_at: Vec<Instant>,
    /// When each `clear` arrived.
    pub clear_at: Vec<Instant>,
    /// Per `Say` step: when its speech started and when its last voiced frame was sent.
    pub said: Vec<(Instant, Option<Instant>)>,
}

/// One step of a caller script (the simulation uses a few; the tests use them all).
#[derive(Debug, Clone)]
#[cfg_attr(not(test), allow(dead_code))]
pub enum Step {
    /// Wait until the bot's queued audio has played and it stays quiet this long.
    WaitQuiet(Duration),
    /// Wait until some bot audio arrived and this much of it has played.
    WaitBotTalking(Duration),
    /// Speak these μ-law bytes (then continue with silence).
    Say(Vec<u8>),
    /// Press a key.
    Dtmf(char),
    /// Send raw text as a websocket message.
    Raw(String),
    /// Silence for this long.
    Pause(Duration),
    /// Send `stop` and close.
    HangUp,
    /// Drop the TCP connection without `stop` or a close frame.
    Vanish,
    /// Wait (up to the duration) for the server to end the call.
    WaitServerClose(Duration),
}

struct Playback {
    /// (mark name, when it is played) in queue order.
    marks: VecDeque<(String, Instant)>,
    /// When the audio queued so far finishes playing.
    play_end: Instant,
    bot_audio_ms: u64,
    last_audio: Option<Instant>,
}

/// Place a simulated call: signed webhook, then the media stream.
pub async fn place_call(base: &str, call_sid: &str, from: &str, steps: Vec<Step>) -> anyhow::Result<CallerLog> {
    let Answered { stream_url, custom } = ring(&reqwest::Client::new(), base, call_sid, from).await?;
    let (ws, _) = tokio_tungstenite::connect_async(&stream_url).await.context("websocket connect")?;
    let (mut tx, mut rx) = ws.split();
    let stream_sid = format!("MZ{}", &call_sid[2..].chars().chain(std::iter::repeat('0')).take(32).collect::<String>());
    tx.send(Message::text(client::connected())).await?;
    let custom_ref: Vec<(&str, &str)> = custom.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    tx.send(Message::text(client::start(&stream_sid, call_sid, &custom_ref))).await?;

    let log = Arc::new(Mutex::new(CallerLog::default()));
    let pb = Arc::new(Mutex::new(Playback {
        marks: VecDeque::new(),
        play_end: Instant::now(),
        bot_audio_ms: 0,
        last_audio: None,
    }));
    let speech_started: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (echo_tx, mut echo_rx) = tokio::sync::mpsc::unbounded_channel::<String>();

    // Reader: the Twilio playback buffer. Audio plays in real time from when it arrives; a mark
    // is echoed when the audio before it has played; `clear` empties the buffer and echoes every
    // pending mark at once.
    // Set when the last voiced frame of an utterance was sent; the reader takes it at the next
    // bot audio.
    let awaiting_answer: Arc<Mutex<Option<Instant>>> = Arc::default();
    let reader = {
        let (log, pb, speech_started) = (log.clone(), pb.clone(), speech_started.clone());
        let awaiting_answer = awaiting_answer.clone();
        let echo_tx = echo_tx.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.next().await {
                let text = match msg {
                    Ok(Message::Text(t)) => t.to_string(),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                let Ok((_, out)) = decode_outbound(&text) else { continue };
                let now = Instant::now();
                let mut p = voxline::pipeline::sync::lock(&pb);
                match out {
                    Outbound::Media { payload } => {
                        if let Some(t) = voxline::pipeline::sync::lock(&awaiting_answer).take() {
                            voxline::pipeline::sync::lock(&log).answer_after_voice.push(Some(now.duration_since(t)));
                        }
                        let ms = payload.len() as u64 / 8;
                        p.play_end = p.play_end.max(now) + Duration::from_millis(ms);
                        p.bot_audio_ms += ms;
                        p.last_audio = Some(now);
                        let mut l = voxline::pipeline::sync::lock(&log);
                        l.media_frames += 1;
                        l.media_at.push(now);
                    }
                    Outbound::Mark { name } => {
                        let at = p.play_end.max(now);
                        p.marks.push_back((name.clone(), at));
                        voxline::pipeline::sync::lock(&log).marks.push(name);
                    }
                    Outbound::Clear => {
                        p.play_end = now;
                        for (name, _) in p.marks.drain(..) {
                            let _ = echo_tx.send(name);
                        }
                        let mut l = voxline::pipeline::sync::lock(&log);
                        l.clears += 1;
                        l.clear_at.push(now);
                        if let Some(t) = voxline::pipeline::sync::lock(&speech_started).take() {
                            l.clear_after_speech.push(now.duration_since(t));
                        }
                    }
                }
            }
            voxline::pipeline::sync::lock(&log).closed_by_server = true;
        })
    };

    // Writer: 20 ms frames in real time (speech from the script, silence otherwise) and mark
    // echoes when their audio has "played".
    let silence = vec![0xFFu8; 160];
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut speaking: VecDeque<u8> = VecDeque::new();
    let mut steps: VecDeque<Step> = steps.into();
    let mut waiting: Option<(Step, Instant)> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut vanished = false;
    // Bytes of the current utterance up to and including its last voiced sample.
    let mut voiced_left: Option<usize> = None;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now > deadline {
            bail!("simulated call did not finish within 120 s");
        }
        if reader.is_finished() {
            break;
        }
        // Echo marks whose audio has played.
        {
            let mut p = voxline::pipeline::sync::lock(&pb);
            while p.marks.front().is_some_and(|(_, at)| *at <= now) {
                if let Some((name, _)) = p.marks.pop_front() {
                    let _ = echo_tx.send(name);
                }
            }
        }
        while let Ok(name) = echo_rx.try_recv() {
            if tx.send(Message::text(client::mark(&stream_sid, &name))).await.is_err() {
                break;
            }
        }
        // Advance the script when not speaking.
        if speaking.is_empty() {
            if waiting.is_none() {
                waiting = steps.pop_front().map(|s| (s, now));
            }
            if let Some((step, since)) = waiting.clone() {
                let done = match step {
                    Step::WaitQuiet(d) => {
                        // The bot must have answered (audio after this step began), finished
                        // playing, and stayed quiet for `d`.
                        let p = voxline::pipeline::sync::lock(&pb);
                        p.marks.is_empty()
                            && p.play_end + d <= now
                            && p.last_audio.is_some_and(|t| t >= since && t + d <= now)
                    }
                    Step::WaitBotTalking(d) => {
                        let p = voxline::pipeline::sync::lock(&pb);
                        p.last_audio.is_some() && p.bot_audio_ms >= u64::try_from(d.as_millis()).unwrap_or(0)
                    }
                    Step::Say(bytes) => {
                        if voxline::pipeline::sync::lock(&awaiting_answer).take().is_some() {
                            voxline::pipeline::sync::lock(&log).answer_after_voice.push(None);
                        }
                        voiced_left = Some(last_voiced(&bytes));
                        voxline::pipeline::sync::lock(&log).said.push((now, None));
                        speaking.extend(bytes);
                        *voxline::pipeline::sync::lock(&speech_started) = Some(now);
                        true
                    }
                    Step::Dtmf(c) => {
                        tx.send(Message::text(client::dtmf(&stream_sid, c))).await?;
                        true
                    }
                    Step::Raw(t) => {
                        tx.send(Message::text(t)).await?;
                        true
                    }
                    Step::Pause(d) => since + d <= now,
                    Step::HangUp => {
                        let _ = tx.send(Message::text(client::stop(&stream_sid, call_sid))).await;
                        let _ = tx.close().await;
                        break;
                    }
                    Step::Vanish => {
                        vanished = true;
                        break;
                    }
                    Step::WaitServerClose(d) => {
                        if since + d <= now {
                            bail!("server did not end the call within {d:?}");
                        }
                        false
                    }
                };
                if done {
                    waiting = None;
                }
            } else {
                // Script finished: hang up like a caller who is done.
                let _ = tx.send(Message::text(client::stop(&stream_sid, call_sid))).await;
                let _ = tx.close().await;
                break;
            }
        }
        let chunk: Vec<u8> = if speaking.is_empty() {
            silence.clone()
        } else {
            let n = speaking.len().min(160);
            let mut c: Vec<u8> = speaking.drain(..n).collect();
            c.resize(160, 0xFF);
            c
        };
        let voice_ends_here = match voiced_left.as_mut() {
            Some(left) if *left <= 160 => true,
            Some(left) => {
                *left -= 160;
                false
            }
            None => false,
        };
        if tx.send(Message::text(client::media(&stream_sid, seq, &chunk))).await.is_err() {
            break;
        }
        if voice_ends_here {
            voiced_left = None;
            let sent = Instant::now();
            if let Some(last) = voxline::pipeline::sync::lock(&log).said.last_mut() {
                last.1 = Some(sent);
            }
            *voxline::pipeline::sync::lock(&awaiting_answer) = Some(sent);
        }
        seq += 1;
    }
    if vanished {
        // Dropping both halves drops the TCP stream with no close handshake.
        drop(tx);
        reader.abort();
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    }
    let mut out = voxline::pipeline::sync::lock(&log).clone();
    out.bot_audio_ms = voxline::pipeline::sync::lock(&pb).bot_audio_ms;
    Ok(out)
}

/// Bytes up to and including the last voiced sample (louder than the near-silence espeak and sox
/// leave around speech).
pub(crate) fn last_voiced(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| voxline::pipeline::g711::mulaw_decode(*b).unsigned_abs() > 1000).map_or(1, |i| i + 1)
}

/// `phone-bot simulate`: one full call, printed live (`--bench-turns` runs [`bench_turns`]
/// instead).
pub async fn run() -> anyhow::Result<()> {
    println!("=== Voxline phone bot: KEYLESS SIMULATION ===");
    println!("Providers are EMULATED in-process (voxline-emulators): Deepgram STT (scripted recognition),");
    println!("OpenAI chat (scripted call-center responder), ElevenLabs TTS (tone voice), Twilio REST (fake).");
    println!("The server, pipeline, Twilio websocket protocol, skills, storage and workflow are real.\n");
    let emulated = Emulated::start(Emulated::script(CALLER_LINES)).await?;
    let db = std::env::temp_dir().join(format!("voxline-sim-{}.db", std::process::id()));
    let live: crate::call::recorder::LiveFn = Arc::new(|line: &str| println!("{line}"));
    let mut server = start_server(&emulated, &format!("sqlite://{}", db.display()), Some(live), |_| {}).await?;
    println!("server listening on {} (sqlite {})\n", server.base, db.display());
    let mut steps = vec![Step::WaitQuiet(Duration::from_millis(400))];
    for (i, line) in CALLER_LINES.iter().enumerate() {
        steps.push(Step::Say(speech(line, i)?));
        steps.push(Step::WaitQuiet(Duration::from_millis(600)));
    }
    steps.push(Step::WaitServerClose(Duration::from_secs(20)));
    let call_sid = "CA5e1f0000000000000000000000000001";
    let log = place_call(&server.base, call_sid, "+15550001111", steps).await?;
    let row = tokio::time::timeout(Duration::from_secs(30), server.done_rx.recv())
        .await
        .context("no call record")?
        .context("server stopped")?;
    println!("\n=== caller side (simulated Twilio) ===");
    println!(
        "bot audio received: {:.1} s in {} media frames, {} marks, {} clears, hung up by server: {}",
        log.bot_audio_ms as f64 / 1e3,
        log.media_frames,
        log.marks.len(),
        log.clears,
        log.closed_by_server
    );
    println!("REST hang-ups seen by the fake Twilio API: {:?}", voxline::pipeline::sync::lock(&emulated.hangups));
    print_post_call(&row);
    let stats = reqwest::Client::new()
        .get(format!("{}/admin/stats", server.base))
        .bearer_auth(SIM_ADMIN_TOKEN)
        .send()
        .await?
        .text()
        .await?;
    println!("\n=== GET /admin/stats ===\n{stats}");
    server.app.counters.calls_active.load(std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

pub fn print_post_call(row: &CallRow) {
    println!("\n=== post-call ({}) ===", row.call_sid);
    println!(
        "end reason: {}   duration: {:.1} s   resolved: {}",
        row.end_reason,
        row.duration_ms as f64 / 1e3,
        row.resolved
    );
    println!("summary:   {}", row.summary.as_deref().unwrap_or("-"));
    println!("sentiment: {}", row.sentiment.as_deref().unwrap_or("-"));
    for t in row.record["turns"].as_array().into_iter().flatten() {
        let f = |k: &str| t[k].as_f64().map_or_else(|| "-".to_string(), |v| format!("{v:.0} ms"));
        println!(
            "turn {}: user stopped -> first bot audio {} (stt {}, llm ttfb {}, tts ttfb {})",
            t["turn"],
            f("total_ms"),
            f("stt_ms"),
            f("llm_ttfb_ms"),
            f("tts_ttfb_ms")
        );
    }
    for t in row.record["tool_calls"].as_array().into_iter().flatten() {
        println!("tool call: {}({}) -> {}", t["name"].as_str().unwrap_or("?"), t["arguments"], t["result"]);
    }
    if let Some(steps) = row.workflow.as_ref().and_then(|w| w["steps"].as_array()) {
        for s in steps {
            println!(
                "workflow {:<16} {:<8} {}",
                s["step"].as_str().unwrap_or("?"),
                s["status"].as_str().unwrap_or("?"),
                s["detail"]
            );
        }
    }
    println!("interruptions: {}   errors: {}", row.record["interruptions"], row.record["errors"]);
}

/// What the caller says on every benchmark turn, and what the emulated LLM answers (short, so a
/// turn is mostly latency rather than play-out).
const BENCH_LINE: &str = "Hi, I'm calling about my order.";
const BENCH_ANSWER: &str = "Okay, got it.";

/// `phone-bot simulate --bench-turns T --bench-calls C`: `C` concurrent calls of `T` caller turns each
/// against the in-process emulators (zero configured provider delay), one JSON line per turn on
/// stdout (used by `bench e2e`):
///
/// - `caller_ms`: the caller's last voiced frame sent → the first bot media message received;
/// - `server_ms`: the VAD's `UserStoppedSpeaking` → first bot audio at the output stage (the call
///   record's `total_ms`);
/// - `vad_stop_ms` = `caller_ms − server_ms`: the VAD's stop confirmation (it needs `stop_ms` of
///   silence), plus the input and output socket hops (sub-millisecond on loopback);
/// - `stt_ms`, `llm_ttfb_ms`, `tts_ttfb_ms`: the providers (emulators), from the record;
/// - `engine_ms` = `server_ms − stt − llm_ttfb − tts_ttfb`: what the engine adds, including the
///   user aggregator's wait for a pending final or an unfinished sentence.
pub async fn bench_turns(calls: usize, turns: usize) -> anyhow::Result<()> {
    let (calls, turns) = (calls.max(1), turns.max(1));
    let responder: Responder = Arc::new(|_: &serde_json::Value| Scripted::text(BENCH_ANSWER));
    let emulated = Emulated::start_with(Emulated::script(&vec![BENCH_LINE; turns]), responder).await?;
    let db = std::env::temp_dir().join(format!("voxline-bench-{}.db", std::process::id()));
    let mut server = start_server(&emulated, &format!("sqlite://{}", db.display()), None, |c| {
        c.persona.greeting = "Hi.".into();
        c.server.max_calls = calls.max(c.server.max_calls);
        c.workflow.enabled = false;
    })
    .await?;
    let line = speech(BENCH_LINE, 0)?;
    let voiced = line.iter().position(|b| voxline::pipeline::g711::mulaw_decode(*b).unsigned_abs() > 1000);
    let line = line[voiced.unwrap_or(0)..].to_vec();
    let mut joins = Vec::new();
    for c in 0..calls {
        let base = server.base.clone();
        let mut steps = vec![Step::WaitQuiet(Duration::from_millis(300))];
        for _ in 0..turns {
            steps.push(Step::Say(line.clone()));
            steps.push(Step::WaitQuiet(Duration::from_millis(300)));
        }
        steps.push(Step::HangUp);
        joins.push(tokio::spawn(async move {
            place_call(&base, &format!("CA{:032}", 900 + c), "+15550001111", steps).await
        }));
    }
    let mut logs = HashMap::new();
    for (c, j) in joins.into_iter().enumerate() {
        match j.await {
            Ok(Ok(log)) => {
                logs.insert(format!("CA{:032}", 900 + c), log);
            }
            Ok(Err(e)) => eprintln!("call {c}: {e:#}"),
            Err(e) => eprintln!("call {c}: {e}"),
        }
    }
    for _ in 0..logs.len() {
        let Ok(Some(row)) = tokio::time::timeout(Duration::from_secs(30), server.done_rx.recv()).await else { break };
        let Some(log) = logs.get(&row.call_sid) else { continue };
        let server_turns = row.record["turns"].as_array().cloned().unwrap_or_default();
        if server_turns.len() != log.answer_after_voice.len() {
            // The VAD split or merged an utterance: turns cannot be paired reliably.
            eprintln!(
                "{}: {} caller turns vs {} VAD turns; skipped",
                row.call_sid,
                log.answer_after_voice.len(),
                server_turns.len()
            );
            continue;
        }
        for (i, (caller, t)) in log.answer_after_voice.iter().zip(&server_turns).enumerate() {
            let f = |k: &str| t[k].as_f64();
            let (Some(caller), Some(server_ms)) = (caller, f("total_ms")) else { continue };
            let caller_ms = caller.as_secs_f64() * 1e3;
            let providers = [f("stt_ms"), f("llm_ttfb_ms"), f("tts_ttfb_ms")];
            let engine_ms = server_ms - providers.iter().flatten().sum::<f64>();
            println!(
                "{}",
                serde_json::json!({
                    "call": row.call_sid, "turn": i + 1, "caller_ms": caller_ms, "server_ms": server_ms,
                    "vad_stop_ms": caller_ms - server_ms, "stt_ms": providers[0], "llm_ttfb_ms": providers[1],
                    "tts_ttfb_ms": providers[2], "engine_ms": engine_ms,
                })
            );
        }
    }
    let _ = std::fs::remove_file(&db);
    Ok(())
}
