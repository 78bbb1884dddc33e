//! The block allocator paged attention needs (issue 13): a fixed pool of KV
//! blocks shared by every sequence of every adapter, a block table per
//! sequence, admission by free blocks, and which sequence to preempt when
//! the pool runs out. Plain Rust, so the policy is tested on CPU; the CUDA
//! kernels (`mistralrs-paged-attn`'s `reshape_and_cache`, `paged_attention`,
//! `copy_blocks`) take the tables this hands out.
//!
//! The shared-base engine uses it when `model.paged_attention` is on
//! (`shared_base::paged` holds the device side); nothing here has run on a
//! GPU yet.

use std::collections::HashMap;

/// Index of a block in the pool (and in the device's KV tensors).
pub type BlockId = u32;
/// The engine's id for a sequence.
pub type SequenceId = u64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("the KV block pool is exhausted")]
    OutOfBlocks,
    #[error("sequence {0} has no block table")]
    UnknownSequence(SequenceId),
    #[error("sequence {0} already has a block table")]
    AlreadyAdmitted(SequenceId),
    #[error(
        "sequence {0} would write to a block it shares (a fork), which this pool does not copy"
    )]
    SharedBlock(SequenceId),
}

/// A sequence's blocks, in order, and how many tokens they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    pub blocks: Vec<BlockId>,
    pub tokens: usize,
}

/// What the engine must do to the device's KV tensors after `append`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Append {
    /// The token fits in the last block, owned by this sequence alone.
    InPlace,
    /// A fresh block was added to the table.
    NewBlock(BlockId),
    /// The last block was shared (a fork): it was copied into `to`, which
    /// replaces it in this sequence's table (`copy_blocks`).
    CopyOnWrite { from: BlockId, to: BlockId },
}

/// The pool and every sequence's table.
#[derive(Debug)]
pub struct BlockAllocator {
    block_size: usize,
    free: Vec<BlockId>,
    /// Sequences holding each block (forks share blocks).
    holders: Vec<u32>,
    tables: HashMap<SequenceId, BlockTable>,
    /// Blocks kept free at admission so running sequences can still grow.
    watermark: usize,
}

