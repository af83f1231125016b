//! Twilio Programmable Voice + Media Streams.
//!
//! - [`serializer`]: wire messages ⇄ typed values (pure, no sockets).
//! - [`transport`]: accepting a stream (`connected`, `start`, token check) and the output sink
//!   (paced `media`, a `mark` per utterance, `clear` on interruption).
//! - [`serve`]: [`serve_call`], one call served to its end: caller input in, marks turned into
//!   play-out reports, drain then hang-up when the bot ends, `End` when the caller leaves.
//! - [`routes`]: the axum routes (signed webhook → TwiML, stream upgrade, status callback).
//! - [`signature`]: `X-Twilio-Signature` and per-call stream tokens.
//! - [`rest`]: hang-up and transfer through the REST API.

pub mod rest;
pub mod routes;
pub mod serializer;
pub mod serve;
pub mod signature;
pub mod transport;

pub use rest::{TwilioRest, UpdateOutcome};
pub use routes::{CallHandler, IncomingCall, RoutesConfig, StatusUpdate, router};
pub use serializer::{Inbound, StreamStart};
pub use serve::{CallReport, EndReason, serve_call};
pub use transport::{TwilioError, TwilioParams, TwilioSession, TwilioSink, accept};
