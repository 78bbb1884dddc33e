//! Server-sent events decoding, as much as OpenAI-style streams use: events
//! end at a blank line, their `data:` lines are joined with newlines, other
//! fields and comments are ignored. (Written here because the SSE crates
//! pull in a `nom` feature set that rebuilds the whole engine.)

#[derive(Default)]
pub struct SseDecoder {
    pending: Vec<u8>,
    data: Option<String>,
}

/// Longest line accepted; a replica sending more without a newline is broken.
const MAX_LINE: usize = 8 * 1024 * 1024;

impl SseDecoder {
    /// Feeds received bytes; returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut consumed = 0;
        while let Some(offset) = self.pending[consumed..].iter().position(|&b| b == b'\n') {
            let end = consumed + offset;
            let line = &self.pending[consumed..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line).map_err(|_| "a stream line is not UTF-8")?;
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    events.push(data);
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                }
            }
            consumed = end + 1;
        }
        self.pending.drain(..consumed);
        if self.pending.len() > MAX_LINE {
            return Err("a stream line is too long".into());
        }
        Ok(events)
    }

    /// An event still open when the stream ends (no final blank line).
    pub fn finish(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.pending);
        if let Some(value) = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("data:"))
        {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        self.data.take()
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
    fn an_unterminated_last_event_is_kept() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: x").unwrap().is_empty());
        assert_eq!(decoder.finish(), Some("x".into()));
        assert_eq!(decoder.finish(), None);
    }
}
