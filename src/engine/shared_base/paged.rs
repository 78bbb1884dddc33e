//! Paged KV for the shared-base engine: one fixed pool of blocks per layer,
//! shared by every sequence of every adapter, handed out by the block
//! allocator (`engine::kv_blocks`). The pool is kept in the layout
//! mistral.rs's paged-attention kernels read (`mistralrs-paged-attn`:
//! keys `[blocks, kv_heads, head_dim / x, block_size, x]` with `x` elements
//! in 16 bytes, values `[blocks, kv_heads, head_dim, block_size]`), on every
//! device, so the code that places and gathers tokens is the same code on
//! CPU (where it is tested) and on CUDA.
//!
//! On CUDA new tokens are written by `reshape_and_cache` and decode rows
//! attend through `paged_attention`; on CPU a small loop writes the same
//! slots. Prompt chunks gather their sequence's blocks into a contiguous
//! view on both.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor};
use parking_lot::Mutex;

use super::attention::SequenceRows;
use super::config::LlamaConfig;
use crate::engine::kv_blocks::{Append, BlockAllocator, BlockError, SequenceId};

/// Head sizes the CUDA paged-attention kernels are built for.
pub const KERNEL_HEAD_SIZES: [usize; 8] = [64, 80, 96, 112, 128, 192, 256, 512];

pub struct PagedPool {
    /// Per layer: (keys, values) in the kernels' layout.
    layers: Vec<(Tensor, Tensor)>,
    allocator: Mutex<BlockAllocator>,
    block_size: usize,
    blocks: usize,
    kv_heads: usize,
    head_dim: usize,
    device: Device,
    next_sequence: AtomicU64,
}

/// The keys' innermost split: elements of `dtype` in 16 bytes, as the
/// kernels read them. A head size it does not divide (only tiny test models
/// have one; the kernels refuse them anyway) is kept unsplit.
fn key_split(dtype: DType, head_dim: usize) -> usize {
    let x = 16 / dtype.size_in_bytes();
    if head_dim.is_multiple_of(x) { x } else { 1 }
}

