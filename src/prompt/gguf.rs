//! What a GGUF file says about its tokenizer and chat template, in Hugging
//! Face's terms: the byte-level BPE `tokenizer.json` rebuilt from
//! `tokenizer.ggml.tokens`/`merges`. Shared by `convert-gguf` and by the
//! gateway's own prompt measuring for GGUF bases.

use anyhow::Context;
use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::json;

pub fn meta<'a>(content: &'a Content, key: &str) -> anyhow::Result<&'a Value> {
    content
        .metadata
        .get(key)
        .with_context(|| format!("GGUF metadata lacks {key}"))
}

pub fn meta_usize(content: &Content, key: &str) -> anyhow::Result<usize> {
    Ok(meta(content, key)?.to_u32()? as usize)
}

pub fn strings(content: &Content, key: &str) -> anyhow::Result<Vec<String>> {
    meta(content, key)?
        .to_vec()?
        .iter()
        .map(|v| Ok(v.to_string()?.clone()))
        .collect()
}

pub fn tokenizer_json(content: &Content) -> anyhow::Result<(serde_json::Value, Vec<String>)> {
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    let merges = strings(content, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = meta(content, "tokenizer.ggml.token_type")?
        .to_vec()?
        .iter()
        .map(|v| v.to_i32().unwrap_or(1))
        .collect();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), json!(id)))
        .collect();
    // Control tokens (type 3) are matched whole and kept out of the BPE.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| types.get(*id) == Some(&3))
        .map(|(id, token)| {
            json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        // SmolLM2's ("smollm" in llama.cpp): digits one by one, then GPT-2 byte level.
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    Ok((tokenizer, tokens))
}

/// Reads only the metadata of a GGUF file.
pub fn read_content(path: &std::path::Path) -> anyhow::Result<Content> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    Ok(Content::read(&mut file)?)
}

/// The GGUF's tokenizer as a `tokenizers::Tokenizer`.
pub fn tokenizer(content: &Content) -> anyhow::Result<tokenizers::Tokenizer> {
    let (json, _) = tokenizer_json(content)?;
    tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json)?)
        .map_err(|e| anyhow::anyhow!("the GGUF's tokenizer cannot be rebuilt: {e}"))
}

/// The GGUF's chat template with its BOS and EOS token texts.
pub fn chat_template(content: &Content) -> anyhow::Result<(String, String, String)> {
    let template = meta(content, "tokenizer.chat_template")?
        .to_string()?
        .clone();
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    let token = |key: &str| -> String {
        meta(content, key)
            .ok()
            .and_then(|v| v.to_u32().ok())
            .and_then(|id| tokens.get(id as usize).cloned())
            .unwrap_or_default()
    };
    Ok((
        template,
        token("tokenizer.ggml.bos_token_id"),
        token("tokenizer.ggml.eos_token_id"),
    ))
}
