//! `serve_call` end to end: a real axum server on 127.0.0.1:0 with the Twilio routes, the
//! emulated Twilio caller from `voxline-emulators` (raw JSON, not this crate's serializer), and
//! small pipelines: a probe that records every frame passing it, optionally a one-shot "barge-in"
//! stage, and the session's paced output. Every wait is on an event with a timeout.
#![cfg(feature = "twilio")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use voxline_emulators::twilio::{BotMessage, CallerOptions, Speech, TwilioCaller, incoming_call_form, ring};
use voxline_pipeline::{
    AudioFormat, AudioFrame, Direction, Event, FlowError, Frame, Pipeline, PipelineHandle, PipelineParams,
    PipelineTask, TaskOutcome, TtsAudio, processor_fn,
};
use voxline_transports::twilio::routes::BoxFuture;
use voxline_transports::twilio::{
    CallHandler, CallReport, EndReason, RoutesConfig, TwilioParams, TwilioRest, TwilioSession, router, serve_call,
    signature,
};

const WAIT: Duration = Duration::from_secs(5);
/// μ-law bytes per ms.
const BYTES_PER_MS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Harness

/// Every frame that passed the probe (first stage), both directions, awaitable.
#[derive(Clone)]
struct Probe {
    seen: Arc<Mutex<Vec<(Direction, Frame)>>>,
    version: Arc<watch::Sender<u64>>,
}

impl Probe {
    fn new() -> Self {
        Self { seen: Arc::default(), version: Arc::new(watch::channel(0).0) }
    }

    fn record(&self, direction: Direction, frame: &Frame) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).push((direction, frame.clone()));
        self.version.send_modify(|v| *v += 1);
    }

    /// Wait until `pred` holds for the frames seen so far; panics with `what` on timeout.
    async fn wait_for<T>(&self, what: &str, pred: impl Fn(&[(Direction, Frame)]) -> Option<T>) -> T {
        let mut rx = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(t) = pred(&self.seen.lock().unwrap_or_else(|e| e.into_inner())) {
                return t;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                panic!("timed out waiting for {what}; seen: {:?}", self.kinds());
            }
        }
    }

    fn kinds(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, f)| !matches!(f, Frame::InputAudio(_)))
            .map(|(d, f)| format!("{d:?} {f:?}"))
            .collect()
    }

    fn dtmf(&self) -> Vec<char> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().filter_map(|(_, f)| if let Frame::Dtmf(c) = f { Some(*c) } else { None }).collect()
    }
}

/// How the test bot's pipeline is built.
#[derive(Clone, Copy, Default)]
struct BotShape {
    /// A stage that interrupts (once) on the first loud caller audio.
    barge_in: bool,
    /// A stage that fails fatally on DTMF `9`.
    fail_on_nine: bool,
}

/// One call as the test sees it from the bot's side.
struct BotCall {
    handle: PipelineHandle,
    probe: Probe,
    events: tokio::sync::broadcast::Receiver<Event>,
}

struct TestBot {
    shape: BotShape,
    calls: mpsc::UnboundedSender<BotCall>,
    reports: mpsc::UnboundedSender<CallReport>,
}

impl CallHandler for TestBot {
    fn handle_stream(&self, session: TwilioSession) -> BoxFuture {
        let probe = Probe::new();
        let recorder = probe.clone();
        let mut pipeline = Pipeline::new().with(processor_fn("probe", move |frame, dir, cx| {
            recorder.record(dir, &frame);
            cx.push_now(frame, dir);
            Ok(())
        }));
        if self.shape.barge_in {
            let fired = AtomicBool::new(false);
            pipeline = pipeline.with(processor_fn("barge", move |frame, dir, cx| {
                if let Frame::InputAudio(a) = &frame
                    && a.data.iter().any(|b| *b != 0xFF && *b != 0x7F)
                    && !fired.swap(true, Ordering::SeqCst)
                {
                    cx.emit(Event::Interrupt);
                }
                cx.push_now(frame, dir);
                Ok(())
            }));
        }
        if self.shape.fail_on_nine {
            pipeline = pipeline.with(processor_fn("fragile", move |frame, dir, cx| {
                if matches!(frame, Frame::Dtmf('9')) {
                    return Err(FlowError::fatal("nine is not allowed"));
                }
                cx.push_now(frame, dir);
                Ok(())
            }));
        }
        let pipeline = pipeline.with(session.output());
        let params = PipelineParams { name: session.start().call_sid.clone(), ..PipelineParams::default() };
        let task = PipelineTask::new(pipeline, params);
        let handle = task.handle();
        let events = handle.subscribe();
        let _ = self.calls.send(BotCall { handle, probe, events });
        let reports = self.reports.clone();
        Box::pin(async move {
            let report = serve_call(session, task).await;
            let _ = reports.send(report);
        })
    }
}

