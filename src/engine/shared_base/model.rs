//! One copy of a Llama-family base model, run over a flattened batch: the
//! rows of every sequence in a step (prompt chunks and single decode tokens
//! alike) go through each projection as one matrix, and each row gets its
//! own sequence's adapter, position and KV cache.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::attention::{self, SequenceRows};
use super::config::LlamaConfig;
use super::kv::SequenceCache;
use super::lora::{Module, RowGroup};
use super::paged::PagedStep;

/// A weight matrix and, for Qwen2's q/k/v, its bias. Kept transposed
/// (`[in, out]`, contiguous): multiplying a few rows by it is several times
/// faster than by a transposed view, and it costs no extra memory.
struct Projection {
    weight_t: Tensor,
    bias: Option<Tensor>,
    module: Module,
}

impl Projection {
    fn load(
        vb: &VarBuilder,
        module: Module,
        config: &LlamaConfig,
        bias: bool,
    ) -> candle_core::Result<Projection> {
        let (input, output) = module.dims(config);
        let vb = vb.pp(module.block()).pp(module.name());
        Ok(Projection {
            weight_t: vb.get((output, input), "weight")?.t()?.contiguous()?,
            bias: if bias {
                Some(vb.get(output, "bias")?)
            } else {
                None
            },
            module,
        })
    }

    /// `x·Wᵀ (+ b)`, plus each row group's `x·Aᵀ·Bᵀ·scale` for this layer.
    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        groups: &[RowGroup<'_>],
    ) -> candle_core::Result<Tensor> {
        let mut y = x.matmul(&self.weight_t)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        super::lora::add_deltas(&y, x, layer, self.module, groups)
    }
}

struct Layer {
    input_norm: Tensor,
    q: Projection,
    k: Projection,
    v: Projection,
    o: Projection,
    post_norm: Tensor,
    gate: Projection,
    up: Projection,
    down: Projection,
}

pub struct Model {
    pub config: LlamaConfig,
    pub dtype: DType,
    device: Device,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `[hidden, vocab]`, contiguous (a copy even when tied to the embedding).
    lm_head_t: Tensor,
    /// RoPE tables by position: `[max_positions, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
}

