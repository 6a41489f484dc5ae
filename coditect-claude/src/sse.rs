//! An incremental Server-Sent Events parser.
//!
//! Written here rather than taken from a crate because it is small (the part of the
//! SSE spec the API uses: `event`, `data`, comments, blank-line dispatch, any of the
//! three line endings) and it sits on the hot path of every streamed token: it scans
//! with `memchr`, parses complete lines straight out of the network chunk without
//! copying, and buffers only the tail of a line that a chunk boundary cut. Lines are
//! decoded as UTF-8 only once complete, so a multi-byte character split across chunks
//! is never seen in halves. Bad input is an [`SseError`], never a panic.
//!
//! # Examples
//!
//! ```
//! use coditect_claude::sse::SseParser;
//!
//! let mut parser = SseParser::new();
//! let mut events = Vec::new();
//! // "é" is two bytes; the chunk boundary cuts it in half.
//! parser.push(b"event: ping\ndata: {\"t\":\"caf\xc3", &mut events)?;
//! parser.push(b"\xa9\"}\n\n", &mut events)?;
//! assert_eq!(events.len(), 1);
//! assert_eq!(events[0].event, "ping");
//! assert_eq!(events[0].data, "{\"t\":\"café\"}");
//! # Ok::<_, coditect_claude::sse::SseError>(())
//! ```

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, or `message` when absent.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// The bytes were not a valid event stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// A line was not UTF-8.
    #[error("event stream line is not valid utf-8")]
    InvalidUtf8,
    /// An event grew past the size limit without ending.
    #[error("event stream event exceeds {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}

/// The default cap on one event's size: far above any real event, low enough that a
/// stream without line breaks cannot exhaust memory.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// An incremental SSE parser: push chunks as they arrive, get complete events out.
#[derive(Debug)]
pub struct SseParser {
    /// The start of a line that the previous chunk cut.
    partial: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with the default event size cap.
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser that refuses events larger than `max` bytes.
    pub fn with_max_event_bytes(max: usize) -> Self {
        Self {
            partial: Vec::new(),
            after_cr: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            max_event_bytes: max,
        }
    }

    /// Parses a chunk, appending every event it completes to `out`.
    ///
    /// # Errors
    ///
    /// [`SseError`] on a line that is not UTF-8 or an event over the size cap. After
    /// an error the parser's state is unspecified: stop using it.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.feed(chunk, |event, data| {
            out.push(SseEvent {
                event: event.to_owned(),
                data: data.to_owned(),
            });
        })
    }

    /// Parses a chunk, calling `on_event(event, data)` for every event it completes.
    ///
    /// The fields are borrowed from the parser's buffers, so nothing is allocated per
    /// event: decode them in place (this is what the typed stream does).
    ///
    /// # Errors
    ///
    /// As [`push`](Self::push).
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(&str, &str),
    ) -> Result<(), SseError> {
        let mut rest = chunk;
        // A `\r` ended the previous chunk: a `\n` opening this one is part of it (an
        // empty chunk decides nothing).
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some((b'\n', tail)) = rest.split_first() {
                rest = tail;
            }
        }
        // Finish the line the previous chunk cut, on its own.
        if !self.partial.is_empty() {
            let Some(end) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.partial.extend_from_slice(rest);
                return self.check_size();
            };
            let (head, tail) = rest.split_at(end);
            let mut whole = std::mem::take(&mut self.partial);
            whole.extend_from_slice(head);
            let result = std::str::from_utf8(&whole)
                .map_err(|_| SseError::InvalidUtf8)
                .and_then(|line| {
                    let mut held = Held::default();
                    self.line(line, &mut held, &mut on_event)?;
                    self.keep(held)
                });
            // Keep the allocation for the next cut line.
            whole.clear();
            self.partial = whole;
            result?;
            rest = self.skip_line_end(tail);
        }
        // Validate the rest of the chunk in one pass (much faster than line by line),
        // then slice lines out of it as `str`. A character cut by the chunk's end is
        // left for the next chunk with the rest of its line.
        let (text, cut) = match std::str::from_utf8(rest) {
            Ok(text) => (text, &[][..]),
            Err(e) if e.error_len().is_none() => {
                let (valid, cut) = rest.split_at(e.valid_up_to());
                (
                    std::str::from_utf8(valid).map_err(|_| SseError::InvalidUtf8)?,
                    cut,
                )
            }
            Err(_) => return Err(SseError::InvalidUtf8),
        };
        // The API ends lines with `\n`; a lone `\r` is legal SSE but rare. One fast scan
        // decides whether this chunk needs the slower two-byte search.
        let has_cr = memchr::memchr(b'\r', text.as_bytes()).is_some();
        let mut text = text;
        // Fields of the event being read, borrowed from this chunk until it ends.
        let mut held = Held::default();
        loop {
            let found = if has_cr {
                memchr::memchr2(b'\n', b'\r', text.as_bytes())
            } else {
                memchr::memchr(b'\n', text.as_bytes())
            };
            let Some(end) = found else { break };
            // Line endings are ASCII, so these are character boundaries.
            let (line, tail) = text.split_at(end);
            self.line(line, &mut held, &mut on_event)?;
            let skip = match tail.as_bytes() {
                [b'\r', b'\n', ..] => 2,
                [b'\r'] => {
                    self.after_cr = true;
                    1
                }
                _ => 1,
            };
            text = tail.get(skip..).unwrap_or_default();
        }
        self.keep(held)?;
        if !text.is_empty() || !cut.is_empty() {
            self.partial.extend_from_slice(text.as_bytes());
            self.partial.extend_from_slice(cut);
            self.check_size()?;
        }
        Ok(())
    }

    /// Skips the line ending at the start of `tail` (`\n`, `\r\n` or `\r`).
    fn skip_line_end<'a>(&mut self, tail: &'a [u8]) -> &'a [u8] {
        let skip = match tail {
            [b'\r', b'\n', ..] => 2,
            [b'\r'] => {
                self.after_cr = true;
                1
            }
            _ => 1,
        };
        tail.get(skip..).unwrap_or_default()
    }

    /// Ends the stream. An event that was not closed by a blank line is discarded, as
    /// the SSE spec says; callers that need completeness check for their own final event.
    pub fn finish(&mut self) {
        self.partial.clear();
        self.reset_event();
    }

    fn check_size(&self) -> Result<(), SseError> {
        if self.partial.len() + self.data.len() > self.max_event_bytes {
            return Err(SseError::TooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }

    fn reset_event(&mut self) {
        self.event.clear();
        self.data.clear();
        self.has_data = false;
    }

    /// Copies the fields still borrowed from a chunk into the parser's own buffers.
    fn keep(&mut self, held: Held<'_>) -> Result<(), SseError> {
        if let Some(event) = held.event {
            self.event.clear();
            self.event.push_str(event);
        }
        if let Some(data) = held.data {
            self.data.push_str(data);
            self.check_size()?;
        }
        Ok(())
    }

    fn line<'a>(
        &mut self,
        line: &'a str,
        held: &mut Held<'a>,
        on_event: &mut impl FnMut(&str, &str),
    ) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_data {
                let event = match held.event {
                    Some(e) => e,
                    None if self.event.is_empty() => "message",
                    None => self.event.as_str(),
                };
                on_event(event, held.data.unwrap_or(&self.data));
            }
            *held = Held::default();
            self.reset_event();
            return Ok(());
        }
        // The two fields the API sends, first; then the general form.
        let (field, value) = if let Some(v) = line.strip_prefix("data:") {
            ("data", v)
        } else if let Some(v) = line.strip_prefix("event:") {
            ("event", v)
        } else {
            match line.split_once(':') {
                Some(("", _)) => return Ok(()), // comment
                Some((field, value)) => (field, value),
                None => (line, ""),
            }
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" if !self.has_data => {
                // Most events have one data line: borrow it rather than copy it.
                held.data = Some(value);
                self.has_data = true;
            }
            "data" => {
                if let Some(first) = held.data.take() {
                    self.data.push_str(first);
                }
                self.data.push('\n');
                self.data.push_str(value);
                self.check_size()?;
            }
            "event" => {
                held.event = Some(value);
                self.event.clear();
            }
            // `id`, `retry` and unknown fields do not matter to this API.
            _ => {}
        }
        Ok(())
    }
}

