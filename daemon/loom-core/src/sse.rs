//! The one server-sent-events parser: bytes in any split, events out. The agent reads its
//! model's stream with it, and the proxy reads every stream that passes through it (for
//! usage), so both see a provider's stream the same way.
//!
//! Lines end in LF, CRLF or a lone CR, as the SSE grammar allows; a line is cut only at
//! ASCII bytes, so a UTF-8 sequence is never split, and invalid UTF-8 becomes U+FFFD.
//! `event:` and `data:` are kept, `id:`, `retry:`, other fields and comments are not.

/// One SSE event, borrowed from the parser until the callback returns. `event` is empty when
/// the stream gave no `event:` line (OpenAI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub event: &'a str,
    pub data: &'a str,
}

/// One SSE event, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

impl From<Event<'_>> for SseEvent {
    fn from(e: Event<'_>) -> Self {
        Self { event: e.event.to_owned(), data: e.data.to_owned() }
    }
}

/// Longest line, and largest event, the parser keeps: a provider sending more is broken or
/// hostile, and holding it would let it grow the reader's memory without end.
pub const MAX_SSE_BYTES: usize = 8 * 1024 * 1024;

/// Errors of the SSE parser. Once one is returned the parser stays failed.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// A single line grew past the limit.
    #[error("server-sent event line longer than {MAX_SSE_BYTES} bytes; the stream is not SSE")]
    LineTooLong,
    /// The `data:` lines of one event added up past the limit.
    #[error("server-sent event larger than {MAX_SSE_BYTES} bytes; the stream is not SSE")]
    EventTooLarge,
}

/// Incremental parser; feed it chunks as they arrive, in any split.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The start of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The last chunk ended in CR: an LF starting the next one belongs to that line end.
    skip_lf: bool,
    event: String,
    data: String,
    has_data: bool,
    failed: Option<SseError>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `chunk`, returning every event it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        self.feed_with(chunk, |e| out.push(e.into()))?;
        Ok(out)
    }

    /// Parses `chunk`, calling `on_event` for every event it completes, without copying them.
    /// On an error, the events before the offending line have been delivered.
    pub fn feed_with(&mut self, mut chunk: &[u8], mut on_event: impl FnMut(Event<'_>)) -> Result<(), SseError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        while !chunk.is_empty() {
            if std::mem::take(&mut self.skip_lf) && chunk[0] == b'\n' {
                chunk = &chunk[1..];
                continue;
            }
            let Some(i) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') else {
                if self.line.len() + chunk.len() > MAX_SSE_BYTES {
                    return self.fail(SseError::LineTooLong);
                }
                self.line.extend_from_slice(chunk);
                return Ok(());
            };
            self.skip_lf = chunk[i] == b'\r';
            if self.line.is_empty() {
                self.line_done(&chunk[..i], &mut on_event)?;
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&chunk[..i]);
                self.line_done(&line, &mut on_event)?;
                // Keep the allocation for the next split line.
                line.clear();
                self.line = line;
            }
            chunk = &chunk[i + 1..];
        }
        Ok(())
    }

    /// The stream ended: a last line without its line end, and an event without the blank
    /// line that should close it, are taken as if they had been closed. (The SSE grammar drops
    /// such an event; a reader that wants it, such as the proxy looking for a final usage
    /// count or `[DONE]`, calls this.)
    pub fn finish_with(&mut self, mut on_event: impl FnMut(Event<'_>)) -> Result<(), SseError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, &mut on_event)?;
        }
        self.skip_lf = false;
        self.line_done(b"", &mut on_event)
    }

    fn fail(&mut self, e: SseError) -> Result<(), SseError> {
        self.failed = Some(e);
        self.line = Vec::new();
        self.data = String::new();
        Err(e)
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(Event<'_>)) -> Result<(), SseError> {
        if line.len() > MAX_SSE_BYTES {
            return self.fail(SseError::LineTooLong);
        }
        if line.is_empty() {
            if self.has_data {
                on_event(Event { event: &self.event, data: &self.data });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..])),
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_SSE_BYTES {
                    return self.fail(SseError::EventTooLarge);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent { event: event.into(), data: data.into() }
    }

    /// Parses `wire` split at every point, and whole with the end-of-stream flush.
    fn check(wire: &[u8], expected: &[SseEvent], expected_with_finish: &[SseEvent]) {
        for split in 0..=wire.len() {
            let mut p = SseParser::new();
            let mut got = p.feed(&wire[..split]).unwrap();
            got.extend(p.feed(&wire[split..]).unwrap());
            assert_eq!(got, expected, "{:?} split at {split}", String::from_utf8_lossy(wire));
            p.finish_with(|e| got.push(e.into())).unwrap();
            assert_eq!(got, expected_with_finish, "{:?} finished", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn events() {
        let anthropic = [ev("message_start", "{\"a\":1}")];
        check(b"event: message_start\ndata: {\"a\":1}\n\n", &anthropic, &anthropic);
        // Comments and unknown fields are skipped; several data lines join with LF.
        check(b": comment\nid: 3\nretry: 10\ndata: x\r\ndata: y\r\n\r\n", &[ev("", "x\ny")], &[ev("", "x\ny")]);
        // A lone CR ends a line too.
        check(b"event: e\rdata:x\r\r", &[ev("e", "x")], &[ev("e", "x")]);
        // Only one space after the colon is dropped; a field without colon has an empty value.
        check(b"data:  two\ndata\n\n", &[ev("", " two\n")], &[ev("", " two\n")]);
        // An event without data is no event, and its name does not leak into the next one.
        check(b"event: ping\n\ndata: d\n\n", &[ev("", "d")], &[ev("", "d")]);
        // Invalid UTF-8 is replaced, not refused.
        check(b"data: \xff\n\n", &[ev("", "\u{fffd}")], &[ev("", "\u{fffd}")]);
        // A stream that stops before the blank line: the flush delivers the event.
        check(b"data: [DONE]", &[], &[ev("", "[DONE]")]);
        check(b"event: message_stop\ndata: {}\n", &[], &[ev("message_stop", "{}")]);
    }

    #[test]
    fn refuses_endless_lines_and_events() {
        let mut p = SseParser::new();
        assert_eq!(p.feed(&vec![b'a'; MAX_SSE_BYTES + 1]), Err(SseError::LineTooLong));
        assert_eq!(p.feed(b"\n\n"), Err(SseError::LineTooLong), "a failed parser stays failed");
        let mut p = SseParser::new();
        let mut line = vec![b'a'; MAX_SSE_BYTES + 1];
        line.push(b'\n');
        assert_eq!(p.feed(&line), Err(SseError::LineTooLong), "also when the line end is in the chunk");
        let mut p = SseParser::new();
        let half = format!("data: {}\n", "a".repeat(MAX_SSE_BYTES / 2));
        assert_eq!(p.feed(half.as_bytes()), Ok(vec![]));
        assert_eq!(p.feed(half.as_bytes()), Err(SseError::EventTooLarge));
    }
}
