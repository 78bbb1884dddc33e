//! A prompt's size in bytes bounds its size in tokens from below: no token
//! covers more than the longest entry of the vocabulary. So a prompt whose
//! bytes could not fit the context even if every token were the longest one
//! is refused before tokenizing, and rate limits can reserve that many
//! tokens before the exact count is known.

use tokenizers::Tokenizer;

/// Bytes of input text one token can cover at most, with a margin where a
/// normalizer could shrink the text first (NFKC turns a 3-byte full-width
/// letter into 1 byte).
pub fn max_token_bytes(tokenizer: &Tokenizer) -> usize {
    // A vocabulary entry is written in its tokenizer's own alphabet: GPT-2's
    // byte-level characters (one per byte, each one or two bytes of UTF-8),
    // SentencePiece's `▁` (three bytes for one space) or byte-fallback
    // `<0xAB>` (six for one). Its UTF-8 length is never less than the input
    // bytes it stands for.
    let longest_entry = tokenizer
        .get_vocab(true)
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(1)
        .max(1);
    let shrink = if tokenizer.get_normalizer().is_some() {
        3
    } else {
        1
    };
    longest_entry * shrink
}

/// What a prompt's byte length tells before tokenizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptSize {
    pub bytes: usize,
    /// The fewest tokens these bytes can become.
    pub min_tokens: usize,
}

impl PromptSize {
    pub fn of(bytes: usize, max_token_bytes: usize) -> PromptSize {
        PromptSize {
            bytes,
            min_tokens: bytes.div_ceil(max_token_bytes.max(1)).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_tokenizer() -> Tokenizer {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::fixture::write_tiny_llama(dir.path(), 1).expect("fixture");
        Tokenizer::from_file(dir.path().join("tokenizer.json")).expect("tokenizer")
    }

    #[test]
    fn no_text_tokenizes_into_fewer_tokens_than_the_bound() {
        let tokenizer = fixture_tokenizer();
        let longest = max_token_bytes(&tokenizer);
        // The fixture's longest entry is its `<|endoftext|>` special token.
        assert_eq!(longest, "<|endoftext|>".len());
        for text in [
            "hello world",
            "<|im_start|><|im_end|><|endoftext|>",
            "é ü 漢字 🎉",
            &"x".repeat(1000),
        ] {
            let tokens = tokenizer.encode(text, false).expect("encodes").len();
            let size = PromptSize::of(text.len(), longest);
            assert!(
                size.min_tokens <= tokens,
                "{text:?}: bound {} > real {tokens}",
                size.min_tokens
            );
        }
    }

    #[test]
    fn the_bound_is_at_least_one_token() {
        assert_eq!(PromptSize::of(0, 16).min_tokens, 1);
        assert_eq!(PromptSize::of(33, 16).min_tokens, 3);
        assert_eq!(PromptSize::of(10, 0).min_tokens, 10);
    }
}
