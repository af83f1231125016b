//! [`SentenceSplitter`]: the pure, incremental sentence-boundary finder behind
//! [`SentenceAggregator`](super::SentenceAggregator).
//!
//! Consumes streamed text pieces (LLM tokens), produces speakable chunks. It only decides at a
//! terminator once it has seen the character after it, so `3.` followed later by `14` is never
//! split, and it rescans only the unseen tail of its buffer, so the cost per token is proportional
//! to the token, not to the sentence.
//!
//! Trade-offs: the rules are heuristics for English phone speech. Title abbreviations (`Mr.`,
//! `Dr.`, `e.g.`) never end a sentence; abbreviations that often do (`etc.`, `a.m.`, `U.S.`) end
//! one only when the next word starts with a capital letter, so "in the U.S. Army" splits (a
//! harmless pause) while "at 10 a.m. tomorrow" does not. Over-long run-on text is cut at the
//! last clause break or space so TTS never waits for a sentence that does not end.

/// Default cap on a chunk without a sentence boundary, in bytes.
pub const DEFAULT_MAX_CHARS: usize = 300;

/// Settings of a [`SentenceSplitter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitterSettings {
    /// Cut a chunk without a boundary once the buffer exceeds this many bytes.
    pub max_chars: usize,
    /// Treat a line break as a boundary (lists and paragraphs read better as separate chunks).
    pub split_on_newline: bool,
    /// Remove markdown emphasis, code ticks, heading marks and bullets that TTS would read aloud.
    pub strip_markdown: bool,
}

impl Default for SplitterSettings {
    fn default() -> Self {
        Self { max_chars: DEFAULT_MAX_CHARS, split_on_newline: true, strip_markdown: true }
    }
}

/// Abbreviations that never end a sentence (compared lowercase, without the final dot).
const NEVER_FINAL: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "e.g", "i.e", "cf", "fig", "approx", "dept", "ave",
    "gen", "col", "lt", "sgt", "capt", "rev", "hon", "gov", "sen", "rep", "ft", "blvd", "rd", "apt", "ext", "tel",
];

/// Abbreviations that end a sentence only when a capitalised word follows.
const MAYBE_FINAL: &[&str] = &[
    "etc", "a.m", "p.m", "u.s", "u.k", "u.s.a", "inc", "ltd", "co", "corp", "llc", "jan", "feb", "mar", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec", "no", "vol", "min", "max", "est",
];

/// Characters that may follow a terminator and still belong to the sentence.
fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '}' | '”' | '’' | '»')
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…')
}

/// Incremental sentence splitter. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct SentenceSplitter {
    settings: SplitterSettings,
    buf: String,
    /// Byte offset up to which `buf` has been scanned without finding a boundary.
    scanned: usize,
}

enum Verdict {
    /// A boundary ending at this byte offset.
    Split(usize),
    /// Not a boundary; keep scanning after this offset.
    Skip(usize),
    /// Need more text to decide.
    Wait,
}

impl SentenceSplitter {
    /// A splitter with `settings`.
    #[must_use]
    pub fn new(settings: SplitterSettings) -> Self {
        Self { settings, buf: String::new(), scanned: 0 }
    }

    /// Text buffered and not yet emitted.
    #[must_use]
    pub fn pending(&self) -> &str {
        &self.buf
    }

