//! The admission decision as plain data, with no clocks and no tasks, so
//! every property is tested deterministically.
//!
//! Fair policy: start-time fair queuing across tenants. Each tenant carries
//! a virtual finish tag; admitting one of its requests starts at
//! `max(tag, V)` and advances its tag by `1 / weight`, where `V` is the
//! start of the last admitted request. The next slot goes to the waiting
//! tenant whose request would start earliest, so under contention tenants
//! are served in proportion to their weights, an idle tenant cannot bank
//! credit (its tag is lifted to `V`), and a weight-1 tenant still advances
//! beside a weight-100 one. A higher priority class is always served first.
//!
//! Queue places are shared the same way: a tenant may hold at most its
//! weighted share of a full queue. When the queue is full, a newcomer under
//! its share takes the place of the newest request of the tenant furthest
//! over its share, and that request is refused instead.

use std::collections::{HashMap, VecDeque};

pub type WaiterId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// First come, first served across all tenants.
    Fifo,
    /// Weighted fair queuing across tenants.
    Fair,
}

/// Who is asking for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub tenant: String,
    /// Share of contended slots and queue places (at least 1).
    pub weight: u32,
    /// Higher classes are always served first.
    pub priority: u8,
}

impl Default for Claim {
    fn default() -> Self {
        Claim {
            tenant: String::new(),
            weight: 1,
            priority: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A slot was free: the request runs now.
    Admitted,
    /// The request waits for a slot.
    Queued,
    /// Queued, and this other waiter lost its place to make room.
    QueuedDisplacing(WaiterId),
    /// No place: the tenant is at its share of a full queue.
    Refused,
}

#[derive(Debug, Default)]
struct Tenant {
    weight: u32,
    priority: u8,
    finish: f64,
    /// Waiting requests, oldest first, with their arrival order.
    waiting: VecDeque<(WaiterId, u64)>,
}

#[derive(Debug)]
pub struct Queues {
    policy: Policy,
    max_in_flight: usize,
    max_queued: usize,
    in_flight: usize,
    waiting: usize,
    virtual_time: f64,
    arrivals: u64,
    tenants: HashMap<String, Tenant>,
}

impl Queues {
    pub fn new(policy: Policy, max_in_flight: usize, max_queued: usize) -> Queues {
        Queues {
            policy,
            max_in_flight,
            max_queued,
            in_flight: 0,
            waiting: 0,
            virtual_time: 0.0,
            arrivals: 0,
            tenants: HashMap::new(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn waiting(&self) -> usize {
        self.waiting
    }

    pub fn waiting_for(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.waiting.len())
    }

    fn tenant(&mut self, claim: &Claim) -> &mut Tenant {
        let tenant = self.tenants.entry(claim.tenant.clone()).or_default();
        tenant.weight = claim.weight.max(1);
        tenant.priority = claim.priority;
        tenant
    }

    /// A tenant's share of a full queue, among the tenants waiting now and
    /// the one arriving.
    fn share(&self, name: &str, arriving: &str) -> f64 {
        let total: u64 = self
            .tenants
            .iter()
            .filter(|(n, t)| !t.waiting.is_empty() || n.as_str() == name || n.as_str() == arriving)
            .map(|(_, t)| u64::from(t.weight))
            .sum();
        let own = self.tenants.get(name).map_or(1, |t| u64::from(t.weight));
        self.max_queued as f64 * own as f64 / total.max(1) as f64
    }

    pub fn arrive(&mut self, claim: &Claim, id: WaiterId) -> Arrival {
        self.tenant(claim);
        if self.in_flight < self.max_in_flight && self.waiting == 0 {
            self.start(&claim.tenant);
            return Arrival::Admitted;
        }
        let mut displaced = None;
        if self.waiting >= self.max_queued {
            if self.policy == Policy::Fifo || self.max_queued == 0 {
                return Arrival::Refused;
            }
            let own = self.waiting_for(&claim.tenant);
            if own as f64 >= self.share(&claim.tenant, &claim.tenant) {
                return Arrival::Refused;
            }
            // The tenant furthest over its share gives up its newest place.
            let over = self
                .tenants
                .iter()
                .filter(|(_, t)| !t.waiting.is_empty())
                .map(|(name, t)| {
                    (
                        t.waiting.len() as f64 - self.share(name, &claim.tenant),
                        name,
                    )
                })
                .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(a.1)))
                .map(|(excess, name)| (excess, name.clone()));
            match over {
                Some((excess, name)) if excess > 0.0 => {
                    if let Some(tenant) = self.tenants.get_mut(&name)
                        && let Some((victim, _)) = tenant.waiting.pop_back()
                    {
                        self.waiting -= 1;
                        displaced = Some(victim);
                    }
                }
                _ => return Arrival::Refused,
            }
        }
        self.arrivals += 1;
        let order = self.arrivals;
        self.tenant(claim).waiting.push_back((id, order));
        self.waiting += 1;
        match displaced {
            Some(victim) => Arrival::QueuedDisplacing(victim),
            None => Arrival::Queued,
        }
    }

    /// Counts a request of `tenant` as running and advances its tag.
    fn start(&mut self, name: &str) {
        self.in_flight += 1;
        if let Some(tenant) = self.tenants.get_mut(name) {
            let start = tenant.finish.max(self.virtual_time);
            tenant.finish = start + 1.0 / f64::from(tenant.weight.max(1));
            self.virtual_time = start;
        }
    }

    /// A running request ended. Returns the waiter that gets its slot.
    pub fn release(&mut self) -> Option<WaiterId> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.dispatch()
    }

    /// Gives free slots to waiters; returns the one admitted, if any.
    pub fn dispatch(&mut self) -> Option<WaiterId> {
        if self.in_flight >= self.max_in_flight || self.waiting == 0 {
            return None;
        }
        let virtual_time = self.virtual_time;
        let chosen = self
            .tenants
            .iter()
            .filter_map(|(name, t)| {
                let (_, arrival) = *t.waiting.front()?;
                Some((name, t, arrival))
            })
            .min_by(|(_, a, a_arrival), (_, b, b_arrival)| match self.policy {
                Policy::Fifo => a_arrival.cmp(b_arrival),
                Policy::Fair => b
                    .priority
                    .cmp(&a.priority)
                    .then(
                        a.finish
                            .max(virtual_time)
                            .total_cmp(&b.finish.max(virtual_time)),
                    )
                    .then(a_arrival.cmp(b_arrival)),
            })
            .map(|(name, _, _)| name.clone())?;
        let tenant = self.tenants.get_mut(&chosen)?;
        let (id, _) = tenant.waiting.pop_front()?;
        self.waiting -= 1;
        self.start(&chosen);
        Some(id)
    }

    /// A waiter gave up (timeout, client gone). `false` when it was not
    /// waiting any more (it was admitted meanwhile).
    pub fn cancel(&mut self, tenant: &str, id: WaiterId) -> bool {
        let Some(entry) = self.tenants.get_mut(tenant) else {
            return false;
        };
        let before = entry.waiting.len();
        entry.waiting.retain(|(waiter, _)| *waiter != id);
        let removed = entry.waiting.len() < before;
        if removed {
            self.waiting -= 1;
        }
        removed
    }
}

#[cfg(test)]
mod tests;
