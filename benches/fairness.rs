//! Fair share between tenants: tenant A floods the gateway at concurrency
//! 32 with long generations while tenant B sends short requests one at a
//! time. Prints B's time to first token (p50/p99) against B alone, and A's
//! throughput against A alone, under FIFO and under fair admission
//! (targets with fair: B's p99 within 2× of solo, A at least 90% of solo).
//!
//! Run: `scripts/bench-fairness.sh [MODEL_DIR] [B_REQUESTS]`

#[path = "support/gateway.rs"]
mod gateway;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use gateway::{Gateway, key_pair, percentile};
use serde_json::json;

async fn start(binary: &str, model: &str, policy: &str) -> Result<(Gateway, String, String)> {
    let port = gateway::free_port()?;
    let ((a, a_hash), (b, b_hash), (_, admin_hash)) = (key_pair(), key_pair(), key_pair());
    let config = |dir: &std::path::Path| {
        format!(
            r#"
[server]
bind = "127.0.0.1:{port}"
[model]
served_name = "m"
path = "{model}"
format = "safetensors"
context_length = 2048
max_num_seqs = 16
[admission]
policy = "{policy}"
max_in_flight = 64
max_queued = 64
[adapters]
dir = "{adapters}"
[auth]
enabled = true
admin_api_keys = ["{admin_hash}"]
[[tenants]]
id = "a"
api_keys = ["{a_hash}"]
[[tenants]]
id = "b"
api_keys = ["{b_hash}"]
[logging]
level = "error"
"#,
            adapters = dir.join("adapters").display()
        )
    };
    let gateway = gateway::start(binary, port, config).await?;
    Ok((gateway, a, b))
}

/// A streamed request: (time to first content, completion tokens).
async fn streamed(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    max_tokens: usize,
) -> Result<(f64, usize)> {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "max_tokens": max_tokens, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let started = Instant::now();
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    let mut stream = response.bytes_stream();
    let (mut first, mut tokens, mut text) = (None, 0, String::new());
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk?));
        if first.is_none() && text.contains("\"content\":\"") && text.matches("data: ").count() > 1
        {
            first = Some(started.elapsed().as_secs_f64());
        }
    }
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(n) = value["usage"]["completion_tokens"].as_u64()
        {
            tokens = n as usize;
        }
    }
    Ok((
        first.unwrap_or_else(|| started.elapsed().as_secs_f64()) * 1000.0,
        tokens,
    ))
}

/// A's flood: 32 clients generating back to back until `stop`; returns the
/// tokens they received.
fn flood(base: &str, key: &str, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..32)
        .map(|_| {
            let (base, key, stop) = (base.to_string(), key.to_string(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut tokens = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, n)) = streamed(&client, &base, &key, 256).await {
                        tokens += n;
                    }
                }
                tokens
            })
        })
        .collect()
}

async fn b_requests(base: &str, key: &str, count: usize) -> Result<Vec<f64>> {
    let client = reqwest::Client::new();
    let mut ttft = Vec::new();
    for _ in 0..count {
        ttft.push(streamed(&client, base, key, 8).await?.0);
    }
    Ok(ttft)
}

async fn a_throughput(
    base: &str,
    key: &str,
    window: Duration,
    with_b: Option<(&str, usize)>,
) -> Result<(f64, Vec<f64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let workers = flood(base, key, stop.clone());
    let started = Instant::now();
    let ttft = match with_b {
        Some((b_key, count)) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            b_requests(base, b_key, count).await?
        }
        None => Vec::new(),
    };
    let elapsed = started.elapsed();
    if elapsed < window {
        tokio::time::sleep(window - elapsed).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let mut tokens = 0;
    for worker in workers {
        tokens += worker.await.unwrap_or(0);
    }
    Ok((tokens as f64 / seconds, ttft))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let binary = std::env::var("LORAGATE_BIN").context("LORAGATE_BIN names the gateway binary")?;
    let model = args
        .get(1)
        .cloned()
        .context("usage: fairness MODEL_DIR [B_REQUESTS]")?;
    let count: usize = args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(20);
    let window = Duration::from_secs(40);
    println!(
        "A: 32 concurrent streams of 256 tokens; B: {count} streamed requests of 8 tokens, one at a time\n"
    );
    println!(
        "| policy | B TTFT p50 ms (solo) | B TTFT p99 ms (solo) | B p99 × solo | A tok/s (solo) | A × solo |"
    );
    println!("|---|---|---|---|---|---|");
    for policy in ["fifo", "fair"] {
        let (gateway, a, b) = start(&binary, &model, policy).await?;
        b_requests(&gateway.base, &b, 2).await?;
        let mut solo = b_requests(&gateway.base, &b, count).await?;
        solo.sort_by(f64::total_cmp);
        let (solo50, solo99) = (percentile(&solo, 0.5), percentile(&solo, 0.99));
        let (a_solo, _) = a_throughput(&gateway.base, &a, window, None).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (a_shared, mut under) =
            a_throughput(&gateway.base, &a, window, Some((&b, count))).await?;
        under.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&under, 0.5), percentile(&under, 0.99));
        println!(
            "| {policy} | {p50:.0} ({solo50:.0}) | {p99:.0} ({solo99:.0}) | {:.2} | {a_shared:.1} ({a_solo:.1}) | {:.2} |",
            p99 / solo99,
            a_shared / a_solo
        );
        drop(gateway);
    }
    Ok(())
}
