//! LoRA adapters kept apart from the base: each is only its A/B pairs, at
//! its own rank and scaling, for any subset of the seven projections. A
//! step's rows are ordered so each adapter's rows are contiguous; every
//! projection then adds `x·Aᵀ·Bᵀ·(α/r)` to just those rows. Loading one is
//! reading its tensors: milliseconds, and memory equal to its file.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Module {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Module {
    pub const ALL: [Module; 7] = [
        Module::Q,
        Module::K,
        Module::V,
        Module::O,
        Module::Gate,
        Module::Up,
        Module::Down,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Module::Q => "q_proj",
            Module::K => "k_proj",
            Module::V => "v_proj",
            Module::O => "o_proj",
            Module::Gate => "gate_proj",
            Module::Up => "up_proj",
            Module::Down => "down_proj",
        }
    }

    pub fn from_name(name: &str) -> Option<Module> {
        Module::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn block(self) -> &'static str {
        match self {
            Module::Gate | Module::Up | Module::Down => "mlp",
            _ => "self_attn",
        }
    }

    /// (in, out) features.
    pub fn dims(self, config: &LlamaConfig) -> (usize, usize) {
        let attention = config.heads * config.head_dim;
        let kv = config.kv_heads * config.head_dim;
        match self {
            Module::Q => (config.hidden, attention),
            Module::K | Module::V => (config.hidden, kv),
            Module::O => (attention, config.hidden),
            Module::Gate | Module::Up => (config.hidden, config.intermediate),
            Module::Down => (config.intermediate, config.hidden),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// `Aᵀ` (`[in, r]`) and `Bᵀ·scale` (`[r, out]`), ready to multiply.
struct Pair {
    a_t: Tensor,
    b_t: Tensor,
}

pub struct AdapterWeights {
    /// `[layer][module]`.
    pairs: Vec<[Option<Pair>; 7]>,
    bytes: usize,
}

/// Rows `start..start + len` of a step use `adapter`.
pub struct RowGroup<'a> {
    pub start: usize,
    pub len: usize,
    pub adapter: &'a AdapterWeights,
}

impl AdapterWeights {
    /// Reads a PEFT `adapter_model.safetensors` (validated at upload: the
    /// shapes and names are the base's). `scale` is `alpha / rank`.
    pub fn load(
        path: &Path,
        config: &LlamaConfig,
        scale: f64,
        dtype: DType,
        device: &Device,
    ) -> anyhow::Result<AdapterWeights> {
        let mut tensors = candle_core::safetensors::load(path, device)?;
        let mut pairs: Vec<[Option<Pair>; 7]> =
            (0..config.layers).map(|_| Default::default()).collect();
        let mut bytes = 0;
        for (layer, slots) in pairs.iter_mut().enumerate() {
            for module in Module::ALL {
                let prefix = format!(
                    "base_model.model.model.layers.{layer}.{}.{}",
                    module.block(),
                    module.name()
                );
                let a = tensors.remove(&format!("{prefix}.lora_A.weight"));
                let b = tensors.remove(&format!("{prefix}.lora_B.weight"));
                let (a, b) = match (a, b) {
                    (Some(a), Some(b)) => (a, b),
                    (None, None) => continue,
                    _ => anyhow::bail!("{prefix}: lora_A and lora_B must come together"),
                };
                let (input, output) = module.dims(config);
                let (rank, a_in) = a.dims2()?;
                let (b_out, b_rank) = b.dims2()?;
                if a_in != input || b_out != output || b_rank != rank {
                    anyhow::bail!(
                        "{prefix}: shapes {:?}/{:?} do not fit the base ({input} -> {output})",
                        a.dims(),
                        b.dims()
                    );
                }
                // Stored transposed and contiguous: the hot path multiplies
                // without copying. The scale is folded into B once.
                let a_t = a.to_dtype(dtype)?.t()?.contiguous()?;
                let b_t = (b.to_dtype(DType::F64)? * scale)?
                    .to_dtype(dtype)?
                    .t()?
                    .contiguous()?;
                bytes += (a_t.elem_count() + b_t.elem_count()) * dtype.size_in_bytes();
                slots[module.index()] = Some(Pair { a_t, b_t });
            }
        }
        if let Some(extra) = tensors.keys().next() {
            anyhow::bail!("unexpected tensor {extra} in the adapter");
        }
        Ok(AdapterWeights { pairs, bytes })
    }

    /// Memory its tensors hold.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn pair(&self, layer: usize, module: Module) -> Option<&Pair> {
        self.pairs.get(layer)?[module.index()].as_ref()
    }
}

/// Adds each group's low-rank update to `y = x·Wᵀ`, for its rows only.
pub fn add_deltas(
    y: &Tensor,
    x: &Tensor,
    layer: usize,
    module: Module,
    groups: &[RowGroup<'_>],
) -> candle_core::Result<Tensor> {
    let mut pieces = Vec::new();
    let mut covered = 0;
    let rows = y.dim(0)?;
    let width = y.dim(1)?;
    for group in groups {
        let Some(pair) = group.adapter.pair(layer, module) else {
            continue;
        };
        if group.start > covered {
            pieces.push(Tensor::zeros(
                (group.start - covered, width),
                y.dtype(),
                y.device(),
            )?);
        }
        let rows_in = x.narrow(0, group.start, group.len)?;
        pieces.push(rows_in.matmul(&pair.a_t)?.matmul(&pair.b_t)?);
        covered = group.start + group.len;
    }
    if pieces.is_empty() {
        return Ok(y.clone());
    }
    if covered < rows {
        pieces.push(Tensor::zeros(
            (rows - covered, width),
            y.dtype(),
            y.device(),
        )?);
    }
    y + Tensor::cat(&pieces, 0)?
}
