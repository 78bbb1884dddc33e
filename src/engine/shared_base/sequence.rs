//! One generation inside the engine: its tokens, its adapter (pinned to the
//! version it started with), its sampler and constraint, and the channel to
//! its client. Sending never waits: the channel is unbounded and the
//! gateway drains it, so a slow client cannot hold up the batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntCounter;
use tokio::sync::mpsc::UnboundedSender;

use super::constraint::Constraint;
use super::kv::SequenceCache;
use super::sampler::{Sampled, Sampler};
use crate::engine::stop::{Scan, StopScanner};
use crate::engine::{EngineError, FinishReason, InferenceEvent, TokenLogprob, TokenUsage};
use crate::prompt::detokenize::IncrementalDecoder;
use crate::prompt::token_bytes::TokenBytes;

/// A loaded adapter as sequences hold it: the weights stay alive for every
/// sequence that started with them, even after a newer version replaces it.
pub struct LoadedAdapter {
    pub id: String,
    pub weights: super::lora::AdapterWeights,
}

pub struct Sequence {
    /// Whose it is: the engine's own queue is shared fairly too.
    pub claim: crate::engine::admission::Claim,
    /// Set by the scheduler on arrival: larger is newer (preemption order).
    pub arrival: u64,
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens of `tokens` already in the cache.
    pub cached: usize,
    pub cache: Option<SequenceCache>,
    pub adapter: Option<Arc<LoadedAdapter>>,
    pub max_tokens: usize,
    pub sampler: Sampler,
    pub constraint: Option<Constraint>,
    pub decoder: IncrementalDecoder,
    pub stops: StopScanner,
    pub eos: Arc<Vec<u32>>,
    pub events: UnboundedSender<Result<InferenceEvent, EngineError>>,
    pub progress: Arc<AtomicU64>,
    pub sampled_tokens: IntCounter,
    /// Logprobs are wanted: the per-token text is needed too.
    pub logprobs: bool,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    pub token_bytes: Arc<TokenBytes>,
    pub done: bool,
}

impl Sequence {
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Whether the client has gone (its stream was dropped).
    pub fn abandoned(&self) -> bool {
        self.events.is_closed()
    }

    /// Tokens still to go through the model before the next sample.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.cached
    }

    fn usage(&self) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
        }
    }

    fn send(&self, event: Result<InferenceEvent, EngineError>) {
        // A closed channel means the client left; the scheduler drops the
        // sequence at its next look.
        let _ = self.events.send(event);
    }

    pub fn fail(&mut self, error: EngineError) {
        self.done = true;
        self.send(Err(error));
    }

    fn finish(&mut self, reason: FinishReason) {
        let tail = self.decoder.finish();
        let tail = match self.stops.push(&tail) {
            Scan::Continue(text) | Scan::Stopped(text) => text + &self.stops.finish(),
        };
        if !tail.is_empty() {
            self.send(Ok(InferenceEvent::text(tail, Vec::new())));
        }
        self.done = true;
        let usage = self.usage();
        self.send(Ok(InferenceEvent::finished(reason, usage)));
    }

    fn logprob_entry(&self, sampled: &Sampled) -> TokenLogprob {
        let entry = |token: u32, logprob: f32| {
            let bytes = self.token_bytes.of(&self.tokenizer, token);
            (String::from_utf8_lossy(&bytes).into_owned(), bytes, logprob)
        };
        let (token, bytes, logprob) = entry(sampled.token, sampled.logprob.unwrap_or(0.0));
        TokenLogprob {
            token,
            bytes,
            logprob,
            top: sampled.top.iter().map(|&(id, lp)| entry(id, lp)).collect(),
        }
    }

    /// Takes the sampled token: emits its text, and finishes the sequence
    /// at an end-of-turn token, a stop sequence, the budget or the end of
    /// the grammar. Stop and end tokens are counted but never shown.
    pub fn accept(&mut self, sampled: Sampled) {
        let token = sampled.token;
        self.tokens.push(token);
        self.progress.fetch_add(1, Ordering::Relaxed);
        self.sampled_tokens.inc();
        let logprobs = if self.logprobs {
            vec![self.logprob_entry(&sampled)]
        } else {
            Vec::new()
        };
        if let Some(constraint) = &mut self.constraint
            && let Err(error) = constraint.commit(token)
        {
            self.fail(EngineError::Internal(format!("constraint: {error}")));
            return;
        }
        if self.eos.contains(&token) {
            if !logprobs.is_empty() {
                self.send(Ok(InferenceEvent::text(String::new(), logprobs)));
            }
            self.finish(FinishReason::Stop);
            return;
        }
        let text = match self.decoder.push(token) {
            Ok(text) => text,
            Err(error) => {
                self.fail(EngineError::Internal(format!("detokenizing: {error}")));
                return;
            }
        };
        let (text, stopped) = match self.stops.push(&text) {
            Scan::Continue(text) => (text, false),
            Scan::Stopped(text) => (text, true),
        };
        if !text.is_empty() || !logprobs.is_empty() {
            self.send(Ok(InferenceEvent::text(text, logprobs)));
        }
        if stopped {
            self.done = true;
            let usage = self.usage();
            self.send(Ok(InferenceEvent::finished(FinishReason::Stop, usage)));
        } else if self.constraint.as_ref().is_some_and(Constraint::is_stopped) {
            self.finish(FinishReason::Stop);
        } else if self.generated() >= self.max_tokens {
            self.finish(FinishReason::Length);
        }
    }
}
