//! Unit tests of `detokenize`.

use super::*;
use serde_json::{Map, Value, json};

/// GPT-2's reversible byte -> printable character mapping.
fn byte_to_char(byte: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(byte) {
        return char::from(byte);
    }
    let offset = (0..byte).filter(|b| !printable(*b)).count() as u32;
    char::from_u32(256 + offset).expect("valid char")
}

fn byte_level_str(bytes: &[u8]) -> String {
    bytes.iter().map(|b| byte_to_char(*b)).collect()
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

fn added_tokens(first_id: usize, tokens: &[&str]) -> Vec<Value> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": first_id + i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect()
}

/// The gateway fixture's tokenizer (one token per byte, GPT-2 alphabet),
/// plus optional merges so that some tokens end in the middle of a character.
fn byte_level_tokenizer(merges: &[(&[u8], &[u8])]) -> Arc<Tokenizer> {
    let mut vocab = Map::new();
    for byte in 0..=255u8 {
        vocab.insert(byte_to_char(byte).to_string(), json!(byte));
    }
    let mut merge_list = Vec::new();
    for (a, b) in merges {
        let (a, b) = (byte_level_str(a), byte_level_str(b));
        let id = vocab.len();
        vocab.insert(format!("{a}{b}"), json!(id));
        merge_list.push(format!("{a} {b}"));
    }
    let first_special = vocab.len();
    for (i, t) in SPECIALS.iter().enumerate() {
        vocab.insert(t.to_string(), json!(first_special + i));
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let config = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens(first_special, &SPECIALS),
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merge_list}
    });
    load(&config)
}

/// A sentencepiece-style (Llama 2 / Mistral) tokenizer: `▁` for spaces, a few
/// merged words, `<0xNN>` byte fallback for everything else. `decoder` picks
/// between the two decoder chains such tokenizers ship with.
fn byte_fallback_tokenizer(metaspace_decoder: bool) -> Arc<Tokenizer> {
    let mut vocab = Map::new();
    for t in ["<unk>", "<s>", "</s>"] {
        vocab.insert(t.into(), json!(vocab.len()));
    }
    for byte in 0..=255u8 {
        vocab.insert(format!("<0x{byte:02X}>"), json!(vocab.len()));
    }
    let letters = "▁abcdefghijklmnopqrstuvwxyzHW,.!?\n";
    for c in letters.chars() {
        vocab.insert(c.to_string(), json!(vocab.len()));
    }
    let merges = [
        ("▁", "H"),
        ("e", "l"),
        ("el", "l"),
        ("ell", "o"),
        ("▁H", "ello"),
        ("▁", "w"),
        ("o", "r"),
        ("or", "l"),
        ("orl", "d"),
        ("▁w", "orld"),
        ("▁", "▁"),
    ];
    for (a, b) in merges {
        vocab.insert(format!("{a}{b}"), json!(vocab.len()));
    }
    let decoder = if metaspace_decoder {
        json!({"type": "Sequence", "decoders": [
            {"type": "ByteFallback"},
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}]})
    } else {
        json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})
    };
    let config = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens(0, &["<unk>", "<s>", "</s>"]),
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": decoder,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                  "ignore_merges": false, "vocab": vocab,
                  "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()}
    });
    load(&config)
}

fn load(config: &Value) -> Arc<Tokenizer> {
    let bytes = serde_json::to_vec(config).expect("serialise");
    Arc::new(Tokenizer::from_bytes(bytes).expect("tokenizer loads"))
}

const TEXTS: &[&str] = &[
    "Hello world",
    "Hello, world! How are you?",
    " leading space and  double  spaces ",
    "line one\nline two\n\n  indented\n",
    "Café naïve façade — déjà vu",
    "日本語のテキストと中文",
    "emoji 😀🚀 and family 👩‍👩‍👧 flags 🇫🇷",
    "mixed: é😀a€\u{10FFFF}z",
    "\u{FFFD} a real replacement character",
    "",
];