/// The weight files of a model folder: every `*.safetensors` except adapters.
fn weight_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension().is_some_and(|e| e == "safetensors")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("adapter_"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// One step's rows, ordered so each adapter's rows are contiguous.
pub struct StepRows<'a> {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    /// Per sequence, in row order: its rows and its cache.
    pub sequences: Vec<(SequenceRows, &'a mut SequenceCache)>,
    /// Rows whose next-token logits are wanted (a sequence's last row).
    pub sample_rows: Vec<u32>,
    pub adapters: Vec<RowGroup<'a>>,
    /// Every row's slot when the caches are paged.
    pub paged: Option<PagedStep>,
}

impl Model {
    pub fn load(
        dir: &Path,
        config: LlamaConfig,
        dtype: DType,
        device: &Device,
    ) -> anyhow::Result<Model> {
        let files = weight_files(dir)?;
        if files.is_empty() {
            anyhow::bail!("{} holds no .safetensors weights", dir.display());
        }
        // SAFETY: the files are only read, and not expected to change while
        // loading; every tensor is copied out before the maps are dropped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device)? };
        let model = vb.pp("model");
        let embed = model.get((config.vocab, config.hidden), "embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(config.layers);
        for index in 0..config.layers {
            let vb = model.pp(format!("layers.{index}"));
            let bias = config.qkv_bias;
            layers.push(Layer {
                input_norm: vb.get(config.hidden, "input_layernorm.weight")?,
                q: Projection::load(&vb, Module::Q, &config, bias)?,
                k: Projection::load(&vb, Module::K, &config, bias)?,
                v: Projection::load(&vb, Module::V, &config, bias)?,
                o: Projection::load(&vb, Module::O, &config, false)?,
                post_norm: vb.get(config.hidden, "post_attention_layernorm.weight")?,
                gate: Projection::load(&vb, Module::Gate, &config, false)?,
                up: Projection::load(&vb, Module::Up, &config, false)?,
                down: Projection::load(&vb, Module::Down, &config, false)?,
            });
        }
        let norm = model.get(config.hidden, "norm.weight")?;
        let tied = config.tie_embeddings || !vb.contains_tensor("lm_head.weight");
        let lm_head = if tied {
            embed.clone()
        } else {
            vb.get((config.vocab, config.hidden), "lm_head.weight")?
        };
        let lm_head_t = lm_head.t()?.contiguous()?;
        let (cos, sin) = rope_tables(&config, dtype, device)?;
        Ok(Model {
            config,
            dtype,
            device: device.clone(),
            embed,
            layers,
            norm,
            lm_head_t,
            cos,
            sin,
        })
    }

    /// Where the weights live (adapters and caches go there too).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes the weights hold.
    pub fn weight_bytes(&self) -> usize {
        let tensors = self.layers.iter().flat_map(|l| {
            [
                &l.input_norm,
                &l.q.weight_t,
                &l.k.weight_t,
                &l.v.weight_t,
                &l.o.weight_t,
                &l.post_norm,
                &l.gate.weight_t,
                &l.up.weight_t,
                &l.down.weight_t,
            ]
        });
        let mut bytes: usize = tensors
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        bytes += (self.embed.elem_count() + self.norm.elem_count() + self.lm_head_t.elem_count())
            * self.dtype.size_in_bytes();
        bytes
    }

    /// Runs one step; returns the logits of `sample_rows`, `[rows, vocab]`
    /// as f32, in that order.
    pub fn forward(&self, step: &mut StepRows<'_>) -> candle_core::Result<Vec<Vec<f32>>> {
        let rows = step.tokens.len();
        let tokens = Tensor::new(step.tokens.as_slice(), &self.device)?;
        let positions = Tensor::new(step.positions.as_slice(), &self.device)?;
        let cos = self.cos.index_select(&positions, 0)?;
        let sin = self.sin.index_select(&positions, 0)?;
        let config = &self.config;
        let eps = config.rms_eps as f32;
        let mut x = self.embed.index_select(&tokens, 0)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let groups = step.adapters.as_slice();
            let h = candle_nn::ops::rms_norm(&x, &layer.input_norm, eps)?;
            let q = layer.q.forward(&h, index, groups)?;
            let k = layer.k.forward(&h, index, groups)?;
            let v = layer.v.forward(&h, index, groups)?;
            let q = q.reshape((1, rows, config.heads, config.head_dim))?;
            let k = k.reshape((1, rows, config.kv_heads, config.head_dim))?;
            let q = candle_nn::rotary_emb::rope_thd(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_thd(&k, &cos, &sin)?;
            let attended = attention::attend(
                config,
                index,
                &q,
                &k,
                &v,
                &mut step.sequences,
                step.paged.as_ref(),
            )?;
            x = (x + layer.o.forward(&attended, index, groups)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.post_norm, eps)?;
            let gate = layer.gate.forward(&h, index, groups)?;
            let up = layer.up.forward(&h, index, groups)?;
            let mlp = (candle_nn::ops::silu(&gate)? * up)?;
            x = (x + layer.down.forward(&mlp, index, groups)?)?;
        }
        let picked = Tensor::new(step.sample_rows.as_slice(), &self.device)?;
        let last = x.index_select(&picked, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        let logits = last.matmul(&self.lm_head_t)?;
        logits.to_dtype(DType::F32)?.to_vec2::<f32>()
    }
}

fn rope_tables(
    config: &LlamaConfig,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let frequencies = config.inverse_frequencies();
    let half = frequencies.len();
    let positions = config.max_positions;
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for position in 0..positions {
        for frequency in &frequencies {
            let angle = position as f64 * frequency;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let cos = Tensor::from_vec(cos, (positions, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (positions, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}
