//! Everything checked before an adapter is stored: a PEFT LoRA config that
//! mistral.rs 0.8.1 applies faithfully, and tensors whose names, shapes and
//! dtypes fit the base model.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AdapterError;

/// Shapes of the base model, from its `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

impl BaseShape {
    pub fn from_model_dir(dir: &Path) -> anyhow::Result<BaseShape> {
        let config: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
        let field = |name: &str| -> anyhow::Result<usize> {
            config[name]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| anyhow::anyhow!("config.json lacks {name}"))
        };
        let heads = field("num_attention_heads")?;
        Ok(BaseShape {
            hidden: field("hidden_size")?,
            intermediate: field("intermediate_size")?,
            layers: field("num_hidden_layers")?,
            heads,
            kv_heads: field("num_key_value_heads").unwrap_or(heads),
        })
    }

    /// (in, out) of a target module.
    pub fn dims(&self, module: &str) -> Option<(usize, usize)> {
        let kv = self.kv_heads * (self.hidden / self.heads);
        match module {
            "q_proj" | "o_proj" => Some((self.hidden, self.hidden)),
            "k_proj" | "v_proj" => Some((self.hidden, kv)),
            "gate_proj" | "up_proj" => Some((self.hidden, self.intermediate)),
            "down_proj" => Some((self.intermediate, self.hidden)),
            _ => None,
        }
    }

    fn block(module: &str) -> &'static str {
        if matches!(module, "gate_proj" | "up_proj" | "down_proj") {
            "mlp"
        } else {
            "self_attn"
        }
    }

    /// Where peft stores a module's `lora_A`/`lora_B` in one layer.
    pub fn lora_prefix(layer: usize, module: &str) -> String {
        format!(
            "base_model.model.model.layers.{layer}.{}.{module}",
            BaseShape::block(module)
        )
    }
}

pub const KNOWN_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Options peft writes that mistral.rs 0.8.1 would ignore, silently giving
/// a different model than the one trained: refused when set.
const UNSUPPORTED_OPTIONS: [&str; 8] = [
    "use_dora",
    "use_rslora",
    "rank_pattern",
    "alpha_pattern",
    "fan_in_fan_out",
    "modules_to_save",
    "layers_to_transform",
    "lora_bias",
];

/// Set means: true, a non-empty string/array/object, or a number.
fn is_set(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
        Value::Number(_) => true,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedAdapter {
    pub rank: usize,
    pub alpha: f64,
    pub target_modules: Vec<String>,
    pub sha256: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rank: usize,
    pub max_bytes: u64,
}

fn invalid(field: &str, message: impl Into<String>) -> AdapterError {
    AdapterError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

fn parse_config(config: &[u8], limits: &Limits) -> Result<(usize, f64, Vec<String>), AdapterError> {
    let config: Value = serde_json::from_slice(config).map_err(|e| {
        invalid(
            "adapter_config",
            format!("adapter_config.json is not valid JSON: {e}"),
        )
    })?;
    if !config.is_object() {
        return Err(invalid(
            "adapter_config",
            "adapter_config.json must be a JSON object",
        ));
    }
    match config.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(invalid(
                "adapter_config",
                format!("peft_type must be \"LORA\", got {other:?}"),
            ));
        }
    }
    for option in UNSUPPORTED_OPTIONS {
        if config.get(option).is_some_and(is_set) {
            return Err(invalid(
                "adapter_config",
                format!(
                    "`{option}` is set, but the engine (mistral.rs 0.8.1) would ignore it and serve a different model"
                ),
            ));
        }
    }
    let rank = config
        .get("r")
        .and_then(Value::as_u64)
        .filter(|r| *r > 0)
        .ok_or_else(|| invalid("adapter_config", "`r` must be a positive integer"))?
        as usize;
    if rank > limits.max_rank {
        return Err(invalid(
            "adapter_config",
            format!("rank {rank} exceeds the maximum of {}", limits.max_rank),
        ));
    }
    let alpha = config
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .filter(|a| a.is_finite() && *a > 0.0)
        .ok_or_else(|| invalid("adapter_config", "`lora_alpha` must be a positive number"))?;
    let targets: BTreeSet<String> = match config.get("target_modules") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid("adapter_config", "`target_modules` must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(Value::String(_)) => {
            return Err(invalid(
                "adapter_config",
                "`target_modules` as a regular expression is not supported; list the modules",
            ));
        }
        _ => {
            return Err(invalid(
                "adapter_config",
                "`target_modules` must be a non-empty list",
            ));
        }
    };
    if targets.is_empty() {
        return Err(invalid(
            "adapter_config",
            "`target_modules` must be a non-empty list",
        ));
    }
    if let Some(unknown) = targets
        .iter()
        .find(|t| !KNOWN_MODULES.contains(&t.as_str()))
    {
        return Err(invalid(
            "adapter_config",
            format!(
                "target module `{unknown}` does not exist in the base model (known: {})",
                KNOWN_MODULES.join(", ")
            ),
        ));
    }
    Ok((rank, alpha, targets.into_iter().collect()))
}

/// Validates an upload; `weights` is the content of `adapter_model.safetensors`.
pub fn validate(
    config: &[u8],
    weights: &[u8],
    base: &BaseShape,
    limits: &Limits,
) -> Result<ValidatedAdapter, AdapterError> {
    if weights.len() as u64 > limits.max_bytes {
        return Err(AdapterError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let (rank, alpha, targets) = parse_config(config, limits)?;
    let tensors = SafeTensors::deserialize(weights).map_err(|e| {
        invalid(
            "adapter_model",
            format!("adapter_model.safetensors is not a valid safetensors file: {e}"),
        )
    })?;
    let mut expected: HashMap<String, Vec<usize>> = HashMap::new();
    for layer in 0..base.layers {
        for module in &targets {
            let (input, output) = base.dims(module).unwrap_or((0, 0));
            let prefix = BaseShape::lora_prefix(layer, module);
            expected.insert(format!("{prefix}.lora_A.weight"), vec![rank, input]);
            expected.insert(format!("{prefix}.lora_B.weight"), vec![output, rank]);
        }
    }
    for (name, view) in tensors.tensors() {
        let Some(shape) = expected.get(&name) else {
            return Err(invalid(
                "adapter_model",
                format!(
                    "unexpected tensor `{name}` (only lora_A/lora_B of the target modules are supported)"
                ),
            ));
        };
        if view.shape() != shape.as_slice() {
            return Err(invalid(
                "adapter_model",
                format!(
                    "tensor `{name}` has shape {:?}, the base model needs {:?}",
                    view.shape(),
                    shape
                ),
            ));
        }
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(invalid(
                "adapter_model",
                format!(
                    "tensor `{name}` has dtype {:?}; use f32, f16 or bf16",
                    view.dtype()
                ),
            ));
        }
    }
    let present: BTreeSet<String> = tensors.names().into_iter().map(str::to_string).collect();
    if let Some(missing) = expected.keys().find(|name| !present.contains(*name)) {
        return Err(invalid(
            "adapter_model",
            format!("tensor `{missing}` is missing"),
        ));
    }
    Ok(ValidatedAdapter {
        rank,
        alpha,
        target_modules: targets,
        sha256: hex::encode(Sha256::digest(weights)),
        size_bytes: weights.len() as u64,
    })
}

#[cfg(test)]
mod tests;
