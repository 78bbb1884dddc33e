//! Server-sent events decoding, as much as OpenAI-style streams use: events
//! end at a blank line, their `data:` lines are joined with newlines, other
//! fields and comments are ignored. (Written here because the SSE crates
//! pull in a `nom` feature set that rebuilds the whole engine.)

#[derive(Default)]
pub struct SseDecoder {
    pending: Vec<u8>,
    /// `pending[..scanned]` holds no newline (so reads are not rescanned).
    scanned: usize,
    data: Option<String>,
}

/// Longest line, and longest event, accepted from a replica.
const MAX_EVENT: usize = 8 * 1024 * 1024;

impl SseDecoder {
    /// Feeds received bytes; returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut consumed = 0;
        let mut from = self.scanned;
        while let Some(offset) = self.pending[from..].iter().position(|&b| b == b'\n') {
            let end = from + offset;
            from = end + 1;
            let line = &self.pending[consumed..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line).map_err(|_| "a stream line is not UTF-8")?;
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    events.push(data);
                }
            } else {
                data_field(&mut self.data, line);
            }
            if self.data.as_ref().is_some_and(|d| d.len() > MAX_EVENT) {
                return Err("a stream event is too long".into());
            }
            consumed = end + 1;
        }
        self.pending.drain(..consumed);
        self.scanned = self.pending.len();
        if self.pending.len() > MAX_EVENT {
            return Err("a stream line is too long".into());
        }
        Ok(events)
    }

    /// An event still open when the stream ends (no final blank line).
    pub fn finish(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.pending);
        self.scanned = 0;
        if let Ok(line) = std::str::from_utf8(&line) {
            data_field(&mut self.data, line.trim_end_matches('\r'));
        }
        self.data.take()
    }
}

/// One non-empty line: a `data:` line joins the open event's data; other
/// fields and comments are ignored.
fn data_field(data: &mut Option<String>, line: &str) {
    let Some(value) = line.strip_prefix("data:") else {
        return;
    };
    let value = value.strip_prefix(' ').unwrap_or(value);
    match data {
        Some(data) => {
            data.push('\n');
            data.push_str(value);
        }
        None => *data = Some(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_are_reassembled() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: {\"a\"").unwrap().is_empty());
        assert_eq!(decoder.push(b":1}\n\nda").unwrap(), vec!["{\"a\":1}"]);
        assert_eq!(decoder.push(b"ta: [DONE]\r\n\r\n").unwrap(), vec!["[DONE]"]);
    }

    #[test]
    fn comments_and_other_fields_are_ignored_and_data_lines_join() {
        let mut decoder = SseDecoder::default();
        let events = decoder
            .push(b": keep-alive\n\nevent: x\nid: 1\ndata: a\ndata:b\n\n")
            .unwrap();
        assert_eq!(events, vec!["a\nb"]);
    }

    #[test]
    fn endless_lines_and_events_are_refused() {
        let mut decoder = SseDecoder::default();
        let chunk = vec![b'x'; 1024 * 1024];
        let mut result = Ok(Vec::new());
        for _ in 0..9 {
            result = decoder.push(&chunk);
        }
        assert!(result.is_err());
        let mut decoder = SseDecoder::default();
        let line = format!("data: {}\n", "y".repeat(1024 * 1024));
        let refused = (0..9).any(|_| decoder.push(line.as_bytes()).is_err());
        assert!(refused, "an event that never ends is refused");
    }

    #[test]
    fn an_unterminated_last_event_is_kept() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: x").unwrap().is_empty());
        assert_eq!(decoder.finish(), Some("x".into()));
        assert_eq!(decoder.finish(), None);
    }
}
