//! The engine loop: continuous batching on one thread that owns the model.
//!
//! Between steps, new sequences join (when the KV store has room and the
//! batch has room) and finished or abandoned ones leave. A contiguous store
//! reserves a sequence's whole budget at admission; a paged one admits by
//! the prompt's blocks and grows each step, and when it runs out the newest
//! sequence of the busiest tenant gives its blocks back and is recomputed
//! later (its tokens are kept; nothing already sent changes).
//! Each step carries one token for every decoding sequence plus prompt
//! chunks for new ones, up to a token budget shared by tenant (`plan`), so a
//! long prompt delays the others by one chunk at most, never by its whole
//! length, and another tenant's prompt advances beside it. Rows are ordered
//! by adapter so each adapter's rows are contiguous. The loop never waits on
//! a client: events go to unbounded channels.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use candle_core::Device;
use prometheus::{IntCounter, IntGauge};

use super::attention::SequenceRows;
use super::kv::{KvStore, SequenceCache};
use super::lora::RowGroup;
use super::model::{Model, StepRows};
use super::paged::PagedCache;
use super::plan::Candidate;
use super::sequence::Sequence;
use crate::engine::EngineError;
use crate::engine::admission::Policy;
use crate::engine::kv_blocks::{BlockError, Running, preemption_victim};

/// What the engine thread is told.
pub enum Command {
    Start(Box<Sequence>),
    Stop,
}

pub struct SchedulerConfig {
    /// Sequences in one step at most.
    pub max_sequences: usize,
    /// `Fair`: the batch is shared by tenant weight, pausing the sequences of
    /// a tenant over its share when another one waits. `Fifo`: oldest first.
    pub policy: crate::engine::admission::Policy,
    /// Rows (tokens) in one step at most; prompts are chunked to fit.
    pub max_step_tokens: usize,
}

/// What the loop reports to Prometheus.
#[derive(Clone)]
pub struct SchedulerMetrics {
    /// Sequences that gave their KV blocks back to be recomputed.
    pub preemptions: IntCounter,
    /// Free blocks of the paged pool (0 with contiguous caches).
    pub kv_blocks_free: IntGauge,
}

pub struct Scheduler {
    model: Arc<Model>,
    store: KvStore,
    config: SchedulerConfig,
    commands: Receiver<Command>,
    waiting: VecDeque<Box<Sequence>>,
    running: Vec<Sequence>,
    device: Device,
    metrics: SchedulerMetrics,
    arrivals: u64,
}

impl Scheduler {
    pub fn new(
        model: Arc<Model>,
        store: KvStore,
        config: SchedulerConfig,
        commands: Receiver<Command>,
        device: Device,
        metrics: SchedulerMetrics,
    ) -> Scheduler {
        Scheduler {
            model,
            store,
            config,
            commands,
            waiting: VecDeque::new(),
            running: Vec::new(),
            device,
            metrics,
            arrivals: 0,
        }
    }

