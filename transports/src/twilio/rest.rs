//! A minimal Twilio REST client: hang up and redirect a live call.
//!
//! Only the call-update endpoint is needed (`POST …/Calls/{CallSid}.json`). A call that is already
//! gone (404 / code 20404, or 21220 "not in-progress") counts as success: the caller hanging up
//! first is the normal race at the end of a call. 429 is retried with a short backoff.

use std::time::Duration;

/// Default REST base URL.
pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";

/// Why a REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// Network or TLS failure.
    #[error("twilio request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// Twilio answered with an error.
    #[error("twilio returned {status} (code {code:?}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Twilio error code, if the body had one.
        code: Option<i64>,
        /// Message from the body.
        message: String,
    },
}

/// What a call update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Twilio accepted the update.
    Updated,
    /// The call had already ended; nothing to do.
    AlreadyEnded,
}

/// Credentials and base URL for the REST API.
#[derive(Clone)]
pub struct TwilioRest {
    http: reqwest::Client,
    api_base: String,
    account_sid: String,
    auth_token: String,
}

impl std::fmt::Debug for TwilioRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The auth token is a secret: never in logs.
        f.debug_struct("TwilioRest").field("api_base", &self.api_base).field("account_sid", &self.account_sid).finish()
    }
}

impl TwilioRest {
    /// A client for `api_base` (e.g. [`DEFAULT_API_BASE`] or an emulator).
    #[must_use]
    pub fn new(api_base: impl Into<String>, account_sid: impl Into<String>, auth_token: impl Into<String>) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        Self {
            http,
            api_base: api_base.into().trim_end_matches('/').to_string(),
            account_sid: account_sid.into(),
            auth_token: auth_token.into(),
        }
    }

    /// End the call (`Status=completed`).
    pub async fn hang_up(&self, call_sid: &str) -> Result<UpdateOutcome, RestError> {
        self.update(call_sid, &[("Status", "completed")]).await
    }

    /// Replace the call's TwiML (e.g. a `<Dial>` transfer); ends the media stream.
    pub async fn redirect_twiml(&self, call_sid: &str, twiml: &str) -> Result<UpdateOutcome, RestError> {
        self.update(call_sid, &[("Twiml", twiml)]).await
    }

    /// Transfer the call to `number` with `<Dial>`.
    pub async fn transfer(&self, call_sid: &str, number: &str, say: Option<&str>) -> Result<UpdateOutcome, RestError> {
        self.redirect_twiml(call_sid, &dial_twiml(number, say)).await
    }

    async fn update(&self, call_sid: &str, form: &[(&str, &str)]) -> Result<UpdateOutcome, RestError> {
        let url = format!("{}/2010-04-01/Accounts/{}/Calls/{}.json", self.api_base, self.account_sid, call_sid);
        let mut attempt = 0u32;
        loop {
            let resp =
                self.http.post(&url).basic_auth(&self.account_sid, Some(&self.auth_token)).form(form).send().await?;
            let status = resp.status().as_u16();
            if resp.status().is_success() {
                return Ok(UpdateOutcome::Updated);
            }
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            let code = body.get("code").and_then(serde_json::Value::as_i64);
            if status == 404 || matches!(code, Some(20404 | 21220)) {
                tracing::debug!(call_sid, status, ?code, "call already ended");
                return Ok(UpdateOutcome::AlreadyEnded);
            }
            if status == 429 && attempt < 3 {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                continue;
            }
            let message = body.get("message").and_then(serde_json::Value::as_str).unwrap_or("").to_string();
            return Err(RestError::Api { status, code, message });
        }
    }
}

/// Escape text for XML attribute and element content.
#[must_use]
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `<Response>[<Say>…</Say>]<Dial>number</Dial></Response>`.
#[must_use]
pub fn dial_twiml(number: &str, say: Option<&str>) -> String {
    let say = say.map(|s| format!("<Say>{}</Say>", xml_escape(s))).unwrap_or_default();
    format!("<Response>{say}<Dial>{}</Dial></Response>", xml_escape(number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twiml() {
        assert_eq!(dial_twiml("+1555", None), "<Response><Dial>+1555</Dial></Response>");
        assert_eq!(dial_twiml("a<b", Some("x&y")), "<Response><Say>x&amp;y</Say><Dial>a&lt;b</Dial></Response>");
    }

    #[test]
    fn debug_hides_token() {
        let r = TwilioRest::new("http://x", "AC1", "supersecret");
        assert!(!format!("{r:?}").contains("supersecret"));
    }
}
