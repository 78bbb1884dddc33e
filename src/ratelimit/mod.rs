//! Per-tenant rate limits: requests per minute, tokens per minute and
//! concurrent requests, decided atomically per request.
//!
//! Token limits reserve an estimate at admission (prompt tokens plus the
//! completion budget) and settle to the real usage when the response ends,
//! aborted streams included. Concurrency slots are leases that expire, so a
//! crashed gateway cannot hold them forever.
//!
//! [`RedisLimiter`] holds the limits across gateway processes; [`LocalLimiter`]
//! gives the same behaviour in one process; [`GuardedLimiter`] applies the
//! configured policy when Redis is unreachable.

mod guarded;
mod local;
mod redis;
mod refusals;

use std::time::Duration;

use async_trait::async_trait;

pub use guarded::{Backend, GuardedLimiter, Reservation};
pub use local::LocalLimiter;
pub use redis::{RedisHandle, RedisLimiter};
pub use refusals::RecentRefusals;

use crate::config::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Concurrency,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
            LimitKind::Concurrency => "concurrency",
        }
    }
}

/// One limit's state, as OpenAI's `x-ratelimit-*` headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSnapshot {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

impl RateSnapshot {
    /// OpenAI's `x-ratelimit-*` headers for the limits the tenant has.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        if let Some(requests) = self.requests {
            headers.push(("x-ratelimit-limit-requests", requests.limit.to_string()));
            headers.push((
                "x-ratelimit-remaining-requests",
                requests.remaining.to_string(),
            ));
            headers.push((
                "x-ratelimit-reset-requests",
                openai_duration(requests.reset),
            ));
        }
        if let Some(tokens) = self.tokens {
            headers.push(("x-ratelimit-limit-tokens", tokens.limit.to_string()));
            headers.push(("x-ratelimit-remaining-tokens", tokens.remaining.to_string()));
            headers.push(("x-ratelimit-reset-tokens", openai_duration(tokens.reset)));
        }
        headers
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admitted(RateSnapshot),
    Refused {
        kind: LimitKind,
        /// `None`: the request can never fit (more tokens than a minute allows).
        retry_after: Option<Duration>,
        snapshot: RateSnapshot,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("rate-limit store unavailable: {0}")]
    Unavailable(String),
}

/// A store that decides and settles reservations atomically.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    async fn acquire(
        &self,
        tenant: &str,
        limits: &Limits,
        tokens: u64,
        lease: &str,
    ) -> Result<Decision, LimiterError>;

    /// `adjust_tokens` > 0 returns unused tokens, < 0 charges extra; the
    /// lease is released.
    async fn settle(
        &self,
        tenant: &str,
        limits: &Limits,
        lease: &str,
        adjust_tokens: i64,
    ) -> Result<(), LimiterError>;

    /// Extends a lease that is still in use; `false` when the lease is gone
    /// (released, or expired while the store was unreachable).
    async fn renew(&self, tenant: &str, lease: &str) -> Result<bool, LimiterError>;

    /// Takes `extra` more tokens for an admitted request whose total need
    /// is `total`; a refusal takes nothing.
    async fn top_up(
        &self,
        tenant: &str,
        limits: &Limits,
        extra: u64,
        total: u64,
    ) -> Result<TopUp, LimiterError>;
}

/// The answer to a [`RateLimiter::top_up`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopUp {
    Taken {
        tokens: Option<Window>,
    },
    Refused {
        /// `None`: the request can never fit (more tokens than a minute allows).
        retry_after: Option<Duration>,
        tokens: Option<Window>,
    },
}

/// OpenAI writes durations like `6m0s`, `1.5s` or `20ms`.
pub fn openai_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        let text = format!("{seconds:.3}");
        return format!("{}s", text.trim_end_matches('0').trim_end_matches('.'));
    }
    let whole = duration.as_secs();
    format!("{}m{}s", whole / 60, whole % 60)
}

#[cfg(test)]
mod tests;
