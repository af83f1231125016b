//! # voxline-transports
//!
//! Transports connect a pipeline to the outside world. Each is a pure serializer (wire message ⇄
//! frames, unit-tested without sockets) plus a transport that pairs an input reader with the
//! engine's paced [`AudioOutput`](voxline_pipeline::clock::AudioOutput) over a socket.
//!
//! | module | what |
//! |---|---|
//! | [`twilio`] (feature `twilio`, default) | Twilio Media Streams: signed webhook + TwiML, websocket, marks, `clear`, DTMF, REST hang-up/transfer |
//! | [`websocket`] | generic websocket for browsers/apps: PCM16 binary frames + JSON control |
//! | [`wav`] | WAV file in (paced or as fast as possible) and WAV file out, for offline runs and tests |

#[cfg(feature = "twilio")]
pub mod twilio;
pub mod wav;
pub mod websocket;