    /// Drop the buffer (on interruption).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.scanned = 0;
    }

    /// Append a piece and call `emit` for every complete chunk it closes.
    pub fn push(&mut self, piece: &str, mut emit: impl FnMut(String)) {
        self.buf.push_str(piece);
        while let Some(end) = self.find_boundary() {
            let rest = self.buf.split_off(end);
            let chunk = std::mem::replace(&mut self.buf, rest);
            self.scanned = 0;
            if let Some(c) = self.clean(&chunk) {
                emit(c);
            }
        }
        if self.buf.len() > self.settings.max_chars {
            let cut = self.overflow_cut();
            let rest = self.buf.split_off(cut);
            let chunk = std::mem::replace(&mut self.buf, rest);
            self.scanned = 0;
            if let Some(c) = self.clean(&chunk) {
                emit(c);
            }
        }
    }

    /// Emit whatever is buffered (end of the LLM response).
    pub fn flush(&mut self) -> Option<String> {
        let chunk = std::mem::take(&mut self.buf);
        self.scanned = 0;
        self.clean(&chunk)
    }

    fn clean(&self, chunk: &str) -> Option<String> {
        let text = if self.settings.strip_markdown { strip_markdown(chunk) } else { chunk.trim().to_string() };
        if text.chars().any(char::is_alphanumeric) { Some(text) } else { None }
    }

    /// Where to cut an over-long buffer: after the last clause mark, else the last space.
    fn overflow_cut(&self) -> usize {
        let limit = floor_char_boundary(&self.buf, self.settings.max_chars);
        let head = &self.buf[..limit];
        for marks in [&[',', ';', ':', '—'][..], &[' '][..]] {
            if let Some((i, c)) = head.char_indices().rev().find(|(_, c)| marks.contains(c))
                && i > 0
            {
                return i + c.len_utf8();
            }
        }
        limit.max(1).min(self.buf.len())
    }

    fn find_boundary(&mut self) -> Option<usize> {
        let mut pos = self.scanned;
        while pos < self.buf.len() {
            let Some((off, c)) = self.buf[pos..].char_indices().find(|&(_, c)| is_terminator(c) || c == '\n') else {
                self.scanned = self.buf.len();
                return None;
            };
            let at = pos + off;
            let verdict = if c == '\n' { self.at_newline(at) } else { self.at_terminator(at) };
            match verdict {
                Verdict::Split(end) => return Some(end),
                Verdict::Skip(next) => pos = next,
                Verdict::Wait => {
                    self.scanned = at;
                    return None;
                }
            }
        }
        self.scanned = self.buf.len();
        None
    }

    fn at_newline(&self, at: usize) -> Verdict {
        if self.settings.split_on_newline && self.buf[..at].chars().any(char::is_alphanumeric) {
            Verdict::Split(at + 1)
        } else {
            Verdict::Skip(at + 1)
        }
    }

    fn at_terminator(&self, at: usize) -> Verdict {
        let bytes_after = &self.buf[at..];
        // The run of terminators and closing quotes/brackets that belong to this sentence.
        let mut end = at;
        let mut dots = 0usize;
        let mut only_dots = true;
        for (i, c) in bytes_after.char_indices() {
            if is_terminator(c) {
                if c == '.' {
                    dots += 1;
                } else {
                    only_dots = false;
                }
            } else if !is_closer(c) {
                break;
            }
            end = at + i + c.len_utf8();
        }
        let Some(next) = self.buf[end..].chars().next() else { return Verdict::Wait };
        if !next.is_whitespace() {
            // "3.14", "example.com", "a.m" mid-abbreviation, "?!" followed by more text.
            return Verdict::Skip(end);
        }
        if !(only_dots && dots == 1) {
            return Verdict::Split(end);
        }
        let word = word_before(&self.buf[..at]);
        let lower = word.to_lowercase();
        let next_word = self.buf[end..].trim_start().chars().next();
        if NEVER_FINAL.contains(&lower.as_str()) {
            return Verdict::Skip(end);
        }
        // A single capital letter is an initial ("J. Smith"); a number opening a line is a list
        // item ("1. Apples").
        if word != "I" && word.chars().count() == 1 && word.chars().all(char::is_uppercase) {
            return Verdict::Skip(end);
        }
        if !word.is_empty() && word.len() <= 3 && word.chars().all(|c| c.is_ascii_digit()) {
            let line_start = self.buf[..at - word.len()].trim_end_matches([' ', '\t']);
            if line_start.is_empty() || line_start.ends_with('\n') {
                return Verdict::Skip(end);
            }
        }
        let dotted = word.contains('.') && word.chars().any(char::is_alphabetic);
        if MAYBE_FINAL.contains(&lower.as_str()) || dotted {
            return match next_word {
                None => Verdict::Wait,
                Some(n) if n.is_uppercase() => Verdict::Split(end),
                Some(_) => Verdict::Skip(end),
            };
        }
        Verdict::Split(end)
    }
}

