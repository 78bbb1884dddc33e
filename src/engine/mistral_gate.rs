//! Keeps mistral.rs 0.8.1 from mixing KV caches of different sizes.
//!
//! Without paged attention, mistral.rs gives each sequence a KV cache sized
//! for its prompt when it arrives, in steps of 512 tokens (a 600-token
//! prompt gets 1,024, a 400-token one 512). It runs only sequences of equal
//! length together, parking the others; when every running sequence ends,
//! it restarts the parked ones as prompts, and a batch of those can hold
//! equal-length sequences whose caches differ in size. Concatenating them
//! panics the engine thread (`kv_cache/mod.rs:591`, "shape mismatch in cat
//! for dim 2 ... 512 ... 1024") while it holds the cache's lock, which
//! poisons it: every later request panics too, and restarts do not help.
//!
//! So each mistral.rs model only ever holds sequences of one cache size at
//! a time: a request waits here while sequences of another size run. Waiting
//! is first come, first served across sizes (a request of another size
//! stops newcomers of the running size from going ahead of it), so neither
//! short nor long prompts can starve the other. Prompts within two tokens
//! of a step boundary, where the gateway's count and the engine's could
//! fall on different sides (both render the same template with the same
//! tokenizer), run alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// mistral.rs's `NormalCache::CACHE_GROW_SIZE`.
const CACHE_STEP_TOKENS: usize = 512;
/// How far from a step boundary a prompt count is trusted.
const BOUNDARY_MARGIN: usize = 2;

/// The cache size a prompt gets, as far as sharing the engine goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheClass {
    /// Cache steps (of 512 tokens) the prompt's cache takes.
    Steps(usize),
    /// Too near a boundary to tell: shares the engine with nothing.
    Alone,
}

impl CacheClass {
    pub fn of_prompt(tokens: usize) -> CacheClass {
        let remainder = tokens % CACHE_STEP_TOKENS;
        let near_boundary = tokens >= CACHE_STEP_TOKENS - BOUNDARY_MARGIN
            && (remainder >= CACHE_STEP_TOKENS - BOUNDARY_MARGIN || remainder <= BOUNDARY_MARGIN);
        if near_boundary {
            CacheClass::Alone
        } else {
            CacheClass::Steps(tokens.div_ceil(CACHE_STEP_TOKENS).max(1))
        }
    }

    fn shares_with(self, other: CacheClass) -> bool {
        self == other && self != CacheClass::Alone
    }
}

/// One model's sequences in the engine and the requests waiting to join.
#[derive(Debug, Default)]
struct Lane {
    running: Option<CacheClass>,
    in_flight: usize,
    /// Waiting requests by arrival ticket.
    waiting: BTreeMap<u64, CacheClass>,
}

impl Lane {
    /// Whether the waiter `ticket` may enter now.
    fn admits(&self, ticket: u64, class: CacheClass) -> bool {
        if self.in_flight == 0 {
            return self.waiting.keys().next() == Some(&ticket);
        }
        let Some(running) = self.running else {
            return false;
        };
        // Joins the running size unless someone of another size came first.
        class.shares_with(running)
            && self
                .waiting
                .range(..ticket)
                .all(|(_, waiting)| waiting.shares_with(running))
    }
}

#[derive(Default)]
struct State {
    lanes: HashMap<String, Lane>,
    next_ticket: u64,
}

/// The gate; one per mistral.rs instance, keyed by engine model id.
#[derive(Default)]
pub struct CacheGate {
    state: Mutex<State>,
    changed: Notify,
}

/// A sequence's place in its model's lane, held until it has left the
/// engine.
pub struct CachePermit {
    gate: Arc<CacheGate>,
    model: String,
}

impl Drop for CachePermit {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock();
        if let Some(lane) = state.lanes.get_mut(&self.model) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if lane.in_flight == 0 {
                lane.running = None;
                if lane.waiting.is_empty() {
                    state.lanes.remove(&self.model);
                }
            }
        }
        drop(state);
        self.gate.changed.notify_waiters();
    }
}

/// Removes a waiter that gave up (its request was dropped while waiting).
struct Waiting<'a> {
    gate: &'a CacheGate,
    model: &'a str,
    ticket: u64,
    entered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.entered {
            return;
        }
        let mut state = self.gate.state.lock();
        if let Some(lane) = state.lanes.get_mut(self.model) {
            lane.waiting.remove(&self.ticket);
            if lane.in_flight == 0 && lane.waiting.is_empty() {
                state.lanes.remove(self.model);
            }
        }
        drop(state);
        self.gate.changed.notify_waiters();
    }
}

impl CacheGate {
    /// Waits until a prompt of `prompt_tokens` may join `model`'s sequences.
    pub async fn enter(self: &Arc<Self>, model: &str, prompt_tokens: usize) -> CachePermit {
        let class = CacheClass::of_prompt(prompt_tokens);
        let ticket = {
            let mut state = self.state.lock();
            state.next_ticket += 1;
            let ticket = state.next_ticket;
            state
                .lanes
                .entry(model.to_string())
                .or_default()
                .waiting
                .insert(ticket, class);
            ticket
        };
        let mut waiting = Waiting {
            gate: self,
            model,
            ticket,
            entered: false,
        };
        loop {
            // Registered before the check, so a release in between wakes it.
            let changed = self.changed.notified();
            if self.try_enter(model, ticket, class) {
                waiting.entered = true;
                // Later waiters of the same size may now go too.
                self.changed.notify_waiters();
                return CachePermit {
                    gate: self.clone(),
                    model: model.to_string(),
                };
            }
            changed.await;
        }
    }

