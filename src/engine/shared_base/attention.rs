//! Attention over sequences of different lengths in one step. New K/V rows
//! are appended to each sequence's own cache; each sequence then attends
//! over its own cache only, so nothing is padded to the longest sequence.
//!
//! On CPU with an f32 cache, decode rows (one token each, the common case
//! under load) go through a fused loop run in parallel over (row, KV head),
//! reading each sequence's cache in place. Prompt chunks, and every row on
//! other devices and precisions, use candle's matrix multiply over the
//! cache's strided view, with a causal mask offset by what is cached.
//!
//! With paged attention the step's new rows are written to the block pool
//! at once, and caches are read through gathered views; on CUDA the decode
//! rows go through mistral.rs's paged-attention kernel instead.

use candle_core::{DType, Storage, Tensor};
use rayon::prelude::*;

use super::config::LlamaConfig;
use super::kv::SequenceCache;
use super::paged::PagedStep;

/// A sequence's rows in the step: `start..start + len`.
#[derive(Debug, Clone, Copy)]
pub struct SequenceRows {
    pub start: usize,
    pub len: usize,
}

/// `q`: `[1, rows, heads, head_dim]`, `k`: `[1, rows, kv_heads, head_dim]`,
/// `v`: `[rows, kv_heads * head_dim]`. Returns `[rows, heads * head_dim]`.
/// `paged` is the step's slot map when the caches are paged.
pub fn attend(
    config: &LlamaConfig,
    layer: usize,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    sequences: &mut [(SequenceRows, &mut SequenceCache)],
    paged: Option<&PagedStep>,
) -> candle_core::Result<Tensor> {
    let rows = q.dim(1)?;
    let (kv_heads, head_dim) = (config.kv_heads, config.head_dim);
    let k = k.reshape((rows, kv_heads, head_dim))?;
    let v = v.reshape((rows, kv_heads, head_dim))?;
    match paged {
        Some(step) => step.write(layer, &k, &v)?,
        None => {
            for (span, cache) in sequences.iter_mut() {
                cache.append(
                    layer,
                    &k.narrow(0, span.start, span.len)?,
                    &v.narrow(0, span.start, span.len)?,
                )?;
            }
        }
    }
    #[cfg(feature = "cuda")]
    {
        if let Some(step) = paged
            && let Some(batch) = &step.decode
        {
            return attend_with_kernel(config, layer, q, sequences, step, batch);
        }
    }
    let width = config.heads * head_dim;
    let q = q.to_dtype(DType::F32)?.contiguous()?;
    if !v.device().is_cpu() || v.dtype() != DType::F32 {
        return attend_by_sequence(config, layer, &q, sequences)?.to_dtype(v.dtype());
    }
    let mut out = vec![0f32; rows * width];
    decode_rows(config, layer, &q, sequences, &mut out)?;
    for (span, cache) in sequences.iter().filter(|(span, _)| span.len > 1) {
        let chunk = prompt_chunk(config, layer, &q, *span, cache)?;
        let values: Vec<f32> = chunk.flatten_all()?.to_vec1()?;
        out[span.start * width..(span.start + span.len) * width].copy_from_slice(&values);
    }
    Tensor::from_vec(out, (rows, width), q.device())?.to_dtype(v.dtype())
}

/// Any device and cache precision: each sequence's rows (one decode token
/// or a prompt chunk) attend through candle's own operations, in f32.
fn attend_by_sequence(
    config: &LlamaConfig,
    layer: usize,
    q: &Tensor,
    sequences: &[(SequenceRows, &mut SequenceCache)],
) -> candle_core::Result<Tensor> {
    let mut order: Vec<&(SequenceRows, &mut SequenceCache)> = sequences.iter().collect();
    order.sort_by_key(|(span, _)| span.start);
    let pieces = order
        .into_iter()
        .map(|(span, cache)| prompt_chunk(config, layer, q, *span, cache))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&pieces, 0)
}

