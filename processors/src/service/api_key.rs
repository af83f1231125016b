//! [`ApiKey`]: a provider secret that never reaches a log.

/// An API key. Its `Debug` output is redacted so settings can be logged; read it with
/// [`expose`](Self::expose) only where it goes on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wrap a key.
    #[must_use]
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key from environment variable `var`, trimmed; `None` when unset or blank.
    #[must_use]
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).map(Self)
    }

    /// The key itself.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the key is empty or only whitespace (which no provider accepts).
    #[must_use]
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl From<&str> for ApiKey {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<String> for ApiKey {
    fn from(s: String) -> Self {
        Self(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = ApiKey::new("secret123");
        assert!(!format!("{k:?}").contains("secret123"));
        assert!(ApiKey::new("  ").is_blank());
        assert_eq!(ApiKey::from_env("VOXLINE_TEST_SURELY_UNSET_KEY"), None);
    }
}
