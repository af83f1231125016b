//! What the caller says: speech cut into ready-to-send `media` payloads, and the script of a
//! caller who talks by itself.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::{CHUNK, CHUNK_BYTES, MULAW_SILENCE};
use voxline_pipeline::g711::mulaw_decode as ulaw_decode;

/// A sample louder than this (16-bit linear) is voice: above the near-silence that espeak-ng and
/// sox leave around speech, well below any spoken syllable.
const VOICED: u16 = 1000;

/// How long the bot must have been quiet before a [`Conversation`] says its next line: longer
/// than the pauses between the bot's sentences, short enough to keep a call brisk.
pub const DEFAULT_QUIET: Duration = Duration::from_millis(400);
/// How long a [`Conversation`] waits for the bot to end the call before giving up.
pub const DEFAULT_CONVERSATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Speech pre-encoded into 20 ms `media` payloads, so a load test encodes each line once for
/// every caller (at 1000 callers that is 50,000 messages a second). The last chunk is padded with
/// silence.
#[derive(Debug, Clone)]
pub struct Speech {
    pub(super) chunks: Arc<[String]>,
    /// Index of the chunk holding the last voiced sample (the last chunk when none is voiced).
    pub(super) voice_end: usize,
}

impl Speech {
    /// Cut μ-law 8 kHz audio into 20 ms chunks.
    #[must_use]
    pub fn from_mulaw(mulaw: &[u8]) -> Self {
        let chunks: Arc<[String]> = mulaw
            .chunks(CHUNK_BYTES)
            .map(|c| {
                let mut c = c.to_vec();
                c.resize(CHUNK_BYTES, MULAW_SILENCE);
                B64.encode(&c)
            })
            .collect();
        let voiced = mulaw.iter().rposition(|b| ulaw_decode(*b).unsigned_abs() > VOICED);
        let voice_end = voiced.map_or(chunks.len().saturating_sub(1), |i| i / CHUNK_BYTES);
        Self { chunks, voice_end }
    }

    /// `duration` of silence.
    #[must_use]
    pub fn silence(duration: Duration) -> Self {
        let n = usize::try_from(duration.as_millis() / CHUNK.as_millis()).unwrap_or(0);
        Self::from_mulaw(&vec![MULAW_SILENCE; n * CHUNK_BYTES])
    }

    /// Number of 20 ms chunks.
    #[must_use]
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Length of the speech.
    #[must_use]
    pub fn duration(&self) -> Duration {
        CHUNK * u32::try_from(self.chunks.len()).unwrap_or(u32::MAX)
    }

    /// Index of the chunk holding the last voiced sample, where [`Said::voice_end`] is taken
    /// (the last chunk when nothing is louder than near-silence).
    ///
    /// [`Said::voice_end`]: super::Said::voice_end
    #[must_use]
    pub fn voice_end_chunk(&self) -> usize {
        self.voice_end
    }
}

/// A caller who talks by itself, turn by turn, the way a person on the phone does: listen to the
/// greeting, hold on for `hold`, then say each line once the bot has answered the previous one
/// and been quiet for `quiet`. Run by [`TwilioCaller::converse`](super::TwilioCaller::converse)
/// inside the socket's own task, so a load test of a thousand callers has one task per caller.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// What the caller says, in order.
    pub lines: Vec<Speech>,
    /// The bot must have spoken since the caller's last line (the greeting, before the first)
    /// and then been quiet this long (every mark echoed, the playback buffer dry) before the next
    /// line.
    pub quiet: Duration,
    /// Extra silence before the first line, once the greeting is over (a load test holds every
    /// call live at once this way).
    pub hold: Duration,
    /// The caller gives up (drops the socket, [`Heard::ended_by_bot`] stays false) if the bot has
    /// not ended the call by then.
    ///
    /// [`Heard::ended_by_bot`]: super::Heard::ended_by_bot
    pub timeout: Duration,
}

impl Conversation {
    /// Say `lines` with [`DEFAULT_QUIET`], no hold and [`DEFAULT_CONVERSATION_TIMEOUT`].
    #[must_use]
    pub fn new(lines: Vec<Speech>) -> Self {
        Self { lines, quiet: DEFAULT_QUIET, hold: Duration::ZERO, timeout: DEFAULT_CONVERSATION_TIMEOUT }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_is_cut_into_padded_chunks() {
        let s = Speech::from_mulaw(&[0u8; 400]);
        assert_eq!(s.chunks(), 3);
        assert_eq!(s.duration(), Duration::from_millis(60));
        let last = B64.decode(s.chunks[2].as_bytes()).expect("b64");
        assert_eq!(last.len(), CHUNK_BYTES);
        assert_eq!(last[79], 0);
        assert_eq!(last[80], MULAW_SILENCE);
        assert_eq!(Speech::silence(Duration::from_millis(100)).chunks(), 5);
    }

    #[test]
    fn voice_ends_at_the_last_loud_sample() {
        // μ-law 0x00 is full scale, 0xFF silence: loud up to byte 200 (chunk 1), then quiet.
        let mut mulaw = vec![0x00u8; 201];
        mulaw.resize(800, MULAW_SILENCE);
        assert_eq!(Speech::from_mulaw(&mulaw).voice_end_chunk(), 1);
        // Nothing voiced: the end of the speech.
        assert_eq!(Speech::silence(Duration::from_millis(100)).voice_end_chunk(), 4);
    }
}
