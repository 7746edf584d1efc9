//! Text from weavers made safe to print on an operator's terminal: escape sequences (CSI, OSC,
//! DCS and the other string controls, two-byte escapes) and control characters are removed,
//! `\n` and `\t` are kept. A weaver controls its log, its agent status and its threads, and an
//! escape sequence in them could retitle the operator's terminal, clear or rewrite what is on
//! it, or (on some terminals) make it answer with input of the weaver's choosing.

use std::borrow::Cow;

/// The longest escape sequence followed before it is given up on, so that an unterminated
/// OSC or DCS hides at most this much (a newline also ends it) rather than all that follows.
const MAX_SEQUENCE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ground,
    /// After ESC.
    Escape,
    /// After ESC and intermediate bytes (0x20-0x2f), waiting for the final byte.
    EscapeIntermediate,
    /// A control sequence: parameters and intermediates up to a final byte (0x40-0x7e).
    Csi,
    /// OSC, DCS, SOS, PM or APC: everything up to BEL or ST.
    Str,
    /// ESC inside a string: `\` ends it (ST), anything else starts a new escape.
    StrEscape,
}

/// A streaming stripper: feed it chunks as they arrive (a sequence or a UTF-8 character may
/// straddle two chunks); invalid UTF-8 becomes U+FFFD.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    state: State,
    /// Bytes of an incomplete UTF-8 character at the end of the last chunk.
    pending: Vec<u8>,
    /// Characters taken by the current sequence.
    taken: usize,
}

impl Default for Sanitizer {
    fn default() -> Self {
        Sanitizer { state: State::Ground, pending: Vec::new(), taken: 0 }
    }
}

impl Sanitizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The printable part of `chunk`, given what came before it.
    pub fn feed(&mut self, chunk: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(chunk);
        let mut out = String::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.push_str(s, &mut out);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // `good` is valid UTF-8: from_utf8 said so.
                    self.push_str(std::str::from_utf8(good).unwrap_or_default(), &mut out);
                    match e.error_len() {
                        Some(n) => {
                            self.push(char::REPLACEMENT_CHARACTER, &mut out);
                            rest = &bad[n..];
                        }
                        None => {
                            // An incomplete character at the end: wait for the next chunk.
                            self.pending = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// What is left at the end of the stream (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        if !std::mem::take(&mut self.pending).is_empty() {
            self.push(char::REPLACEMENT_CHARACTER, &mut out);
        }
        self.state = State::Ground;
        out
    }

    fn push_str(&mut self, s: &str, out: &mut String) {
        for c in s.chars() {
            self.push(c, out);
        }
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        self.taken = 0;
    }

    fn push(&mut self, c: char, out: &mut String) {
        if self.state != State::Ground {
            self.taken += 1;
            // A newline or an overlong sequence ends whatever was open, so that a weaver cannot
            // hide the rest of its output behind an unterminated string.
            if c == '\n' || self.taken > MAX_SEQUENCE {
                self.enter(State::Ground);
                if c == '\n' {
                    out.push('\n');
                }
                return;
            }
        }
        match self.state {
            State::Ground => self.ground(c, out),
            State::Escape => match c {
                '[' => self.enter(State::Csi),
                ']' | 'P' | 'X' | '^' | '_' => self.enter(State::Str),
                '\x20'..='\x2f' => self.state = State::EscapeIntermediate,
                '\x30'..='\x7e' => self.enter(State::Ground),
                '\x1b' => self.enter(State::Escape),
                _ => {
                    self.enter(State::Ground);
                    self.ground(c, out);
                }
            },
            State::EscapeIntermediate => match c {
                '\x20'..='\x2f' => {}
                '\x30'..='\x7e' => self.enter(State::Ground),
                _ => {
                    self.enter(State::Ground);
                    self.ground(c, out);
                }
            },
            State::Csi => match c {
                '\x20'..='\x3f' => {}
                '\x40'..='\x7e' => self.enter(State::Ground),
                _ => {
                    self.enter(State::Ground);
                    self.ground(c, out);
                }
            },
            State::Str => match c {
                '\x07' | '\u{9c}' => self.enter(State::Ground),
                '\x1b' => self.state = State::StrEscape,
                _ => {}
            },
            State::StrEscape => {
                if c == '\\' {
                    self.enter(State::Ground);
                } else {
                    self.enter(State::Escape);
                    self.push(c, out);
                }
            }
        }
    }

    fn ground(&mut self, c: char, out: &mut String) {
        match c {
            '\n' | '\t' => out.push(c),
            '\x1b' => self.enter(State::Escape),
            // C1 controls, which some terminals obey even when they arrive as UTF-8.
            '\u{9b}' => self.enter(State::Csi),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => self.enter(State::Str),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
}

/// `text` without escape sequences and control characters other than `\n` and `\t`.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Cow::Borrowed(text);
    }
    let mut s = Sanitizer::new();
    let mut out = s.feed(text.as_bytes());
    out.push_str(&s.finish());
    Cow::Owned(out)
}

