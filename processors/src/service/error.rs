//! [`ServiceConfigError`]: why a provider service could not be built.

/// Why a provider service (STT, LLM, TTS) could not be built from its settings. Every variant
/// names what to fix: the environment variable, the settings field, or the client.
///
/// One type for every family because the failures are the same (a key is missing, a setting is
/// out of range); an application that builds a whole pipeline handles them in one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceConfigError {
    /// No API key was configured and the environment variable is unset or blank.
    #[error("missing API key: set the {env_var} environment variable or `api_key` in the settings")]
    MissingApiKey {
        /// The environment variable that holds the key.
        env_var: String,
    },
    /// A setting is out of range or malformed (a base URL that does not parse is one).
    #[error("invalid setting `{field}`: {reason}")]
    InvalidSetting {
        /// Settings field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (TLS backend, system configuration).
    #[error("HTTP client: {0}")]
    Client(String),
}