/// Streams `ids` through the decoder; checks deltas against a one-shot decode.
fn assert_streams(tokenizer: &Arc<Tokenizer>, ids: &[u32], skip_special_tokens: bool) {
    let expected = tokenizer.decode(ids, skip_special_tokens).expect("decode");
    let mut decoder = IncrementalDecoder::new(tokenizer.clone(), skip_special_tokens);
    let mut streamed = String::new();
    for &id in ids {
        let delta = decoder.push(id).expect("push");
        if !expected.contains(REPLACEMENT) {
            assert!(
                !delta.contains(REPLACEMENT),
                "delta {delta:?} of {expected:?}"
            );
        }
        streamed.push_str(&delta);
        assert!(decoder.ids.len() <= 8, "window grew: {decoder:?}");
    }
    streamed.push_str(&decoder.finish());
    assert_eq!(streamed, expected, "ids {ids:?}");
    assert_eq!(decoder.finish(), "", "finish is idempotent");

    // Same text as the tokenizers crate's own streaming decoder.
    let mut stream = tokenizer.decode_stream(skip_special_tokens);
    let mut reference = String::new();
    for &id in ids {
        if let Some(delta) = stream.step(id).expect("step") {
            reference.push_str(&delta);
        }
    }
    assert!(
        expected.starts_with(&reference),
        "{reference:?} vs {expected:?}"
    );
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer
        .encode(text, false)
        .expect("encode")
        .get_ids()
        .to_vec()
}

#[test]
fn byte_level_one_token_per_byte() {
    let tokenizer = byte_level_tokenizer(&[]);
    for text in TEXTS {
        let ids = encode(&tokenizer, text);
        assert_eq!(ids.len(), text.len(), "one token per byte");
        assert_streams(&tokenizer, &ids, true);
    }
}

#[test]
fn byte_level_tokens_that_straddle_characters() {
    // "Ġ" + first byte of é, last byte of é + "a", the 4 bytes of 😀 as 3 + 1.
    let tokenizer = byte_level_tokenizer(&[
        (b" ", &[0xC3]),
        (&[0xA9], b"a"),
        (&[0xF0], &[0x9F]),
        (&[0xF0, 0x9F], &[0x98]),
        (b"H", b"e"),
        (b" ", b"w"),
    ]);
    for text in TEXTS.iter().copied().chain([" éa  éa 😀 Hello world"]) {
        let ids = encode(&tokenizer, text);
        assert_streams(&tokenizer, &ids, true);
    }
    assert!(encode(&tokenizer, " éa").len() < 3, "merges are in use");
}

#[test]
fn special_tokens_are_skipped_or_kept() {
    let tokenizer = byte_level_tokenizer(&[]);
    let ids = encode(
        &tokenizer,
        "<|im_start|>assistant\nHé<|im_end|>😀<|endoftext|>",
    );
    assert!(ids.contains(&257) && ids.contains(&258), "{ids:?}");
    assert_streams(&tokenizer, &ids, true);
    assert_streams(&tokenizer, &ids, false);
    // A special token between the bytes of one character.
    let mut split = encode(&tokenizer, "a€");
    split.insert(2, 258);
    assert_streams(&tokenizer, &split, true);
    assert_streams(&tokenizer, &split, false);
}

#[test]
fn byte_fallback_sentencepiece_tokenizers() {
    for metaspace in [false, true] {
        let tokenizer = byte_fallback_tokenizer(metaspace);
        for text in TEXTS {
            let ids = encode(&tokenizer, text);
            assert_streams(&tokenizer, &ids, true);
        }
        let ids = encode(&tokenizer, "Hello world é");
        let pieces: Vec<String> = ids
            .iter()
            .map(|id| tokenizer.id_to_token(*id).expect("token"))
            .collect();
        assert_eq!(
            pieces,
            ["▁Hello", "▁world", "▁", "<0xC3>", "<0xA9>"],
            "the tokenizer exercises merges, leading spaces and byte fallback"
        );
        // With a BOS in front, the first word's space survives decoding.
        let mut with_bos = vec![1];
        with_bos.extend(&ids);
        assert_streams(&tokenizer, &with_bos, true);
    }
}

