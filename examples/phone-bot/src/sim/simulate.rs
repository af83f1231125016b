//! Keyless simulation: the real server, EMULATED providers, and a simulated Twilio caller.
//!
//! The Deepgram, OpenAI and ElevenLabs emulators (voxline-emulators) start in-process on
//! 127.0.0.1:0, and a tiny fake Twilio REST endpoint records hang-ups. The caller speaks like
//! Twilio does: a signed webhook, then the Media Streams websocket with real μ-law speech
//! (espeak-ng + sox at run time when present, else the committed fixtures), continuous silence in
//! between, and mark echoes timed like Twilio's playback buffer (so "bot stopped speaking" comes
//! from the echo, as on a real call). What the emulated STT "recognises" is scripted: it fires
//! the next scripted sentence when the engine sends `Finalize` at the end of each spoken turn.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::routing::post;
use voxline::transports::twilio::signature;
use voxline_emulators::deepgram::{DeepgramConfig, DeepgramEmulator, TranscriptScript, Trigger};
use voxline_emulators::elevenlabs::{ElevenLabsConfig, ElevenLabsEmulator};
use voxline_emulators::openai::{OpenAiConfig, OpenAiEmulator, Responder, Scripted, call_center_responder};
use voxline_emulators::twilio::{Answer, CallerOptions, Heard, Speech, TwilioCaller, incoming_call_form, ring};

use crate::config::{Config, Secrets};
use crate::fleet::store::{CallRow, Store};
use crate::server::App;

/// What the simulated caller says, in order.
pub const CALLER_LINES: &[&str] =
    &["Hi, I'm calling about my order.", "My order number is 1 2 3 4 5.", "No, that's all. Thank you, goodbye."];

/// The Twilio auth token of every simulated instance: the caller signs its webhooks with it, as
/// Twilio signs with the account's token, so the server's signature check runs for real.
pub const SIM_AUTH_TOKEN: &str = "simulated-twilio-auth-token";
/// The admin API's bearer token in simulation, so `simulate` can show `/admin/stats` and the
/// tests can exercise the admin API without configuring one.
pub const SIM_ADMIN_TOKEN: &str = "simulated-admin-token";
/// The number the simulated callers dial (the webhook's `To`).
const SIM_CALLED_NUMBER: &str = "+15550009999";

/// The emulators and the fake Twilio REST API, alive as long as this value.
///
/// Fields are public so a test can assert on what each provider received (the Deepgram query,
/// the LLM requests, the REST hang-ups) next to what the caller heard.
pub struct Emulated {
    /// Deepgram live STT, recognising the script handed to [`Emulated::start`].
    pub deepgram: DeepgramEmulator,
    /// OpenAI chat completions, answering with the responder.
    pub openai: OpenAiEmulator,
    /// ElevenLabs TTS (a tone voice in the call's μ-law format).
    pub elevenlabs: ElevenLabsEmulator,
    /// Base URL of the fake Twilio REST API (the bot's `telephony.api_base_url`).
    pub twilio_rest: String,
    /// Every call update the bot posted to the REST API (`{call} {form}`): how a test sees the
    /// bot hang up.
    pub hangups: Arc<Mutex<Vec<String>>>,
    _twilio: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Emulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulated").finish_non_exhaustive()
    }
}

impl Emulated {
    /// Start every emulator with the STT `script` and the call-center LLM responder (order
    /// lookups, the goodbye), the scripted conversation of `simulate` and the e2e tests.
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

