//! Adapter latencies and memory on a safetensors base (the tiny model by
//! default): upload → first streamed token, cold reload of an evicted
//! adapter → first token, warm request → first token, and resident memory
//! per adapter (RSS growth per loaded adapter model).
//!
//! Run: `cargo run --example adapter_latency -- [BASE_DIR] [RUNS] [DTYPE]`
//! (BASE_DIR: a Hugging Face safetensors folder; default: a fresh tiny model).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use loragate::config::Config;
use loragate::engine::mistral::MistralEngine;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.split_whitespace()
                .next()
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn upload(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    let part = |file: &str| -> anyhow::Result<reqwest::multipart::Part> {
        Ok(
            reqwest::multipart::Part::bytes(std::fs::read(dir.join(file))?)
                .file_name(file.to_string()),
        )
    };
    let form = reqwest::multipart::Form::new()
        .text("name", name.to_string())
        .part("adapter_config", part("adapter_config.json")?)
        .part("adapter_model", part("adapter_model.safetensors")?);
    let response = client
        .post(format!("{base}/admin/v1/tenants/anonymous/adapters"))
        .multipart(form)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 201,
        "upload failed: {}",
        response.text().await?
    );
    Ok(())
}

/// Seconds until the first non-empty content delta of a streamed request.
async fn first_token(client: &reqwest::Client, base: &str, model: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 4, "temperature": 0, "stream": true});
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "request failed: {}",
        response.status()
    );
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    while let Some(bytes) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&bytes?));
        if text.contains("\"content\":\"") && text.matches("\"content\":\"").count() > 1
            || text.contains("[DONE]")
        {
            break;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let scratch = tempfile::tempdir()?;
    let base_dir: PathBuf = match args.get(1) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = scratch.path().join("tiny");
            loragate::fixture::write_tiny_llama(&dir, loragate::fixture::DEFAULT_SEED)?;
            dir
        }
    };
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
    let dtype = args.get(3).map(String::as_str).unwrap_or("f32");
    let text = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[model]\nserved_name = \"base\"\npath = \"{}\"\nformat = \"safetensors\"\ndtype = \"{dtype}\"\n[adapters]\ndir = \"{}\"\nmax_resident = 1\n[auth]\nenabled = false\nallow_open_admin = true\n[logging]\nlevel = \"error\"\n",
        base_dir.display(),
        scratch.path().join("store").display(),
    );
    let config = Config::from_toml_str(&text, Vec::new(), Path::new("/"))?;
    loragate::telemetry::init(&config.logging);
    let running = loragate::app::bind(&config)?;
    let counter = running.metrics.sampled_tokens.with_label_values(&["base"]);
    let engine = Arc::new(MistralEngine::load(&config.model, counter).await?);
    running.state.install_engine(engine);
    let base = format!("http://{}", running.addresses[0]);
    let handle = running.server.handle();
    tokio::spawn(running.server);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    first_token(&client, &base, "base").await?;

    let (mut upload_to_token, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    let before = rss_bytes();
    let mut rss_with_one = 0;
    for run in 0..runs {
        let (a, b) = (format!("a{run}"), format!("b{run}"));
        for (name, seed) in [(&a, 2 * run as u64 + 1), (&b, 2 * run as u64 + 2)] {
            let dir = scratch.path().join(name);
            loragate::fixture::lora::write_tiny_adapter_for(&dir, &base_dir, seed)?;
        }
        let started = Instant::now();
        upload(&client, &base, &a, &scratch.path().join(&a)).await?;
        first_token(&client, &base, &a).await?;
        upload_to_token.push(started.elapsed().as_secs_f64());
        rss_with_one = rss_bytes();
        warm.push(first_token(&client, &base, &a).await?);
        // Uploading b evicts a (max_resident = 1); a's next request reloads it.
        upload(&client, &base, &b, &scratch.path().join(&b)).await?;
        cold.push(first_token(&client, &base, &a).await?);
    }
    handle.stop(true).await;
    println!(
        "base: {} ({dtype}, {runs} runs, rank-8 q_proj/v_proj adapters, max_resident = 1)",
        base_dir.display()
    );
    println!("{:<40} {:>10}", "measure", "p50");
    println!(
        "{:<40} {:>8.1} ms",
        "upload -> first streamed token",
        median(upload_to_token) * 1e3
    );
    println!(
        "{:<40} {:>8.1} ms",
        "evicted adapter -> first token (cold)",
        median(cold) * 1e3
    );
    println!(
        "{:<40} {:>8.1} ms",
        "resident adapter -> first token (warm)",
        median(warm) * 1e3
    );
    println!(
        "{:<40} {:>8.1} MiB (RSS {:.1} -> {:.1} MiB)",
        "memory held by one resident adapter",
        (rss_with_one as f64 - before as f64) / 1048576.0,
        before as f64 / 1048576.0,
        rss_with_one as f64 / 1048576.0
    );
    Ok(())
}