    /// Runs until told to stop or every sender is gone.
    pub fn run(mut self) {
        loop {
            if !self.take_commands() {
                return;
            }
            self.drop_finished();
            self.make_room_for_the_fair_share();
            self.admit();
            if self.running.is_empty() {
                continue;
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| self.step()));
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(panic) => Some(
                    panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into()),
                ),
            };
            if let Some(failure) = failure {
                // The step's caches may be half written: fail exactly the
                // sequences in it; waiting ones are untouched.
                tracing::error!(error = %failure, sequences = self.running.len(), "engine step failed");
                for sequence in &mut self.running {
                    sequence.fail(EngineError::Internal(failure.clone()));
                }
            }
        }
    }

    /// Takes new commands; blocks while there is nothing to do. `false`
    /// when the engine should stop.
    fn take_commands(&mut self) -> bool {
        let idle = self.running.is_empty() && self.waiting.is_empty();
        let first = if idle {
            match self.commands.recv_timeout(Duration::from_secs(1)) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        } else {
            None
        };
        let mut next = first.or_else(|| self.commands.try_recv().ok());
        while let Some(command) = next {
            match command {
                Command::Start(mut sequence) => {
                    self.arrivals += 1;
                    sequence.arrival = self.arrivals;
                    self.waiting.push_back(sequence);
                }
                Command::Stop => return false,
            }
            next = self.commands.try_recv().ok();
        }
        true
    }

    fn drop_finished(&mut self) {
        self.running.retain(|s| !s.done && !s.abandoned());
        self.waiting.retain(|s| !s.abandoned());
        self.report_free_blocks();
    }

    fn report_free_blocks(&self) {
        if let KvStore::Paged(pool) = &self.store {
            self.metrics.kv_blocks_free.set(pool.free_blocks() as i64);
        }
    }

    /// The waiting sequence to run next: the highest priority class, then
    /// the tenant with the fewest running sequences for its weight (the
    /// furthest below its share of the batch), then the oldest. So a request
    /// admitted fairly by the gateway does not wait here behind another
    /// tenant's backlog.
    fn next_waiting(&self) -> Option<usize> {
        if self.config.policy == Policy::Fifo {
            return (!self.waiting.is_empty()).then_some(0);
        }
        let running = |tenant: &str| {
            self.running
                .iter()
                .filter(|s| s.claim.tenant == tenant)
                .count() as f64
        };
        self.waiting
            .iter()
            .enumerate()
            .min_by(|(a_index, a), (b_index, b)| {
                let load =
                    |s: &Sequence| running(&s.claim.tenant) / f64::from(s.claim.weight.max(1));
                b.claim
                    .priority
                    .cmp(&a.claim.priority)
                    .then(load(a).total_cmp(&load(b)))
                    .then(a_index.cmp(b_index))
            })
            .map(|(index, _)| index)
    }

    /// A tenant's share of the batch: its weight over the weights of every
    /// tenant with a sequence running or waiting.
    fn batch_share(&self, tenant: &str) -> f64 {
        let mut weights: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        for sequence in self.running.iter().chain(self.waiting.iter().map(|s| &**s)) {
            weights.insert(&sequence.claim.tenant, sequence.claim.weight.max(1));
        }
        let total: u32 = weights.values().sum();
        let own = weights.get(tenant).copied().unwrap_or(1);
        self.config.max_sequences as f64 * f64::from(own) / f64::from(total.max(1))
    }

    fn running_of(&self, tenant: &str) -> usize {
        self.running
            .iter()
            .filter(|s| s.claim.tenant == tenant)
            .count()
    }

    /// When the batch is full and the next waiting sequence's tenant runs
    /// fewer sequences than its share, pauses the newest sequence of the
    /// tenant furthest over its share. A paused sequence keeps its cache and
    /// resumes where it stopped when there is room; nothing is recomputed.
    fn make_room_for_the_fair_share(&mut self) {
        if self.config.policy != Policy::Fair || self.running.len() < self.config.max_sequences {
            return;
        }
        let Some(next) = self.next_waiting() else {
            return;
        };
        let claim = self.waiting[next].claim.clone();
        if self.running_of(&claim.tenant) as f64 + 1.0 > self.batch_share(&claim.tenant) {
            return;
        }
        let victim = self
            .running
            .iter()
            .enumerate()
            .filter(|(_, s)| s.claim.priority <= claim.priority)
            .map(|(index, s)| {
                let excess =
                    self.running_of(&s.claim.tenant) as f64 - self.batch_share(&s.claim.tenant);
                (excess, index)
            })
            .filter(|(excess, _)| *excess >= 1.0)
            // The furthest over its share; among its sequences, the newest.
            .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, index)| index);
        if let Some(index) = victim {
            let paused = self.running.remove(index);
            self.waiting.push_back(Box::new(paused));
        }
    }

    /// Moves waiting sequences in while the batch and the KV store have room
    /// (a paused sequence already holds its cache).
    fn admit(&mut self) {
        while self.running.len() < self.config.max_sequences {
            let Some(index) = self.next_waiting() else {
                return;
            };
            let Some(mut sequence) = self.waiting.remove(index) else {
                return;
            };
            if sequence.cache.is_some() {
                self.running.push(*sequence);
                continue;
            }
            // A sequence that cannot fit even alone never will.
            let whole = sequence.prompt_len + sequence.max_tokens;
            let capacity = self.store.capacity_tokens();
            if whole > capacity {
                sequence.fail(EngineError::Rejected(format!(
                    "the request needs {whole} tokens of KV cache, more than this engine's budget of {capacity}"
                )));
                continue;
            }
            match self.allocate(&sequence) {
                Ok(Some(cache)) => {
                    sequence.cache = Some(cache);
                    self.running.push(*sequence);
                }
                Ok(None) => {
                    self.waiting.insert(index, sequence);
                    self.resume_paused();
                    return;
                }
                Err(error) => sequence.fail(EngineError::Internal(error.to_string())),
            }
        }
    }

    /// While the next sequence waits for KV room, paused sequences (which
    /// hold their cache and need nothing new to start) fill the batch
    /// instead of leaving it short.
    fn resume_paused(&mut self) {
        while self.running.len() < self.config.max_sequences {
            let Some(index) = self.waiting.iter().position(|s| s.cache.is_some()) else {
                return;
            };
            if let Some(sequence) = self.waiting.remove(index) {
                self.running.push(*sequence);
            }
        }
    }

    /// A cache for a sequence about to run, or `None` while the store lacks
    /// room. A paged sequence gets blocks for the tokens it has (its prompt,
    /// or everything so far when it was preempted); an idle engine first
    /// takes blocks back from paused sequences, so it can always start one.
    fn allocate(&mut self, sequence: &Sequence) -> anyhow::Result<Option<SequenceCache>> {
        match &self.store {
            KvStore::Contiguous(pool) => {
                let tokens = sequence.prompt_len + sequence.max_tokens;
                let config = &self.model.config;
                Ok(pool.allocate(config, tokens, self.model.dtype, &self.device)?)
            }
            KvStore::Paged(pool) => {
                let pool = pool.clone();
                let idle = self.running.is_empty();
                loop {
                    if let Some(cache) = pool.admit(sequence.tokens.len(), !idle)? {
                        return Ok(Some(SequenceCache::Paged(cache)));
                    }
                    // Only as many paused sequences as it takes.
                    if !idle || !self.preempt_paused() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Takes the blocks of the newest paused sequence that holds any.
    fn preempt_paused(&mut self) -> bool {
        let paused = self
            .waiting
            .iter_mut()
            .rev()
            .find(|s| matches!(s.cache, Some(SequenceCache::Paged(_))));
        match paused {
            Some(sequence) => {
                sequence.cache = None;
                sequence.cached = 0;
                self.metrics.preemptions.inc();
                true
            }
            None => false,
        }
    }

    /// Frees blocks when the pool cannot hold the next step: a paused
    /// sequence's first, else the newest running sequence of the tenant
    /// running the most, which goes back to the head of the queue. `false`
    /// when there is nothing to take.
    fn preempt_one(&mut self) -> bool {
        if self.preempt_paused() {
            return true;
        }
        let running: Vec<Running> = self
            .running
            .iter()
            .enumerate()
            .map(|(index, s)| Running {
                sequence: index as u64,
                tenant: s.claim.tenant.clone(),
                priority: s.claim.priority,
                arrived: s.arrival,
            })
            .collect();
        let Some(victim) = preemption_victim(&running) else {
            return false;
        };
        let mut sequence = self.running.remove(victim as usize);
        sequence.cache = None;
        sequence.cached = 0;
        tracing::debug!(
            tenant = %sequence.claim.tenant,
            tokens = sequence.tokens.len(),
            "KV pool exhausted: sequence preempted, to be recomputed"
        );
        self.metrics.preemptions.inc();
        self.waiting.push_front(Box::new(sequence));
        true
    }

    /// Blocks for every row of the plan, before anything is written.
    fn reserve(&mut self, plan: &[(usize, usize)]) -> Result<(), BlockError> {
        for &(index, rows) in plan {
            let sequence = &mut self.running[index];
            let wanted = sequence.cached + rows;
            if let Some(SequenceCache::Paged(cache)) = &mut sequence.cache {
                cache.reserve(wanted)?;
            }
        }
        Ok(())
    }

    /// The step's plan, with blocks reserved for it (preempting as needed).
    fn plan_with_blocks(&mut self) -> anyhow::Result<Vec<(usize, usize)>> {
        loop {
            let plan = plan(&self.running, self.config.max_step_tokens);
            match self.reserve(&plan) {
                Ok(()) => return Ok(plan),
                Err(BlockError::OutOfBlocks) if self.preempt_one() => continue,
                Err(error) => anyhow::bail!("KV blocks for the step: {error}"),
            }
        }
    }

    /// One forward pass over every running sequence, then sampling.
    fn step(&mut self) -> anyhow::Result<()> {
        let plan = self.plan_with_blocks()?;
        if plan.is_empty() {
            return Ok(());
        }
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut sample_rows = Vec::new();
        let mut sampled_sequences = Vec::new();
        let mut spans = Vec::with_capacity(plan.len());
        for &(index, rows) in &plan {
            let sequence = &self.running[index];
            let start = tokens.len();
            for offset in 0..rows {
                let position = sequence.cached + offset;
                tokens.push(sequence.tokens[position]);
                positions.push(position as u32);
            }
            if sequence.cached + rows == sequence.tokens.len() {
                sample_rows.push((start + rows - 1) as u32);
                sampled_sequences.push(index);
            }
            spans.push((index, SequenceRows { start, len: rows }));
        }
        // The caches leave their sequences for the pass, so the adapters
        // can be borrowed from the same sequences at once.
        let mut taken = Vec::with_capacity(spans.len());
        for &(index, span) in &spans {
            let cache = self.running[index]
                .cache
                .take()
                .ok_or_else(|| anyhow::anyhow!("a running sequence has no cache"))?;
            taken.push((index, span, cache));
        }
        let paged = match &self.store {
            KvStore::Paged(pool) => {
                let spans: Vec<(SequenceRows, &PagedCache)> = taken
                    .iter()
                    .filter_map(|(_, span, cache)| match cache {
                        SequenceCache::Paged(cache) => Some((*span, cache)),
                        SequenceCache::Contiguous(_) => None,
                    })
                    .collect();
                Some(pool.step(&spans)?)
            }
            KvStore::Contiguous(_) => None,
        };
        let logits = {
            let sequences = taken
                .iter_mut()
                .map(|(_, span, cache)| (*span, cache))
                .collect();
            let adapters = row_groups(&self.running, &spans);
            let mut step = StepRows {
                tokens,
                positions,
                sequences,
                sample_rows,
                adapters,
                paged,
            };
            self.model.forward(&mut step)
        };
        self.report_free_blocks();
        // On failure the caches go with `taken`: the run loop fails the
        // step's sequences, whose blocks are then released.
        let logits = logits?;
        for (index, span, mut cache) in taken {
            cache.commit(span.len);
            let sequence = &mut self.running[index];
            sequence.cache = Some(cache);
            sequence.cached += span.len;
        }
        for (mut row, index) in logits.into_iter().zip(sampled_sequences) {
            let sequence = &mut self.running[index];
            let allowed = match &mut sequence.constraint {
                Some(constraint) => match constraint.allowed() {
                    Ok(mask) => Some(mask.to_vec()),
                    Err(error) => {
                        sequence.fail(EngineError::Internal(format!("constraint: {error}")));
                        continue;
                    }
                },
                None => None,
            };
            match sequence.sampler.sample(&mut row, allowed.as_deref()) {
                Ok(sampled) => sequence.accept(sampled),
                Err(error) => sequence.fail(EngineError::Internal(format!("sampling: {error}"))),
            }
        }
        Ok(())
    }
}

/// The step's rows (`shared_base::plan`): decoding sequences first, then
/// prompt chunks shared fairly by tenant.
fn plan(running: &[Sequence], max_tokens: usize) -> Vec<(usize, usize)> {
    let candidates: Vec<Candidate<'_>> = running
        .iter()
        .map(|sequence| Candidate {
            tenant: &sequence.claim.tenant,
            pending: sequence.pending(),
            adapter: sequence.adapter.as_ref().map(|a| Arc::as_ptr(a) as usize),
        })
        .collect();
    super::plan::plan(&candidates, max_tokens)
}

/// Contiguous runs of rows that share an adapter.
fn row_groups<'a>(running: &'a [Sequence], spans: &[(usize, SequenceRows)]) -> Vec<RowGroup<'a>> {
    let mut groups: Vec<RowGroup<'a>> = Vec::new();
    for &(index, span) in spans {
        let Some(adapter) = &running[index].adapter else {
            continue;
        };
        match groups.last_mut() {
            Some(last)
                if std::ptr::eq(last.adapter, &adapter.weights)
                    && last.start + last.len == span.start =>
            {
                last.len += span.len;
            }
            _ => groups.push(RowGroup {
                start: span.start,
                len: span.len,
                adapter: &adapter.weights,
            }),
        }
    }
    groups
}
