//! Streaming text from generated token ids.
//!
//! A token is not a piece of text: byte-level BPE (GPT-2's alphabet) and
//! byte-fallback (`<0xE2>`) tokenizers split one character across several tokens,
//! and sentencepiece-style decoders drop the leading space of whichever token
//! comes first in a decode call. Decoding each token on its own therefore emits
//! broken characters and loses spaces. Decoding the whole sequence after every
//! token is right but quadratic.
//!
//! This decoder uses the offsets scheme of text-generation-inference (and of
//! `tokenizers`' own `DecodeStream`, which borrows the tokenizer and so cannot
//! live in a long-running request): it decodes a small window twice, once up to
//! the last emitted token and once including the new ones, and emits the
//! difference, unless the text ends in U+FFFD, the sign of a character still
//! incomplete. The window starts one token before the unemitted ones, so the
//! new tokens are decoded with the context that decides their leading space,
//! and the concatenated deltas equal `tokenizer.decode(all_ids)`.

use std::sync::Arc;

use tokenizers::Tokenizer;

/// Decoding failed inside the tokenizer's decoder.
#[derive(Debug)]
pub struct DecodeError(tokenizers::Error);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot decode generated tokens: {}", self.0)
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Turns a stream of token ids into text deltas.
pub struct IncrementalDecoder {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    /// The window: the last emitted token(s), then the tokens not yet emitted.
    ids: Vec<u32>,
    /// How many of `ids` are already emitted (TGI's read offset, relative to the
    /// window start, which is TGI's prefix offset).
    read: usize,
    /// `decode(ids[..read])`, kept so that a held-back token costs one decode.
    prefix_text: String,
}

const REPLACEMENT: char = '\u{FFFD}';

impl IncrementalDecoder {
    pub fn new(tokenizer: Arc<Tokenizer>, skip_special_tokens: bool) -> IncrementalDecoder {
        IncrementalDecoder {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            read: 0,
            prefix_text: String::new(),
        }
    }

    /// Text newly completed by `token`, often empty: a character split across
    /// tokens comes out whole once its last byte arrives.
    pub fn push(&mut self, token: u32) -> Result<String, DecodeError> {
        self.ids.push(token);
        let text = match self.decode(&self.ids) {
            Ok(text) => text,
            Err(e) => {
                // Leave the state as it was, so the stream can go on.
                self.ids.pop();
                return Err(e);
            }
        };
        // A trailing U+FFFD may be a character whose last bytes are still to
        // come. Holding it is exact but unbounded: a model that emits nothing
        // but invalid bytes grows the window until its first valid character
        // (from the text alone a final U+FFFD cannot be told from a pending one
        // for every decoder, so there is no safe cut-off).
        if text.len() <= self.prefix_text.len() || text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let delta = suffix_after(&text, &self.prefix_text).to_string();
        self.advance()?;
        Ok(delta)
    }

    /// Whatever is still held back at the end of the stream; an incomplete
    /// character comes out as U+FFFD, as `decode` would give it.
    pub fn finish(&mut self) -> String {
        if self.read == self.ids.len() {
            return String::new();
        }
        // Errors would have surfaced in `push`, which decoded these same ids.
        let text = self.decode(&self.ids).unwrap_or_default();
        let delta = suffix_after(&text, &self.prefix_text).to_string();
        if self.advance().is_err() {
            self.ids.clear();
            self.read = 0;
            self.prefix_text.clear();
        }
        delta
    }

    /// Marks everything in the window emitted; the newest tokens become the
    /// context for the next ones.
    fn advance(&mut self) -> Result<(), DecodeError> {
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix_text = self.decode(&self.ids)?;
        Ok(())
    }

    fn decode(&self, ids: &[u32]) -> Result<String, DecodeError> {
        self.tokenizer
            .decode(ids, self.skip_special_tokens)
            .map_err(DecodeError)
    }
}

impl std::fmt::Debug for IncrementalDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncrementalDecoder")
            .field("skip_special_tokens", &self.skip_special_tokens)
            .field("ids", &self.ids)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

/// `text` minus `prefix`. Decoders keep the decode of a window a prefix of the
/// decode of a longer one; if one ever does not, emit from where they differ
/// rather than slicing inside a character.
fn suffix_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    if let Some(rest) = text.strip_prefix(prefix) {
        return rest;
    }
    let common = text
        .char_indices()
        .zip(prefix.chars())
        .find(|((_, a), b)| a != b)
        .map_or(prefix.len().min(text.len()), |((i, _), _)| i);
    text.get(common..).unwrap_or("")
}

#[cfg(test)]
mod tests;
