//! [`ReconnectPolicy`] and its [`Backoff`] state: how a provider socket is re-established.

use std::time::Duration;

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

/// `initial · 2^attempt`, capped at `max`: the one backoff formula (sockets and LLM retries).
/// The exponent is capped too, so a long outage cannot overflow the shift.
pub(crate) fn exponential_delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    initial.saturating_mul(1u32 << attempt.min(16)).min(max)
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
        let d = exponential_delay(self.policy.initial_backoff, self.policy.max_backoff, self.failures);
        self.failures = self.failures.saturating_add(1);
        d
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
        let huge = exponential_delay(Duration::from_secs(1), Duration::MAX, u32::MAX);
        assert_eq!(huge, Duration::from_secs(1 << 16));
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