/// The word right before a terminator, without leading punctuation.
fn word_before(s: &str) -> &str {
    let start = s.rfind(char::is_whitespace).map_or(0, |i| i + s[i..].chars().next().map_or(1, char::len_utf8));
    s[start..].trim_start_matches(|c: char| !c.is_alphanumeric())
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Remove markdown that TTS would read aloud: emphasis stars, code ticks, heading marks, bullets.
fn strip_markdown(chunk: &str) -> String {
    let mut out = String::with_capacity(chunk.len());
    for line in chunk.lines() {
        let mut l = line.trim();
        l = l.trim_start_matches('#').trim_start();
        if let Some(rest) = l.strip_prefix("- ").or_else(|| l.strip_prefix("* ")).or_else(|| l.strip_prefix("• ")) {
            l = rest;
        }
        if l.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(l.chars().filter(|&c| c != '*' && c != '`'));
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_tokens(tokens: &[&str]) -> Vec<String> {
        let mut s = SentenceSplitter::default();
        let mut out = Vec::new();
        for t in tokens {
            s.push(t, |c| out.push(c));
        }
        out.extend(s.flush());
        out
    }

    /// Feed one character at a time: the harshest tokenisation.
    fn split_chars(text: &str) -> Vec<String> {
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        split_tokens(&refs)
    }

    fn both(text: &str) -> Vec<String> {
        let whole = split_tokens(&[text]);
        assert_eq!(whole, split_chars(text), "char-by-char differs for {text:?}");
        whole
    }

    #[test]
    fn plain_sentences() {
        assert_eq!(both("Hello there. How are you? Great!"), ["Hello there.", "How are you?", "Great!"]);
    }

    #[test]
    fn title_abbreviations_do_not_split() {
        assert_eq!(both("Mr. Smith and Dr. Jones are here. Yes."), ["Mr. Smith and Dr. Jones are here.", "Yes."]);
        assert_eq!(
            both("Bring fruit, e.g. apples or pears. Thanks."),
            ["Bring fruit, e.g. apples or pears.", "Thanks."]
        );
        assert_eq!(both("i.e. this one. Next."), ["i.e. this one.", "Next."]);
    }

    #[test]
    fn maybe_final_abbreviations() {
        assert_eq!(both("Apples, pears, etc. are fine. Ok."), ["Apples, pears, etc. are fine.", "Ok."]);
        assert_eq!(both("I like apples, pears, etc. They are good."), ["I like apples, pears, etc.", "They are good."]);
        assert_eq!(both("I live in the U.S. and I like it."), ["I live in the U.S. and I like it."]);
        assert_eq!(both("I moved to the U.S. Then I stayed."), ["I moved to the U.S.", "Then I stayed."]);
    }

    #[test]
    fn decimals_times_numbers() {
        assert_eq!(both("Pi is 3.14 roughly. Right."), ["Pi is 3.14 roughly.", "Right."]);
        assert_eq!(both("It costs $19.99 today."), ["It costs $19.99 today."]);
        assert_eq!(both("See you at 10:30 a.m. tomorrow. Bye."), ["See you at 10:30 a.m. tomorrow.", "Bye."]);
        assert_eq!(both("Call at 5 p.m. Please be on time."), ["Call at 5 p.m.", "Please be on time."]);
        assert_eq!(both("Order No. 5 is late. Sorry."), ["Order No. 5 is late.", "Sorry."]);
    }

    #[test]
    fn emails_urls_order_numbers() {
        assert_eq!(
            both("Email john.doe@example.com for help. Or visit https://example.com/a.b?x=1 today."),
            ["Email john.doe@example.com for help.", "Or visit https://example.com/a.b?x=1 today."]
        );
        assert_eq!(both("Your order ORD-1234.5 has shipped. Great."), ["Your order ORD-1234.5 has shipped.", "Great."]);
        assert_eq!(both("Go to www.example.com. Then log in."), ["Go to www.example.com.", "Then log in."]);
    }

    #[test]
    fn initials_and_lists() {
        assert_eq!(both("J. R. R. Tolkien wrote it. Yes."), ["J. R. R. Tolkien wrote it.", "Yes."]);
        assert_eq!(both("Steps:\n1. Open the app\n2. Tap login"), ["Steps:", "1. Open the app", "2. Tap login"]);
        assert_eq!(both("I have 2. You have 3."), ["I have 2.", "You have 3."]);
    }

    #[test]
    fn quotes_ellipsis_and_mixed_terminators() {
        assert_eq!(both("He said \"hi.\" Then left."), ["He said \"hi.\"", "Then left."]);
        assert_eq!(both("Really?! Wow... ok then."), ["Really?!", "Wow...", "ok then."]);
        assert_eq!(both("(Yes.) Fine."), ["(Yes.)", "Fine."]);
    }

    #[test]
    fn waits_for_the_next_character() {
        let mut s = SentenceSplitter::default();
        let mut out = Vec::new();
        s.push("The total is 3.", |c| out.push(c));
        assert!(out.is_empty(), "must not split before seeing what follows the dot");
        s.push("50 dollars. ", |c| out.push(c));
        assert_eq!(out, ["The total is 3.50 dollars."]);
        assert_eq!(s.pending(), " ");
        assert_eq!(s.flush(), None);
    }

    #[test]
    fn markdown_is_stripped() {
        assert_eq!(
            both("**Great** news! `code` here. ## Title\n- item one"),
            ["Great news!", "code here.", "Title", "item one"]
        );
    }

    #[test]
    fn long_run_on_text_is_cut() {
        let mut s = SentenceSplitter::new(SplitterSettings { max_chars: 40, ..SplitterSettings::default() });
        let mut out = Vec::new();
        s.push("this is a long clause without end, and it keeps going and going", |c| out.push(c));
        assert_eq!(out[0], "this is a long clause without end,");
        assert!(out.iter().all(|c| c.len() <= 40));
    }

    #[test]
    fn unicode_is_safe() {
        assert_eq!(both("Café ouvert. Très bien… ça va? Oui."), ["Café ouvert.", "Très bien…", "ça va?", "Oui."]);
        let mut s = SentenceSplitter::new(SplitterSettings { max_chars: 5, ..SplitterSettings::default() });
        let mut out = Vec::new();
        s.push("ééééééééé", |c| out.push(c));
        assert!(!out.is_empty());
    }

    #[test]
    fn punctuation_only_chunks_are_dropped() {
        assert_eq!(both("... !"), Vec::<String>::new());
    }
}