impl PagedPool {
    /// `blocks` blocks of `block_size` tokens for every layer.
    pub fn new(
        config: &LlamaConfig,
        dtype: DType,
        device: &Device,
        blocks: usize,
        block_size: usize,
    ) -> candle_core::Result<Arc<PagedPool>> {
        let (kv_heads, head_dim) = (config.kv_heads, config.head_dim);
        let x = key_split(dtype, head_dim);
        if blocks == 0 || block_size == 0 {
            candle_core::bail!("a paged KV pool needs at least one block of one token");
        }
        if device.is_cuda() && ![8, 16, 32].contains(&block_size) {
            // The kernels' switch does nothing for any other size.
            candle_core::bail!(
                "the paged-attention kernels take blocks of 8, 16 or 32 tokens, not {block_size}"
            );
        }
        if device.is_cuda() && !KERNEL_HEAD_SIZES.contains(&head_dim) {
            candle_core::bail!(
                "the paged-attention kernels support head sizes {KERNEL_HEAD_SIZES:?}, not {head_dim}"
            );
        }
        let mut layers = Vec::with_capacity(config.layers);
        for _ in 0..config.layers {
            layers.push((
                Tensor::zeros(
                    (blocks, kv_heads, head_dim / x, block_size, x),
                    dtype,
                    device,
                )?,
                Tensor::zeros((blocks, kv_heads, head_dim, block_size), dtype, device)?,
            ));
        }
        // About 1% of the pool (vLLM's default) is kept back at admission so
        // running sequences can grow before anything is preempted.
        let watermark = (blocks / 100).max(1).min(blocks - 1);
        Ok(Arc::new(PagedPool {
            layers,
            allocator: Mutex::new(BlockAllocator::new(blocks as u32, block_size, watermark)),
            block_size,
            blocks,
            kv_heads,
            head_dim,
            device: device.clone(),
            next_sequence: AtomicU64::new(1),
        }))
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn blocks(&self) -> usize {
        self.blocks
    }

    pub fn free_blocks(&self) -> usize {
        self.allocator.lock().free_blocks()
    }

    /// Tokens of context the whole pool holds.
    pub fn capacity_tokens(&self) -> usize {
        self.blocks * self.block_size
    }

    /// Blocks for a sequence whose first `tokens` tokens are to be cached,
    /// or `None` while the pool lacks them. With `keep_watermark` false (an
    /// idle engine) every free block may be taken.
    pub fn admit(
        self: &Arc<Self>,
        tokens: usize,
        keep_watermark: bool,
    ) -> Result<Option<PagedCache>, BlockError> {
        let id = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        let admitted = {
            let mut allocator = self.allocator.lock();
            if keep_watermark {
                allocator.admit(id, tokens).map(|_| ())
            } else {
                allocator.admit_all_free(id, tokens).map(|_| ())
            }
        };
        match admitted {
            Ok(()) => Ok(Some(PagedCache {
                id,
                pool: self.clone(),
                cached: 0,
            })),
            Err(BlockError::OutOfBlocks) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// The first `tokens` positions of a sequence's blocks as contiguous
    /// `[tokens, kv_heads, head_dim]` keys and values (a copy).
    pub fn gather(
        &self,
        layer: usize,
        blocks: &[u32],
        tokens: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let needed = tokens.div_ceil(self.block_size);
        if needed > blocks.len() {
            candle_core::bail!(
                "{tokens} tokens need {needed} blocks; the table holds {}",
                blocks.len()
            );
        }
        let ids = Tensor::new(&blocks[..needed], &self.device)?;
        let (key_cache, value_cache) = &self.layers[layer];
        let rows = needed * self.block_size;
        let shape = (rows, self.kv_heads, self.head_dim);
        let k = key_cache
            .index_select(&ids, 0)?
            .permute((0, 3, 1, 2, 4))?
            .contiguous()?
            .reshape(shape)?
            .narrow(0, 0, tokens)?;
        let v = value_cache
            .index_select(&ids, 0)?
            .permute((0, 3, 1, 2))?
            .contiguous()?
            .reshape(shape)?
            .narrow(0, 0, tokens)?;
        Ok((k, v))
    }

    /// What every layer of one step needs: each row's slot, and on CUDA the
    /// decode rows' block tables for the kernel.
    pub fn step(
        self: &Arc<Self>,
        sequences: &[(SequenceRows, &PagedCache)],
    ) -> anyhow::Result<PagedStep> {
        let rows = sequences
            .iter()
            .map(|(span, _)| span.start + span.len)
            .max();
        let mut slots_host = vec![-1i64; rows.unwrap_or(0)];
        let allocator = self.allocator.lock();
        let mut decode = Vec::new();
        for (span, cache) in sequences {
            let table = allocator
                .table(cache.id)
                .ok_or(BlockError::UnknownSequence(cache.id))?;
            for offset in 0..span.len {
                let position = cache.cached + offset;
                let block = table
                    .blocks
                    .get(position / self.block_size)
                    .ok_or_else(|| anyhow::anyhow!("position {position} has no block reserved"))?;
                slots_host[span.start + offset] =
                    (*block as usize * self.block_size + position % self.block_size) as i64;
            }
            if span.len == 1 {
                decode.push((span.start as u32, cache.cached + 1, table.blocks.clone()));
            }
        }
        if let Some(row) = slots_host.iter().position(|slot| *slot < 0) {
            anyhow::bail!("row {row} of the step belongs to no sequence");
        }
        drop(allocator);
        let on_kernels = self.device.is_cuda();
        Ok(PagedStep {
            pool: self.clone(),
            slots: on_kernels
                .then(|| Tensor::new(slots_host.as_slice(), &self.device))
                .transpose()?,
            slots_host,
            decode: if on_kernels && !decode.is_empty() {
                Some(DecodeBatch::new(decode, &self.device)?)
            } else {
                None
            },
        })
    }

    fn release(&self, sequence: SequenceId) {
        self.allocator.lock().release(sequence);
    }
}

/// One sequence's blocks; they go back to the pool when this is dropped
/// (finished, cancelled or preempted).
pub struct PagedCache {
    id: SequenceId,
    pool: Arc<PagedPool>,
    cached: usize,
}

impl PagedCache {
    pub fn cached(&self) -> usize {
        self.cached
    }

    pub fn commit(&mut self, rows: usize) {
        self.cached += rows;
    }

    /// Grows the block table to hold `tokens` positions. On `OutOfBlocks`
    /// the blocks already added stay with the sequence.
    pub fn reserve(&mut self, tokens: usize) -> Result<(), BlockError> {
        let mut allocator = self.pool.allocator.lock();
        loop {
            let table = allocator
                .table(self.id)
                .ok_or(BlockError::UnknownSequence(self.id))?;
            if table.tokens >= tokens {
                return Ok(());
            }
            match allocator.append(self.id)? {
                Append::InPlace | Append::NewBlock(_) => {}
                // Only forks share blocks, and this pool never forks: a
                // copy would need `copy_blocks`, which is not wired.
                Append::CopyOnWrite { .. } => return Err(BlockError::SharedBlock(self.id)),
            }
        }
    }

    pub fn blocks(&self) -> Vec<u32> {
        let allocator = self.pool.allocator.lock();
        allocator
            .table(self.id)
            .map(|table| table.blocks.clone())
            .unwrap_or_default()
    }

    /// The first `tokens` positions of `layer` (a gathered copy).
    pub fn view(&self, layer: usize, tokens: usize) -> candle_core::Result<(Tensor, Tensor)> {
        self.pool.gather(layer, &self.blocks(), tokens)
    }
}

impl Drop for PagedCache {
    fn drop(&mut self) {
        self.pool.release(self.id);
    }
}

/// Per step: the slot of every row (in row order) and, on CUDA, the decode
/// rows' kernel inputs.
pub struct PagedStep {
    pool: Arc<PagedPool>,
    slots_host: Vec<i64>,
    /// On the device, for `reshape_and_cache` (CUDA only).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    slots: Option<Tensor>,
    pub decode: Option<DecodeBatch>,
}

impl PagedStep {
    /// Writes the step's new K and V rows (`[rows, kv_heads, head_dim]`)
    /// into their slots.
    pub fn write(&self, layer: usize, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        let (key_cache, value_cache) = &self.pool.layers[layer];
        let k = k.contiguous()?;
        let v = v.contiguous()?;
        #[cfg(feature = "cuda")]
        {
            if let Some(slots) = &self.slots {
                return mistralrs_paged_attn::reshape_and_cache(
                    &k,
                    &v,
                    None,
                    None,
                    key_cache,
                    value_cache,
                    slots,
                );
            }
        }
        let write = |half| WriteSlots {
            slots: &self.slots_host,
            block_size: self.pool.block_size,
            half,
        };
        key_cache.inplace_op2(&k, &write(Half::Keys))?;
        value_cache.inplace_op2(&v, &write(Half::Values))
    }

    /// The step's decode rows (`q`: `[n, heads, head_dim]`, the model's
    /// dtype) through the paged-attention kernel: `[n, heads, head_dim]`.
    #[cfg(feature = "cuda")]
    pub fn decode(
        &self,
        layer: usize,
        q: &Tensor,
        batch: &DecodeBatch,
        softmax_scale: f32,
    ) -> candle_core::Result<Tensor> {
        let (key_cache, value_cache) = &self.pool.layers[layer];
        mistralrs_paged_attn::paged_attention(
            q,
            None,
            None,
            key_cache,
            value_cache,
            &batch.block_tables,
            &batch.context_lens,
            None,
            batch.max_context,
            softmax_scale,
            1.0,
            None,
        )
    }
}

/// The kernel's inputs for the step's one-token rows.
pub struct DecodeBatch {
    /// Step rows of the decode tokens, `[n]` u32.
    pub rows: Tensor,
    /// `[n, max_blocks]` u32, padded with block 0 (never read past the
    /// context length).
    pub block_tables: Tensor,
    /// `[n]` u32: cached tokens plus the new one.
    pub context_lens: Tensor,
    pub max_context: usize,
}

impl DecodeBatch {
    fn new(rows: Vec<(u32, usize, Vec<u32>)>, device: &Device) -> candle_core::Result<DecodeBatch> {
        let width = rows.iter().map(|(_, _, t)| t.len()).max().unwrap_or(1);
        let mut tables = Vec::with_capacity(rows.len() * width);
        for (_, _, table) in &rows {
            tables.extend(table.iter().copied());
            tables.extend(std::iter::repeat_n(0, width - table.len()));
        }
        let lens: Vec<u32> = rows.iter().map(|(_, len, _)| *len as u32).collect();
        let ids: Vec<u32> = rows.iter().map(|(row, _, _)| *row).collect();
        Ok(DecodeBatch {
            max_context: lens.iter().copied().max().unwrap_or(0) as usize,
            rows: Tensor::new(ids.as_slice(), device)?,
            block_tables: Tensor::from_vec(tables, (rows.len(), width), device)?,
            context_lens: Tensor::new(lens.as_slice(), device)?,
        })
    }
}

#[derive(Clone, Copy)]
enum Half {
    Keys,
    Values,
}

/// The CPU twin of the kernels' `reshape_and_cache`: row `t` of
/// `[rows, kv_heads, head_dim]` goes to slot `slots[t]`.
struct WriteSlots<'a> {
    slots: &'a [i64],
    block_size: usize,
    half: Half,
}

impl WriteSlots<'_> {
    fn scatter<T: Copy>(
        &self,
        cache: &mut [T],
        cache_dims: &[usize],
        rows: &[T],
        rows_dims: &[usize],
    ) -> candle_core::Result<()> {
        let &[count, kv_heads, head_dim] = rows_dims else {
            candle_core::bail!("new K/V rows must be [rows, kv_heads, head_dim]");
        };
        if count != self.slots.len() {
            candle_core::bail!("{count} rows for {} slots", self.slots.len());
        }
        let blocks = cache_dims[0];
        let bs = self.block_size;
        let x = match self.half {
            Half::Keys => cache_dims[4],
            Half::Values => 1,
        };
        for (row, &slot) in self.slots.iter().enumerate() {
            let slot = usize::try_from(slot)
                .map_err(|_| candle_core::Error::Msg(format!("negative slot {slot}")))?;
            let (block, offset) = (slot / bs, slot % bs);
            if block >= blocks {
                candle_core::bail!("slot {slot} is past the pool's {blocks} blocks");
            }
            for head in 0..kv_heads {
                let source = &rows[(row * kv_heads + head) * head_dim..][..head_dim];
                let base = (block * kv_heads + head) * head_dim * bs;
                for (d, value) in source.iter().enumerate() {
                    let index = match self.half {
                        // [block, head, d / x, offset, d % x]
                        Half::Keys => base + ((d / x) * bs + offset) * x + d % x,
                        // [block, head, d, offset]
                        Half::Values => base + d * bs + offset,
                    };
                    cache[index] = *value;
                }
            }
        }
        Ok(())
    }
}

impl InplaceOp2 for WriteSlots<'_> {
    fn name(&self) -> &'static str {
        "write-kv-slots"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        cache_layout: &Layout,
        rows: &CpuStorage,
        rows_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((cache_start, _)), Some((rows_start, rows_end))) = (
            cache_layout.contiguous_offsets(),
            rows_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("the KV pool and the new rows must be contiguous");
        };
        let (cache_dims, rows_dims) = (cache_layout.dims(), rows_layout.dims());
        match (cache, rows) {
            (CpuStorage::F32(cache), CpuStorage::F32(rows)) => self.scatter(
                &mut cache[cache_start..],
                cache_dims,
                &rows[rows_start..rows_end],
                rows_dims,
            ),
            (CpuStorage::F16(cache), CpuStorage::F16(rows)) => self.scatter(
                &mut cache[cache_start..],
                cache_dims,
                &rows[rows_start..rows_end],
                rows_dims,
            ),
            (CpuStorage::BF16(cache), CpuStorage::BF16(rows)) => self.scatter(
                &mut cache[cache_start..],
                cache_dims,
                &rows[rows_start..rows_end],
                rows_dims,
            ),
            _ => candle_core::bail!("the KV pool and the new rows differ in dtype"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::shared_base::attention::max_abs_difference;

    /// Two KV heads of 16: keys split in 4 (f32) or 8 (f16) as on CUDA.
    fn config() -> LlamaConfig {
        LlamaConfig {
            kv_heads: 2,
            head_dim: 16,
            ..LlamaConfig::small_for_tests()
        }
    }

    fn pool(blocks: usize, block_size: usize, dtype: DType) -> Arc<PagedPool> {
        PagedPool::new(&config(), dtype, &Device::Cpu, blocks, block_size).unwrap()
    }

    /// Tokens written a few at a time across block boundaries, for two
    /// sequences whose blocks interleave, read back exactly as written.
    #[test]
    fn written_slots_gather_back_in_order_across_blocks() {
        for dtype in [DType::F32, DType::F16] {
            let pool = pool(16, 4, dtype);
            let config = config();
            let shape = |n: usize| (n, config.kv_heads, config.head_dim);
            let mut first = pool.admit(3, true).unwrap().unwrap();
            let mut second = pool.admit(5, true).unwrap().unwrap();
            let all_k = Tensor::randn(0f32, 1.0, shape(19), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let all_v = (&all_k * 2.0).unwrap();
            // Steps of (first rows, second rows): a prompt, then decodes.
            let mut written = (0, 0);
            for (a, b) in [(3, 5), (1, 1), (1, 1), (4, 1), (1, 1)] {
                first.reserve(first.cached() + a).unwrap();
                second.reserve(second.cached() + b).unwrap();
                let spans = [
                    (SequenceRows { start: 0, len: a }, &first),
                    (SequenceRows { start: a, len: b }, &second),
                ];
                let step = pool.step(&spans).unwrap();
                let k = Tensor::cat(
                    &[
                        all_k.narrow(0, written.0, a).unwrap(),
                        all_k.narrow(0, 10 + written.1, b).unwrap(),
                    ],
                    0,
                )
                .unwrap();
                let v = (&k * 2.0).unwrap();
                for layer in 0..config.layers {
                    step.write(layer, &k, &v).unwrap();
                }
                first.commit(a);
                second.commit(b);
                written = (written.0 + a, written.1 + b);
            }
            assert_eq!(written, (10, 9));
            for layer in 0..config.layers {
                let (k, v) = first.view(layer, 10).unwrap();
                assert_eq!(
                    max_abs_difference(&k, &all_k.narrow(0, 0, 10).unwrap()),
                    0.0
                );
                assert_eq!(
                    max_abs_difference(&v, &all_v.narrow(0, 0, 10).unwrap()),
                    0.0
                );
                let (k, _) = second.view(layer, 9).unwrap();
                assert_eq!(
                    max_abs_difference(&k, &all_k.narrow(0, 10, 9).unwrap()),
                    0.0
                );
            }
            assert_eq!(pool.free_blocks(), 16 - 3 - 3);
            drop(first);
            drop(second);
            assert_eq!(pool.free_blocks(), 16, "every block is back");
        }
    }

    /// Pins the layout to the kernels' own index formulas
    /// (`reshape_and_cache_kernel.cu`: `tgt_key_idx`, `tgt_value_idx`).
    #[test]
    fn a_token_lands_where_the_cuda_kernels_read_it() {
        let pool = pool(4, 4, DType::F32);
        let config = config();
        let (heads, head_dim, block_size, x) = (config.kv_heads, config.head_dim, 4, 4);
        let cache = pool.admit(6, true).unwrap().unwrap();
        let step = pool
            .step(&[(SequenceRows { start: 0, len: 6 }, &cache)])
            .unwrap();
        let values: Vec<f32> = (0..6 * heads * head_dim).map(|v| v as f32).collect();
        let k = Tensor::from_vec(values, (6, heads, head_dim), &Device::Cpu).unwrap();
        let v = (&k + 0.5).unwrap();
        step.write(0, &k, &v).unwrap();
        let (key_cache, value_cache) = &pool.layers[0];
        let keys: Vec<f32> = key_cache.flatten_all().unwrap().to_vec1().unwrap();
        let values: Vec<f32> = value_cache.flatten_all().unwrap().to_vec1().unwrap();
        // Row 5 is block 1 (the table's second), offset 1.
        let (row, block, offset) = (5, 1, 1);
        for head in 0..heads {
            for d in 0..head_dim {
                let written = ((row * heads + head) * head_dim + d) as f32;
                let key_index = block * heads * (head_dim / x) * block_size * x
                    + head * (head_dim / x) * block_size * x
                    + (d / x) * block_size * x
                    + offset * x
                    + d % x;
                let value_index = block * heads * head_dim * block_size
                    + head * head_dim * block_size
                    + d * block_size
                    + offset;
                assert_eq!(keys[key_index], written);
                assert_eq!(values[value_index], written + 0.5);
            }
        }
    }

    #[test]
    fn admission_is_by_free_blocks_and_an_idle_engine_may_use_the_watermark() {
        let pool = pool(4, 4, DType::F32);
        let held = pool.admit(12, true).unwrap();
        assert!(held.is_some(), "3 blocks + 1 kept back");
        assert!(
            pool.admit(1, true).unwrap().is_none(),
            "the last block is kept back"
        );
        drop(held);
        let whole = pool.admit(16, false).unwrap();
        assert!(whole.is_some(), "an idle engine may take every block");
        let mut whole = whole.unwrap();
        assert_eq!(whole.reserve(17), Err(BlockError::OutOfBlocks));
        assert_eq!(pool.free_blocks(), 0);
    }

    #[test]
    fn a_row_without_a_reserved_block_is_refused_not_written() {
        let pool = pool(4, 4, DType::F32);
        let cache = pool.admit(4, true).unwrap().unwrap();
        let spans = [(SequenceRows { start: 0, len: 5 }, &cache)];
        assert!(pool.step(&spans).is_err());
    }
}
