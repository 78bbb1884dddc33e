//! Which adapters are loaded in the engine. Each adapter generation is its
//! own engine model (`adapter:<tenant>/<name>@<generation>`): loaded on first
//! use or on upload, one load per adapter at a time however many requests
//! wait for it, unloaded least-recently-used first when the budget is full,
//! and a replaced generation is unloaded only once its last request is done.
//!
//! The budget is in bytes (what each loaded adapter really holds: its own
//! tensors on the shared-base engine, a whole copy of the base on mistral.rs),
//! with an optional cap on the count as well.
//!
//! When every slot is serving requests, loads wait their turn in arrival
//! order, and the least recently used slot drains for the first of them: it
//! finishes the requests it holds but takes no new ones. Without that, a
//! tenant sending back-to-back requests to its adapter would keep the only
//! slot busy forever and starve every other adapter.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;

use super::{AdapterError, AdapterRecord, AdapterStore};
use crate::engine::{AdapterFiles, Engine};
use crate::metrics::Metrics;

type Load = Shared<BoxFuture<'static, Result<(), String>>>;

/// Waits up to `within` for a load shared by everyone who wants the adapter.
async fn finished(load: Load, within: Duration) -> Result<(), AdapterError> {
    match tokio::time::timeout(within, load).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(AdapterError::Load(message)),
        Err(_) => Err(AdapterError::LoadTimeout),
    }
}

/// How often a load waiting for a free slot looks again.
const SLOT_POLL: Duration = Duration::from_millis(25);

struct Slot {
    tenant: String,
    in_flight: usize,
    last_used: u64,
    bytes: u64,
    /// Replaced or deleted: serves the requests it has, takes no new ones.
    retired: bool,
    /// Giving its place to a waiting load: serves the requests it has, and
    /// new ones for it wait their turn like any other load.
    draining: bool,
}

#[derive(Default)]
struct State {
    resident: HashMap<String, Slot>,
    /// Loads in progress, with the bytes each is expected to take.
    loading: HashMap<String, (Load, u64)>,
    clock: u64,
    /// Tickets of the requests waiting for a slot, oldest first; only the
    /// oldest may make room.
    waiting: BTreeSet<u64>,
    next_ticket: u64,
}

impl State {
    fn bytes(&self) -> u64 {
        self.resident.values().map(|slot| slot.bytes).sum::<u64>()
            + self.loading.values().map(|(_, bytes)| bytes).sum::<u64>()
    }

    /// Whether the holder of `ticket` (none yet: a new request) may make room.
    fn may_make_room(&self, ticket: Option<u64>) -> bool {
        match self.waiting.first() {
            None => true,
            Some(first) => ticket == Some(*first),
        }
    }

    /// Marks the least recently used slot draining, unless one already is.
    fn drain_one(&mut self) {
        if self.resident.values().any(|slot| slot.draining) {
            return;
        }
        if let Some(slot) = self
            .resident
            .values_mut()
            .filter(|slot| !slot.retired)
            .min_by_key(|slot| slot.last_used)
        {
            slot.draining = true;
        }
    }
}

/// A request's place in the queue for a slot; leaving the queue (loaded,
/// failed, timed out or cancelled) lets the next one make room.
struct WaitTicket {
    number: u64,
    residency: Arc<Residency>,
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        let mut state = self.residency.state.lock();
        state.waiting.remove(&self.number);
        if state.waiting.is_empty() {
            // Nobody is left to take a draining slot's place.
            for slot in state.resident.values_mut() {
                slot.draining = false;
            }
        }
    }
}

