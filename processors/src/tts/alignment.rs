//! Character alignment → word timings, for providers that time characters (ElevenLabs).
//!
//! Chunks carry per-character start times relative to the chunk; the aligner places them on the
//! utterance timeline with the chunk's offset and groups characters into words across chunk
//! boundaries. A word is reported with the chunk in which it completes (its whitespace arrives),
//! so a word split across two chunks is attributed to the second: a cut after the first chunk
//! means the word was not fully heard.

use std::sync::Arc;
use std::time::Duration;

use voxline_pipeline::WordTiming;

/// Groups timed characters into words for one utterance.
#[derive(Debug, Default)]
pub(crate) struct WordAligner {
    partial: Option<(String, Duration, Duration)>,
}

fn ms(x: f64) -> Duration {
    if x.is_finite() && x > 0.0 { Duration::try_from_secs_f64(x / 1000.0).unwrap_or_default() } else { Duration::ZERO }
}

impl WordAligner {
    /// Feeds one chunk: `chars[i]` starts at `offset + starts_ms[i]` and lasts `durations_ms[i]`.
    /// Returns the words completed in this chunk. Unequal arrays are cut to the shortest.
    pub(crate) fn feed(
        &mut self,
        chars: &[String],
        starts_ms: &[f64],
        durations_ms: &[f64],
        offset: Duration,
    ) -> Vec<WordTiming> {
        let mut out = Vec::new();
        for ((c, &s), &d) in chars.iter().zip(starts_ms).zip(durations_ms) {
            if c.trim().is_empty() {
                out.extend(self.finish());
                continue;
            }
            let start = offset + ms(s);
            let end = start + ms(d);
            match &mut self.partial {
                Some((text, _, e)) => {
                    text.push_str(c);
                    *e = end.max(*e);
                }
                None => self.partial = Some((c.clone(), start, end)),
            }
        }
        out
    }

    /// The word still open (text ended without whitespace), if any.
    pub(crate) fn finish(&mut self) -> Option<WordTiming> {
        self.partial.take().map(|(w, start, end)| WordTiming { word: Arc::from(w), start, end })
    }
}

/// Words joined by single spaces (the text a chunk carries).
pub(crate) fn words_text(words: &[WordTiming]) -> String {
    let mut s = String::new();
    for w in words {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&w.word);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<String> {
        s.chars().map(|c| c.to_string()).collect()
    }

    #[test]
    fn groups_across_chunks_with_offsets() {
        let mut a = WordAligner::default();
        // "Hi the" | "re. " with 50 ms per char; the second chunk starts at 300 ms.
        let c1 = chars("Hi the");
        let s1: Vec<f64> = (0..6).map(|i| f64::from(i) * 50.0).collect();
        let w1 = a.feed(&c1, &s1, &[50.0; 6], Duration::ZERO);
        assert_eq!(w1.len(), 1);
        assert_eq!(&*w1[0].word, "Hi");
        assert_eq!(w1[0].start, Duration::ZERO);
        assert_eq!(w1[0].end, Duration::from_millis(100));
        let c2 = chars("re. ");
        let s2: Vec<f64> = (0..4).map(|i| f64::from(i) * 50.0).collect();
        let w2 = a.feed(&c2, &s2, &[50.0; 4], Duration::from_millis(300));
        assert_eq!(w2.len(), 1);
        assert_eq!(&*w2[0].word, "there.");
        assert_eq!(w2[0].start, Duration::from_millis(150));
        assert_eq!(w2[0].end, Duration::from_millis(450));
        assert!(a.finish().is_none());
        assert_eq!(words_text(&[w1[0].clone(), w2[0].clone()]), "Hi there.");
    }

    #[test]
    fn leading_space_trailing_word_and_bad_arrays() {
        let mut a = WordAligner::default();
        let w = a.feed(&chars(" ok go"), &[0.0, 10.0, 20.0, 30.0, 40.0], &[10.0; 6], Duration::ZERO);
        assert_eq!(w.len(), 1);
        assert_eq!(&*w[0].word, "ok");
        // The 6th char has no start time: ignored; "g" stays open.
        let last = a.finish().unwrap();
        assert_eq!(&*last.word, "g");
        assert!(a.feed(&chars("x"), &[f64::NAN], &[-5.0], Duration::ZERO).is_empty());
        assert_eq!(a.finish().unwrap().start, Duration::ZERO);
    }
}
