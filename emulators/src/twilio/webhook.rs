//! The voice webhook from Twilio's side: the form an incoming call posts, and the TwiML answer
//! read back into the stream URL and `<Parameter>`s the caller then sends in `start`.

use super::{CallerError, DEFAULT_ACCOUNT_SID};

/// What the voice webhook answered: where to open the media stream and the `<Parameter>`s that
/// Twilio would send back in `start.customParameters`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// `<Stream url="…">`.
    pub stream_url: String,
    /// `<Parameter name value>` pairs, in order.
    pub parameters: Vec<(String, String)>,
}

/// The form fields Twilio posts to the voice webhook for an incoming call (sign these).
#[must_use]
pub fn incoming_call_form(call_sid: &str, from: &str, to: &str) -> Vec<(String, String)> {
    [
        ("AccountSid", DEFAULT_ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", from),
        ("To", to),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
    .collect()
}

/// POST the voice webhook at `voice_url` with `form` (see [`incoming_call_form`]) and read the
/// TwiML. `signature` is sent as `X-Twilio-Signature` (computed by the test over `voice_url` and
/// `form`; the emulator does not sign, so it never shares the code under test).
pub async fn ring(
    http: &reqwest::Client,
    voice_url: &str,
    form: &[(String, String)],
    signature: Option<&str>,
) -> Result<Answer, CallerError> {
    let mut req = http.post(voice_url).form(form);
    if let Some(sig) = signature {
        req = req.header("X-Twilio-Signature", sig);
    }
    let resp = req.send().await.map_err(|e| CallerError::Webhook(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(CallerError::Webhook(format!("answered {}", resp.status())));
    }
    let twiml = resp.text().await.map_err(|e| CallerError::Webhook(e.to_string()))?;
    parse_twiml(&twiml)
}

/// The `<Stream url>` and `<Parameter>`s of a `<Connect><Stream>` TwiML document.
pub fn parse_twiml(twiml: &str) -> Result<Answer, CallerError> {
    let stream = element(twiml, "Stream").ok_or_else(|| CallerError::Twiml(twiml.chars().take(200).collect()))?;
    let stream_url = attribute(stream, "url").ok_or_else(|| CallerError::Twiml(stream.to_string()))?;
    let mut parameters = Vec::new();
    let mut rest = twiml;
    while let Some(tag) = element(rest, "Parameter") {
        if let (Some(name), Some(value)) = (attribute(tag, "name"), attribute(tag, "value")) {
            parameters.push((name, value));
        }
        // `tag` is a slice of `rest`: go on after it.
        let offset = tag.as_ptr() as usize - rest.as_ptr() as usize + tag.len();
        rest = &rest[offset..];
    }
    Ok(Answer { stream_url, parameters })
}

/// The text of the first `<name …>` tag (attributes included, brackets excluded).
fn element<'a>(doc: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}");
    let mut from = 0;
    while let Some(i) = doc[from..].find(&open) {
        let start = from + i + 1;
        let after = doc[start + name.len()..].chars().next();
        // `<Stream` must not match `<StreamX`.
        if after.is_some_and(|c| c.is_whitespace() || c == '/' || c == '>') {
            let end = doc[start..].find('>')? + start;
            return Some(doc[start..end].trim_end_matches('/'));
        }
        from = start;
    }
    None
}

/// An attribute of a tag, XML-unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    for quote in ['"', '\''] {
        let key = format!(" {name}={quote}");
        if let Some(i) = tag.find(&key) {
            let start = i + key.len();
            let end = tag[start..].find(quote)? + start;
            return Some(xml_unescape(&tag[start..end]));
        }
    }
    None
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&apos;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twiml_stream_and_parameters() {
        let twiml = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://h/voice/stream"><Parameter name="callSid" value="CA1"/><Parameter name="from" value="+1 &amp; &quot;x&quot;"/></Stream></Connect></Response>"#;
        let a = parse_twiml(twiml).expect("twiml");
        assert_eq!(a.stream_url, "wss://h/voice/stream");
        assert_eq!(
            a.parameters,
            vec![("callSid".to_string(), "CA1".to_string()), ("from".to_string(), "+1 & \"x\"".to_string())]
        );
        assert!(parse_twiml("<Response><Say>hi</Say></Response>").is_err());
        assert!(parse_twiml("<Response><Streamer url=\"x\"/></Response>").is_err());
    }
}
