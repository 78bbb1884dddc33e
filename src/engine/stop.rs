//! Stop sequences, enforced on the text stream itself.
//!
//! mistral.rs 0.8.1 checks stop strings one token late and streams the stop
//! string (and the token after it) before finishing, so the gateway cuts the
//! text at the first stop sequence and holds back any tail that could still
//! become one.

pub struct StopScanner {
    stops: Vec<String>,
    pending: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Text that can safely be sent now (may be empty).
    Continue(String),
    /// A stop sequence matched: send this text, then finish with `stop`.
    Stopped(String),
}

impl StopScanner {
    pub fn new(stops: Vec<String>) -> Self {
        StopScanner {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Scan {
        if self.stops.is_empty() {
            return Scan::Continue(text.to_string());
        }
        self.pending.push_str(text);
        let first_match = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min();
        if let Some(position) = first_match {
            let emitted = self.pending[..position].to_string();
            self.pending.clear();
            return Scan::Stopped(emitted);
        }
        let held = self.longest_partial_match();
        let split = self.pending.len() - held;
        let emitted = self.pending[..split].to_string();
        self.pending.drain(..split);
        Scan::Continue(emitted)
    }

    /// Text held back when the generation ends without a match.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper
    /// prefix of some stop sequence.
    fn longest_partial_match(&self) -> usize {
        self.stops
            .iter()
            .flat_map(|stop| {
                stop.char_indices()
                    .map(|(end, _)| end)
                    .skip(1)
                    .filter(|&end| self.pending.ends_with(&stop[..end]))
            })
            .max()
            .unwrap_or(0)
    }
}

/// Where a constrained JSON answer ends. mistral.rs 0.8.1 keeps sampling
/// after its grammar has finished (until `max_tokens`, emitting nothing), so
/// the gateway ends a JSON answer itself once its top-level object or array
/// closes. Answers whose top level is a scalar are left to the engine.
#[derive(Debug, Default)]
pub struct JsonEnd {
    depth: usize,
    started: bool,
    in_string: bool,
    escaped: bool,
    /// The top level is not an object or array.
    scalar: bool,
}

impl JsonEnd {
    /// Feeds text; returns the byte length of `text` up to and including
    /// the closing bracket when the value ends inside it.
    pub fn push(&mut self, text: &str) -> Option<usize> {
        if self.scalar {
            return None;
        }
        for (at, c) in text.char_indices() {
            if !self.started {
                match c {
                    '{' | '[' => {
                        self.started = true;
                        self.depth = 1;
                    }
                    c if c.is_whitespace() => {}
                    _ => {
                        self.scalar = true;
                        return None;
                    }
                }
                continue;
            }
            if self.in_string {
                match (self.escaped, c) {
                    (true, _) => self.escaped = false,
                    (false, '\\') => self.escaped = true,
                    (false, '"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(at + c.len_utf8());
                    }
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_ends_where_its_top_level_closes() {
        let mut end = JsonEnd::default();
        assert_eq!(end.push(" {\"a\": \"}]\\\"\", "), None);
        assert_eq!(end.push("\"b\": [1, {}]"), None);
        assert_eq!(end.push("}  trailing"), Some(1));
        let mut scalar = JsonEnd::default();
        assert_eq!(scalar.push("\"x\" } ]"), None);
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut scanner = StopScanner::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            match scanner.push(piece) {
                Scan::Continue(text) => out.push_str(&text),
                Scan::Stopped(text) => {
                    out.push_str(&text);
                    return (out, true);
                }
            }
        }
        out.push_str(&scanner.finish());
        (out, false)
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn cuts_at_stop_split_across_pieces() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D and more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn releases_false_alarm() {
        assert_eq!(run(&["END"], &["E", "N", "x"]), ("ENx".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["zz", "b"], &["abzz"]), ("a".into(), true));
    }

    #[test]
    fn holds_back_only_possible_prefix() {
        let mut scanner = StopScanner::new(vec!["\n\n".into()]);
        assert_eq!(scanner.push("line\n"), Scan::Continue("line".into()));
        assert_eq!(scanner.push("x"), Scan::Continue("\nx".into()));
    }

    #[test]
    fn multibyte_stop_prefixes_are_char_safe() {
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
        assert_eq!(run(&["éa"], &["é", "b"]), ("éb".into(), false));
    }
}