struct Server {
    base: String,
    calls: mpsc::UnboundedReceiver<BotCall>,
    reports: mpsc::UnboundedReceiver<CallReport>,
}

impl Server {
    async fn start(shape: BotShape, params: TwilioParams) -> Self {
        Self::start_with(shape, params, None).await
    }

    async fn start_with(shape: BotShape, params: TwilioParams, auth_token: Option<&str>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let base = format!("http://{addr}");
        let mut cfg = RoutesConfig::new(base.clone(), auth_token.map(str::to_string));
        cfg.params = params;
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let app = router(cfg, Arc::new(TestBot { shape, calls: calls_tx, reports: reports_tx }));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, calls, reports }
    }

    fn stream_url(&self) -> String {
        format!("{}/voice/stream", self.base.replacen("http://", "ws://", 1))
    }

    /// Connect a caller and wait for the bot's side of the call.
    async fn call(&mut self) -> (TwilioCaller, BotCall) {
        let caller = TwilioCaller::connect(&self.stream_url(), CallerOptions::new()).await.expect("connect");
        let bot = self.next_call().await;
        (caller, bot)
    }

    async fn next_call(&mut self) -> BotCall {
        tokio::time::timeout(WAIT, self.calls.recv()).await.expect("call timeout").expect("server gone")
    }

    async fn report(&mut self) -> CallReport {
        tokio::time::timeout(WAIT, self.reports.recv()).await.expect("serve_call did not return").expect("server gone")
    }
}

/// Short windows so that a test that fails does so quickly, not after Twilio-sized timeouts.
fn params() -> TwilioParams {
    TwilioParams {
        drain_timeout: Duration::from_secs(3),
        end_timeout: Duration::from_secs(3),
        ..TwilioParams::default()
    }
}

/// A recognisable, non-silent μ-law pattern.
fn bot_audio(ms: usize) -> Bytes {
    Bytes::from((0..ms * BYTES_PER_MS).map(|i| (i % 120) as u8).collect::<Vec<u8>>())
}

/// One TTS utterance of `audio`, then its end.
async fn say(handle: &PipelineHandle, id: &str, audio: Bytes) {
    let context_id: Arc<str> = Arc::from(id);
    let tts = TtsAudio {
        audio: AudioFrame::new(audio, AudioFormat::mulaw_8k()),
        context_id: context_id.clone(),
        words: Arc::from([]),
        offset: Duration::ZERO,
    };
    handle.push(Frame::from(tts)).await.expect("push audio");
    handle.push(Frame::TtsStopped { context_id }).await.expect("push stop");
}

async fn next_event(events: &mut tokio::sync::broadcast::Receiver<Event>, what: &str, f: impl Fn(&Event) -> bool) {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(e) if f(&e) => return true,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(found, Ok(true), "event {what} not seen");
}

