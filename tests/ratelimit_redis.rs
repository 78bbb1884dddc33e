//! Limits held in the real Redis by several gateway processes (the real
//! binary), including aborted streams, crashed gateways and Redis outages.
//! Each test uses its own key prefix on the shared Redis at 127.0.0.1:6379,
//! or its own redis-server when it needs to stop Redis.

mod common;

use std::time::{Duration, Instant};

use common::process::{GatewayProcess, RedisProcess};
use common::{MODEL, authed, chat_body, new_key, unique_prefix};
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
