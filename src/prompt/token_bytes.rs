//! A token's raw bytes, as OpenAI's `logprobs.bytes` reports them. Decoding
//! one token as text is lossy (a token may hold half a character), so the
//! bytes are read from the vocabulary entry itself: GPT-2's byte-level
//! alphabet (one character per byte), SentencePiece's byte fallback
//! (`<0xAB>`) and `▁` for a space, or an added token's literal text.

use std::collections::HashMap;

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;

/// Bytes per vocabulary entry, computed once per model.
pub struct TokenBytes {
    byte_level: bool,
    added: HashMap<u32, String>,
    unicode_to_byte: HashMap<char, u8>,
}

/// GPT-2's reversible byte-to-character mapping.
fn byte_to_char(byte: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(byte) {
        return char::from(byte);
    }
    let offset = (0..byte).filter(|b| !printable(*b)).count() as u32;
    char::from_u32(256 + offset).unwrap_or('?')
}

fn has_byte_level(decoder: Option<&DecoderWrapper>) -> bool {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => true,
        Some(DecoderWrapper::Sequence(sequence)) => sequence
            .get_decoders()
            .iter()
            .any(|d| matches!(d, DecoderWrapper::ByteLevel(_))),
        _ => false,
    }
}

impl TokenBytes {
    pub fn new(tokenizer: &Tokenizer) -> TokenBytes {
        TokenBytes {
            byte_level: has_byte_level(tokenizer.get_decoder()),
            added: tokenizer
                .get_added_tokens_decoder()
                .into_iter()
                .map(|(id, token)| (id, token.content))
                .collect(),
            unicode_to_byte: (0..=255u8).map(|b| (byte_to_char(b), b)).collect(),
        }
    }

    pub fn of(&self, tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
        if let Some(text) = self.added.get(&id) {
            return text.as_bytes().to_vec();
        }
        let Some(piece) = tokenizer.id_to_token(id) else {
            return Vec::new();
        };
        if self.byte_level {
            let bytes: Option<Vec<u8>> = piece
                .chars()
                .map(|c| self.unicode_to_byte.get(&c).copied())
                .collect();
            if let Some(bytes) = bytes {
                return bytes;
            }
        }
        if let Some(hex) = piece.strip_prefix("<0x").and_then(|r| r.strip_suffix('>'))
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            return vec![byte];
        }
        piece.replace('\u{2581}', " ").into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_entries_map_back_to_their_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::fixture::write_tiny_llama(dir.path(), 1).expect("fixture");
        let tokenizer = Tokenizer::from_file(dir.path().join("tokenizer.json")).expect("tokenizer");
        let bytes = TokenBytes::new(&tokenizer);
        // The fixture's ids are the bytes themselves, then the specials.
        assert_eq!(bytes.of(&tokenizer, u32::from(b' ')), vec![b' ']);
        assert_eq!(
            bytes.of(&tokenizer, 0xE2),
            vec![0xE2],
            "half a character stays raw"
        );
        assert_eq!(bytes.of(&tokenizer, 257), b"<|im_start|>".to_vec());
        let text = "h\u{e9}llo \u{1F389}";
        let ids = tokenizer
            .encode(text, false)
            .expect("encodes")
            .get_ids()
            .to_vec();
        let joined: Vec<u8> = ids
            .iter()
            .flat_map(|&id| bytes.of(&tokenizer, id))
            .collect();
        assert_eq!(joined, text.as_bytes());
    }
}
