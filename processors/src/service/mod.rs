//! Plumbing every provider service shares, in one place: the API key, the error a service's
//! constructor returns, the reconnect policy with its backoff, and URL query encoding.
//!
//! | item | what | used by |
//! |---|---|---|
//! | [`ApiKey`] | a secret whose `Debug` is redacted; read from settings or an env var | `stt`, `tts`, `llm` |
//! | [`ServiceConfigError`] | why a provider service could not be built | every provider constructor |
//! | [`ReconnectPolicy`] | exponential backoff and when to give up on a provider socket | STT and TTS sockets; its delay formula also paces LLM retries |
//!
//! Why here and not in a family: the families sit side by side (TTS must not import from STT to
//! reconnect), and a provider file should find its plumbing one level up, not in a sibling.
//! Runtime failures are not in this error type: once a pipeline runs, a provider failure is an
//! [`Event::Error`](voxline_pipeline::Event::Error) and the family's policy decides what follows
//! (reconnect, fallback line), so a call never ends on a `Result`.

// Every provider feature uses part of this plumbing; a build with only some of them leaves the
// rest unused, which is fine.
#![cfg_attr(
    not(all(feature = "deepgram", feature = "openai", feature = "anthropic", feature = "elevenlabs")),
    allow(dead_code, unused_imports)
)]

mod api_key;
mod error;
mod reconnect;

pub use api_key::ApiKey;
pub use error::ServiceConfigError;
pub(crate) use reconnect::{Backoff, exponential_delay, is_permanent_status};
pub use reconnect::{DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_PERMANENT_FAILURES, ReconnectPolicy};

/// `Ok` when a key is configured and not blank, else `MissingApiKey` naming `env_var`.
pub(crate) fn require_key(key: Option<&ApiKey>, env_var: &str) -> Result<(), ServiceConfigError> {
    match key {
        Some(k) if !k.is_blank() => Ok(()),
        _ => Err(ServiceConfigError::MissingApiKey { env_var: env_var.to_string() }),
    }
}

/// `Ok` when `url` starts with one of `schemes` (e.g. `["ws://", "wss://"]`), else an
/// `InvalidSetting` for `field` that lists them.
pub(crate) fn require_scheme(field: &'static str, url: &str, schemes: &[&str]) -> Result<(), ServiceConfigError> {
    if schemes.iter().any(|s| url.starts_with(s)) {
        return Ok(());
    }
    Err(ServiceConfigError::InvalidSetting { field, reason: format!("must start with {}", schemes.join(" or ")) })
}

/// Percent-encodes a URL query value (RFC 3986 unreserved characters pass through): provider
/// handshakes carry settings such as voice ids and models in the query string.
pub(crate) fn encode_query_value(v: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query_value("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode_query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