impl BlockAllocator {
    /// `blocks` of `block_size` tokens each; admission keeps `watermark`
    /// blocks back for the growth of sequences already running.
    pub fn new(blocks: u32, block_size: usize, watermark: usize) -> BlockAllocator {
        assert!(block_size > 0, "a block holds at least one token");
        BlockAllocator {
            block_size,
            // Popped from the end: block 0 is handed out first.
            free: (0..blocks).rev().collect(),
            holders: vec![0; blocks as usize],
            tables: HashMap::new(),
            watermark,
        }
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn table(&self, sequence: SequenceId) -> Option<&BlockTable> {
        self.tables.get(&sequence)
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Whether a prompt of `tokens` can start now without eating into the
    /// blocks kept for running sequences.
    pub fn can_admit(&self, tokens: usize) -> bool {
        self.blocks_for(tokens.max(1)) + self.watermark <= self.free.len()
    }

    /// Gives a new sequence the blocks for its prompt, keeping the
    /// watermark back.
    pub fn admit(
        &mut self,
        sequence: SequenceId,
        tokens: usize,
    ) -> Result<&BlockTable, BlockError> {
        self.admit_keeping(sequence, tokens, self.watermark)
    }

    /// `admit` for an engine with nothing running: no growth to protect, so
    /// every free block may go to the one sequence (which otherwise might
    /// never start).
    pub fn admit_all_free(
        &mut self,
        sequence: SequenceId,
        tokens: usize,
    ) -> Result<&BlockTable, BlockError> {
        self.admit_keeping(sequence, tokens, 0)
    }

    fn admit_keeping(
        &mut self,
        sequence: SequenceId,
        tokens: usize,
        kept_back: usize,
    ) -> Result<&BlockTable, BlockError> {
        if self.tables.contains_key(&sequence) {
            return Err(BlockError::AlreadyAdmitted(sequence));
        }
        if self.blocks_for(tokens.max(1)) + kept_back > self.free.len() {
            return Err(BlockError::OutOfBlocks);
        }
        let blocks = (0..self.blocks_for(tokens.max(1)))
            .map(|_| self.take())
            .collect::<Option<Vec<_>>>()
            .ok_or(BlockError::OutOfBlocks)?;
        Ok(&*self
            .tables
            .entry(sequence)
            .or_insert(BlockTable { blocks, tokens }))
    }

    fn take(&mut self) -> Option<BlockId> {
        let block = self.free.pop()?;
        self.holders[block as usize] = 1;
        Some(block)
    }

    /// Makes room for one more token of `sequence`.
    pub fn append(&mut self, sequence: SequenceId) -> Result<Append, BlockError> {
        let block_size = self.block_size;
        let table = self
            .tables
            .get(&sequence)
            .ok_or(BlockError::UnknownSequence(sequence))?;
        let full = table.tokens == table.blocks.len() * block_size;
        let last = table.blocks.last().copied();
        let action = match last {
            Some(last) if !full && self.holders[last as usize] > 1 => {
                let to = self.take().ok_or(BlockError::OutOfBlocks)?;
                self.holders[last as usize] -= 1;
                Append::CopyOnWrite { from: last, to }
            }
            Some(_) if !full => Append::InPlace,
            _ => Append::NewBlock(self.take().ok_or(BlockError::OutOfBlocks)?),
        };
        let table = self
            .tables
            .get_mut(&sequence)
            .ok_or(BlockError::UnknownSequence(sequence))?;
        match action {
            Append::NewBlock(block) => table.blocks.push(block),
            Append::CopyOnWrite { to, .. } => {
                if let Some(last) = table.blocks.last_mut() {
                    *last = to;
                }
            }
            Append::InPlace => {}
        }
        table.tokens += 1;
        Ok(action)
    }

    /// A child sharing every block of `parent` (several choices of one
    /// prompt); blocks are copied only when one side writes to a shared one.
    pub fn fork(&mut self, parent: SequenceId, child: SequenceId) -> Result<(), BlockError> {
        if self.tables.contains_key(&child) {
            return Err(BlockError::AlreadyAdmitted(child));
        }
        let table = self
            .tables
            .get(&parent)
            .cloned()
            .ok_or(BlockError::UnknownSequence(parent))?;
        for block in &table.blocks {
            self.holders[*block as usize] += 1;
        }
        self.tables.insert(child, table);
        Ok(())
    }

    /// Returns a finished, cancelled or preempted sequence's blocks to the
    /// pool (those it shared stay with the other holders). Idempotent.
    pub fn release(&mut self, sequence: SequenceId) {
        let Some(table) = self.tables.remove(&sequence) else {
            return;
        };
        for block in table.blocks {
            let holders = &mut self.holders[block as usize];
            *holders = holders.saturating_sub(1);
            if *holders == 0 {
                self.free.push(block);
            }
        }
    }
}

/// A running sequence as preemption sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub sequence: SequenceId,
    pub tenant: String,
    /// The tenant's priority class: higher runs first.
    pub priority: u8,
    /// Admission order: larger is newer.
    pub arrived: u64,
}

/// Which sequence gives its blocks back (to be recomputed later) when the
/// pool runs out: among the lowest priority class running, the newest
/// sequence of the tenant holding the most running sequences, so the tenant
/// over its share pays first and the work thrown away is the least.
pub fn preemption_victim(running: &[Running]) -> Option<SequenceId> {
    let lowest = running.iter().map(|sequence| sequence.priority).min()?;
    let mut per_tenant: HashMap<&str, usize> = HashMap::new();
    for sequence in running {
        *per_tenant.entry(sequence.tenant.as_str()).or_default() += 1;
    }
    running
        .iter()
        .filter(|sequence| sequence.priority == lowest)
        .max_by_key(|sequence| (per_tenant[sequence.tenant.as_str()], sequence.arrived))
        .map(|sequence| sequence.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_free_blocks_and_keeps_the_watermark() {
        let mut pool = BlockAllocator::new(8, 16, 2);
        assert!(pool.can_admit(96), "6 blocks + 2 kept back");
        assert!(!pool.can_admit(97));
        let table = pool.admit(1, 40).unwrap().clone();
        assert_eq!(table.blocks, vec![0, 1, 2]);
        assert_eq!(pool.free_blocks(), 5);
        assert_eq!(pool.admit(2, 64), Err(BlockError::OutOfBlocks));
        assert_eq!(pool.admit(1, 1), Err(BlockError::AlreadyAdmitted(1)));
    }

    #[test]
    fn growth_takes_a_block_only_at_a_boundary() {
        let mut pool = BlockAllocator::new(4, 4, 0);
        pool.admit(7, 3).unwrap();
        assert_eq!(pool.append(7), Ok(Append::InPlace));
        assert_eq!(pool.append(7), Ok(Append::NewBlock(1)));
        for _ in 0..3 {
            assert_eq!(pool.append(7), Ok(Append::InPlace));
        }
        assert_eq!(pool.table(7).unwrap().tokens, 8);
        assert_eq!(pool.append(7), Ok(Append::NewBlock(2)));
        assert_eq!(pool.append(9), Err(BlockError::UnknownSequence(9)));
    }

    #[test]
    fn running_out_while_growing_is_an_error_not_a_panic() {
        let mut pool = BlockAllocator::new(2, 2, 0);
        pool.admit(1, 4).unwrap();
        assert_eq!(pool.append(1), Err(BlockError::OutOfBlocks));
        assert_eq!(pool.table(1).unwrap().tokens, 4, "nothing half-done");
    }

    #[test]
    fn release_returns_every_block_once() {
        let mut pool = BlockAllocator::new(6, 4, 0);
        pool.admit(1, 9).unwrap();
        pool.admit(2, 4).unwrap();
        assert_eq!(pool.free_blocks(), 2);
        pool.release(1);
        pool.release(1);
        assert_eq!(pool.free_blocks(), 5);
        pool.release(2);
        assert_eq!(pool.free_blocks(), 6);
        assert!(pool.can_admit(24));
    }

    #[test]
    fn forks_share_blocks_and_copy_the_last_on_write() {
        let mut pool = BlockAllocator::new(8, 4, 0);
        pool.admit(1, 6).unwrap();
        pool.fork(1, 2).unwrap();
        assert_eq!(pool.free_blocks(), 6, "a fork takes no block");
        assert_eq!(pool.append(2), Ok(Append::CopyOnWrite { from: 1, to: 2 }));
        assert_eq!(pool.table(2).unwrap().blocks, vec![0, 2]);
        // The parent now holds its last block alone.
        assert_eq!(pool.append(1), Ok(Append::InPlace));
        pool.release(1);
        assert_eq!(pool.free_blocks(), 6, "block 0 stays with the child");
        pool.release(2);
        assert_eq!(pool.free_blocks(), 8);
    }

    #[test]
    fn the_newest_sequence_of_the_busiest_tenant_is_preempted() {
        let running = |sequence, tenant: &str, arrived| Running {
            sequence,
            tenant: tenant.into(),
            priority: 0,
            arrived,
        };
        let batch = [
            running(1, "quiet", 9),
            running(2, "busy", 1),
            running(3, "busy", 5),
            running(4, "busy", 3),
        ];
        assert_eq!(preemption_victim(&batch), Some(3));
        assert_eq!(preemption_victim(&batch[..1]), Some(1));
        assert_eq!(preemption_victim(&[]), None);
        // A higher priority class is never preempted for a lower one.
        let mut important = batch.clone();
        for sequence in important.iter_mut().filter(|s| s.tenant == "busy") {
            sequence.priority = 1;
        }
        assert_eq!(preemption_victim(&important), Some(1));
    }
}