/// A copy of `v` with every string (keys too) sanitized, for human output built from JSON.
pub fn sanitize_json(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(sanitize(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(sanitize_json).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (sanitize(k).into_owned(), sanitize_json(v))).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        assert_eq!(sanitize(input), expected, "{input:?}");
        // Byte by byte, as the worst split of a stream.
        let mut s = Sanitizer::new();
        let mut out = String::new();
        for b in input.as_bytes() {
            out += &s.feed(&[*b]);
        }
        out += &s.finish();
        assert_eq!(out, expected, "{input:?} fed byte by byte");
    }

    #[test]
    fn escapes_and_controls_are_removed() {
        check("plain text\n\tindented", "plain text\n\tindented");
        check("\x1b]0;pwned\x07\x1b[2Jvisible", "visible");
        check("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link");
        check("\x1b[1;31mred\x1b[0m", "red");
        check("a\x1b[?1049hb", "ab");
        check("\x1bPq#0;2;0;0;0\x1b\\after", "after");
        check("\x1b_apc\x07x", "x");
        check("\x1b(Bx\x1b7y\x1bcz", "xyz");
        check("over\rwrite\x08\x08\x7f", "overwrite");
        check("bell\x07 nul\0", "bell nul");
        check("\u{9b}2Jc1 csi\u{9d}0;t\u{9c}!", "c1 csi!");
        check("ünïcödé ✓ 日本", "ünïcödé ✓ 日本");
        check("trailing esc \x1b", "trailing esc ");
    }

    #[test]
    fn an_unterminated_string_hides_one_line_at_most() {
        check("\x1b]0;never ends\nnext line\n", "\nnext line\n");
        let long = format!("\x1b]{}after", "x".repeat(MAX_SEQUENCE + 10));
        let got = sanitize(&long);
        assert!(got.ends_with("after") && !got.contains('\x1b'), "{got:?}");
    }

    #[test]
    fn split_utf8_and_invalid_bytes() {
        let mut s = Sanitizer::new();
        let bytes = "é".as_bytes();
        assert_eq!(s.feed(&bytes[..1]), "");
        assert_eq!(s.feed(&bytes[1..]), "é");
        assert_eq!(s.feed(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(s.feed(&bytes[..1]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn json_strings_and_keys() {
        let v = serde_json::json!({"reason": "x\x1b[2Jy", "k\x07": ["\x1b]0;t\x07z", 3]});
        assert_eq!(sanitize_json(&v), serde_json::json!({"reason": "xy", "k": ["z", 3]}));
    }

    #[test]
    fn no_output_ever_holds_a_control_character() {
        // Every byte after every prefix state: what comes out is printable or \n / \t.
        let prefixes = ["", "\x1b", "\x1b[", "\x1b]", "\x1b]x\x1b", "\x1b(", "\u{9b}"];
        for p in prefixes {
            for b in 0u8..=255 {
                let mut s = Sanitizer::new();
                let mut out = s.feed(p.as_bytes());
                out += &s.feed(&[b, b'z']);
                out += &s.finish();
                assert!(out.chars().all(|c| !c.is_control() || c == '\n' || c == '\t'), "{p:?} {b:#x}: {out:?}");
            }
        }
    }
}
