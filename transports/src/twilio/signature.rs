//! `X-Twilio-Signature` validation (HMAC-SHA1 over the URL and the sorted form parameters).
//!
//! The signature is computed over the *public* URL Twilio requested, so the caller passes the
//! configured public base URL, not whatever the local listener sees (proxies, ngrok). Twilio may
//! or may not have included a default port (`:443`/`:80`) in what it signed; like the official
//! libraries we accept either form. Comparison is constant-time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// `base64(HMAC-SHA1(auth_token, url + sorted(name + value)...))`.
#[must_use]
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // Byte order on names, then values, so repeated names are deterministic as Twilio signs them.
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then_with(|| a.1.as_bytes().cmp(b.1.as_bytes())));
    let mut msg = String::with_capacity(url.len() + 64 * sorted.len());
    msg.push_str(url);
    for (k, v) in sorted {
        msg.push_str(k);
        msg.push_str(v);
    }
    B64.encode(mac(auth_token, msg.as_bytes()))
}

fn mac(key: &str, msg: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail; an empty tag would never validate.
    match HmacSha1::new_from_slice(key.as_bytes()) {
        Ok(mut m) => {
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Constant-time equality of two byte strings (length is not secret).
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `signature` is valid for `url` and `params`, accepting the URL with the default port
/// added or removed.
#[must_use]
pub fn validate(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    if auth_token.is_empty() || signature.is_empty() {
        return false;
    }
    let mut ok = false;
    // Evaluate every variant so the time taken does not reveal which one matched.
    for candidate in url_variants(url) {
        ok |= constant_time_eq(compute(auth_token, &candidate, params).as_bytes(), signature.as_bytes());
    }
    ok
}

/// `url` as given, with its scheme's default port removed, and with it added.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else { return out };
    let default_port = match scheme {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => return out,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if let Some(host) = authority.strip_suffix(&format!(":{default_port}")) {
        out.push(format!("{scheme}://{host}{path}"));
    } else if !authority.contains(':') {
        out.push(format!("{scheme}://{authority}:{default_port}{path}"));
    }
    out
}

/// A one-time stream token bound to a call: handed to Twilio as a `<Parameter>` in the TwiML and
/// checked when `start` arrives, so a websocket client that never went through the signed webhook
/// cannot open a session. Stateless: derived from the auth token and the call SID.
#[must_use]
pub fn stream_token(auth_token: &str, call_sid: &str) -> String {
    let tag = mac(auth_token, format!("voxline-stream:{call_sid}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
}

/// Whether `token` is the [`stream_token`] for `call_sid`.
#[must_use]
pub fn check_stream_token(auth_token: &str, call_sid: &str, token: &str) -> bool {
    constant_time_eq(stream_token(auth_token, call_sid).as_bytes(), token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    /// The example from Twilio's security documentation.
    #[test]
    fn twilio_docs_example() {
        let token = "12345";
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = vec![
            p("CallSid", "CA1234567890ABCDE"),
            p("Caller", "+12349013030"),
            p("Digits", "1234"),
            p("From", "+12349013030"),
            p("To", "+18005551212"),
        ];
        assert_eq!(compute(token, url, &params), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(validate(token, url, &params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        assert!(!validate(token, url, &params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ"));
        assert!(!validate("other", url, &params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        assert!(!validate(token, url, &params[1..], "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
        assert!(!validate(token, url, &params, ""));
    }

    #[test]
    fn port_quirk() {
        let params = vec![p("CallSid", "CA1")];
        let sig = compute("tok", "https://bot.example.com:443/voice/twilio", &params);
        assert!(validate("tok", "https://bot.example.com/voice/twilio", &params, &sig));
        let sig = compute("tok", "https://bot.example.com/voice/twilio", &params);
        assert!(validate("tok", "https://bot.example.com:443/voice/twilio", &params, &sig));
        assert!(!validate("tok", "https://bot.example.com:8443/voice/twilio", &params, &sig));
    }

    #[test]
    fn stream_tokens() {
        let t = stream_token("secret", "CA1");
        assert!(check_stream_token("secret", "CA1", &t));
        assert!(!check_stream_token("secret", "CA2", &t));
        assert!(!check_stream_token("other", "CA1", &t));
    }
}
