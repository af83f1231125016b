//! The HTTP side of a Twilio bot: webhook, media-stream upgrade, status callback.
//!
//! - `POST {voice_path}`: validates `X-Twilio-Signature` against the *public* URL (a bad or
//!   missing signature is a 403 and nothing else happens), then answers TwiML
//!   `<Connect><Stream url="wss://…{stream_path}">` with `<Parameter>`s: the call SID, the caller,
//!   a one-time stream token bound to the call, and whatever the [`CallHandler`] adds.
//! - `GET {stream_path}`: the websocket upgrade; the session is handed to the handler once
//!   `start` has arrived (and its token checked).
//! - `POST {status_path}`: signed call/stream status callbacks, forwarded to the handler (the
//!   post-call hook).
//!
//! Without an auth token (local development) signatures and tokens are not checked; the router
//! logs a warning once when built.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::rest::xml_escape;
use super::signature;
use super::transport::{self, TwilioParams, TwilioSession};

/// A boxed future returned by [`CallHandler`] methods.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An inbound call webhook that passed validation.
#[derive(Debug, Clone, Default)]
pub struct IncomingCall {
    /// `CallSid`.
    pub call_sid: String,
    /// `AccountSid`.
    pub account_sid: String,
    /// `From`.
    pub from: String,
    /// `To`.
    pub to: String,
    /// Every form field as sent.
    pub params: Vec<(String, String)>,
}

/// A call or stream status callback that passed validation.
#[derive(Debug, Clone, Default)]
pub struct StatusUpdate {
    /// `CallSid`.
    pub call_sid: String,
    /// `CallStatus` (`completed`, `busy`, ...), if a call status callback.
    pub call_status: Option<String>,
    /// `StreamEvent`, if a stream status callback.
    pub stream_event: Option<String>,
    /// `CallDuration` in seconds, on `completed`.
    pub duration_secs: Option<u64>,
    /// Every form field as sent.
    pub params: Vec<(String, String)>,
}

impl StatusUpdate {
    /// Whether this update says the call is over.
    #[must_use]
    pub fn is_final(&self) -> bool {
        matches!(self.call_status.as_deref(), Some("completed" | "busy" | "failed" | "no-answer" | "canceled"))
    }
}

/// What the application does with calls.
pub trait CallHandler: Send + Sync + 'static {
    /// Extra `<Parameter>`s for the stream TwiML of this call (short values only).
    fn stream_parameters(&self, call: &IncomingCall) -> Vec<(String, String)> {
        let _ = call;
        Vec::new()
    }

    /// Run one media-stream session to completion: build the pipeline around
    /// [`TwilioSession::output`], then [`serve_call`](super::serve_call).
    fn handle_stream(&self, session: TwilioSession) -> BoxFuture;

    /// A status callback arrived.
    fn handle_status(&self, update: StatusUpdate) -> BoxFuture {
        let _ = update;
        Box::pin(async {})
    }
}

/// Settings of the Twilio routes.
#[derive(Clone)]
pub struct RoutesConfig {
    /// Public base URL Twilio reaches us on, e.g. `https://bot.example.com` (no trailing slash).
    pub public_url: String,
    /// Twilio auth token (validates signatures, derives stream tokens). `None` disables both.
    pub auth_token: Option<String>,
    /// Webhook path.
    pub voice_path: String,
    /// Websocket path.
    pub stream_path: String,
    /// Status callback path.
    pub status_path: String,
    /// Session settings (the stream token secret is filled in from `auth_token`).
    pub params: TwilioParams,
}

impl std::fmt::Debug for RoutesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutesConfig")
            .field("public_url", &self.public_url)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<redacted>"))
            .field("voice_path", &self.voice_path)
            .field("stream_path", &self.stream_path)
            .finish_non_exhaustive()
    }
}

impl RoutesConfig {
    /// Defaults (`/voice/twilio`, `/voice/stream`, `/voice/status`) for `public_url`.
    #[must_use]
    pub fn new(public_url: impl Into<String>, auth_token: Option<String>) -> Self {
        Self {
            public_url: public_url.into().trim_end_matches('/').to_string(),
            auth_token,
            voice_path: "/voice/twilio".into(),
            stream_path: "/voice/stream".into(),
            status_path: "/voice/status".into(),
            params: TwilioParams::default(),
        }
    }

    /// The `wss://` URL of the stream endpoint.
    #[must_use]
    pub fn stream_url(&self) -> String {
        let base = if let Some(rest) = self.public_url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.public_url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.public_url.clone()
        };
        format!("{base}{}", self.stream_path)
    }
}

struct AppState {
    cfg: RoutesConfig,
    handler: Arc<dyn CallHandler>,
}

