//! Per-sequence KV caches: contiguous ones under one byte budget (below),
//! or blocks of the paged pool (`super::paged`) when paged attention is on.
//!
//! A contiguous sequence reserves room for its whole budget (prompt plus `max_tokens`)
//! when it is admitted, so it can never run out half way and nothing needs
//! preempting. The memory behind a reservation is only touched as tokens
//! are written (the allocation is zero-filled lazily by the OS), so the
//! resident size follows what is really used. Layout is token-major,
//! `[capacity, kv_heads, head_dim]`: appending writes one contiguous block
//! and any prefix is a contiguous view.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use parking_lot::Mutex;

use super::config::LlamaConfig;
use super::paged::{PagedCache, PagedPool};

/// Where the engine's sequences keep their KV.
pub enum KvStore {
    /// Each sequence reserves its whole budget at admission; never preempts.
    Contiguous(KvPool),
    /// Blocks as tokens come; a sequence may be preempted when none is left.
    Paged(Arc<PagedPool>),
}

impl KvStore {
    /// Tokens of context the whole store holds.
    pub fn capacity_tokens(&self) -> usize {
        match self {
            KvStore::Contiguous(pool) => pool.capacity_tokens(),
            KvStore::Paged(pool) => pool.capacity_tokens(),
        }
    }
}

/// One sequence's KV, whichever store it came from.
pub enum SequenceCache {
    Contiguous(ContiguousCache),
    Paged(PagedCache),
}

impl SequenceCache {
    /// Tokens cached so far.
    pub fn cached(&self) -> usize {
        match self {
            SequenceCache::Contiguous(cache) => cache.len,
            SequenceCache::Paged(cache) => cache.cached(),
        }
    }

    /// Marks the tokens written in this step (to every layer) as cached.
    pub fn commit(&mut self, rows: usize) {
        match self {
            SequenceCache::Contiguous(cache) => cache.len += rows,
            SequenceCache::Paged(cache) => cache.commit(rows),
        }
    }

    /// The first `tokens` positions of `layer` as `[tokens, kv_heads,
    /// head_dim]`: views of a contiguous cache, a gathered copy of blocks.
    pub fn view(&self, layer: usize, tokens: usize) -> candle_core::Result<(Tensor, Tensor)> {
        match self {
            SequenceCache::Contiguous(cache) => cache.view(layer, tokens),
            SequenceCache::Paged(cache) => cache.view(layer, tokens),
        }
    }

    /// Writes `rows` new tokens' K and V after the cached ones. Paged
    /// caches are written for the whole step at once (`PagedPool::write`).
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        match self {
            SequenceCache::Contiguous(cache) => cache.append(layer, k, v),
            SequenceCache::Paged(_) => {
                candle_core::bail!("paged caches are written by the step, not per sequence")
            }
        }
    }
}

pub struct ContiguousCache {
    layers: Vec<(Tensor, Tensor)>,
    /// Tokens written (the same in every layer once a step completes).
    len: usize,
    capacity: usize,
    _reservation: Reservation,
}

impl ContiguousCache {
    /// Writes `rows` new tokens' K and V (`[rows, kv_heads, head_dim]`) for
    /// `layer` after the tokens already cached.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        let rows = k.dim(0)?;
        if self.len + rows > self.capacity {
            candle_core::bail!(
                "KV cache overflow: {} + {rows} tokens exceed the reserved {}",
                self.len,
                self.capacity
            );
        }
        let (cache_k, cache_v) = &self.layers[layer];
        cache_k.slice_set(k, 0, self.len)?;
        cache_v.slice_set(v, 0, self.len)?;
        Ok(())
    }

    /// The first `tokens` positions of `layer`: contiguous views, no copy.
    fn view(&self, layer: usize, tokens: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let (k, v) = &self.layers[layer];
        Ok((k.narrow(0, 0, tokens)?, v.narrow(0, 0, tokens)?))
    }
}

/// The engine's KV budget in bytes, shared by every sequence of every adapter.
#[derive(Clone)]
pub struct KvPool {
    inner: Arc<Mutex<PoolState>>,
    bytes_per_token: usize,
}