    /// Keys for the emulators (which take any), the simulated Twilio account and the admin
    /// token: the same secrets every simulated instance runs with.
    pub(crate) fn secrets() -> Secrets {
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

/// A running server on 127.0.0.1, in this process (so tests can look at its state).
pub struct Server {
    /// `http://127.0.0.1:PORT`, the public URL the webhooks are signed against.
    pub base: String,
    /// The app, for its counters and store.
    pub app: Arc<App>,
    /// Each finished call's record, after its post-call workflow: a test waits here rather
    /// than polling the store. Unbounded on purpose: one message per call, and a test that
    /// stops reading must not stall the server's call teardown.
    pub done_rx: tokio::sync::mpsc::UnboundedReceiver<CallRow>,
    _task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
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
pub(crate) fn nodelay(
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

/// One step of a caller script for [`place_call`]. The simulation uses a few; the e2e tests
/// compose the rest into barge-ins, hang-ups and broken streams.
#[derive(Debug, Clone)]
pub enum Step {
    /// Wait until the bot has spoken since this step began (the greeting, or the answer to the
    /// line just said), its audio has played, and it has stayed quiet this long: a caller waits
    /// for the bot to finish before talking.
    WaitQuiet(Duration),
    /// Wait until this much bot audio has arrived: a caller barging in mid-sentence.
    WaitBotTalking(Duration),
    /// Speak these μ-law bytes in place of the line's silence; the step ends with the last chunk.
    Say(Vec<u8>),
    /// Press a key.
    Dtmf(char),
    /// Send raw text as a websocket message (malformed messages for the robustness tests).
    Raw(String),
    /// Silence for this long.
    Pause(Duration),
    /// Send `stop` and close, as Twilio does when the caller hangs up.
    HangUp,
    /// Drop the TCP connection without `stop` or a close frame: a network that goes away.
    Vanish,
    /// Wait (up to the duration) for the server to end the call; failing the call if it does not.
    WaitServerClose(Duration),
}

/// The longest a simulated call of [`place_call`] may take: every test call is far shorter, so
/// reaching it means the bot hung, and the test should fail rather than wait forever.
const CALL_LIMIT: Duration = Duration::from_secs(120);

/// How long a hanging-up caller waits for the bot to close its side (the emulator's own grace
/// is 5 s; a little more so that one decides).
const HANG_UP_WAIT: Duration = Duration::from_secs(6);

/// Ring the bot as Twilio would: the voice webhook for an incoming call from `from`, signed with
/// [`SIM_AUTH_TOKEN`] (the server refuses unsigned webhooks), then read the TwiML's stream URL
/// and `<Parameter>`s (the stream token among them).
///
/// The signature is computed with the transport's own `signature::compute`: the emulator posts
/// and parses but never signs, so it cannot share a bug with the code under test.
pub(crate) async fn ring_signed(
    http: &reqwest::Client,
    base: &str,
    call_sid: &str,
    from: &str,
) -> anyhow::Result<Answer> {
    let url = format!("{base}/voice/twilio");
    let form = incoming_call_form(call_sid, from, SIM_CALLED_NUMBER);
    let sig = signature::compute(SIM_AUTH_TOKEN, &url, &form);
    Ok(ring(http, &url, &form, Some(&sig)).await?)
}

/// Place a simulated call: the signed webhook, then the emulator's Twilio caller on a line that
/// carries silence between the steps' speech (Twilio streams the caller continuously, and the
/// bot's VAD hears the end of a turn in that silence), running `steps` in order, then hanging up
/// if the script did not end the call. A bot that closes the stream ends the script early
/// without an error: the result shows it ([`Heard::ended_by_bot`]).
///
/// Fails when the call cannot be placed, a [`Step::WaitServerClose`] times out, or the call
/// takes over two minutes.
pub async fn place_call(base: &str, call_sid: &str, from: &str, steps: Vec<Step>) -> anyhow::Result<Heard> {
    let answer = ring_signed(&reqwest::Client::new(), base, call_sid, from).await?;
    let options = CallerOptions::for_call(call_sid).with_parameters(answer.parameters).continuous();
    let caller = TwilioCaller::connect(&answer.stream_url, options).await?;
    tokio::time::timeout(CALL_LIMIT, run_steps(&caller, steps))
        .await
        .map_err(|_| anyhow::anyhow!("simulated call did not finish within {CALL_LIMIT:?}"))??;
    // Dropping the caller drops its socket: after `Vanish`, without a close handshake.
    Ok(caller.heard())
}

/// The steps of [`place_call`]; returns early, without an error, once the bot has closed the
/// stream (a caller cannot do anything on a dead line).
async fn run_steps(caller: &TwilioCaller, steps: Vec<Step>) -> anyhow::Result<()> {
    for step in steps {
        let line_open = match step {
            Step::WaitQuiet(quiet) => caller.wait_answer(caller.now(), quiet, CALL_LIMIT).await,
            Step::WaitBotTalking(d) => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                let heard = caller.wait_for(|h| h.bot_audio_ms() >= ms || h.closed.is_some(), CALL_LIMIT).await;
                heard.is_some_and(|h| h.closed.is_none())
            }
            Step::Say(bytes) => caller.say(&Speech::from_mulaw(&bytes)).await.is_ok(),
            Step::Dtmf(c) => caller.dtmf(c).await.is_ok(),
            Step::Raw(text) => caller.send_raw(text).await.is_ok(),
            Step::Pause(d) => caller.wait_for(|h| h.closed.is_some(), d).await.is_none(),
            Step::HangUp => break,
            Step::Vanish => return Ok(()),
            Step::WaitServerClose(d) => {
                if caller.closed(d).await.is_none() {
                    bail!("server did not end the call within {d:?}");
                }
                false
            }
        };
        if !line_open {
            return Ok(());
        }
    }
    // Hang up like a caller who is done (the script's `HangUp`, or its end).
    let _ = caller.stop().await;
    let _ = caller.close().await;
    let _ = caller.closed(HANG_UP_WAIT).await;
    Ok(())
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
        log.bot_audio_ms() as f64 / 1e3,
        log.media_messages,
        log.marks.len(),
        log.clears,
        log.ended_by_bot
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

/// Print what the bot stored for a call (outcome, turns with their latencies, tool calls,
/// workflow steps): the second half of `simulate`'s live view, from the record rather than the
/// logs, so it shows what an operator would see.
fn print_post_call(row: &CallRow) {
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
        if server_turns.len() != log.said.len() {
            // The VAD split or merged an utterance: turns cannot be paired reliably.
            eprintln!("{}: {} caller turns vs {} VAD turns; skipped", row.call_sid, log.said.len(), server_turns.len());
            continue;
        }
        for (i, (said, t)) in log.said.iter().zip(&server_turns).enumerate() {
            let f = |k: &str| t[k].as_f64();
            let (Some(caller), Some(server_ms)) = (said.answer, f("total_ms")) else { continue };
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