#[test]
fn incomplete_character_at_the_end_becomes_replacement() {
    let tokenizer = byte_level_tokenizer(&[]);
    // "a" then the first two bytes of "€".
    let ids = [u32::from(b'a'), 0xE2, 0x82];
    let mut decoder = IncrementalDecoder::new(tokenizer.clone(), true);
    let deltas: Vec<String> = ids
        .iter()
        .map(|id| decoder.push(*id).expect("push"))
        .collect();
    assert_eq!(deltas, ["a", "", ""]);
    let tail = decoder.finish();
    assert_eq!(
        format!("a{tail}"),
        tokenizer.decode(&ids, true).expect("decode")
    );
    assert!(tail.contains(REPLACEMENT));

    let tokenizer = byte_fallback_tokenizer(false);
    let ids = encode(&tokenizer, "a€");
    assert_streams(&tokenizer, &ids[..ids.len() - 1], true);
}

#[test]
fn invalid_bytes_come_out_as_decode_gives_them() {
    let tokenizer = byte_level_tokenizer(&[]);
    // Lone lead bytes, a stray continuation byte, a truncated character.
    let ids: Vec<u32> = std::iter::repeat_n(0xE2, 5)
        .chain([
            u32::from(b'x'),
            0x80,
            u32::from(b'y'),
            0xF0,
            0x9F,
            u32::from(b'z'),
        ])
        .collect();
    assert!(
        tokenizer
            .decode(&ids, true)
            .expect("decode")
            .contains(REPLACEMENT)
    );
    assert_streams(&tokenizer, &ids, true);
    // The window, grown while the text ended in U+FFFD, shrinks again.
    let mut decoder = IncrementalDecoder::new(tokenizer, true);
    for id in &ids {
        let _ = decoder.push(*id).expect("push");
    }
    assert!(decoder.ids.len() <= 3, "{decoder:?}");
}

#[test]
fn window_stays_small_over_a_long_stream() {
    let tokenizer = byte_level_tokenizer(&[]);
    let text = "Streaming 日本語 and émojis 😀 ".repeat(400);
    let ids = encode(&tokenizer, &text);
    let mut decoder = IncrementalDecoder::new(tokenizer.clone(), true);
    let mut out = String::new();
    for id in &ids {
        out.push_str(&decoder.push(*id).expect("push"));
        assert!(decoder.ids.len() <= 5, "window {}", decoder.ids.len());
    }
    out.push_str(&decoder.finish());
    assert_eq!(out, text);
}

#[test]
fn unknown_ids_are_ignored_like_decode() {
    let tokenizer = byte_level_tokenizer(&[]);
    assert_streams(
        &tokenizer,
        &[u32::from(b'o'), 999_999, u32::from(b'k')],
        true,
    );
}

#[test]
fn suffix_after_never_splits_a_character() {
    assert_eq!(suffix_after("héllo", "hé"), "llo");
    assert_eq!(suffix_after("héllo", "hè"), "éllo");
    assert_eq!(suffix_after("ab", "abc"), "");
    assert_eq!(suffix_after("", ""), "");
}

/// SmolLM2's real tokenizer (49k byte-level BPE tokens with merges that cut
/// characters), once the gateway's build scripts have written it, or from
/// `SMOLLM2_TOKENIZER_JSON`.
#[test]
fn smollm2_tokenizer_when_available() {
    let path = match std::env::var_os("SMOLLM2_TOKENIZER_JSON") {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            let Some(home) = std::env::var_os("HOME") else {
                eprintln!("note: HOME unset; skipping the SmolLM2 tokenizer case");
                return;
            };
            std::path::Path::new(&home)
                .join(".cache/loragate/models/smollm2-135m-instruct-f32/tokenizer.json")
        }
    };
    if !path.exists() {
        eprintln!(
            "note: {} absent; skipping the SmolLM2 tokenizer case",
            path.display()
        );
        return;
    }
    let tokenizer = Arc::new(Tokenizer::from_file(&path).expect("SmolLM2 tokenizer loads"));
    for text in TEXTS
        .iter()
        .copied()
        .chain(["<|im_start|>assistant\nSure! Here's 日本語 😀 café 123<|im_end|>"])
    {
        let ids = encode(&tokenizer, text);
        assert!(
            ids.len() < text.len().max(1) || text.is_empty(),
            "merges in use"
        );
        assert_streams(&tokenizer, &ids, true);
        assert_streams(&tokenizer, &ids, false);
    }
}
