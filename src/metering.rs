//! Usage metering per tenant and model: requests, prompt and completion
//! tokens, in minute and day buckets (Redis when configured, this process
//! otherwise, and this process as a fallback while Redis is down).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::Metrics;
use crate::ratelimit::RedisHandle;

const MINUTE_TTL_SECS: i64 = 2 * 3600;
const DAY_TTL_SECS: i64 = 3 * 86_400;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct UsageCounts {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct UsageWindow {
    pub total: UsageCounts,
    pub models: BTreeMap<String, UsageCounts>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageReport {
    pub tenant: String,
    /// The current minute and the 59 before it.
    pub last_hour: UsageWindow,
    /// Since 00:00 UTC.
    pub today: UsageWindow,
}

fn now_secs() -> i64 {
    crate::clock::unix_now_secs() as i64
}

fn minute_key(prefix: &str, tenant: &str, minute: i64) -> String {
    format!("{prefix}:usage:v1:{{{tenant}}}:m:{minute}")
}

fn day_key(prefix: &str, tenant: &str, day: i64) -> String {
    format!("{prefix}:usage:v1:{{{tenant}}}:d:{day}")
}

fn fields(model: &str, prompt: u64, completion: u64) -> [(String, u64); 3] {
    [
        (format!("requests:{model}"), 1),
        (format!("prompt:{model}"), prompt),
        (format!("completion:{model}"), completion),
    ]
}

/// Adds one bucket's `kind:model -> n` fields into a window.
fn accumulate(window: &mut UsageWindow, bucket: &HashMap<String, u64>) {
    for (field, value) in bucket {
        let Some((kind, model)) = field.split_once(':') else {
            continue;
        };
        let counts = window.models.entry(model.to_string()).or_default();
        let (slot, total) = match kind {
            "requests" => (&mut counts.requests, &mut window.total.requests),
            "prompt" => (&mut counts.prompt_tokens, &mut window.total.prompt_tokens),
            "completion" => (
                &mut counts.completion_tokens,
                &mut window.total.completion_tokens,
            ),
            _ => continue,
        };
        *slot += value;
        *total += value;
    }
}

/// Bucket key -> `kind:model` field -> count.
type Buckets = HashMap<String, HashMap<String, u64>>;

fn add_request(
    buckets: &mut Buckets,
    prefix: &str,
    tenant: &str,
    model: &str,
    prompt: u64,
    completion: u64,
    now: i64,
) {
    for key in [
        minute_key(prefix, tenant, now / 60),
        day_key(prefix, tenant, now / 86_400),
    ] {
        let bucket = buckets.entry(key).or_default();
        for (field, value) in fields(model, prompt, completion) {
            *bucket.entry(field).or_default() += value;
        }
    }
}

fn is_minute_bucket(key: &str) -> bool {
    key.rsplit_once(':')
        .is_some_and(|(head, _)| head.ends_with(":m"))
}

/// Drops buckets no report can reach any more.
fn prune(buckets: &mut Buckets, now: i64) {
    let (oldest_minute, oldest_day) = ((now - MINUTE_TTL_SECS) / 60, (now - DAY_TTL_SECS) / 86_400);
    buckets.retain(|key, _| {
        let index: i64 = key
            .rsplit_once(':')
            .and_then(|(_, index)| index.parse().ok())
            .unwrap_or(0);
        if is_minute_bucket(key) {
            index >= oldest_minute
        } else {
            index >= oldest_day
        }
    });
}

pub struct UsageMeter {
    redis: Option<Arc<RedisHandle>>,
    prefix: String,
    /// Kept here: without Redis, or while it is unreachable.
    local: Mutex<Buckets>,
    /// Waiting for the next group commit to Redis.
    pending: Mutex<Buckets>,
    flushing: AtomicBool,
    metrics: Arc<Metrics>,
}

impl UsageMeter {
    pub fn new(redis: Option<Arc<RedisHandle>>, metrics: Arc<Metrics>) -> UsageMeter {
        let prefix = redis
            .as_ref()
            .map_or_else(|| "loragate".to_string(), |r| r.prefix.clone());
        UsageMeter {
            redis,
            prefix,
            local: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            flushing: AtomicBool::new(false),
            metrics,
        }
    }

    fn record_locally(&self, tenant: &str, model: &str, prompt: u64, completion: u64, now: i64) {
        let mut local = self.local.lock();
        add_request(
            &mut local,
            &self.prefix,
            tenant,
            model,
            prompt,
            completion,
            now,
        );
        prune(&mut local, now);
    }

    /// Records one finished (or aborted) request.
    ///
    /// Writes are group-committed: while one batch is on its way to Redis,
    /// requests finishing meanwhile queue up and go together in the next
    /// one, so under load a Redis round trip carries many requests' usage
    /// and adds no delay when idle.
    pub async fn record(&self, tenant: &str, model: &str, prompt: u64, completion: u64) {
        let now = now_secs();
        let Some(redis) = &self.redis else {
            return self.record_locally(tenant, model, prompt, completion, now);
        };
        add_request(
            &mut self.pending.lock(),
            &self.prefix,
            tenant,
            model,
            prompt,
            completion,
            now,
        );
        // Whoever wins the flag writes everything queued, including what
        // arrives while it writes; a loser's usage is in that queue.
        while self
            .flushing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let batch = std::mem::take(&mut *self.pending.lock());
            if !batch.is_empty() {
                self.write(redis, batch).await;
            }
            self.flushing.store(false, Ordering::SeqCst);
            if self.pending.lock().is_empty() {
                break;
            }
        }
    }

    async fn write(&self, redis: &RedisHandle, batch: Buckets) {
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        for (key, fields) in &batch {
            let ttl = if is_minute_bucket(key) {
                MINUTE_TTL_SECS
            } else {
                DAY_TTL_SECS
            };
            for (field, value) in fields {
                pipeline.hincr(key, field, *value).ignore();
            }
            pipeline.expire(key, ttl).ignore();
        }
        let result: Result<(), _> = redis
            .run(|mut connection| async move { pipeline.query_async(&mut connection).await })
            .await;
        if let Err(error) = result {
            self.metrics
                .redis_errors
                .with_label_values(&["usage_record"])
                .inc();
            tracing::warn!(%error, "usage not written to Redis; kept in this process");
            let mut local = self.local.lock();
            for (key, fields) in batch {
                let bucket = local.entry(key).or_default();
                for (field, value) in fields {
                    *bucket.entry(field).or_default() += value;
                }
            }
            prune(&mut local, now_secs());
        }
    }

    pub async fn report(
        &self,
        tenant: &str,
    ) -> Result<UsageReport, crate::ratelimit::LimiterError> {
        let now = now_secs();
        let minute_keys: Vec<String> = (0..60)
            .map(|back| minute_key(&self.prefix, tenant, now / 60 - back))
            .collect();
        let today_key = day_key(&self.prefix, tenant, now / 86_400);
        let mut report = UsageReport {
            tenant: tenant.to_string(),
            last_hour: UsageWindow::default(),
            today: UsageWindow::default(),
        };
        if let Some(redis) = &self.redis {
            let mut pipeline = redis::pipe();
            for key in minute_keys.iter().chain(std::iter::once(&today_key)) {
                pipeline.hgetall(key);
            }
            let buckets: Vec<HashMap<String, u64>> = redis
                .run(|mut connection| async move { pipeline.query_async(&mut connection).await })
                .await
                .inspect_err(|_| {
                    self.metrics
                        .redis_errors
                        .with_label_values(&["usage_report"])
                        .inc()
                })?;
            if let Some((today, minutes)) = buckets.split_last() {
                minutes
                    .iter()
                    .for_each(|bucket| accumulate(&mut report.last_hour, bucket));
                accumulate(&mut report.today, today);
            }
        }
        // Whatever was kept in this process (all of it without Redis).
        let local = self.local.lock();
        for key in &minute_keys {
            if let Some(bucket) = local.get(key) {
                accumulate(&mut report.last_hour, bucket);
            }
        }
        if let Some(bucket) = local.get(&today_key) {
            accumulate(&mut report.today, bucket);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_meter_sums_per_model_and_in_total() {
        let meter = UsageMeter::new(None, Arc::new(Metrics::new()));
        meter.record("acme", "m1", 10, 5).await;
        meter.record("acme", "m1", 3, 2).await;
        meter.record("acme", "base::adapter", 1, 1).await;
        meter.record("other", "m1", 100, 100).await;
        let report = meter.report("acme").await.unwrap();
        assert_eq!(
            report.last_hour.total,
            UsageCounts {
                requests: 3,
                prompt_tokens: 14,
                completion_tokens: 8
            }
        );
        assert_eq!(report.today, report.last_hour);
        assert_eq!(
            report.last_hour.models["m1"],
            UsageCounts {
                requests: 2,
                prompt_tokens: 13,
                completion_tokens: 7
            }
        );
        assert_eq!(report.last_hour.models["base::adapter"].requests, 1);
    }
}
