//! The in-process limiter: the same token buckets and leases as the Redis
//! script, for one gateway process (and as the fail-open fallback).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Decision, LimitKind, LimiterError, RateLimiter, RateSnapshot, TopUp, Window};
use crate::config::Limits;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, capacity: f64, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * capacity / 60.0;
        (self.level + refill).min(capacity)
    }
}

#[derive(Default)]
struct TenantState {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    leases: HashMap<String, Instant>,
}

pub struct LocalLimiter {
    lease_ttl: Duration,
    tenants: Mutex<HashMap<String, TenantState>>,
}

fn level_of(bucket: Option<Bucket>, capacity: Option<u64>, now: Instant) -> f64 {
    match (bucket, capacity) {
        (Some(bucket), Some(capacity)) => bucket.level(capacity as f64, now),
        (None, Some(capacity)) => capacity as f64,
        _ => 0.0,
    }
}

fn until_full(level: f64, capacity: u64) -> Duration {
    let capacity = capacity as f64;
    if level >= capacity {
        Duration::ZERO
    } else {
        Duration::from_secs_f64((capacity - level) * 60.0 / capacity)
    }
}

fn window(level: f64, capacity: Option<u64>) -> Option<Window> {
    capacity.map(|limit| Window {
        limit,
        remaining: level.max(0.0).floor() as u64,
        reset: until_full(level, limit),
    })
}

fn wait_for(missing: f64, capacity: u64) -> Duration {
    Duration::from_secs_f64((missing * 60.0 / capacity as f64).max(0.001))
}

impl LocalLimiter {
    pub fn new(lease_ttl: Duration) -> LocalLimiter {
        LocalLimiter {
            lease_ttl,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Synchronous core, shared by the trait methods.
    pub fn decide(&self, tenant: &str, limits: &Limits, tokens: u64, lease: &str) -> Decision {
        let now = Instant::now();
        let mut tenants = self.tenants.lock();
        let state = tenants.entry(tenant.to_string()).or_default();
        let requests = level_of(state.requests, limits.requests_per_minute, now);
        let token_level = level_of(state.tokens, limits.tokens_per_minute, now);
        state.leases.retain(|_, expiry| *expiry > now);
        let snapshot = RateSnapshot {
            requests: window(requests, limits.requests_per_minute),
            tokens: window(token_level, limits.tokens_per_minute),
        };
        let refusal = if let Some(rpm) = limits.requests_per_minute.filter(|_| requests < 1.0) {
            Some((LimitKind::Requests, Some(wait_for(1.0 - requests, rpm))))
        } else if limits.tokens_per_minute.is_some_and(|tpm| tokens > tpm) {
            Some((LimitKind::Tokens, None))
        } else if let Some(tpm) = limits
            .tokens_per_minute
            .filter(|_| token_level < tokens as f64)
        {
            Some((
                LimitKind::Tokens,
                Some(wait_for(tokens as f64 - token_level, tpm)),
            ))
        } else if limits
            .max_concurrent
            .is_some_and(|max| state.leases.len() as u64 >= max)
        {
            let soonest = state.leases.values().min().copied().unwrap_or(now);
            Some((
                LimitKind::Concurrency,
                Some(
                    soonest
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(1)),
                ),
            ))
        } else {
            None
        };
        if let Some((kind, retry_after)) = refusal {
            return Decision::Refused {
                kind,
                retry_after,
                snapshot,
            };
        }
        if limits.requests_per_minute.is_some() {
            state.requests = Some(Bucket {
                level: requests - 1.0,
                at: now,
            });
        }
        if limits.tokens_per_minute.is_some() {
            state.tokens = Some(Bucket {
                level: token_level - tokens as f64,
                at: now,
            });
        }
        if limits.max_concurrent.is_some() {
            state.leases.insert(lease.to_string(), now + self.lease_ttl);
        }
        Decision::Admitted(RateSnapshot {
            requests: window(requests - 1.0, limits.requests_per_minute),
            tokens: window(token_level - tokens as f64, limits.tokens_per_minute),
        })
    }

    pub fn top_up_now(&self, tenant: &str, limits: &Limits, extra: u64, total: u64) -> TopUp {
        let Some(capacity) = limits.tokens_per_minute else {
            return TopUp::Taken { tokens: None };
        };
        let now = Instant::now();
        let mut tenants = self.tenants.lock();
        let state = tenants.entry(tenant.to_string()).or_default();
        let level = level_of(state.tokens, Some(capacity), now);
        if total > capacity || level < extra as f64 {
            return TopUp::Refused {
                retry_after: (total <= capacity).then(|| wait_for(extra as f64 - level, capacity)),
                tokens: window(level, Some(capacity)),
            };
        }
        let level = level - extra as f64;
        state.tokens = Some(Bucket { level, at: now });
        TopUp::Taken {
            tokens: window(level, Some(capacity)),
        }
    }

    pub fn settle_now(&self, tenant: &str, limits: &Limits, lease: &str, adjust_tokens: i64) {
        let now = Instant::now();
        let mut tenants = self.tenants.lock();
        let Some(state) = tenants.get_mut(tenant) else {
            return;
        };
        state.leases.remove(lease);
        if let (Some(capacity), true) = (limits.tokens_per_minute, adjust_tokens != 0) {
            let level = level_of(state.tokens, Some(capacity), now);
            let adjusted = (level + adjust_tokens as f64).min(capacity as f64);
            state.tokens = Some(Bucket {
                level: adjusted,
                at: now,
            });
        }
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn acquire(
        &self,
        tenant: &str,
        limits: &Limits,
        tokens: u64,
        lease: &str,
    ) -> Result<Decision, LimiterError> {
        Ok(self.decide(tenant, limits, tokens, lease))
    }

    async fn settle(
        &self,
        tenant: &str,
        limits: &Limits,
        lease: &str,
        adjust_tokens: i64,
    ) -> Result<(), LimiterError> {
        self.settle_now(tenant, limits, lease, adjust_tokens);
        Ok(())
    }

    async fn top_up(
        &self,
        tenant: &str,
        limits: &Limits,
        extra: u64,
        total: u64,
    ) -> Result<TopUp, LimiterError> {
        Ok(self.top_up_now(tenant, limits, extra, total))
    }

    async fn renew(&self, tenant: &str, lease: &str) -> Result<bool, LimiterError> {
        let expiry = Instant::now() + self.lease_ttl;
        if let Some(state) = self.tenants.lock().get_mut(tenant)
            && let Some(current) = state.leases.get_mut(lease)
        {
            *current = expiry;
            return Ok(true);
        }
        Ok(false)
    }
}