/// CUDA with paged caches: every decode row in one paged-attention kernel
/// call, prompt chunks over their gathered blocks; results placed by row.
#[cfg(feature = "cuda")]
fn attend_with_kernel(
    config: &LlamaConfig,
    layer: usize,
    q: &Tensor,
    sequences: &[(SequenceRows, &mut SequenceCache)],
    step: &PagedStep,
    batch: &super::paged::DecodeBatch,
) -> candle_core::Result<Tensor> {
    let rows = q.dim(1)?;
    let width = config.heads * config.head_dim;
    let dtype = q.dtype();
    let decoding = q.squeeze(0)?.index_select(&batch.rows, 0)?.contiguous()?;
    let decoded = decoding.dim(0)?;
    let scale = 1.0 / (config.head_dim as f32).sqrt();
    let attended = step
        .decode(layer, &decoding, batch, scale)?
        .reshape((decoded, width))?;
    let mut out =
        Tensor::zeros((rows, width), dtype, q.device())?.index_add(&batch.rows, &attended, 0)?;
    let chunks: Vec<_> = sequences.iter().filter(|(span, _)| span.len > 1).collect();
    if !chunks.is_empty() {
        let q = q.to_dtype(DType::F32)?.contiguous()?;
        let mut pieces = Vec::with_capacity(chunks.len());
        let mut at = Vec::new();
        for (span, cache) in chunks {
            pieces.push(prompt_chunk(config, layer, &q, *span, cache)?);
            at.extend((span.start..span.start + span.len).map(|row| row as u32));
        }
        let at = Tensor::new(at.as_slice(), q.device())?;
        let pieces = Tensor::cat(&pieces, 0)?.to_dtype(dtype)?;
        out = out.index_add(&at, &pieces, 0)?;
    }
    Ok(out)
}

/// Borrows a contiguous f32 tensor's elements for the duration of `f`.
fn with_slice<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("the fused attention loop runs on CPU tensors only");
    };
    let data = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    Ok(f(&data[start..start + tensor.elem_count()]))
}

/// Every one-token row: `softmax(q·Kᵀ/√d)·V` over its sequence's cache.
fn decode_rows(
    config: &LlamaConfig,
    layer: usize,
    q: &Tensor,
    sequences: &[(SequenceRows, &mut SequenceCache)],
    out: &mut [f32],
) -> candle_core::Result<()> {
    let (heads, kv_heads, head_dim) = (config.heads, config.kv_heads, config.head_dim);
    let group = heads / kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut views = Vec::new();
    for (span, cache) in sequences.iter().filter(|(span, _)| span.len == 1) {
        let keys = cache.cached() + 1;
        let (k, v) = cache.view(layer, keys)?;
        if k.dtype() != DType::F32 {
            candle_core::bail!("the fused attention loop needs an f32 cache");
        }
        views.push((span.start, keys, k, v));
    }
    if views.is_empty() {
        return Ok(());
    }
    with_slice(q, |q| -> candle_core::Result<()> {
        // The views' storages stay borrowed while the loop reads them.
        let borrowed: Vec<_> = views
            .iter()
            .map(|(_, _, k, v)| (k.storage_and_layout(), v.storage_and_layout()))
            .collect();
        let mut slices = Vec::with_capacity(views.len());
        for ((row, keys, k, v), ((k_storage, k_layout), (v_storage, v_layout))) in
            views.iter().zip(&borrowed)
        {
            let (Storage::Cpu(k_cpu), Storage::Cpu(v_cpu)) = (&**k_storage, &**v_storage) else {
                candle_core::bail!("the fused attention loop runs on CPU tensors only");
            };
            let k_data = &k_cpu.as_slice::<f32>()?[k_layout.start_offset()..][..k.elem_count()];
            let v_data = &v_cpu.as_slice::<f32>()?[v_layout.start_offset()..][..v.elem_count()];
            slices.push((*row, *keys, k_data, v_data));
        }
        let chunk = group * head_dim;
        let width = heads * head_dim;
        // One task per (row, KV head): the group's query heads share one
        // pass over that head's keys and values.
        let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::new();
        let mut rest: &mut [f32] = out;
        let mut offset = 0;
        let mut order: Vec<usize> = (0..slices.len()).collect();
        order.sort_by_key(|&i| slices[i].0);
        for i in order {
            let row = slices[i].0;
            let skip = row * width - offset;
            let (_, tail) = rest.split_at_mut(skip);
            let (row_out, tail) = tail.split_at_mut(width);
            for (kv_head, head_out) in row_out.chunks_mut(chunk).enumerate() {
                tasks.push((i, kv_head, head_out));
            }
            rest = tail;
            offset = (row + 1) * width;
        }
        tasks
            .par_iter_mut()
            .with_min_len(4)
            .for_each(|(i, kv_head, head_out)| {
                let (row, keys, k_data, v_data) = slices[*i];
                let mut scores = vec![0f32; keys];
                for g in 0..group {
                    let head = *kv_head * group + g;
                    let q_row = &q[row * width + head * head_dim..][..head_dim];
                    let mut max = f32::NEG_INFINITY;
                    for (j, score) in scores.iter_mut().enumerate() {
                        let k_row = &k_data[(j * kv_heads + *kv_head) * head_dim..][..head_dim];
                        *score = dot(q_row, k_row) * scale;
                        max = max.max(*score);
                    }
                    let mut sum = 0f32;
                    for score in scores.iter_mut() {
                        *score = (*score - max).exp();
                        sum += *score;
                    }
                    let target = &mut head_out[g * head_dim..][..head_dim];
                    target.fill(0.0);
                    let inverse = 1.0 / sum;
                    for (j, weight) in scores.iter().enumerate() {
                        let v_row = &v_data[(j * kv_heads + *kv_head) * head_dim..][..head_dim];
                        axpy(weight * inverse, v_row, target);
                    }
                }
            });
        Ok(())
    })?
}