fn outcome(report: &CallReport) -> Option<&TaskOutcome> {
    report.pipeline.as_ref().map(|p| &p.outcome)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn mark_echo_becomes_played_up_to_and_ends_bot_speaking() {
    let mut server = Server::start(BotShape::default(), params()).await;
    let (caller, mut bot) = server.call().await;

    say(&bot.handle, "u1", bot_audio(200)).await;
    next_event(&mut bot.events, "BotStartedSpeaking", |e| matches!(e, Event::BotStartedSpeaking)).await;

    // The caller echoes the mark once its playback buffer has played the 200 ms.
    let (position, complete) = bot
        .probe
        .wait_for("PlayedUpTo from the mark echo", |seen| {
            seen.iter().find_map(|(d, f)| match f {
                Frame::PlayedUpTo { context_id, position, complete }
                    if *d == Direction::Upstream && &**context_id == "u1" =>
                {
                    Some((*position, *complete))
                }
                _ => None,
            })
        })
        .await;
    assert!(complete);
    assert_eq!(position, Duration::from_millis(200));
    next_event(&mut bot.events, "BotStoppedSpeaking", |e| matches!(e, Event::BotStoppedSpeaking)).await;

    let heard = caller.heard();
    assert_eq!(heard.marks, vec!["u1#1".to_string()]);
    assert_eq!(heard.echoed, heard.marks);
    assert_eq!(heard.audio, bot_audio(200).to_vec(), "the caller heard the utterance, whole and in order");
    assert!(heard.protocol_errors.is_empty(), "{:?}", heard.protocol_errors);

    caller.stop().await.expect("stop");
    let report = server.report().await;
    assert_eq!((report.marks_sent, report.marks_echoed), (1, 1));
    assert_eq!(report.media_out, 10);
}

#[tokio::test]
async fn barge_in_sends_clear_to_the_caller() {
    let mut server = Server::start(BotShape { barge_in: true, ..BotShape::default() }, params()).await;
    let (caller, bot) = server.call().await;

    say(&bot.handle, "long", bot_audio(3000)).await;
    caller.wait_for(|h| h.media_messages >= 5, WAIT).await.expect("bot audio before the barge-in");

    // The caller talks over the bot: the barge-in stage interrupts, the output clears Twilio.
    caller.send_speech(&Speech::from_mulaw(&[0x10; 320])).await.expect("speak");
    let heard = caller.wait_for(|h| h.clears >= 1, WAIT).await.expect("clear reached the caller");
    let cleared_at = heard
        .timeline
        .iter()
        .find_map(|(at, m)| (*m == BotMessage::Clear).then_some(*at))
        .expect("clear in the timeline");

    // The rest of the 3 s answer never comes; what the caller heard is reported as cut.
    let position = bot
        .probe
        .wait_for("PlayedUpTo after the barge-in", |seen| {
            seen.iter().find_map(|(_, f)| match f {
                Frame::PlayedUpTo { position, complete: false, .. } => Some(*position),
                _ => None,
            })
        })
        .await;
    assert!(position < Duration::from_secs(3), "heard {position:?}");
    let settled = caller.wait_quiet(Duration::from_millis(150), WAIT).await;
    assert!(settled);
    let heard = caller.heard();
    let after_clear =
        heard.timeline.iter().filter(|(at, m)| *at > cleared_at && matches!(m, BotMessage::Media(_))).count();
    assert_eq!(after_clear, 0, "audio sent after the clear");
    assert!(heard.audio_bytes < 3000 * BYTES_PER_MS / 2, "most of the answer was cut: {}", heard.audio_bytes);
    assert!(heard.marks.is_empty(), "the cut utterance was never marked done");

    caller.stop().await.expect("stop");
    let report = server.report().await;
    assert_eq!(report.clears, 1);
    assert_eq!(report.pipeline.as_ref().map(|p| p.interruptions), Some(1));
}

#[tokio::test]
async fn dtmf_reaches_the_pipeline_in_order() {
    let mut server = Server::start(BotShape::default(), params()).await;
    let (caller, bot) = server.call().await;

    for d in ['1', '#', '9', '*'] {
        caller.dtmf(d).await.expect("dtmf");
    }
    bot.probe
        .wait_for("four key presses", |seen| {
            (seen.iter().filter(|(_, f)| matches!(f, Frame::Dtmf(_))).count() == 4).then_some(())
        })
        .await;
    assert_eq!(bot.probe.dtmf(), vec!['1', '#', '9', '*']);

    caller.stop().await.expect("stop");
    assert_eq!(server.report().await.dtmf_in, 4);
}

#[tokio::test]
async fn pipeline_end_drains_the_goodbye_then_hangs_up() {
    // A REST API that records the hang-up, to check it comes after the goodbye was played.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let api = format!("http://{}", listener.local_addr().expect("addr"));
    let hangups: Arc<Mutex<Vec<(String, tokio::time::Instant)>>> = Arc::default();
    let recorded = hangups.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let recorded = recorded.clone();
        async move {
            recorded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((uri.path().to_string(), tokio::time::Instant::now()));
            axum::Json(serde_json::json!({"status": "completed"}))
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let rest = TwilioRest::new(api, "AC00000000000000000000000000000000", "secret");
    let mut server = Server::start(BotShape::default(), TwilioParams { rest: Some(rest), ..params() }).await;
    let (caller, bot) = server.call().await;

    // The bot says goodbye and ends the call: `End` queues behind the goodbye.
    say(&bot.handle, "bye", bot_audio(300)).await;
    bot.handle.end().await.expect("end");

    let heard = caller.closed(WAIT).await.expect("the bot hung up");
    let (code, closed_at) = heard.closed.expect("closed");
    assert_eq!(code, Some(1000));
    assert_eq!(heard.audio, bot_audio(300).to_vec(), "nothing of the goodbye was cut");
    assert_eq!(heard.echoed, vec!["bye#1".to_string()]);
    assert!(closed_at >= heard.playback_end, "closed at {closed_at:?}, playback ran to {:?}", heard.playback_end);

    let report = server.report().await;
    assert_eq!(report.reason, EndReason::PipelineEnded);
    assert!(report.drained);
    assert!(report.hung_up);
    assert_eq!(outcome(&report), Some(&TaskOutcome::Ended));
    let hangups = hangups.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(hangups.len(), 1);
    assert!(hangups[0].0.ends_with(&format!("/Calls/{}.json", caller.call_sid())), "{}", hangups[0].0);
}

#[tokio::test]
async fn pipeline_end_drains_audio_sent_outside_an_utterance() {
    let mut server = Server::start(BotShape::default(), params()).await;
    let (caller, bot) = server.call().await;

    // Plain output audio (a prompt, hold music) has no utterance and so no mark of its own.
    bot.handle.push(Frame::OutputAudio(AudioFrame::new(bot_audio(200), AudioFormat::mulaw_8k()))).await.expect("push");
    bot.handle.end().await.expect("end");

    let heard = caller.closed(WAIT).await.expect("the bot hung up");
    assert_eq!(heard.audio, bot_audio(200).to_vec());
    assert_eq!(heard.echoed.len(), 1, "a drain mark covers the tail: {:?}", heard.marks);
    let (_, closed_at) = heard.closed.expect("closed");
    assert!(closed_at >= heard.playback_end);
    let report = server.report().await;
    assert!(report.drained);
    assert!(!report.hung_up, "no REST configured");
}

#[tokio::test]
async fn caller_stop_ends_the_pipeline_with_end() {
    let mut server = Server::start(BotShape::default(), params()).await;
    let (caller, bot) = server.call().await;
    caller.speak(&Speech::silence(Duration::from_millis(60))).await.expect("speak");

    caller.stop().await.expect("stop");
    bot.probe.wait_for("End", |seen| seen.iter().any(|(_, f)| matches!(f, Frame::End)).then_some(())).await;
    let report = server.report().await;
    assert_eq!(report.reason, EndReason::Stopped);
    assert_eq!(outcome(&report), Some(&TaskOutcome::Ended));
    assert_eq!(report.media_in, 3);
    assert_eq!(report.pipeline.as_ref().map(|p| p.interruptions), Some(0), "nothing was playing: no interruption");
    assert!(caller.closed(WAIT).await.is_some(), "the bot closes its side");
}

#[tokio::test]
async fn caller_closing_the_socket_ends_the_pipeline_with_end() {
    let mut server = Server::start(BotShape::default(), params()).await;
    let (caller, bot) = server.call().await;

    caller.close().await.expect("close");
    bot.probe.wait_for("End", |seen| seen.iter().any(|(_, f)| matches!(f, Frame::End)).then_some(())).await;
    let report = server.report().await;
    assert_eq!(report.reason, EndReason::Disconnected);
    assert_eq!(outcome(&report), Some(&TaskOutcome::Ended));
}

#[tokio::test]
async fn caller_leaving_mid_answer_cuts_the_bot_and_ends_at_once() {
    let mut server = Server::start(BotShape::default(), params()).await;
    let (caller, mut bot) = server.call().await;

    // A 20 s answer: without the cut, `End` would wait for it to be paced out to nobody.
    say(&bot.handle, "long", bot_audio(20_000)).await;
    next_event(&mut bot.events, "BotStartedSpeaking", |e| matches!(e, Event::BotStartedSpeaking)).await;
    let left = tokio::time::Instant::now();
    caller.stop().await.expect("stop");

    let report = server.report().await;
    assert!(left.elapsed() < Duration::from_secs(2), "took {:?}", left.elapsed());
    assert_eq!(report.reason, EndReason::Stopped);
    assert_eq!(outcome(&report), Some(&TaskOutcome::Ended), "ended gracefully, not cancelled");
    assert_eq!(report.pipeline.as_ref().map(|p| p.interruptions), Some(1));
}

#[tokio::test]
async fn bad_messages_are_logged_and_skipped_and_the_call_goes_on() {
    let logs = LogCapture::install();
    let mut server = Server::start(BotShape::default(), params()).await;
    let opts = CallerOptions::new();
    let sid = opts.stream_sid.clone();
    let caller = TwilioCaller::connect_raw(&server.stream_url(), opts).await.expect("connect");

    // Before `start`: audio with no stream yet, and garbage.
    caller.send_media(&[0xFF; 160]).await.expect("send");
    caller.send_raw("{not json").await.expect("send");
    caller.send_raw(caller.start_message()).await.expect("start");
    let bot = server.next_call().await;

    // After `start`: one of each kind of bad message, each answered by a log line only.
    let bad = [
        "{\"event\": \"media\", \"media\": {\"payload\": \"".to_string(),
        "[1, 2, 3]".to_string(),
        format!(r#"{{"event":"media","streamSid":"{sid}","media":{{"payload":"!!not base64!!"}}}}"#),
        format!(r#"{{"event":"media","streamSid":"{sid}"}}"#),
        format!(r#"{{"event":"dtmf","streamSid":"{sid}","dtmf":{{"digit":"xyz"}}}}"#),
        r#"{"streamSid":"MZ0"}"#.to_string(),
    ];
    for m in &bad {
        caller.send_raw(m.clone()).await.expect("send");
    }
    // A protocol addition we do not know: ignored, not even counted as bad.
    caller.send_raw(format!(r#"{{"event":"telepathy","streamSid":"{sid}"}}"#)).await.expect("send");
    // The call is still up: a key press after all that gets through.
    caller.dtmf('7').await.expect("dtmf");
    bot.probe
        .wait_for("DTMF 7 after the bad messages", |seen| {
            seen.iter().any(|(_, f)| matches!(f, Frame::Dtmf('7'))).then_some(())
        })
        .await;

    caller.stop().await.expect("stop");
    let report = server.report().await;
    assert_eq!(report.reason, EndReason::Stopped);
    assert_eq!(report.bad_messages, bad.len() as u64);
    assert_eq!(outcome(&report), Some(&TaskOutcome::Ended));
    let logs = logs.text();
    for needle in [
        "before start dropped",
        "undecodable twilio message before start skipped",
        "malformed",
        "not valid base64",
        "invalid DTMF digit",
        "missing `event`",
        "ignored twilio event",
    ] {
        assert!(logs.contains(needle), "no log line with {needle:?} in:\n{logs}");
    }
}

#[tokio::test]
async fn too_many_bad_messages_in_a_row_drop_the_call() {
    let mut server = Server::start(BotShape::default(), TwilioParams { max_consecutive_errors: 3, ..params() }).await;
    let (caller, bot) = server.call().await;
    for _ in 0..3 {
        caller.send_raw("garbage").await.expect("send");
    }
    let heard = caller.closed(WAIT).await.expect("the bot closed the socket");
    assert_eq!(heard.closed.map(|c| c.0), Some(Some(1002)));
    bot.probe.wait_for("End", |seen| seen.iter().any(|(_, f)| matches!(f, Frame::End)).then_some(())).await;
    let report = server.report().await;
    assert!(matches!(report.reason, EndReason::ProtocolViolation(_)), "{:?}", report.reason);
}

#[tokio::test]
async fn a_failing_call_does_not_disturb_another() {
    let mut server = Server::start(BotShape { fail_on_nine: true, ..BotShape::default() }, params()).await;
    let (doomed, _doomed_bot) = server.call().await;
    let (healthy, healthy_bot) = server.call().await;

    // The doomed call's pipeline fails; its call is ended (socket closed), the other goes on.
    doomed.dtmf('9').await.expect("dtmf");
    let report = server.report().await;
    assert_eq!(report.call_sid, doomed.call_sid());
    assert_eq!(report.reason, EndReason::PipelineEnded);
    assert!(matches!(outcome(&report), Some(TaskOutcome::Failed(_))), "{:?}", outcome(&report));
    assert!(doomed.closed(WAIT).await.is_some());

    healthy.dtmf('1').await.expect("dtmf");
    say(&healthy_bot.handle, "ok", bot_audio(100)).await;
    healthy_bot
        .probe
        .wait_for("DTMF on the healthy call", |seen| {
            seen.iter().any(|(_, f)| matches!(f, Frame::Dtmf('1'))).then_some(())
        })
        .await;
    let heard = healthy.wait_for(|h| !h.echoed.is_empty(), WAIT).await.expect("healthy call still plays audio");
    assert_eq!(heard.audio, bot_audio(100).to_vec());
    healthy.stop().await.expect("stop");
    let report = server.report().await;
    assert_eq!(report.call_sid, healthy.call_sid());
    assert_eq!(outcome(&report), Some(&TaskOutcome::Ended));
}

#[tokio::test]
async fn signed_webhook_then_stream_with_its_token() {
    let token = "test-auth-token";
    let mut server = Server::start_with(BotShape::default(), params(), Some(token)).await;
    let http = reqwest::Client::new();
    let voice_url = format!("{}/voice/twilio", server.base);
    let form = incoming_call_form("CA0123456789abcdef0123456789abcdef", "+15550001111", "+15550002222");

    // Unsigned: refused.
    assert!(ring(&http, &voice_url, &form, None).await.is_err());
    let sig = signature::compute(token, &voice_url, &form);
    let answer = ring(&http, &voice_url, &form, Some(&sig)).await.expect("ring");
    assert_eq!(answer.stream_url, server.stream_url());
    assert!(answer.parameters.iter().any(|(k, _)| k == "token"));

    // A stream without the token is refused at `start`; with it, the call is served.
    let stranger =
        TwilioCaller::connect(&server.stream_url(), CallerOptions::for_call("CA0123456789abcdef0123456789abcdef"))
            .await
            .expect("connect");
    let refused = stranger.closed(WAIT).await.expect("refused");
    assert_eq!(refused.closed.map(|c| c.0), Some(Some(1008)));

    let opts = CallerOptions::for_call("CA0123456789abcdef0123456789abcdef").with_parameters(answer.parameters);
    let caller = TwilioCaller::connect(&answer.stream_url, opts).await.expect("connect");
    let bot = server.next_call().await;
    caller.dtmf('4').await.expect("dtmf");
    bot.probe.wait_for("DTMF", |seen| seen.iter().any(|(_, f)| matches!(f, Frame::Dtmf('4'))).then_some(())).await;
    caller.stop().await.expect("stop");
    assert_eq!(server.report().await.reason, EndReason::Stopped);
}

// ---------------------------------------------------------------------------------------------
// Log capture: the test runtime is single-threaded, so a thread-local subscriber sees the
// server's tasks too.

struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn install() -> Self {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let writer = Writer(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        Self { buf, _guard: tracing::subscriber::set_default(subscriber) }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}