    fn try_enter(&self, model: &str, ticket: u64, class: CacheClass) -> bool {
        let mut state = self.state.lock();
        let Some(lane) = state.lanes.get_mut(model) else {
            return false;
        };
        if !lane.admits(ticket, class) {
            return false;
        }
        lane.waiting.remove(&ticket);
        lane.running = Some(class);
        lane.in_flight += 1;
        true
    }
}

/// A permit held from both sides of a sequence: by mistral.rs, inside the
/// sequence's logits processor (dropped with the sequence, however it
/// ends), and by the gateway's stream of it. The engine's side releases it
/// as soon as the sequence is gone. A cancelled sequence that mistral.rs
/// keeps parked is gone only once it runs again and finds its receiver
/// closed, which it does when the sequences ahead of it end; releasing
/// earlier would let a prompt of another size in beside it. The stream's
/// side is a safety net for an engine that never drops it, long after.
#[derive(Clone, Default)]
pub struct SharedPermit(Arc<Mutex<Option<CachePermit>>>);

impl SharedPermit {
    pub fn new(permit: Option<CachePermit>) -> SharedPermit {
        SharedPermit(Arc::new(Mutex::new(permit)))
    }

    pub fn release(&self) {
        let permit = self.0.lock().take();
        drop(permit);
    }

    /// The stream's hold: dropping it releases the permit after `grace`.
    pub fn stream_hold(&self, grace: Duration) -> StreamHold {
        StreamHold {
            permit: self.clone(),
            grace,
        }
    }
}

pub struct StreamHold {
    permit: SharedPermit,
    grace: Duration,
}

impl Drop for StreamHold {
    fn drop(&mut self) {
        if self.permit.0.lock().is_none() {
            return;
        }
        let (permit, grace) = (self.permit.clone(), self.grace);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(grace).await;
                    if permit.0.lock().is_some() {
                        tracing::warn!(
                            grace_secs = grace.as_secs(),
                            "mistral.rs kept a finished sequence; releasing its cache-size hold"
                        );
                    }
                    permit.release();
                });
            }
            Err(_) => permit.release(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_classed_by_the_cache_step_they_fill() {
        assert_eq!(CacheClass::of_prompt(1), CacheClass::Steps(1));
        assert_eq!(CacheClass::of_prompt(400), CacheClass::Steps(1));
        assert_eq!(CacheClass::of_prompt(600), CacheClass::Steps(2));
        assert_eq!(CacheClass::of_prompt(1100), CacheClass::Steps(3));
        for near in [510, 511, 512, 513, 514, 1022, 1024, 1026] {
            assert_eq!(CacheClass::of_prompt(near), CacheClass::Alone, "{near}");
        }
        assert_eq!(CacheClass::of_prompt(509), CacheClass::Steps(1));
        assert_eq!(CacheClass::of_prompt(515), CacheClass::Steps(2));
        assert!(!CacheClass::Alone.shares_with(CacheClass::Alone));
    }

    async fn entered_within(
        gate: &Arc<CacheGate>,
        model: &str,
        tokens: usize,
    ) -> Option<CachePermit> {
        tokio::time::timeout(Duration::from_millis(50), gate.enter(model, tokens))
            .await
            .ok()
    }

    #[tokio::test]
    async fn one_cache_size_at_a_time_per_model() {
        let gate = Arc::new(CacheGate::default());
        let short = entered_within(&gate, "m", 100).await.expect("empty lane");
        let also_short = entered_within(&gate, "m", 300).await.expect("same size");
        assert!(
            entered_within(&gate, "m", 700).await.is_none(),
            "another size waits"
        );
        let other_model = entered_within(&gate, "adapter", 700).await;
        assert!(other_model.is_some(), "each model has its own lane");
        drop((short, also_short));
        assert!(entered_within(&gate, "m", 700).await.is_some());
    }

    #[tokio::test]
    async fn a_waiting_size_is_not_overtaken_by_the_running_one() {
        let gate = Arc::new(CacheGate::default());
        let short = entered_within(&gate, "m", 100).await.expect("empty lane");
        let long = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter("m", 700).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            entered_within(&gate, "m", 200).await.is_none(),
            "a newcomer of the running size waits behind the long prompt"
        );
        drop(short);
        let long = tokio::time::timeout(Duration::from_secs(1), long)
            .await
            .expect("the long prompt enters once the short one leaves")
            .expect("joined");
        assert!(entered_within(&gate, "m", 200).await.is_none());
        drop(long);
        assert!(entered_within(&gate, "m", 200).await.is_some());
    }

    #[tokio::test]
    async fn prompts_at_a_boundary_run_alone_and_give_up_cleanly() {
        let gate = Arc::new(CacheGate::default());
        let alone = entered_within(&gate, "m", 512).await.expect("empty lane");
        assert!(entered_within(&gate, "m", 100).await.is_none());
        assert!(entered_within(&gate, "m", 512).await.is_none());
        drop(alone);
        // The two waiters above timed out; they must not block the lane.
        assert!(entered_within(&gate, "m", 100).await.is_some());
    }

    #[tokio::test]
    async fn the_engine_side_releases_at_once_the_stream_side_after_grace() {
        let gate = Arc::new(CacheGate::default());
        let shared = SharedPermit::new(entered_within(&gate, "m", 100).await);
        let hold = shared.stream_hold(Duration::from_millis(200));
        drop(hold);
        assert!(
            entered_within(&gate, "m", 700).await.is_none(),
            "within grace"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            entered_within(&gate, "m", 700).await.is_some(),
            "after grace"
        );

        let shared = SharedPermit::new(entered_within(&gate, "m", 100).await);
        let _hold = shared.stream_hold(Duration::from_secs(60));
        shared.release();
        assert!(entered_within(&gate, "m", 700).await.is_some());
    }
}
