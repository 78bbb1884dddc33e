//! A Llama-family decoder's shape, read from the model folder's
//! `config.json` (and `generation_config.json` for extra stop tokens).
//! SmolLM2, Llama 2/3.x and Mistral share this layout; Qwen2 adds biases to
//! q/k/v. Anything the engine would compute differently from the trained
//! model (another architecture, sliding windows, unknown RoPE scaling) is
//! refused here, with the key named, instead of served wrong.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_embeddings: bool,
    /// Qwen2: q/k/v projections carry biases.
    pub qkv_bias: bool,
    pub bos_token: Option<u32>,
    /// Every token that ends a turn (config and generation config together).
    pub eos_tokens: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (the "linear" type).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: usize,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: `{key}`: {message}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    /// transformers 5 writes `rope_parameters` in place of the two above.
    rope_parameters: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    sliding_window: Option<Value>,
    #[serde(default)]
    use_sliding_window: bool,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_u64)
            .map(|id| id as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl LlamaConfig {
    /// Two layers of two heads over one KV head of width 4: enough shape
    /// for the caches and attention to be tested by hand.
    #[cfg(test)]
    pub fn small_for_tests() -> LlamaConfig {
        LlamaConfig {
            hidden: 8,
            intermediate: 16,
            layers: 2,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            vocab: 10,
            max_positions: 64,
            rms_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::None,
            tie_embeddings: false,
            qkv_bias: false,
            bos_token: None,
            eos_tokens: vec![1],
        }
    }

    pub fn from_model_dir(dir: &Path) -> Result<LlamaConfig, ConfigError> {
        let path = dir.join("config.json");
        let error = |key: &str, message: String| ConfigError {
            file: path.display().to_string(),
            key: key.to_string(),
            message,
        };
        let bytes = std::fs::read(&path).map_err(|e| error("(file)", e.to_string()))?;
        let raw: Value =
            serde_json::from_slice(&bytes).map_err(|e| error("(file)", e.to_string()))?;
        let generation = std::fs::read(dir.join("generation_config.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
        LlamaConfig::from_json(&raw, generation.as_ref())
            .map_err(|(key, message)| error(&key, message))
    }

    pub fn from_json(
        raw: &Value,
        generation: Option<&Value>,
    ) -> Result<LlamaConfig, (String, String)> {
        let parsed: Raw = serde_path_to_error::deserialize(raw.clone())
            .map_err(|e| (e.path().to_string(), e.into_inner().to_string()))?;
        let supported = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];
        let architecture = parsed.architectures.first().cloned().unwrap_or_default();
        if !supported.contains(&architecture.as_str()) {
            return Err((
                "architectures".into(),
                format!(
                    "{architecture:?} is not served by the shared-base engine (it serves {}); use model.engine = \"mistralrs\"",
                    supported.join(", ")
                ),
            ));
        }
        let qwen = parsed.model_type.as_deref() == Some("qwen2");
        if parsed
            .hidden_act
            .as_deref()
            .is_some_and(|act| act != "silu")
        {
            return Err(("hidden_act".into(), "only silu is supported".into()));
        }
        if parsed.mlp_bias {
            return Err(("mlp_bias".into(), "MLP biases are not supported".into()));
        }
        if parsed.attention_bias && !qwen {
            return Err((
                "attention_bias".into(),
                "attention biases are supported for Qwen2 only".into(),
            ));
        }
        let windowed = parsed.sliding_window.as_ref().is_some_and(|w| !w.is_null());
        if windowed && (!qwen || parsed.use_sliding_window) {
            return Err((
                "sliding_window".into(),
                "sliding-window attention is not supported".into(),
            ));
        }
        let heads = parsed.num_attention_heads;
        let kv_heads = parsed.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err((
                "num_key_value_heads".into(),
                format!("{kv_heads} does not divide num_attention_heads ({heads})"),
            ));
        }
        let head_dim = parsed.head_dim.unwrap_or(parsed.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(("head_dim".into(), format!("{head_dim} must be even")));
        }
        let rope = parsed.rope_parameters.as_ref();
        let rope_theta = parsed
            .rope_theta
            .or_else(|| {
                rope.and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let scaling = parsed.rope_scaling.as_ref().or(rope);
        let rope_scaling = rope_scaling(scaling)?;
        let mut eos_tokens = token_ids(parsed.eos_token_id.as_ref());
        for id in token_ids(generation.and_then(|g| g.get("eos_token_id"))) {
            if !eos_tokens.contains(&id) {
                eos_tokens.push(id);
            }
        }
        Ok(LlamaConfig {
            hidden: parsed.hidden_size,
            intermediate: parsed.intermediate_size,
            layers: parsed.num_hidden_layers,
            heads,
            kv_heads,
            head_dim,
            vocab: parsed.vocab_size,
            max_positions: parsed.max_position_embeddings.unwrap_or(4096),
            rms_eps: parsed.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_embeddings: parsed.tie_word_embeddings,
            qkv_bias: qwen,
            bos_token: token_ids(parsed.bos_token_id.as_ref()).first().copied(),
            eos_tokens,
        })
    }

    /// Bytes of K and V one token occupies across all layers at `dtype_bytes`.
    pub fn kv_bytes_per_token(&self, dtype_bytes: usize) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes
    }

    /// RoPE's inverse frequencies, scaling applied.
    pub fn inverse_frequencies(&self) -> Vec<f64> {
        let dim = self.head_dim;
        let base: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / dim as f64))
            .collect();
        match self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => {
                let original = original_max_positions as f64;
                let low_wavelength = original / low_freq_factor;
                let high_wavelength = original / high_freq_factor;
                base.into_iter()
                    .map(|freq| {
                        let wavelength = 2.0 * std::f64::consts::PI / freq;
                        if wavelength < high_wavelength {
                            freq
                        } else if wavelength > low_wavelength {
                            freq / factor
                        } else {
                            let smooth = (original / wavelength - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        }
    }
}

fn rope_scaling(value: Option<&Value>) -> Result<RopeScaling, (String, String)> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let number = |key: &str| -> Result<f64, (String, String)> {
        value.get(key).and_then(Value::as_f64).ok_or_else(|| {
            (
                format!("rope_scaling.{key}"),
                "missing or not a number".to_string(),
            )
        })
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: number("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_positions: number("original_max_position_embeddings")? as usize,
        }),
        other => Err((
            "rope_scaling.rope_type".into(),
            format!("{other:?} is not supported (default, linear and llama3 are)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smollm2() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2
        })
    }

    #[test]
    fn reads_a_llama_config() {
        let config = LlamaConfig::from_json(&smollm2(), Some(&json!({"eos_token_id": [2, 7]})))
            .expect("valid");
        assert_eq!(config.head_dim, 64);
        assert_eq!(config.kv_heads, 3);
        assert_eq!(config.eos_tokens, vec![2, 7]);
        assert!(config.tie_embeddings);
        assert_eq!(config.kv_bytes_per_token(4), 2 * 30 * 3 * 64 * 4);
    }

    #[test]
    fn refuses_what_it_would_compute_differently() {
        let mut config = smollm2();
        config["architectures"] = json!(["GemmaForCausalLM"]);
        let (key, _) = LlamaConfig::from_json(&config, None).unwrap_err();
        assert_eq!(key, "architectures");
        let mut config = smollm2();
        config["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let (key, _) = LlamaConfig::from_json(&config, None).unwrap_err();
        assert_eq!(key, "rope_scaling.rope_type");
        let mut config = smollm2();
        config["num_key_value_heads"] = json!(4);
        assert!(LlamaConfig::from_json(&config, None).is_err());
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut config = smollm2();
        config["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let scaled = LlamaConfig::from_json(&config, None).unwrap();
        let plain = LlamaConfig::from_json(&smollm2(), None).unwrap();
        let (scaled, plain) = (scaled.inverse_frequencies(), plain.inverse_frequencies());
        assert_eq!(scaled[0], plain[0], "the highest frequency is untouched");
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
    }
}
