//! A small, strict Server-Sent Events decoder.
//!
//! Consumes raw body bytes in whatever pieces TCP delivers them; produces [`SseEvent`]s. Lines
//! may end in `\n`, `\r\n` or `\r` (a `\r\n` split across two reads is handled), partial lines
//! are kept across reads, several events may arrive in one read, `:` comments (keep-alives) are
//! skipped, multi-line `data:` is joined with `\n`.
//!
//! Why written here rather than taken from `reqwest-eventsource`: not for its retries or its
//! errors (its reconnects can be turned off with `retry::Never`, and a refused request comes back
//! as `InvalidStatusCode` with the response, body included), but because its decoder buffers a
//! line until the line ends, with no cap. A hostile or broken server that never sends a newline
//! would grow a call's memory without bound; here a line (or one event's data) longer than
//! [`DEFAULT_MAX_LINE_BYTES`] is a typed [`SseError`] that ends the turn, and a malformed line
//! is reported as such. It needs nothing beyond `std`.

/// Default cap on one line (and on one event's data), in bytes.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, if the server sent one (Anthropic does, OpenAI does not).
    pub event: Option<String>,
    /// The `data:` payload, lines joined with `\n`.
    pub data: String,
    /// The `id:` field, if any.
    pub id: Option<String>,
}

/// Why a stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line was not valid UTF-8.
    #[error("SSE line is not valid UTF-8")]
    InvalidUtf8,
    /// A line or event exceeded the size cap.
    #[error("SSE line or event longer than {limit} bytes")]
    TooLong {
        /// The cap.
        limit: usize,
    },
}

/// Incremental SSE decoder. Feed bytes with [`feed`](Self::feed).
#[derive(Debug, Clone)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    last_was_cr: bool,
    max_line: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE_BYTES)
    }
}

impl SseDecoder {
    /// A decoder with a line/event size cap of `max_line` bytes.
    #[must_use]
    pub fn new(max_line: usize) -> Self {
        Self {
            line: Vec::with_capacity(512),
            data: String::new(),
            has_data: false,
            event: None,
            id: None,
            last_was_cr: false,
            max_line,
        }
    }

    /// Decode `bytes`, calling `on_event` for every complete event.
    pub fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(SseEvent)) -> Result<(), SseError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.last_was_cr && rest[0] == b'\n' {
                rest = &rest[1..];
                self.last_was_cr = false;
                continue;
            }
            self.last_was_cr = false;
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.line.extend_from_slice(&rest[..i]);
                    self.last_was_cr = rest[i] == b'\r';
                    rest = &rest[i + 1..];
                    self.end_line(&mut on_event)?;
                }
                None => {
                    self.line.extend_from_slice(rest);
                    rest = &[];
                }
            }
            if self.line.len() > self.max_line {
                return Err(SseError::TooLong { limit: self.max_line });
            }
        }
        Ok(())
    }

    /// Whether part of an event has been received but not dispatched (a cut stream).
    #[must_use]
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(SseEvent)) -> Result<(), SseError> {
        if self.line.is_empty() {
            if self.has_data {
                let ev =
                    SseEvent { event: self.event.take(), data: std::mem::take(&mut self.data), id: self.id.clone() };
                self.has_data = false;
                on_event(ev);
            } else {
                self.event = None;
            }
            return Ok(());
        }
        let line = std::str::from_utf8(&self.line).map_err(|_| SseError::InvalidUtf8)?;
        if line.starts_with(':') {
            self.line.clear();
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                if self.data.len() > self.max_line {
                    return Err(SseError::TooLong { limit: self.max_line });
                }
            }
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
        self.line.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for p in pieces {
            d.feed(p, |e| out.push(e)).unwrap();
        }
        out
    }

    #[test]
    fn line_endings_and_splits() {
        let whole = b"data: a\n\nevent: x\r\ndata: b\r\ndata: c\r\n\r\n: keepalive\rdata:d\r\r";
        let expected = vec![
            SseEvent { data: "a".into(), ..SseEvent::default() },
            SseEvent { event: Some("x".into()), data: "b\nc".into(), ..SseEvent::default() },
            SseEvent { data: "d".into(), ..SseEvent::default() },
        ];
        assert_eq!(decode(&[whole]), expected);
        // Every split point, including inside "\r\n".
        for cut in 0..whole.len() {
            assert_eq!(decode(&[&whole[..cut], &whole[cut..]]), expected, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(decode(&bytes), expected);
    }

    #[test]
    fn partial_and_errors() {
        let mut d = SseDecoder::default();
        d.feed(b"data: {\"a\":", |_| panic!("no event yet")).unwrap();
        assert!(d.has_partial());
        let mut d = SseDecoder::new(8);
        assert_eq!(d.feed(b"data: 0123456789", |_| {}), Err(SseError::TooLong { limit: 8 }));
        let mut d = SseDecoder::default();
        assert_eq!(d.feed(b"data: \xff\n", |_| {}), Err(SseError::InvalidUtf8));
    }

    #[test]
    fn event_name_without_data_is_not_dispatched() {
        assert_eq!(
            decode(&[b"event: ping\n\ndata: x\n\n"]),
            vec![SseEvent { data: "x".into(), ..SseEvent::default() }]
        );
    }
}