/// A prompt chunk of `span.len` rows over the cache (earlier chunks
/// included), causal within the chunk. Returns `[len, heads * head_dim]`.
fn prompt_chunk(
    config: &LlamaConfig,
    layer: usize,
    q: &Tensor,
    span: SequenceRows,
    cache: &SequenceCache,
) -> candle_core::Result<Tensor> {
    let (heads, kv_heads, head_dim) = (config.heads, config.kv_heads, config.head_dim);
    let group = heads / kv_heads;
    let n = span.len;
    let past = cache.cached();
    let keys = past + n;
    let q = q
        .narrow(1, span.start, n)?
        .reshape((n, kv_heads, group, head_dim))?
        .permute((1, 2, 0, 3))?
        .contiguous()?
        .reshape((kv_heads, group * n, head_dim))?;
    let (k, v) = cache.view(layer, keys)?;
    let k = k.to_dtype(DType::F32)?.transpose(0, 1)?;
    let v = v.to_dtype(DType::F32)?.transpose(0, 1)?;
    let scores = (q.matmul(&k.transpose(1, 2)?)? * (1.0 / (head_dim as f64).sqrt()))?;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..keys).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (n, keys), q.device())?;
    let scores = scores
        .reshape((kv_heads, group, n, keys))?
        .broadcast_add(&mask)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((kv_heads, group * n, keys))?;
    probs
        .matmul(&v)?
        .reshape((kv_heads, group, n, head_dim))?
        .permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((n, heads * head_dim))
}

/// Eight independent sums so the compiler can vectorise the loop.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

#[inline]
fn axpy(weight: f32, x: &[f32], y: &mut [f32]) {
    for (out, value) in y.iter_mut().zip(x) {
        *out += weight * value;
    }
}

/// The largest absolute difference between two tensors of one shape, in f32.
#[cfg(test)]
pub(crate) fn max_abs_difference(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::engine::shared_base::kv::KvPool;

    /// The fused CPU loop and the per-sequence path (every other device and
    /// precision) agree on a step mixing a decode row and a prompt chunk.
    #[test]
    fn the_fused_loop_and_the_per_sequence_path_agree() {
        let config = LlamaConfig::small_for_tests();
        let device = Device::Cpu;
        let pool = KvPool::new(&config, DType::F32, usize::MAX / 2);
        let cache = || {
            pool.allocate(&config, 8, DType::F32, &device)
                .unwrap()
                .unwrap()
        };
        let random = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &device).unwrap();
        let (mut decoding, mut prompting) = (cache(), cache());
        let (mut decoding_again, mut prompting_again) = (cache(), cache());
        let (past_k, past_v) = (random(&[3, 1, 4]), random(&[3, 1, 4]));
        for cache in [&mut decoding, &mut decoding_again] {
            cache.append(0, &past_k, &past_v).unwrap();
            cache.commit(3);
        }
        let (q, k, v) = (
            random(&[1, 3, 2, 4]),
            random(&[1, 3, 1, 4]),
            random(&[3, 4]),
        );
        let spans = [
            SequenceRows { start: 0, len: 1 },
            SequenceRows { start: 1, len: 2 },
        ];
        let mut fused_step = [(spans[0], &mut decoding), (spans[1], &mut prompting)];
        let fused = attend(&config, 0, &q, &k, &v, &mut fused_step, None).unwrap();
        let k_rows = k.reshape((3, 1, 4)).unwrap();
        let v_rows = v.reshape((3, 1, 4)).unwrap();
        let mut step = [
            (spans[0], &mut decoding_again),
            (spans[1], &mut prompting_again),
        ];
        for (span, cache) in step.iter_mut() {
            let rows = |t: &Tensor| t.narrow(0, span.start, span.len).unwrap();
            cache.append(0, &rows(&k_rows), &rows(&v_rows)).unwrap();
        }
        let q = q.contiguous().unwrap();
        let generic = attend_by_sequence(&config, 0, &q, &step).unwrap();
        let difference = max_abs_difference(&fused, &generic);
        assert!(difference < 1e-5, "largest difference {difference}");
    }
}
