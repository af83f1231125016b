//! What a simulated caller heard and did: the record a test or a load run reads afterwards.

use std::time::Duration;

use super::CHUNK;

/// Gap between two bot media messages that starts a new run for [`JitterMeter`]: longer than any
/// pause inside an utterance, shorter than the turn gaps between utterances.
const RUN_GAP: Duration = Duration::from_millis(200);

/// One message from the bot, as the caller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotMessage {
    /// `media` with this many bytes of μ-law.
    Media(usize),
    /// `mark` with this name.
    Mark(String),
    /// `clear`.
    Clear,
    /// The bot closed the socket (close code, if any).
    Closed(Option<u16>),
}

/// One line the caller said ([`TwilioCaller::say`](super::TwilioCaller::say) or a
/// [`Conversation`](super::Conversation)), on the [`Heard`] clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Said {
    /// When its first chunk was sent.
    pub started: Duration,
    /// When the chunk holding its last voiced sample was sent: the caller stopped talking there,
    /// so the bot's turn latency as a caller feels it starts here, not at the trailing silence.
    pub voice_end: Option<Duration>,
    /// When its last chunk was sent.
    pub ended: Option<Duration>,
    /// From `voice_end` to the first bot `media` after it, if one came before the caller said
    /// anything else (a later answer would belong to another turn).
    pub answer: Option<Duration>,
}

/// Everything the caller heard and did, with times since it connected.
#[derive(Debug, Clone, Default)]
pub struct Heard {
    /// Every message from the bot, in arrival order (only with
    /// [`CallerOptions::record_timeline`](super::CallerOptions::record_timeline)).
    pub timeline: Vec<(Duration, BotMessage)>,
    /// The bot's μ-law audio, concatenated (only with
    /// [`CallerOptions::record_audio`](super::CallerOptions::record_audio)).
    pub audio: Vec<u8>,
    /// Audio bytes received.
    pub audio_bytes: usize,
    /// `media` messages received.
    pub media_messages: u64,
    /// Arrival of the bot's latest `media`; kept without the timeline, for quiet detection.
    pub last_media_at: Option<Duration>,
    /// Marks received, in order.
    pub marks: Vec<String>,
    /// Marks echoed back, in order.
    pub echoed: Vec<String>,
    /// `clear` messages received.
    pub clears: u64,
    /// When the simulated playback buffer runs (ran) dry: the bot's audio has all been heard by
    /// then, unless a `clear` cut it.
    pub playback_end: Duration,
    /// Outbound jitter, measured as the media arrives (so a load test needs no timeline):
    /// |inter-arrival − 20 ms| after the first
    /// [`CallerOptions::jitter_skip`](super::CallerOptions::jitter_skip) messages of each run.
    pub jitter: Vec<Duration>,
    /// Messages Twilio would reject, described.
    pub protocol_errors: Vec<String>,
    /// The close: code from the bot (`None` if the socket just ended, or the bot never answered
    /// the caller's own close) and when.
    pub closed: Option<(Option<u16>, Duration)>,
    /// The bot closed the socket (or it dropped) while the caller was on the line: the bot ended
    /// the call, as opposed to the caller hanging up and giving up on waiting.
    pub ended_by_bot: bool,
    /// When each `media` message from the caller was sent (only with
    /// [`CallerOptions::record_timeline`](super::CallerOptions::record_timeline)).
    pub sent_media: Vec<Duration>,
    /// The lines the caller said, in order.
    pub said: Vec<Said>,
    /// Key presses sent.
    pub sent_dtmf: Vec<char>,
    /// `stop` was sent.
    pub sent_stop: bool,
}

impl Heard {
    /// Arrival time of the first bot `media` at or after `t`.
    #[must_use]
    pub fn first_media_after(&self, t: Duration) -> Option<Duration> {
        self.media_times().find(|at| *at >= t)
    }

    /// Arrival time of the first `clear` at or after `t`.
    #[must_use]
    pub fn first_clear_after(&self, t: Duration) -> Option<Duration> {
        self.clear_times().find(|at| *at >= t)
    }

    /// Arrival times of the bot's `media` messages, from the timeline.
    pub fn media_times(&self) -> impl Iterator<Item = Duration> + '_ {
        self.timeline.iter().filter(|(_, m)| matches!(m, BotMessage::Media(_))).map(|(at, _)| *at)
    }

    /// Arrival times of the bot's `clear` messages, from the timeline.
    pub fn clear_times(&self) -> impl Iterator<Item = Duration> + '_ {
        self.timeline.iter().filter(|(_, m)| matches!(m, BotMessage::Clear)).map(|(at, _)| *at)
    }

    /// Arrival time of the last bot `media`.
    #[must_use]
    pub fn last_media(&self) -> Option<Duration> {
        self.last_media_at
    }

    /// Milliseconds of bot audio received (μ-law 8 kHz: 8 bytes a millisecond).
    #[must_use]
    pub fn bot_audio_ms(&self) -> u64 {
        self.audio_bytes as u64 / 8
    }

    /// Outbound jitter recomputed from the timeline with another burst length than
    /// [`Heard::jitter`]'s: |inter-arrival − 20 ms| of the bot's media, skipping the first
    /// `burst` messages of each run (the send-ahead arrives at once); a gap over 200 ms starts a
    /// run.
    #[must_use]
    pub fn media_jitter(&self, burst: usize) -> Vec<Duration> {
        let mut meter = JitterMeter::new(burst);
        self.media_times().filter_map(|at| meter.on_media(at)).collect()
    }

    /// Marks received and not echoed (still playing, or echo turned off).
    #[must_use]
    pub fn unechoed_marks(&self) -> Vec<&str> {
        self.marks.iter().filter(|m| !self.echoed.contains(m)).map(String::as_str).collect()
    }
}

/// Jitter of the bot's media, one arrival at a time: one implementation for the live
/// [`Heard::jitter`] and the replay in [`Heard::media_jitter`].
#[derive(Debug, Clone, Copy)]
pub(super) struct JitterMeter {
    skip: usize,
    prev: Option<Duration>,
    /// Messages of the current run so far, less its first.
    run: usize,
}

impl JitterMeter {
    pub(super) fn new(skip: usize) -> Self {
        Self { skip, prev: None, run: 0 }
    }

    /// The jitter sample of a message arriving at `at`, if it is past the burst of its run.
    pub(super) fn on_media(&mut self, at: Duration) -> Option<Duration> {
        let sample = match self.prev {
            Some(p) if at.saturating_sub(p) < RUN_GAP => {
                let s = (self.run >= self.skip).then(|| at.saturating_sub(p).abs_diff(CHUNK));
                self.run += 1;
                s
            }
            _ => {
                self.run = 0;
                None
            }
        };
        self.prev = Some(at);
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_skips_the_burst() {
        let ms = Duration::from_millis;
        let h = Heard {
            timeline: [0, 0, 0, 20, 45, 60, 1000, 1000].iter().map(|t| (ms(*t), BotMessage::Media(160))).collect(),
            ..Heard::default()
        };
        // Runs: 0..60 (6 messages), then 1000.. (2). Skipping 2 per run.
        assert_eq!(h.media_jitter(2), vec![ms(0), ms(5), ms(5)]);
    }
}
