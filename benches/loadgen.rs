//! Open-loop, fixed-rate HTTP load generator for OpenAI-compatible chat
//! completions, used by `scripts/bench-overhead.sh` to measure the gateway's
//! overhead side by side with a direct call to the upstream and with LiteLLM.
//!
//! Request `i` is scheduled at exactly `t0 + i / rate`, whatever happened to
//! the earlier ones, and runs in its own task. Its latency is measured from
//! that *scheduled* instant to the end of the whole response body, so a
//! stalled server (or a stalled generator) shows up in the latencies instead
//! of silently lowering the offered rate (no coordinated omission).
//!
//! The first `--warmup-secs` are sent but not measured. Requests that cannot
//! start because `--max-in-flight` are already outstanding are not sent and
//! count as errors (`dropped`). Percentiles are over the successful requests
//! (HTTP 200 and, when streaming, a body holding `data: [DONE]`).
//!
//! Prints one JSON line:
//! `{"rate":..,"stream":..,"sent":..,"ok":..,"errors":..,"dropped":..,
//!   "achieved_qps":..,"p50_ms":..,"p99_ms":..,"max_ms":..}`
//! where `sent` counts the measured requests scheduled (dropped ones included)
//! and `achieved_qps` is successful responses per measured second, where the
//! measured seconds run from the first measured scheduled instant to the later
//! of the window's end and the last successful response: a server that keeps
//! up gets the offered rate, one that only drains a growing backlog after the
//! window (latency climbing, no errors yet) gets what it really delivered.
//!
//! Run: `cargo run --example loadgen -- --url http://127.0.0.1:8080/v1/chat/completions --rate 500`

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::json;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Open-loop fixed-rate load generator for /v1/chat/completions")]
struct Args {
    /// Full URL of the chat completions endpoint.
    #[arg(long)]
    url: String,
    /// Requests per second, scheduled at exact instants.
    #[arg(long)]
    rate: f64,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Seconds sent before measuring starts (connections, caches, JIT...).
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Ask for a streamed answer (SSE) with usage in the last chunk.
    #[arg(long)]
    stream: bool,
    #[arg(long, default_value = "mock-model")]
    model: String,
    /// Extra request header, `Name: value` (repeatable), e.g. `Authorization: Bearer sk-...`.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Outstanding requests at most; a request due while this many are
    /// outstanding is not sent and counts as an error.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Keep-alive connections kept idle per host (the client's pool size).
    #[arg(long, default_value_t = 4096)]
    connections: usize,
    /// Tokio worker threads (1 leaves the other cores to the systems under test).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-request limit; a request still running then is an error.
    #[arg(long, default_value_t = 30.0)]
    timeout_secs: f64,
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
}

#[derive(Default)]
struct Stats {
    ok_latencies_ms: Vec<f64>,
    last_ok: Option<Instant>,
    errors: u64,
    dropped: u64,
    sent: u64,
    first_error: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.rate.is_nan() || args.rate <= 0.0 || !args.rate.is_finite() {
        bail!("--rate must be a positive number");
    }
    if args.duration_secs.is_nan() || args.duration_secs <= 0.0 || args.warmup_secs < 0.0 {
        bail!("--duration-secs must be positive and --warmup-secs not negative");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

fn headers(args: &Args) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header {header:?} is not `Name: value`"))?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes())?,
            HeaderValue::from_str(value.trim())?,
        );
    }
    Ok(headers)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn round3(value: Option<f64>) -> serde_json::Value {
    value.map_or(serde_json::Value::Null, |v| {
        json!((v * 1000.0).round() / 1000.0)
    })
}

