//! Gateway overhead on the real engine: the same model, prompts and settings,
//! measured (a) through the gateway's HTTP API with streaming and (b) by
//! calling mistral.rs in-process, alternating runs. Prints TTFT and decode
//! tokens/s for each and the gateway/direct ratio.
//!
//! Run: `scripts/bench.sh [config.toml] [runs] [max_tokens]`
//! (builds with the test profile: `cargo run --example gateway_vs_direct`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use loragate::config::Config;
use loragate::engine::mistral::MistralEngine;
use mistralrs::{RequestBuilder, Response, TextMessageRole};

const PROMPTS: &[&str] = &[
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a hash map is in two sentences.",
];

#[derive(Default)]
struct Sample {
    ttft: Vec<f64>,
    decode_tps: Vec<f64>,
}

impl Sample {
    fn push(&mut self, started: Instant, first: Option<Instant>, done: Instant, tokens: usize) {
        if let Some(first) = first {
            self.ttft.push((first - started).as_secs_f64());
            if tokens > 1 {
                self.decode_tps
                    .push((tokens - 1) as f64 / (done - first).as_secs_f64());
            }
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    if sorted.is_empty() {
        f64::NAN
    } else {
        sorted[sorted.len() / 2]
    }
}

async fn direct(
    engine: &MistralEngine,
    model: &str,
    prompt: &str,
    max_tokens: usize,
    sample: &mut Sample,
) {
    let request = RequestBuilder::new()
        .add_message(TextMessageRole::User, prompt)
        .set_deterministic_sampler()
        .set_sampler_max_len(max_tokens);
    let started = Instant::now();
    let mut stream = engine
        .mistral()
        .stream_chat_request_with_model(request, Some(model))
        .await
        .expect("direct stream");
    let (mut first, mut tokens) = (None, 0);
    while let Some(response) = stream.next().await {
        match response {
            Response::Chunk(chunk) => {
                tokens += chunk.choices.len();
                if first.is_none()
                    && chunk
                        .choices
                        .iter()
                        .any(|c| c.delta.content.as_deref().is_some_and(|t| !t.is_empty()))
                {
                    first = Some(Instant::now());
                }
                if chunk.choices.iter().any(|c| c.finish_reason.is_some()) {
                    break;
                }
            }
            Response::InternalError(e) | Response::ValidationError(e) => {
                panic!("direct call failed: {e}")
            }
            Response::ModelError(e, _) => panic!("direct call failed: {e}"),
            _ => panic!("direct call: unexpected response kind"),
        }
    }
    sample.push(started, first, Instant::now(), tokens);
}

async fn gateway(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    prompt: &str,
    max_tokens: usize,
    sample: &mut Sample,
) {
    let body = serde_json::json!({
        "model": model, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}
    });
    let started = Instant::now();
    let response = client
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("gateway request");
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let (mut first, mut tokens, mut buffer) = (None, 0, String::new());
    while let Some(bytes) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&bytes.expect("body")));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let Some(data) = frame.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let chunk: serde_json::Value = serde_json::from_str(data).expect("chunk json");
            if first.is_none()
                && chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty())
            {
                first = Some(Instant::now());
            }
            if let Some(usage) = chunk["usage"]["completion_tokens"].as_u64() {
                tokens = usage as usize;
            }
        }
    }
    sample.push(started, first, Instant::now(), tokens);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let config_path = PathBuf::from(
        args.get(1)
            .map(String::as_str)
            .unwrap_or("config/default.toml"),
    );
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
    let max_tokens: usize = args.get(3).and_then(|m| m.parse().ok()).unwrap_or(64);
    let mut config = Config::load(&config_path)?;
    config.server.bind = "127.0.0.1:0".parse()?;
    config.logging.level = "warn".into();
    loragate::telemetry::init(&config.logging);

    let running = loragate::app::bind(&config)?;
    let counter = running
        .metrics
        .sampled_tokens
        .with_label_values(&[&config.model.served_name]);
    let engine = Arc::new(MistralEngine::load(&config.model, counter).await?);
    running.state.install_engine(engine.clone());
    let url = format!("http://{}/v1/chat/completions", running.addresses[0]);
    let handle = running.server.handle();
    tokio::spawn(running.server);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let model = config.model.served_name.clone();

    // Warm both paths once so neither pays first-use costs in the figures.
    let mut warmup = Sample::default();
    direct(&engine, &model, PROMPTS[0], 4, &mut warmup).await;
    gateway(&client, &url, &model, PROMPTS[0], 4, &mut warmup).await;

    let (mut via_direct, mut via_gateway) = (Sample::default(), Sample::default());
    for run in 0..runs {
        for prompt in PROMPTS {
            // Alternate the order so drift on the machine hits both equally.
            if run % 2 == 0 {
                direct(&engine, &model, prompt, max_tokens, &mut via_direct).await;
                gateway(&client, &url, &model, prompt, max_tokens, &mut via_gateway).await;
            } else {
                gateway(&client, &url, &model, prompt, max_tokens, &mut via_gateway).await;
                direct(&engine, &model, prompt, max_tokens, &mut via_direct).await;
            }
        }
    }
    handle.stop(true).await;

    let (d_ttft, g_ttft) = (median(&via_direct.ttft), median(&via_gateway.ttft));
    let (d_tps, g_tps) = (
        median(&via_direct.decode_tps),
        median(&via_gateway.decode_tps),
    );
    println!(
        "model: {} ({}), {} runs x {} prompts, max_tokens {max_tokens}, greedy, streaming",
        model,
        config.model.path.display(),
        runs,
        PROMPTS.len()
    );
    println!(
        "{:<10} {:>14} {:>18}",
        "path", "TTFT p50 (ms)", "decode tok/s p50"
    );
    println!("{:<10} {:>14.1} {:>18.2}", "direct", d_ttft * 1e3, d_tps);
    println!("{:<10} {:>14.1} {:>18.2}", "gateway", g_ttft * 1e3, g_tps);
    println!(
        "ratio gateway/direct: tokens/s {:.3} (target >= 0.97), TTFT {:.3}",
        g_tps / d_tps,
        g_ttft / d_ttft
    );
    Ok(())
}
