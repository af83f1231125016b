//! Speech-to-text: streaming recognisers that turn caller audio into [`Frame::Transcript`]s.
//!
//! | processor | provider | transport |
//! |---|---|---|
//! | [`DeepgramStt`] | Deepgram live (`/v1/listen`, Nova models) | WebSocket |
//!
//! The family plumbing (socket task, reconnect with backoff and audio replay, keepalive,
//! `Finalize` on VAD stop with a timeout fallback, TTFB, transcripts that survive barge-in)
//! lives in [`live`]; a provider file only maps frames to wire messages and back.
//!
//! [`Frame::Transcript`]: voxline_pipeline::Frame::Transcript

pub mod deepgram;
mod deepgram_protocol;
pub mod live;

use std::time::Duration;

pub use deepgram::{DeepgramSettings, DeepgramStt, Endpointing};
pub(crate) use deepgram_protocol::encode_query_value;
pub use live::{LiveSettings, SttCounters, SttStats};

/// Environment variable the Deepgram key is read from by [`DeepgramSettings::from_env`].
pub const DEEPGRAM_API_KEY_ENV: &str = "DEEPGRAM_API_KEY";

/// Why an STT processor could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SttError {
    /// No API key was configured.
    #[error("missing API key: set the {env_var} environment variable or `api_key` in the settings")]
    MissingApiKey {
        /// The environment variable that holds the key.
        env_var: &'static str,
    },
    /// A setting is out of range or malformed.
    #[error("invalid setting `{field}`: {reason}")]
    InvalidSetting {
        /// Settings field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Default first reconnect delay.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Default cap on the reconnect delay.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Default number of consecutive permanent (4xx) handshake failures before giving up: a bad key
/// or parameter does not fix itself, and hammering the provider gets the account throttled.
pub const DEFAULT_MAX_PERMANENT_FAILURES: u32 = 3;

/// How a provider socket is re-established after it drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Delay before the first retry; doubled on every consecutive failure.
    pub initial_backoff: Duration,
    /// Upper bound on the delay.
    pub max_backoff: Duration,
    /// Consecutive handshake rejections with a 4xx status (other than 408/429) after which the
    /// service is marked unusable and stops retrying.
    pub max_permanent_failures: u32,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_permanent_failures: DEFAULT_MAX_PERMANENT_FAILURES,
        }
    }
}

/// Exponential backoff state for one [`ReconnectPolicy`].
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    failures: u32,
    permanent: u32,
}

impl Backoff {
    pub(crate) fn new(policy: ReconnectPolicy) -> Self {
        Self { policy, failures: 0, permanent: 0 }
    }

    /// Delay before the next attempt; advances the state.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let shift = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        self.policy.initial_backoff.saturating_mul(1 << shift).min(self.policy.max_backoff)
    }

    /// Record a permanent failure; `true` when the policy says to give up.
    pub(crate) fn permanent_failure(&mut self) -> bool {
        self.permanent = self.permanent.saturating_add(1);
        self.permanent >= self.policy.max_permanent_failures.max(1)
    }

    /// A connection worked: start over.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
        self.permanent = 0;
    }
}

/// Whether a handshake HTTP status means retrying will not help.
pub(crate) fn is_permanent_status(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            max_permanent_failures: 2,
        });
        let d: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
        assert!(!b.permanent_failure());
        assert!(b.permanent_failure());
    }

    #[test]
    fn permanent_statuses() {
        assert!(is_permanent_status(401));
        assert!(is_permanent_status(400));
        assert!(!is_permanent_status(429));
        assert!(!is_permanent_status(408));
        assert!(!is_permanent_status(503));
    }
}