pub struct Residency {
    store: Arc<AdapterStore>,
    max_resident: usize,
    max_bytes: u64,
    load_timeout: Duration,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

pub fn engine_id(record: &AdapterRecord) -> String {
    format!(
        "adapter:{}/{}@{}",
        record.tenant, record.name, record.generation
    )
}

/// A request's hold on a loaded adapter; while any exist it is not unloaded.
pub struct AdapterLease {
    pub engine_id: String,
    residency: Arc<Residency>,
    engine: Arc<dyn Engine>,
}

impl Drop for AdapterLease {
    fn drop(&mut self) {
        let mut state = self.residency.state.lock();
        let unload = match state.resident.get_mut(&self.engine_id) {
            Some(slot) => {
                slot.in_flight = slot.in_flight.saturating_sub(1);
                slot.retired && slot.in_flight == 0
            }
            None => false,
        };
        if unload {
            state.resident.remove(&self.engine_id);
            self.residency.publish(&state);
            drop(state);
            spawn_unload(self.engine.clone(), self.engine_id.clone());
        }
    }
}

fn spawn_unload(engine: Arc<dyn Engine>, id: String) {
    tokio::spawn(async move {
        if let Err(error) = engine.unload_adapter(&id).await {
            tracing::warn!(%error, adapter = %id, "unloading an adapter failed");
        }
    });
}

impl Residency {
    pub fn new(
        store: Arc<AdapterStore>,
        max_resident: usize,
        max_bytes: u64,
        load_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Residency {
        Residency {
            store,
            max_resident,
            max_bytes,
            load_timeout,
            metrics,
            state: Mutex::new(State::default()),
        }
    }

    fn publish(&self, state: &State) {
        self.metrics
            .adapters_resident
            .set(state.resident.len() as i64);
        self.metrics
            .adapters_resident_bytes
            .set(state.resident.values().map(|s| s.bytes as i64).sum());
    }

    pub fn is_resident(&self, record: &AdapterRecord) -> bool {
        self.state
            .lock()
            .resident
            .get(&engine_id(record))
            .is_some_and(|slot| !slot.retired)
    }

    /// Holds `record` loaded for one request, loading it first if needed;
    /// when every slot is busy it waits (up to the load timeout) for one.
    pub async fn acquire(
        self: &Arc<Self>,
        engine: Arc<dyn Engine>,
        record: &AdapterRecord,
    ) -> Result<AdapterLease, AdapterError> {
        let id = engine_id(record);
        let deadline = Instant::now() + self.load_timeout;
        // Declared before the lock so it is released after it.
        let mut ticket: Option<WaitTicket> = None;
        loop {
            let load = {
                let mut state = self.state.lock();
                state.clock += 1;
                let clock = state.clock;
                let first_in_line = state.may_make_room(ticket.as_ref().map(|t| t.number));
                // A slot left draining by a waiter that gave up is taken
                // back by the first in line that wants it.
                if let Some(slot) = state
                    .resident
                    .get_mut(&id)
                    .filter(|slot| !slot.retired && (!slot.draining || first_in_line))
                {
                    slot.draining = false;
                    slot.in_flight += 1;
                    slot.last_used = clock;
                    return Ok(AdapterLease {
                        engine_id: id,
                        residency: self.clone(),
                        engine,
                    });
                }
                match state.loading.get(&id) {
                    Some((load, _)) => Some(load.clone()),
                    None if !first_in_line => {
                        self.take_ticket(&mut state, &mut ticket);
                        None
                    }
                    None => match self.start_load(&mut state, engine.clone(), record, &id) {
                        Ok(load) => Some(load),
                        // Every slot is serving a request: wait for one to finish.
                        Err(AdapterError::Busy) if Instant::now() < deadline => {
                            self.take_ticket(&mut state, &mut ticket);
                            state.drain_one();
                            None
                        }
                        Err(error) => return Err(error),
                    },
                }
            };
            let Some(load) = load else {
                if Instant::now() >= deadline {
                    return Err(AdapterError::Busy);
                }
                tokio::time::sleep(SLOT_POLL).await;
                continue;
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            finished(load, remaining).await?;
        }
    }

    /// Loads `record` ahead of its first request if that costs nobody
    /// anything: a free slot, or an idle adapter to evict. It never waits
    /// for a busy slot, never drains one, and never goes ahead of requests
    /// queued for a slot; `Ok(false)` when it did not load (the first
    /// request will). An upload must not stall its admin or take the slot
    /// another tenant is being served from.
    pub async fn warm(
        self: &Arc<Self>,
        engine: Arc<dyn Engine>,
        record: &AdapterRecord,
    ) -> Result<bool, AdapterError> {
        let id = engine_id(record);
        let load = {
            let mut state = self.state.lock();
            if state.resident.get(&id).is_some_and(|slot| !slot.retired) {
                return Ok(true);
            }
            match state.loading.get(&id) {
                Some((load, _)) => load.clone(),
                None if !state.waiting.is_empty() => return Ok(false),
                None => match self.start_load(&mut state, engine, record, &id) {
                    Ok(load) => load,
                    Err(AdapterError::Busy) => return Ok(false),
                    Err(error) => return Err(error),
                },
            }
        };
        finished(load, self.load_timeout).await.map(|()| true)
    }

    fn take_ticket(self: &Arc<Self>, state: &mut State, ticket: &mut Option<WaitTicket>) {
        if ticket.is_none() {
            state.next_ticket += 1;
            let number = state.next_ticket;
            state.waiting.insert(number);
            *ticket = Some(WaitTicket {
                number,
                residency: self.clone(),
            });
        }
    }

    /// Makes room if needed, then starts the one load of `id` on its own task
    /// (a client disconnect must not cut a load in half).
    fn start_load(
        self: &Arc<Self>,
        state: &mut State,
        engine: Arc<dyn Engine>,
        record: &AdapterRecord,
        id: &str,
    ) -> Result<Load, AdapterError> {
        // Until loaded, an adapter is expected to hold about its file's size.
        let expected = record.size_bytes;
        while state.resident.len() + state.loading.len() >= self.max_resident
            || (state.bytes() + expected > self.max_bytes && !state.resident.is_empty())
        {
            let victim = state
                .resident
                .iter()
                .filter(|(_, slot)| slot.in_flight == 0)
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(id, _)| id.clone())
                .ok_or(AdapterError::Busy)?;
            if let Some(slot) = state.resident.remove(&victim) {
                self.metrics
                    .adapter_evictions
                    .with_label_values(&[&slot.tenant])
                    .inc();
            }
            tracing::info!(adapter = %victim, "evicting the least recently used adapter");
            spawn_unload(engine.clone(), victim);
        }
        self.publish(state);
        let files = AdapterFiles {
            weights: self
                .store
                .generation_dir(record)
                .join("adapter_model.safetensors"),
            rank: record.rank,
            alpha: record.alpha,
            target_modules: record.target_modules.clone(),
        };
        let (residency, id_owned, tenant) = (self.clone(), id.to_string(), record.tenant.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = engine.load_adapter(&id_owned, &files).await;
            residency
                .metrics
                .adapter_load_duration
                .with_label_values(&[&tenant])
                .observe(started.elapsed().as_secs_f64());
            let outcome = if result.is_ok() { "ok" } else { "error" };
            residency
                .metrics
                .adapter_loads
                .with_label_values(&[&tenant, outcome])
                .inc();
            let mut state = residency.state.lock();
            state.loading.remove(&id_owned);
            match result {
                Ok(bytes) => {
                    let clock = state.clock;
                    state.resident.insert(
                        id_owned,
                        Slot {
                            tenant,
                            in_flight: 0,
                            last_used: clock,
                            bytes,
                            retired: false,
                            draining: false,
                        },
                    );
                    residency.publish(&state);
                    Ok(())
                }
                Err(error) => {
                    tracing::warn!(%error, adapter = %id_owned, "adapter load failed");
                    Err(error.to_string())
                }
            }
        });
        let load: Load = async move { task.await.map_err(|e| e.to_string())? }
            .boxed()
            .shared();
        state
            .loading
            .insert(id.to_string(), (load.clone(), expected));
        Ok(load)
    }

    /// Stops new requests reaching a generation and unloads it once idle.
    pub fn retire(&self, engine: &Arc<dyn Engine>, record: &AdapterRecord) {
        let id = engine_id(record);
        let mut state = self.state.lock();
        let unload_now = match state.resident.get_mut(&id) {
            Some(slot) if slot.in_flight == 0 => true,
            Some(slot) => {
                slot.retired = true;
                false
            }
            None => false,
        };
        if unload_now {
            state.resident.remove(&id);
            self.publish(&state);
            drop(state);
            spawn_unload(engine.clone(), id);
        }
    }
}