async fn run(args: Args) -> Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs_f64(args.timeout_secs))
        .default_headers(headers(&args)?)
        .build()?;
    let mut body = json!({
        "model": args.model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": args.max_tokens,
    });
    if args.stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let body = bytes::Bytes::from(serde_json::to_vec(&body)?);
    let url: reqwest::Url = args.url.parse().context("--url")?;

    let stats = Arc::new(Mutex::new(Stats::default()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let period = 1.0 / args.rate;
    let warmup_n = (args.warmup_secs * args.rate).round() as u64;
    let total_n = warmup_n + (args.duration_secs * args.rate).round() as u64;
    // The schedule runs on its own OS thread: `std::thread::sleep` wakes
    // within tens of microseconds, where tokio's timer rounds every sleep up
    // to the next millisecond (which would add up to 1 ms to each latency).
    let handle = tokio::runtime::Handle::current();
    let t0 = Instant::now() + Duration::from_millis(20);
    let window_start = t0 + Duration::from_secs_f64(warmup_n as f64 * period);
    let scheduler = {
        let (stats, in_flight) = (stats.clone(), in_flight.clone());
        let (max_in_flight, stream) = (args.max_in_flight, args.stream);
        std::thread::spawn(move || {
            let mut tasks = Vec::with_capacity(total_n as usize);
            let mut i: u64 = 0;
            while i < total_n {
                let now = Instant::now();
                // Start every request whose instant has come (a burst when
                // the thread woke late: the schedule never slips).
                while i < total_n {
                    let scheduled = t0 + Duration::from_secs_f64(i as f64 * period);
                    if scheduled > now {
                        break;
                    }
                    let measured = i >= warmup_n;
                    i += 1;
                    if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                        if measured {
                            let mut stats = stats.lock().unwrap();
                            stats.sent += 1;
                            stats.errors += 1;
                            stats.dropped += 1;
                        }
                        continue;
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let (client, url, body) = (client.clone(), url.clone(), body.clone());
                    let (stats, in_flight) = (stats.clone(), in_flight.clone());
                    tasks.push(handle.spawn(async move {
                        let outcome = send(&client, url, body, stream).await;
                        let latency_ms = scheduled.elapsed().as_secs_f64() * 1000.0;
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                        if !measured {
                            return;
                        }
                        let mut stats = stats.lock().unwrap();
                        stats.sent += 1;
                        match outcome {
                            Ok(()) => {
                                stats.ok_latencies_ms.push(latency_ms);
                                let done = Instant::now();
                                if stats.last_ok.is_none_or(|last| last < done) {
                                    stats.last_ok = Some(done);
                                }
                            }
                            Err(error) => {
                                stats.errors += 1;
                                stats.first_error.get_or_insert(error);
                            }
                        }
                    }));
                }
                if i < total_n {
                    let next = t0 + Duration::from_secs_f64(i as f64 * period);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }
            tasks
        })
    };
    let tasks = tokio::task::spawn_blocking(move || scheduler.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the scheduler thread panicked"))?;
    // Every request has its own timeout, so this ends.
    for task in tasks {
        task.await?;
    }

    let stats = Arc::try_unwrap(stats)
        .map_err(|_| anyhow::anyhow!("stats still shared"))?
        .into_inner()
        .unwrap();
    if let Some(error) = &stats.first_error {
        eprintln!("loadgen: first error: {error}");
    }
    if stats.dropped > 0 {
        eprintln!(
            "loadgen: {} requests dropped (max in flight {} reached)",
            stats.dropped, args.max_in_flight
        );
    }
    let measured_secs = stats.last_ok.map_or(args.duration_secs, |last| {
        last.saturating_duration_since(window_start)
            .as_secs_f64()
            .max(args.duration_secs)
    });
    let mut latencies = stats.ok_latencies_ms;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let ok = latencies.len() as u64;
    let line = json!({
        "rate": args.rate,
        "stream": args.stream,
        "sent": stats.sent,
        "ok": ok,
        "errors": stats.errors,
        "dropped": stats.dropped,
        "achieved_qps": ((ok as f64 / measured_secs) * 10.0).round() / 10.0,
        "p50_ms": round3(percentile(&latencies, 50.0)),
        "p99_ms": round3(percentile(&latencies, 99.0)),
        "max_ms": round3(latencies.last().copied()),
    });
    println!("{line}");
    Ok(())
}

/// One request, read to the end of its body.
async fn send(
    client: &reqwest::Client,
    url: reqwest::Url,
    body: bytes::Bytes,
    stream: bool,
) -> Result<(), String> {
    let response = client
        .post(url)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request: {e:#}"))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("body: {e:#}"))?;
    if status != reqwest::StatusCode::OK {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("HTTP {status}: {text}"));
    }
    if stream && !body.windows(12).any(|w| w == b"data: [DONE]") {
        return Err("stream ended without data: [DONE]".into());
    }
    Ok(())
}