/// The Twilio routes, ready to merge into the application's router.
pub fn router(mut cfg: RoutesConfig, handler: Arc<dyn CallHandler>) -> Router {
    if cfg.auth_token.is_none() {
        tracing::warn!("no Twilio auth token: webhook signatures and stream tokens are NOT checked");
    }
    cfg.params.stream_token_secret = cfg.auth_token.clone();
    let (voice, stream, status) = (cfg.voice_path.clone(), cfg.stream_path.clone(), cfg.status_path.clone());
    let state = Arc::new(AppState { cfg, handler });
    Router::new()
        .route(&voice, post(voice_webhook))
        .route(&stream, get(stream_upgrade))
        .route(&status, post(status_callback))
        .with_state(state)
}

fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn field<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Check the signature of a form POST; `Err` is the response to send.
fn verify(
    state: &AppState,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<(), Box<Response>> {
    let Some(token) = &state.cfg.auth_token else { return Ok(()) };
    let path_and_query = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let url = format!("{}{}", state.cfg.public_url, path_and_query);
    let sig = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    if signature::validate(token, &url, params, sig) {
        Ok(())
    } else {
        tracing::warn!(url, has_signature = !sig.is_empty(), "rejected request with a bad Twilio signature");
        Err(Box::new((StatusCode::FORBIDDEN, "invalid signature").into_response()))
    }
}

async fn voice_webhook(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = parse_form(&body);
    if let Err(resp) = verify(&state, &uri, &headers, &params) {
        return *resp;
    }
    let call = IncomingCall {
        call_sid: field(&params, "CallSid").unwrap_or_default().to_string(),
        account_sid: field(&params, "AccountSid").unwrap_or_default().to_string(),
        from: field(&params, "From").unwrap_or_default().to_string(),
        to: field(&params, "To").unwrap_or_default().to_string(),
        params: params.clone(),
    };
    if call.call_sid.is_empty() {
        return (StatusCode::BAD_REQUEST, "missing CallSid").into_response();
    }
    tracing::info!(call_sid = %call.call_sid, "incoming call");
    let mut stream_params =
        vec![("callSid".to_string(), call.call_sid.clone()), ("from".to_string(), call.from.clone())];
    if let Some(token) = &state.cfg.auth_token {
        stream_params.push(("token".to_string(), signature::stream_token(token, &call.call_sid)));
    }
    stream_params.extend(state.handler.stream_parameters(&call));
    let twiml = stream_twiml(&state.cfg.stream_url(), &stream_params);
    ([(header::CONTENT_TYPE, "text/xml")], twiml).into_response()
}

/// `<Response><Connect><Stream url=…>` with `<Parameter>` children.
#[must_use]
pub fn stream_twiml(stream_url: &str, params: &[(String, String)]) -> String {
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect>");
    s.push_str(&format!("<Stream url=\"{}\">", xml_escape(stream_url)));
    for (k, v) in params {
        s.push_str(&format!("<Parameter name=\"{}\" value=\"{}\"/>", xml_escape(k), xml_escape(v)));
    }
    s.push_str("</Stream></Connect></Response>");
    s
}

/// Read buffer of a media-stream socket (see `stream_upgrade`).
const READ_BUFFER: usize = 8 * 1024;

async fn stream_upgrade(State(state): State<Arc<AppState>>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    // Twilio signs the handshake over the wss URL; when it is present it must match. The stream
    // token checked at `start` is the binding check either way.
    if let (Some(token), Some(sig)) =
        (&state.cfg.auth_token, headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()))
        && !signature::validate(token, &state.cfg.stream_url(), &[], sig)
    {
        tracing::warn!("rejected stream handshake with a bad Twilio signature");
        return (StatusCode::FORBIDDEN, "invalid signature").into_response();
    }
    let params = state.cfg.params.clone();
    // axum's limit is a backstop for absurd frames; the serializer enforces the real one so the
    // call gets a clean close code.
    let limit = params.max_message_bytes.saturating_mul(4).max(16 * 1024);
    let state2 = state.clone();
    // A small read buffer: tungstenite zero-fills the free part of its read buffer (128 KiB by
    // default) before every socket read, and Twilio's messages are ~400 bytes; larger messages
    // still arrive, over several reads.
    ws.max_message_size(limit).max_frame_size(limit).read_buffer_size(READ_BUFFER).on_upgrade(
        move |socket| async move {
            match transport::accept(socket, params).await {
                Ok(session) => state2.handler.handle_stream(session).await,
                Err(e) => tracing::warn!(error = %e, "twilio stream refused"),
            }
        },
    )
}

async fn status_callback(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = parse_form(&body);
    if let Err(resp) = verify(&state, &uri, &headers, &params) {
        return *resp;
    }
    let update = StatusUpdate {
        call_sid: field(&params, "CallSid").unwrap_or_default().to_string(),
        call_status: field(&params, "CallStatus").map(str::to_string),
        stream_event: field(&params, "StreamEvent").map(str::to_string),
        duration_secs: field(&params, "CallDuration").and_then(|d| d.parse().ok()),
        params: params.clone(),
    };
    tracing::info!(call_sid = %update.call_sid, status = ?update.call_status, stream = ?update.stream_event, "status callback");
    state.handler.handle_status(update).await;
    StatusCode::NO_CONTENT.into_response()
}