struct PoolState {
    budget: usize,
    reserved: usize,
}

/// Frees its bytes in the pool when the cache goes.
struct Reservation {
    pool: Arc<Mutex<PoolState>>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.lock().reserved -= self.bytes;
    }
}

impl KvPool {
    pub fn new(config: &LlamaConfig, dtype: DType, budget_bytes: usize) -> KvPool {
        KvPool {
            inner: Arc::new(Mutex::new(PoolState {
                budget: budget_bytes,
                reserved: 0,
            })),
            bytes_per_token: config.kv_bytes_per_token(dtype.size_in_bytes()),
        }
    }

    pub fn bytes_per_token(&self) -> usize {
        self.bytes_per_token
    }

    /// Tokens of context the whole budget holds.
    pub fn capacity_tokens(&self) -> usize {
        self.inner.lock().budget / self.bytes_per_token.max(1)
    }

    pub fn reserved_bytes(&self) -> usize {
        self.inner.lock().reserved
    }

    /// A cache for `tokens` positions, or `None` while the budget lacks room.
    pub fn allocate(
        &self,
        config: &LlamaConfig,
        tokens: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Option<SequenceCache>> {
        let bytes = tokens * self.bytes_per_token;
        {
            let mut state = self.inner.lock();
            if state.reserved + bytes > state.budget {
                return Ok(None);
            }
            state.reserved += bytes;
        }
        let reservation = Reservation {
            pool: self.inner.clone(),
            bytes,
        };
        let shape = (tokens, config.kv_heads, config.head_dim);
        let mut layers = Vec::with_capacity(config.layers);
        for _ in 0..config.layers {
            layers.push((
                Tensor::zeros(shape, dtype, device)?,
                Tensor::zeros(shape, dtype, device)?,
            ));
        }
        Ok(Some(SequenceCache::Contiguous(ContiguousCache {
            layers,
            len: 0,
            capacity: tokens,
            _reservation: reservation,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LlamaConfig {
        LlamaConfig::small_for_tests()
    }

    #[test]
    fn the_budget_admits_until_full_and_frees_on_drop() {
        let config = config();
        let per_token = config.kv_bytes_per_token(4);
        let pool = KvPool::new(&config, DType::F32, per_token * 10);
        let device = Device::Cpu;
        let first = pool.allocate(&config, 6, DType::F32, &device).unwrap();
        assert!(first.is_some());
        assert!(
            pool.allocate(&config, 5, DType::F32, &device)
                .unwrap()
                .is_none()
        );
        let second = pool.allocate(&config, 4, DType::F32, &device).unwrap();
        assert!(second.is_some());
        assert_eq!(pool.reserved_bytes(), per_token * 10);
        drop(first);
        assert_eq!(pool.reserved_bytes(), per_token * 4);
        assert!(
            pool.allocate(&config, 6, DType::F32, &device)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn appends_land_after_the_cached_tokens_and_overflow_is_an_error() {
        let config = config();
        let pool = KvPool::new(&config, DType::F32, usize::MAX / 2);
        let mut cache = pool
            .allocate(&config, 3, DType::F32, &Device::Cpu)
            .unwrap()
            .unwrap();
        let rows = |value: f32, n: usize| Tensor::full(value, (n, 1, 4), &Device::Cpu).unwrap();
        for layer in 0..2 {
            cache.append(layer, &rows(1.0, 2), &rows(2.0, 2)).unwrap();
        }
        cache.commit(2);
        for layer in 0..2 {
            cache.append(layer, &rows(3.0, 1), &rows(4.0, 1)).unwrap();
        }
        cache.commit(1);
        let (k, v) = cache.view(1, 3).unwrap();
        let k: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        let v: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&k[..4], &[1.0; 4]);
        assert_eq!(&k[8..], &[3.0; 4]);
        assert_eq!(&v[8..], &[4.0; 4]);
        assert!(cache.append(0, &rows(5.0, 1), &rows(5.0, 1)).is_err());
    }
}
