//! Everything checked before an adapter is stored: a PEFT LoRA config that
//! mistral.rs 0.8.1 applies faithfully (field by field in `peft`), and
//! tensors whose names, shapes and dtypes fit the base model and whose
//! values are all finite.

mod peft;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AdapterError;
use super::staging::Received;

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
    if let Some(why) = config.as_object().and_then(peft::refused_option) {
        return Err(invalid("adapter_config", why));
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
    let checked = check(config, weights, base, limits)?;
    Ok(checked.with(hex::encode(Sha256::digest(weights)), weights.len() as u64))
}

/// Validates an upload whose weights were streamed to `weights` (already
/// size-capped and hashed on the way: `received`). Blocks: reads the file.
pub fn validate_file(
    config: &[u8],
    weights: &Path,
    received: &Received,
    base: &BaseShape,
    limits: &Limits,
) -> Result<ValidatedAdapter, AdapterError> {
    let file = std::fs::File::open(weights)?;
    // SAFETY: the file is in this upload's private staging folder, written
    // and fsynced by this process, and nothing writes to it while mapped.
    let mapped = unsafe { memmap2::Mmap::map(&file)? };
    if mapped.len() as u64 != received.size {
        return Err(AdapterError::Io(std::io::Error::other(
            "the staged weights changed size after upload",
        )));
    }
    let checked = check(config, &mapped, base, limits)?;
    Ok(checked.with(received.sha256.clone(), received.size))
}

struct Checked {
    rank: usize,
    alpha: f64,
    target_modules: Vec<String>,
}

impl Checked {
    fn with(self, sha256: String, size_bytes: u64) -> ValidatedAdapter {
        ValidatedAdapter {
            rank: self.rank,
            alpha: self.alpha,
            target_modules: self.target_modules,
            sha256,
            size_bytes,
        }
    }
}

fn check(
    config: &[u8],
    weights: &[u8],
    base: &BaseShape,
    limits: &Limits,
) -> Result<Checked, AdapterError> {
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
    let mut views = tensors.tensors();
    // Names in order, so the first problem reported is the same every time.
    views.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in &views {
        let Some(shape) = expected.get(name) else {
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
        if let Some(position) = first_non_finite(view.dtype(), view.data()) {
            return Err(invalid(
                "adapter_model",
                format!(
                    "tensor `{name}` holds a non-finite value (NaN or infinity) at element {position}; the engine would merge it into the base weights"
                ),
            ));
        }
    }
    let present: BTreeSet<&str> = views.iter().map(|(name, _)| name.as_str()).collect();
    let mut missing: Vec<&String> = expected
        .keys()
        .filter(|name| !present.contains(name.as_str()))
        .collect();
    missing.sort();
    if let Some(missing) = missing.first() {
        return Err(invalid(
            "adapter_model",
            format!("tensor `{missing}` is missing"),
        ));
    }
    Ok(Checked {
        rank,
        alpha,
        target_modules: targets,
    })
}

/// Index of the first NaN or infinity in little-endian `data` of a float
/// dtype: its exponent bits all ones.
fn first_non_finite(dtype: Dtype, data: &[u8]) -> Option<usize> {
    match dtype {
        Dtype::F32 => data.chunks_exact(4).position(|b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        Dtype::F16 => data
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        Dtype::BF16 => data
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
