//! Limits held in the real Redis by several gateway processes (the real
//! binary), including aborted streams, crashed gateways and Redis outages.
//! Each test uses its own key prefix on the shared Redis at 127.0.0.1:6379,
//! or its own redis-server when it needs to stop Redis.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::process::{GatewayProcess, RedisProcess};
use crate::common::{MODEL, authed, chat_body, new_key, unique_prefix};
use futures_util::StreamExt;

const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";

fn tenancy(
    redis_url: &str,
    prefix: &str,
    limits: &str,
    redis_extra: &str,
) -> (String, String, String) {
    let (key, hash) = new_key();
    let (admin, admin_hash) = new_key();
    let toml = format!(
        r#"
[auth]
admin_api_keys = ["{admin_hash}"]
[redis]
url = "{redis_url}"
key_prefix = "{prefix}"
{redis_extra}
[[tenants]]
id = "acme"
api_keys = ["{hash}"]
[tenants.limits]
{limits}
"#
    );
    (toml, key, admin)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap()
}

async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(SHARED_REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_admit_exactly_the_limit_between_them() {
    const LIMIT: usize = 50;
    const REQUESTS: usize = 200;
    let prefix = unique_prefix();
    let (toml, key, _) = tenancy(
        SHARED_REDIS,
        &prefix,
        &format!("requests_per_minute = {LIMIT}"),
        "",
    );
    let gateways = [GatewayProcess::spawn(&toml), GatewayProcess::spawn(&toml)];
    let client = client();
    // One request through each gateway first, so both are known to decide
    // against the shared budget; then the concurrent burst.
    let mut admitted = [0usize; 2];
    for (gateway, process) in gateways.iter().enumerate() {
        let first = authed(client.post(process.url("/v1/chat/completions")), &key)
            .json(&chat_body("count me", 1))
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 200);
        admitted[gateway] += 1;
    }
    let requests = (2..REQUESTS).map(|i| {
        let url = gateways[i % 2].url("/v1/chat/completions");
        let request = authed(client.post(url), &key).json(&chat_body("count me", 1));
        async move { (i % 2, request.send().await.map(|r| r.status().as_u16())) }
    });
    let results = futures_util::future::join_all(requests).await;
    let mut refused = [0usize; 2];
    for (gateway, status) in results {
        match status.expect("every request is answered") {
            200 => admitted[gateway] += 1,
            429 => refused[gateway] += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let limited = refused[0] + refused[1];
    for gateway in 0..2 {
        assert_eq!(
            admitted[gateway] + refused[gateway],
            REQUESTS / 2,
            "gateway {gateway} decided every request"
        );
    }
    println!(
        "two-process admission: limit {LIMIT}, {REQUESTS} concurrent requests -> admitted {} (gateway A {}, gateway B {}), refused {limited}",
        admitted[0] + admitted[1],
        admitted[0],
        admitted[1]
    );
    assert_eq!(admitted[0] + admitted[1], LIMIT);
    assert_eq!(limited, REQUESTS - LIMIT);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_stream_is_charged_only_what_it_used() {
    const TPM: f64 = 3000.0;
    let prefix = unique_prefix();
    let (toml, key, admin) = tenancy(SHARED_REDIS, &prefix, "tokens_per_minute = 3000", "");
    let gateway = GatewayProcess::spawn(&toml);
    let mut body = chat_body("Keep going", 1500);
    body["stream"] = serde_json::json!(true);
    let response = authed(client().post(gateway.url("/v1/chat/completions")), &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reserved_remaining: f64 = response.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        reserved_remaining < TPM - 1500.0,
        "the whole budget was reserved ({reserved_remaining})"
    );
    let mut frames = response.bytes_stream();
    for _ in 0..3 {
        frames.next().await.expect("frame").expect("readable");
    }
    drop(frames);
    // Settlement runs when the gateway notices the disconnect.
    let mut connection = redis_connection().await;
    let bucket = format!("{prefix}:rl:v1:{{acme}}:tok");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut level = 0.0;
    while Instant::now() < deadline {
        let stored: Option<String> = redis::cmd("HGET")
            .arg(&bucket)
            .arg("level")
            .query_async(&mut connection)
            .await
            .unwrap();
        level = stored.and_then(|v| v.parse().ok()).unwrap_or(0.0);
        if level > TPM - 1000.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        level > TPM - 1000.0,
        "unused tokens came back to the bucket (level {level})"
    );
    // The meter saw the same partial completion.
    let mut report = serde_json::Value::Null;
    for _ in 0..100 {
        report = common::get_json(gateway.url("/admin/v1/tenants/acme/usage"), Some(&admin)).await;
        if report["last_hour"]["total"]["requests"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let completion = report["last_hour"]["total"]["completion_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        (1..1500).contains(&completion),
        "partial completion metered ({completion})"
    );
    let charged = TPM - level;
    let used = report["last_hour"]["total"]["prompt_tokens"]
        .as_u64()
        .unwrap()
        + completion;
    assert!(
        (charged - used as f64).abs() < 60.0,
        "charged {charged} for {used} used (refill allowed)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_gateways_concurrency_lease_expires() {
    let prefix = unique_prefix();
    let (toml, key, _) = tenancy(
        SHARED_REDIS,
        &prefix,
        "max_concurrent = 1",
        "lease_ttl_secs = 2",
    );
    let mut crashing = GatewayProcess::spawn(&toml);
    let survivor = GatewayProcess::spawn(&toml);
    let mut body = chat_body("Keep going", 2000);
    body["stream"] = serde_json::json!(true);
    let response = authed(client().post(crashing.url("/v1/chat/completions")), &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    crashing.kill();
    let killed_at = Instant::now();
    let held = authed(client().post(survivor.url("/v1/chat/completions")), &key)
        .json(&chat_body("me", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 429, "the dead gateway's lease still counts");
    let mut admitted_after = None;
    while killed_at.elapsed() < Duration::from_secs(10) {
        let retry = authed(client().post(survivor.url("/v1/chat/completions")), &key)
            .json(&chat_body("me", 1))
            .send()
            .await
            .unwrap();
        if retry.status() == 200 {
            admitted_after = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = admitted_after.expect("the lease expired and the slot came back");
    assert!(
        waited >= Duration::from_millis(1500),
        "not before the lease's 2 s TTL ({waited:?})"
    );
}

async fn status_of(gateway: &GatewayProcess, key: &str) -> u16 {
    let started = Instant::now();
    let response = authed(client().post(gateway.url("/v1/chat/completions")), key)
        .json(&chat_body("hi", 1))
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a Redis outage must not hang requests"
    );
    response.status().as_u16()
}

async fn metric(gateway: &GatewayProcess, sample: &str) -> f64 {
    common::sample(&common::metrics_text(&gateway.base).await, sample)
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fail_open_serves_with_local_limits_then_recovers() {
    let mut redis = RedisProcess::start();
    let prefix = unique_prefix();
    let (toml, key, _) = tenancy(
        &redis.url(),
        &prefix,
        "requests_per_minute = 1000",
        "on_failure = \"fail_open\"\ntimeout_ms = 100",
    );
    let gateway = GatewayProcess::spawn(&toml);
    assert_eq!(status_of(&gateway, &key).await, 200);
    redis.stop();
    for _ in 0..3 {
        assert_eq!(
            status_of(&gateway, &key).await,
            200,
            "fail_open keeps serving"
        );
    }
    assert!(
        metric(
            &gateway,
            "loragate_ratelimit_redis_fallbacks_total{policy=\"fail_open\"}"
        )
        .await
            >= 3.0
    );
    assert!(
        metric(
            &gateway,
            "loragate_redis_errors_total{operation=\"acquire\"}"
        )
        .await
            >= 3.0
    );
    redis.restart();
    let bucket = format!("{prefix}:rl:v1:{{acme}}:req");
    let connection = redis::Client::open(redis.url().as_str()).unwrap();
    let mut connection = connection.get_multiplexed_async_connection().await.unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        assert_eq!(status_of(&gateway, &key).await, 200);
        let exists: bool = redis::cmd("EXISTS")
            .arg(&bucket)
            .query_async(&mut connection)
            .await
            .unwrap();
        if exists {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "decisions went back to Redis once it returned");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fail_closed_refuses_with_503_then_recovers() {
    let mut redis = RedisProcess::start();
    let (toml, key, _) = tenancy(
        &redis.url(),
        &unique_prefix(),
        "requests_per_minute = 1000",
        "on_failure = \"fail_closed\"\ntimeout_ms = 100",
    );
    let gateway = GatewayProcess::spawn(&toml);
    assert_eq!(status_of(&gateway, &key).await, 200);
    redis.stop();
    assert_eq!(status_of(&gateway, &key).await, 503);
    let refused = authed(client().post(gateway.url("/v1/chat/completions")), &key)
        .json(&chat_body("hi", 1))
        .send()
        .await
        .unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limiter_unavailable");
    assert!(
        metric(
            &gateway,
            "loragate_ratelimit_redis_fallbacks_total{policy=\"fail_closed\"}"
        )
        .await
            >= 2.0
    );
    redis.restart();
    let mut recovered = false;
    for _ in 0..50 {
        if status_of(&gateway, &key).await == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the gateway recovered by itself");
    let _ = MODEL;
}

/// Usage from many requests finishing at once is group-committed to Redis
/// (one round trip carries many): none of it may be lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_usage_records_are_all_counted_once() {
    use loragate::config::{RedisConfig, RedisFailurePolicy};
    use loragate::metering::UsageMeter;
    use loragate::ratelimit::RedisHandle;
    use std::sync::Arc;

    let redis = RedisHandle::new(&RedisConfig {
        url: SHARED_REDIS.into(),
        key_prefix: unique_prefix(),
        on_failure: RedisFailurePolicy::FailClosed,
        timeout: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(60),
    })
    .unwrap();
    let meter = Arc::new(UsageMeter::new(
        Some(Arc::new(redis)),
        Arc::new(loragate::metrics::Metrics::new()),
    ));
    let records: Vec<_> = (0..500u64)
        .map(|i| {
            let meter = meter.clone();
            tokio::spawn(async move {
                let model = if i % 2 == 0 { "even" } else { "odd" };
                meter.record("acme", model, 10, i % 7).await
            })
        })
        .collect();
    for record in records {
        record.await.unwrap();
    }
    let report = meter.report("acme").await.unwrap();
    let expected_completion: u64 = (0..500u64).map(|i| i % 7).sum();
    assert_eq!(report.last_hour.total.requests, 500);
    assert_eq!(report.last_hour.total.prompt_tokens, 5000);
    assert_eq!(
        report.last_hour.total.completion_tokens,
        expected_completion
    );
    assert_eq!(report.last_hour.models["even"].requests, 250);
    assert_eq!(report.today.total, report.last_hour.total);
}

/// A gateway relaying to a `mock-upstream` replica, with the tenant limits of
/// `tenancy()`: a request lasts as long as the mock takes to stream.
fn relaying_tenancy(
    replica: &str,
    prefix: &str,
    limits: &str,
    redis_extra: &str,
) -> (String, String) {
    let (tenancy, key, _) = tenancy(SHARED_REDIS, prefix, limits, redis_extra);
    let toml = format!(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 2
[model]
served_name = "{MODEL}"
context_length = 4096
[logging]
level = "error"
[upstream]
model = "mock-model"
[[upstream.replicas]]
name = "slow"
url = "{replica}"
{tenancy}
"#
    );
    (toml, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrency_lease_outlives_twice_its_ttl_while_the_request_runs() {
    // 1 + 12 + 1 frames, 400 ms apart: over 5 s, past 2 × the 1 s lease TTL
    // (when version 1 let the lease set expire).
    let replica = common::process::MockUpstream::start(
        "slow",
        &["--tokens", "12", "--token-delay-ms", "400"],
    );
    let prefix = unique_prefix();
    let (toml, key) = relaying_tenancy(
        &replica.url(),
        &prefix,
        "max_concurrent = 1",
        "lease_ttl_secs = 1",
    );
    let gateway = GatewayProcess::spawn_config(&toml);
    let mut body = chat_body("hold the slot", 64);
    body["stream"] = serde_json::json!(true);
    let long = authed(client().post(gateway.url("/v1/chat/completions")), &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 200);
    // Read as frames arrive, noting which came after the second request was
    // decided: those prove the first was still running then.
    let decided = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn({
        let decided = decided.clone();
        async move {
            let mut frames = long.bytes_stream();
            let (mut before, mut after) = (String::new(), String::new());
            while let Some(chunk) = frames.next().await {
                let text = String::from_utf8_lossy(&chunk.unwrap()).into_owned();
                if decided.load(std::sync::atomic::Ordering::SeqCst) {
                    after.push_str(&text);
                } else {
                    before.push_str(&text);
                }
            }
            (before, after)
        }
    });
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let second = authed(client().post(gateway.url("/v1/chat/completions")), &key)
        .json(&chat_body("me too", 1))
        .send()
        .await
        .unwrap();
    decided.store(true, std::sync::atomic::Ordering::SeqCst);
    let second_status = second.status();
    let second_body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(second_status, 429, "{second_body}");
    assert_eq!(second_body["error"]["code"], "rate_limit_exceeded");
    let lease_key = format!("{prefix}:rl:v1:{{acme}}:lease");
    let mut connection = redis_connection().await;
    let (members, ttl_ms): (u64, i64) = redis::pipe()
        .cmd("ZCARD")
        .arg(&lease_key)
        .cmd("PTTL")
        .arg(&lease_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(members, 1, "the running request's lease is still held");
    assert!(
        ttl_ms > 0,
        "the lease set still expires on its own ({ttl_ms})"
    );
    let (before, after) = reader.await.unwrap();
    assert!(
        before.contains("\"content\"") && after.contains("\"content\""),
        "the long request streamed before and after the second was refused:\n{before}\n---\n{after}"
    );
    assert!(
        after.ends_with("data: [DONE]\n\n"),
        "and finished normally: {after}"
    );
    // Settling releases the slot (in the background, so poll).
    let mut admitted = false;
    for _ in 0..50 {
        let next = authed(client().post(gateway.url("/v1/chat/completions")), &key)
            .json(&chat_body("after", 1))
            .send()
            .await
            .unwrap();
        if next.status() == 200 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "the slot came back once the long request ended");
}

fn limiter_on_shared_redis(prefix: &str, lease_ttl: Duration) -> loragate::ratelimit::RedisLimiter {
    use loragate::config::{RedisConfig, RedisFailurePolicy};
    let handle = loragate::ratelimit::RedisHandle::new(&RedisConfig {
        url: SHARED_REDIS.into(),
        key_prefix: prefix.into(),
        on_failure: RedisFailurePolicy::FailClosed,
        timeout: Duration::from_secs(2),
        lease_ttl,
    })
    .unwrap();
    loragate::ratelimit::RedisLimiter::new(std::sync::Arc::new(handle), lease_ttl)
}

async fn pttl(connection: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(connection)
        .await
        .unwrap()
}

/// Settlement may charge more than was reserved; the debt must last until
/// the bucket has refilled, not vanish with a fixed 120 s expiry (which
/// would hand a debtor a full bucket early). Checked on the key's expiry
/// against the time to refill, without waiting for it.
#[tokio::test(flavor = "multi_thread")]
async fn token_debt_lasts_until_the_bucket_is_full_again() {
    use loragate::config::Limits;
    use loragate::ratelimit::{Decision, RateLimiter};
    const TPM: u64 = 1000;
    let prefix = unique_prefix();
    let limiter = limiter_on_shared_redis(&prefix, Duration::from_secs(60));
    let limits = Limits {
        tokens_per_minute: Some(TPM),
        ..Limits::default()
    };
    let decision = limiter.acquire("acme", &limits, TPM, "a").await.unwrap();
    assert!(matches!(decision, Decision::Admitted(_)), "{decision:?}");
    // The request used 6000 tokens against its 1000 reserved: 5000 in debt.
    limiter.settle("acme", &limits, "a", -5000).await.unwrap();
    let bucket = format!("{prefix}:rl:v1:{{acme}}:tok");
    let mut connection = redis_connection().await;
    let level: f64 = redis::cmd("HGET")
        .arg(&bucket)
        .arg("level")
        .query_async::<String>(&mut connection)
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!((-5000.0..-4990.0).contains(&level), "in debt: {level}");
    let full_in_ms = ((TPM as f64 - level) * 60_000.0 / TPM as f64) as i64;
    let left = pttl(&mut connection, &bucket).await;
    assert!(
        left >= full_in_ms - 1000,
        "the bucket key outlives its debt: expires in {left} ms, full in {full_in_ms} ms"
    );
    assert!(
        left <= full_in_ms + 2000,
        "and goes soon after it is full again (absent reads as full): {left} ms vs {full_in_ms} ms"
    );
    // While in debt, even a small request is refused, with the wait to repay it.
    match limiter.acquire("acme", &limits, 10, "b").await.unwrap() {
        Decision::Refused {
            retry_after: Some(wait),
            ..
        } => {
            assert!(wait > Duration::from_secs(300), "{wait:?}")
        }
        other => panic!("expected a refusal while in debt, got {other:?}"),
    }
}

/// Gateways sharing Redis may run with different `lease_ttl_secs`: a lease
/// taken with a short TTL must not cut short the set holding a long one.
#[tokio::test(flavor = "multi_thread")]
async fn a_short_lease_ttl_never_shortens_the_lease_sets_expiry() {
    use loragate::config::Limits;
    use loragate::ratelimit::{Decision, RateLimiter};
    let prefix = unique_prefix();
    let long = limiter_on_shared_redis(&prefix, Duration::from_secs(60));
    let short = limiter_on_shared_redis(&prefix, Duration::from_secs(1));
    let limits = Limits {
        max_concurrent: Some(5),
        ..Limits::default()
    };
    let lease_key = format!("{prefix}:rl:v1:{{acme}}:lease");
    let mut connection = redis_connection().await;
    assert!(matches!(
        long.acquire("acme", &limits, 0, "long").await.unwrap(),
        Decision::Admitted(_)
    ));
    assert!(pttl(&mut connection, &lease_key).await >= 59_000);
    assert!(matches!(
        short.acquire("acme", &limits, 0, "short").await.unwrap(),
        Decision::Admitted(_)
    ));
    let left = pttl(&mut connection, &lease_key).await;
    assert!(
        left >= 58_000,
        "the 60 s lease keeps its set alive ({left} ms)"
    );
    // Renewal of a live lease extends it; a released one is not brought back.
    assert!(short.renew("acme", "short").await.unwrap());
    long.settle("acme", &limits, "long", 0).await.unwrap();
    assert!(!long.renew("acme", "long").await.unwrap());
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(&lease_key)
        .arg("long")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(score, None, "a released lease stays released");
}
