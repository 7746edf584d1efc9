//! A server-sent-events parser: bytes in, `(event, data)` out. No I/O.

/// One SSE event. `event` is empty when the stream gave no `event:` line (OpenAI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Longest line the parser keeps; a provider sending more is broken or hostile.
const MAX_LINE: usize = 8 * 1024 * 1024;

/// Errors of the SSE parser.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// A single line grew past the limit without a newline.
    #[error("server-sent event line longer than {MAX_LINE} bytes; the stream is not SSE")]
    LineTooLong,
}

/// Incremental parser; feed it chunks as they arrive, in any split.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `chunk`, returning every event it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.buf[start..start + nl];
            start += nl + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            self.line(&line, &mut out);
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            return Err(SseError::LineTooLong);
        }
        Ok(out)
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent { event: std::mem::take(&mut self.event), data: std::mem::take(&mut self.data) });
            }
            self.event.clear();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_anywhere() {
        let wire = b"event: message_start\ndata: {\"a\":1}\n\n: comment\ndata: x\r\ndata: y\r\n\r\nevent: ping\n\n";
        for split in 0..wire.len() {
            let mut p = SseParser::new();
            let mut got = p.feed(&wire[..split]).unwrap();
            got.extend(p.feed(&wire[split..]).unwrap());
            assert_eq!(
                got,
                vec![
                    SseEvent { event: "message_start".into(), data: "{\"a\":1}".into() },
                    SseEvent { event: "".into(), data: "x\ny".into() },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn refuses_endless_lines() {
        let mut p = SseParser::new();
        assert_eq!(p.feed(&vec![b'a'; MAX_LINE + 1]), Err(SseError::LineTooLong));
    }
}