/// Fields of the current event borrowed from the chunk being parsed.
#[derive(Default)]
struct Held<'a> {
    event: Option<&'a str>,
    data: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out)?;
        }
        p.finish();
        Ok(out)
    }

    #[test]
    fn handles_every_line_ending_and_comments() {
        let events = parse_all(&[
            b": hi\r\nevent: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\rdata: x\ndata: y\n\n",
        ])
        .unwrap();
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "a".into(),
                    data: "1".into()
                },
                SseEvent {
                    event: "b".into(),
                    data: "2".into()
                },
                SseEvent {
                    event: "message".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn every_two_way_split_gives_the_same_events() {
        let text = "event: a\r\ndata: x\ndata: ü\r\rid: 1\n: c\n\ndata:\n\nevent: e\rdata: {\"k\": \"日本\"}\n\n".as_bytes();
        let whole = parse_all(&[text]).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(
            whole[0],
            SseEvent {
                event: "a".into(),
                data: "x\nü".into()
            }
        );
        assert_eq!(
            whole[1],
            SseEvent {
                event: "message".into(),
                data: String::new()
            }
        );
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let parts = [&text[..i], &text[i..j], &text[j..]];
                assert_eq!(parse_all(&parts).unwrap(), whole, "split at {i}, {j}");
            }
        }
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let events = parse_all(&[b"data: 1\r", b"\n\r", b"\n"]).unwrap();
        assert_eq!(
            events,
            vec![SseEvent {
                event: "message".into(),
                data: "1".into()
            }]
        );
    }

    #[test]
    fn unterminated_event_is_discarded_and_invalid_utf8_is_an_error() {
        assert!(parse_all(&[b"data: 1\n"]).unwrap().is_empty());
        assert_eq!(parse_all(&[b"data: \xff\n\n"]), Err(SseError::InvalidUtf8));
        assert_eq!(parse_all(&[b"\xfe\xff: x\n\n"]), Err(SseError::InvalidUtf8));
    }

    #[test]
    fn refuses_events_over_the_cap() {
        let mut p = SseParser::with_max_event_bytes(8);
        let mut out = Vec::new();
        assert_eq!(
            p.push(b"data: 0123456789", &mut out),
            Err(SseError::TooLarge { limit: 8 })
        );
    }
}
