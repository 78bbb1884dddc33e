//! `loragate convert-gguf`: turns a Llama GGUF file into a Hugging Face
//! safetensors folder (f32) that mistral.rs loads through its plain and LoRA
//! loaders, the route whose LoRA merge is verified exact.
//!
//! Dequantizing is not enough: llama.cpp's converter permutes the rows of
//! `q_proj` and `k_proj` (for its interleaved RoPE), so those are permuted
//! back. The tokenizer is rebuilt as byte-level BPE from the GGUF's
//! `tokenizer.ggml.tokens`/`merges`, with its chat template.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use serde_json::json;

use loragate::fixture::weights::{NamedTensor, write_tensors};

use loragate::prompt::gguf::{meta, meta_usize, tokenizer_json};

/// Undoes llama.cpp's `permute(w, n_head)`: rows were regrouped from
/// (head, half, pair) to (head, pair, half).
fn unpermute(weight: &Tensor, heads: usize) -> anyhow::Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    Ok(weight
        .reshape((heads, rows / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let module = match part {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}"))
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(value)?)?;
    Ok(())
}

/// Converts `gguf` into a safetensors model folder `out`.
pub fn convert_gguf(gguf: &Path, out: &Path) -> anyhow::Result<()> {
    let mut file = File::open(gguf).with_context(|| format!("cannot open {}", gguf.display()))?;
    let content = Content::read(&mut file)?;
    let architecture = meta(&content, "general.architecture")?.to_string()?.clone();
    if architecture != "llama" {
        bail!("only llama GGUF files can be converted (this one is {architecture})");
    }
    let heads = meta_usize(&content, "llama.attention.head_count")?;
    let kv_heads = meta_usize(&content, "llama.attention.head_count_kv").unwrap_or(heads);
    let (tokenizer, tokens) = tokenizer_json(&content)?;
    let token = |key: &str| -> anyhow::Result<(u32, String)> {
        let id = meta(&content, key)?.to_u32()?;
        Ok((id, tokens.get(id as usize).cloned().unwrap_or_default()))
    };
    let (bos_id, bos) = token("tokenizer.ggml.bos_token_id")?;
    let (eos_id, eos) = token("tokenizer.ggml.eos_token_id")?;

    std::fs::create_dir_all(out)?;
    let mut tensors = Vec::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = hf_name(name) else {
            tracing::warn!(tensor = %name, "skipping a tensor with no Hugging Face counterpart");
            continue;
        };
        let weight = content
            .tensor(&mut file, name, &Device::Cpu)?
            .dequantize(&Device::Cpu)?;
        let weight = if name.ends_with("attn_q.weight") {
            unpermute(&weight, heads)?
        } else if name.ends_with("attn_k.weight") {
            unpermute(&weight, kv_heads)?
        } else {
            weight
        };
        tensors.push(NamedTensor {
            name: hf,
            shape: weight.dims().to_vec(),
            values: weight.flatten_all()?.to_vec1::<f32>()?,
        });
    }
    let tied = !tensors.iter().any(|t| t.name == "lm_head.weight");
    write_tensors(&out.join("model.safetensors"), &tensors)?;

    let float = |key: &str, default: f64| -> f64 {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_f32().ok())
            .map_or(default, f64::from)
    };
    write_json(
        &out.join("config.json"),
        &json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "hidden_size": meta_usize(&content, "llama.embedding_length")?,
            "intermediate_size": meta_usize(&content, "llama.feed_forward_length")?,
            "num_hidden_layers": meta_usize(&content, "llama.block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "vocab_size": tokens.len(),
            "max_position_embeddings": meta_usize(&content, "llama.context_length")?,
            "rms_norm_eps": float("llama.attention.layer_norm_rms_epsilon", 1e-5),
            // mistral.rs 0.8.1 reads `rope_theta` (not transformers 5's `rope_parameters`).
            "rope_theta": float("llama.rope.freq_base", 10000.0),
            "tie_word_embeddings": tied,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "torch_dtype": "float32",
        }),
    )?;
    write_json(
        &out.join("generation_config.json"),
        &json!({"bos_token_id": bos_id, "eos_token_id": eos_id}),
    )?;
    write_json(&out.join("tokenizer.json"), &tokenizer)?;
    let template = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    // Ordered, so a conversion is reproducible byte for byte.
    let mut tokenizer_config: BTreeMap<&str, serde_json::Value> = BTreeMap::from([
        ("bos_token", json!(bos)),
        ("eos_token", json!(eos)),
        ("add_bos_token", json!(false)),
        ("add_eos_token", json!(false)),
        ("tokenizer_class", json!("GPT2Tokenizer")),
    ]);
    if let Some(template) = template {
        tokenizer_config.insert("chat_template", json!(template));
    }
    write_json(
        &out.join("tokenizer_config.json"),
        &serde_json::to_value(tokenizer_config)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(h, 2, rows/h/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, rows, cols) = (2usize, 8usize, 3usize);
        let original: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let w = Tensor::from_vec(original.clone(), (rows, cols), &Device::Cpu).unwrap();
        let permuted = w
            .reshape((heads, 2, rows / heads / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        assert_ne!(
            permuted.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            original
        );
        let restored = unpermute(&permuted, heads).unwrap();
        assert_eq!(
            restored.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            original
        );
    }

    #[test]
    fn tensor_names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").as_deref(),
            Some("model.layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").as_deref(),
            Some("model.layers.0.mlp.down_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
