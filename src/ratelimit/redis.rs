//! The shared limiter: one Lua script per decision on the Redis server.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::{Decision, LimitKind, LimiterError, RateLimiter, RateSnapshot, TopUp, Window};
use crate::config::{Limits, RedisConfig};

const ACQUIRE: &str = include_str!("limiter.lua");
const SETTLE: &str = include_str!("settle.lua");
const TOP_UP: &str = include_str!("topup.lua");
const RENEW: &str = include_str!("renew.lua");

/// A lazily (re)connected Redis handle with a deadline on every call, shared
/// by the limiter and the usage meter. The connection manager reconnects by
/// itself after Redis comes back.
pub struct RedisHandle {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    timeout: Duration,
    pub prefix: String,
}

impl RedisHandle {
    pub fn new(config: &RedisConfig) -> anyhow::Result<RedisHandle> {
        Ok(RedisHandle {
            client: redis::Client::open(config.url.as_str())?,
            connection: OnceCell::new(),
            timeout: config.timeout,
            prefix: config.key_prefix.clone(),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, LimiterError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let connect = self
            .connection
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config));
        match tokio::time::timeout(self.timeout * 4, connect).await {
            Ok(Ok(connection)) => Ok(connection.clone()),
            Ok(Err(error)) => Err(LimiterError::Unavailable(error.to_string())),
            Err(_) => Err(LimiterError::Unavailable("connect timed out".into())),
        }
    }

    /// Runs one Redis operation under the deadline.
    pub async fn run<T, F, Fut>(&self, operation: F) -> Result<T, LimiterError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection().await?;
        match tokio::time::timeout(self.timeout, operation(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(LimiterError::Unavailable(error.to_string())),
            Err(_) => Err(LimiterError::Unavailable("timed out".into())),
        }
    }
}

pub struct RedisLimiter {
    redis: std::sync::Arc<RedisHandle>,
    acquire: redis::Script,
    settle: redis::Script,
    top_up: redis::Script,
    renew: redis::Script,
    lease_ttl: Duration,
}

impl RedisLimiter {
    pub fn new(redis: std::sync::Arc<RedisHandle>, lease_ttl: Duration) -> RedisLimiter {
        RedisLimiter {
            redis,
            acquire: redis::Script::new(ACQUIRE),
            settle: redis::Script::new(SETTLE),
            top_up: redis::Script::new(TOP_UP),
            renew: redis::Script::new(RENEW),
            lease_ttl,
        }
    }

    /// `{tenant}` is a hash tag: a tenant's keys share one cluster slot.
    /// The layout is still `v1`: the version 2 scripts changed only how long
    /// keys live, so old and new gateways share state during a rolling upgrade.
    fn key(&self, tenant: &str, part: &str) -> String {
        format!("{}:rl:v1:{{{tenant}}}:{part}", self.redis.prefix)
    }
}

fn window(limit: Option<u64>, remaining: u64, reset_ms: i64) -> Option<Window> {
    limit.map(|limit| Window {
        limit,
        remaining,
        reset: Duration::from_millis(reset_ms.max(0) as u64),
    })
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn acquire(
        &self,
        tenant: &str,
        limits: &Limits,
        tokens: u64,
        lease: &str,
    ) -> Result<Decision, LimiterError> {
        let mut invocation = self.acquire.prepare_invoke();
        invocation
            .key(self.key(tenant, "req"))
            .key(self.key(tenant, "tok"))
            .key(self.key(tenant, "lease"))
            .arg(limits.requests_per_minute.unwrap_or(0))
            .arg(limits.tokens_per_minute.unwrap_or(0))
            .arg(limits.max_concurrent.unwrap_or(0))
            .arg(tokens)
            .arg(lease)
            .arg(self.lease_ttl.as_millis() as u64);
        let (refused, wait, requests_left, tokens_left, requests_reset, tokens_reset): (
            String,
            i64,
            u64,
            u64,
            i64,
            i64,
        ) = self
            .redis
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        let snapshot = RateSnapshot {
            requests: window(limits.requests_per_minute, requests_left, requests_reset),
            tokens: window(limits.tokens_per_minute, tokens_left, tokens_reset),
        };
        let kind = match refused.as_str() {
            "" => return Ok(Decision::Admitted(snapshot)),
            "requests" => LimitKind::Requests,
            "tokens" => LimitKind::Tokens,
            _ => LimitKind::Concurrency,
        };
        let retry_after = (wait >= 0).then(|| Duration::from_millis(wait as u64));
        Ok(Decision::Refused {
            kind,
            retry_after,
            snapshot,
        })
    }

    async fn settle(
        &self,
        tenant: &str,
        limits: &Limits,
        lease: &str,
        adjust_tokens: i64,
    ) -> Result<(), LimiterError> {
        let mut invocation = self.settle.prepare_invoke();
        invocation
            .key(self.key(tenant, "tok"))
            .key(self.key(tenant, "lease"))
            .arg(limits.tokens_per_minute.unwrap_or(0))
            .arg(adjust_tokens)
            .arg(lease);
        let _: i64 = self
            .redis
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        Ok(())
    }

    async fn top_up(
        &self,
        tenant: &str,
        limits: &Limits,
        extra: u64,
        total: u64,
    ) -> Result<TopUp, LimiterError> {
        let Some(tpm) = limits.tokens_per_minute else {
            return Ok(TopUp::Taken { tokens: None });
        };
        let mut invocation = self.top_up.prepare_invoke();
        invocation
            .key(self.key(tenant, "tok"))
            .arg(tpm)
            .arg(extra)
            .arg(total);
        let (refused, wait, left, reset): (String, i64, u64, i64) = self
            .redis
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        let tokens = window(Some(tpm), left, reset);
        Ok(if refused.is_empty() {
            TopUp::Taken { tokens }
        } else {
            TopUp::Refused {
                retry_after: (wait >= 0).then(|| Duration::from_millis(wait as u64)),
                tokens,
            }
        })
    }

    async fn renew(&self, tenant: &str, lease: &str) -> Result<bool, LimiterError> {
        let mut invocation = self.renew.prepare_invoke();
        invocation
            .key(self.key(tenant, "lease"))
            .arg(lease)
            .arg(self.lease_ttl.as_millis() as u64);
        let renewed: i64 = self
            .redis
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        Ok(renewed == 1)
    }
}
