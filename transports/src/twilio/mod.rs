//! Twilio Programmable Voice + Media Streams.
//!
//! - [`serializer`]: wire messages ⇄ typed values (pure, no sockets).
//! - [`transport`]: one websocket paired with one pipeline (input reader, paced output with
//!   marks and `clear`, REST hang-up when the pipeline ends).
//! - [`routes`]: the axum routes (signed webhook → TwiML, stream upgrade, status callback).
//! - [`signature`]: `X-Twilio-Signature` and per-call stream tokens.
//! - [`rest`]: hang-up and transfer through the REST API.

pub mod rest;
pub mod routes;
pub mod serializer;
pub mod signature;
pub mod transport;

pub use rest::{TwilioRest, UpdateOutcome};
pub use routes::{CallHandler, IncomingCall, RoutesConfig, StatusUpdate, router};
pub use serializer::{Inbound, StreamStart};
pub use transport::{EndReason, SessionReport, TwilioParams, TwilioSession, TwilioSink};
