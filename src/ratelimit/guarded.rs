//! The limiter the gateway uses: Redis when configured, the configured
//! policy when Redis fails (fall back to this process's limiter, or refuse),
//! and reservations that settle themselves when a response ends.

use std::sync::Arc;
use std::time::Duration;

use super::redis::RedisHandle;
use super::{
    Decision, LimiterError, LocalLimiter, RateLimiter, RateSnapshot, RecentRefusals, RedisLimiter,
    TopUp,
};
use crate::config::{Limits, RedisConfig, RedisFailurePolicy};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Local,
}

pub struct GuardedLimiter {
    redis: Option<RedisLimiter>,
    local: LocalLimiter,
    policy: RedisFailurePolicy,
    lease_ttl: Duration,
    metrics: Arc<Metrics>,
    refusals: RecentRefusals,
}

impl GuardedLimiter {
    pub fn new(
        redis: Option<(Arc<RedisHandle>, &RedisConfig)>,
        metrics: Arc<Metrics>,
    ) -> GuardedLimiter {
        let lease_ttl = redis
            .as_ref()
            .map_or(Duration::from_secs(60), |(_, config)| config.lease_ttl);
        GuardedLimiter {
            policy: redis
                .as_ref()
                .map_or(RedisFailurePolicy::FailOpen, |(_, config)| {
                    config.on_failure
                }),
            redis: redis.map(|(handle, _)| RedisLimiter::new(handle, lease_ttl)),
            local: LocalLimiter::new(lease_ttl),
            lease_ttl,
            metrics,
            refusals: RecentRefusals::default(),
        }
    }

    /// The refusal the limiter gave `tenant` last, while it still holds
    /// (see `RecentRefusals`): callers refuse at once, before reading the
    /// request's body.
    pub fn recent_refusal(&self, tenant: &str) -> Option<Decision> {
        self.refusals.recall(tenant, std::time::Instant::now())
    }

    fn redis_failed(&self, operation: &'static str, error: &LimiterError) {
        self.metrics
            .redis_errors
            .with_label_values(&[operation])
            .inc();
        tracing::warn!(%error, operation, policy = ?self.policy, "Redis rate-limit call failed");
    }

    /// Decides one request. An admitted request gets a [`Reservation`] to
    /// settle when it ends (none when the tenant has no limits).
    pub async fn acquire(
        self: &Arc<Self>,
        tenant: &str,
        limits: &Limits,
        tokens: u64,
    ) -> Result<(Decision, Option<Reservation>), LimiterError> {
        if limits.is_unlimited() {
            return Ok((Decision::Admitted(RateSnapshot::default()), None));
        }
        let lease = uuid::Uuid::new_v4().simple().to_string();
        let (decision, backend) = match &self.redis {
            None => (
                self.local.decide(tenant, limits, tokens, &lease),
                Backend::Local,
            ),
            Some(redis) => match redis.acquire(tenant, limits, tokens, &lease).await {
                Ok(decision) => (decision, Backend::Redis),
                Err(error) => {
                    self.redis_failed("acquire", &error);
                    match self.policy {
                        RedisFailurePolicy::FailClosed => {
                            self.metrics
                                .limiter_fallbacks
                                .with_label_values(&["fail_closed"])
                                .inc();
                            return Err(error);
                        }
                        RedisFailurePolicy::FailOpen => {
                            self.metrics
                                .limiter_fallbacks
                                .with_label_values(&["fail_open"])
                                .inc();
                            (
                                self.local.decide(tenant, limits, tokens, &lease),
                                Backend::Local,
                            )
                        }
                    }
                }
            },
        };
        self.refusals
            .note(tenant, &decision, std::time::Instant::now());
        let reservation = matches!(decision, Decision::Admitted(_)).then(|| Reservation {
            limiter: self.clone(),
            tenant: tenant.to_string(),
            limits: *limits,
            lease: lease.clone(),
            reserved_tokens: tokens,
            backend,
            renewal: self.spawn_renewal(tenant, limits, &lease, backend),
        });
        Ok((decision, reservation))
    }

    /// Keeps a long response's concurrency lease alive; stops with the reservation.
    fn spawn_renewal(
        self: &Arc<Self>,
        tenant: &str,
        limits: &Limits,
        lease: &str,
        backend: Backend,
    ) -> Option<tokio::task::JoinHandle<()>> {
        limits.max_concurrent?;
        let (limiter, tenant, lease) = (self.clone(), tenant.to_string(), lease.to_string());
        let period = self.lease_ttl / 3;
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let result = match (backend, &limiter.redis) {
                    (Backend::Redis, Some(redis)) => redis.renew(&tenant, &lease).await,
                    _ => limiter.local.renew(&tenant, &lease).await,
                };
                match result {
                    Ok(true) => {}
                    // Renewing cannot take the slot back: it may be someone else's now.
                    Ok(false) => {
                        tracing::warn!(%tenant, "concurrency lease lost; the request runs on without its slot");
                        return;
                    }
                    Err(error) => limiter.redis_failed("renew", &error),
                }
            }
        }))
    }

    async fn settle(&self, reservation: &Reservation, adjust_tokens: i64) {
        let Reservation {
            tenant,
            limits,
            lease,
            backend,
            ..
        } = reservation;
        match (backend, &self.redis) {
            (Backend::Redis, Some(redis)) => {
                if let Err(error) = redis.settle(tenant, limits, lease, adjust_tokens).await {
                    // The lease still expires on its own; the tokens stay charged.
                    self.redis_failed("settle", &error);
                }
            }
            _ => self.local.settle_now(tenant, limits, lease, adjust_tokens),
        }
    }
}

/// An admitted request's hold on its tenant's limits.
pub struct Reservation {
    limiter: Arc<GuardedLimiter>,
    tenant: String,
    limits: Limits,
    lease: String,
    reserved_tokens: u64,
    backend: Backend,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Reservation {
    /// Reserves `extra` more tokens, bringing the request's total to `total`
    /// (admission reserved a lower bound before the prompt was tokenized).
    /// A refusal takes nothing; the reservation still settles on drop.
    pub async fn top_up(&mut self, extra: u64, total: u64) -> Result<TopUp, LimiterError> {
        if extra == 0 || self.limits.tokens_per_minute.is_none() {
            return Ok(TopUp::Taken { tokens: None });
        }
        let limiter = &self.limiter;
        let answer = match (self.backend, &limiter.redis) {
            (Backend::Redis, Some(redis)) => {
                match redis.top_up(&self.tenant, &self.limits, extra, total).await {
                    Ok(answer) => answer,
                    Err(error) => {
                        limiter.redis_failed("top_up", &error);
                        if limiter.policy == RedisFailurePolicy::FailClosed {
                            return Err(error);
                        }
                        // Admitted in Redis: the local buckets know nothing
                        // of this request, so fail-open lets it through.
                        TopUp::Taken { tokens: None }
                    }
                }
            }
            _ => limiter
                .local
                .top_up_now(&self.tenant, &self.limits, extra, total),
        };
        if let TopUp::Taken { .. } = answer {
            self.reserved_tokens += extra;
        }
        Ok(answer)
    }

    /// Settles to the tokens really used, in the background: called from
    /// drop paths, where nothing can be awaited.
    pub fn finish(mut self, used_tokens: u64) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        let adjust = self.reserved_tokens as i64 - used_tokens as i64;
        let limiter = self.limiter.clone();
        tokio::spawn(async move { limiter.settle(&self, adjust).await });
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}
