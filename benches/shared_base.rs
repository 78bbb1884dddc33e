//! The shared-base engine against mistral.rs 0.8.1, in-process, on one
//! safetensors base and the same rank-8 q/v adapters, in one run:
//!
//! - single-stream decode tokens/s and TTFT, base and one adapter;
//! - aggregate tokens/s of 8 concurrent streams, on the base and on 8
//!   different adapters;
//! - adapter load time and RSS per resident adapter (N adapters loaded);
//!
//! Prints one JSON object. The peer (mistral.rs 0.9.5 from PyPI) is measured
//! by scripts/bench/peer_mistralrs.py on the same files, and
//! scripts/bench-shared-base.sh runs all three and prints the table.
//!
//! Run: `shared_base BASE_DIR --write-adapters DIR` (once), then
//! `shared_base BASE_DIR --adapters-dir DIR [--tokens 64] [--runs 3] [--adapters 1000] [--engine shared_base|mistralrs]`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use loragate::config::Config;
use loragate::engine::{
    AdapterFiles, Engine, InferenceEvent, InferenceRequest, PromptMessage, Role,
};
use loragate::fixture::lora::{AdapterSpec, write_adapter};
use serde_json::json;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Args {
    base: PathBuf,
    write_adapters: Option<PathBuf>,
    adapters_dir: Option<PathBuf>,
    tokens: usize,
    runs: usize,
    adapters: usize,
    engine: String,
    json: bool,
}

fn args() -> Result<Args> {
    let mut raw = std::env::args().skip(1);
    let base = PathBuf::from(
        raw.next()
            .context("usage: shared_base BASE_DIR [options]")?,
    );
    let mut args = Args {
        base,
        write_adapters: None,
        adapters_dir: None,
        tokens: 64,
        runs: 3,
        adapters: 1000,
        engine: "shared_base".into(),
        json: false,
    };
    while let Some(flag) = raw.next() {
        let mut value = || raw.next().context("a value");
        match flag.as_str() {
            "--tokens" => args.tokens = value()?.parse()?,
            "--runs" => args.runs = value()?.parse()?,
            "--adapters" => args.adapters = value()?.parse()?,
            "--engine" => args.engine = value()?,
            "--json" => args.json = true,
            "--write-adapters" => args.write_adapters = Some(value()?.into()),
            "--adapters-dir" => args.adapters_dir = Some(value()?.into()),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(args)
}

async fn load(base: &Path, engine: &str) -> Result<Arc<dyn Engine>> {
    let text = format!(
        "[model]\nserved_name = \"base\"\npath = \"{}\"\nformat = \"safetensors\"\ndtype = \"f32\"\nengine = \"{engine}\"\ncontext_length = 2048\nmax_num_seqs = 16\n[adapters]\nmax_rank = 64\n",
        base.display()
    );
    let config = Config::from_toml_str(&text, Vec::new(), Path::new("/"))?;
    loragate::server::load_engine(&config.model, loragate::engine::EngineMetrics::detached()).await
}

/// One greedy stream: (TTFT seconds, decode tokens/s, tokens).
async fn stream(engine: &Arc<dyn Engine>, model: &str, tokens: usize) -> Result<(f64, f64, usize)> {
    let messages = vec![PromptMessage {
        role: Role::User,
        content: "Write a long story about a lighthouse keeper and the sea.".into(),
        tool_calls: Vec::new(),
        tool_call_id: None,
    }];
    let started = Instant::now();
    let prompt = engine.count_prompt_tokens(model, &messages, None).await?;
    let request = InferenceRequest::greedy(model, messages, prompt, tokens);
    let mut events = engine.generate(request).await?.events;
    let (mut first, mut last, mut generated) = (None, started, 0);
    while let Some(event) = events.next().await {
        match event? {
            InferenceEvent::Delta { .. } => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
            }
            InferenceEvent::Finished { usage, .. } => {
                generated = usage.completion_tokens;
                break;
            }
            InferenceEvent::ToolCall(_) => {}
        }
    }
    let first = first.context("no text")?;
    let ttft = (first - started).as_secs_f64();
    let decode = (last - first).as_secs_f64();
    let rate = if decode > 0.0 {
        (generated.saturating_sub(1)) as f64 / decode
    } else {
        f64::NAN
    };
    Ok((ttft, rate, generated))
}

/// Eight streams at once on `models`: aggregate tokens/s.
async fn concurrent(engine: &Arc<dyn Engine>, models: &[String], tokens: usize) -> Result<f64> {
    let started = Instant::now();
    let results =
        futures_util::future::join_all(models.iter().map(|m| stream(engine, m, tokens))).await;
    let total: usize = results
        .into_iter()
        .map(|r| r.map(|(_, _, n)| n))
        .sum::<Result<usize>>()?;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn adapter_files(dir: &Path, spec: &AdapterSpec) -> AdapterFiles {
    AdapterFiles {
        weights: dir.join("adapter_model.safetensors"),
        rank: spec.rank,
        alpha: spec.alpha,
        target_modules: spec.targets.clone(),
    }
}

fn shape_of(base: &Path) -> Result<loragate::fixture::Shape> {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("config.json"))?)?;
    let size = |k: &str| config[k].as_u64().unwrap_or(0) as usize;
    Ok(loragate::fixture::Shape {
        hidden: size("hidden_size"),
        intermediate: size("intermediate_size"),
        layers: size("num_hidden_layers"),
        heads: size("num_attention_heads"),
        kv_heads: size("num_key_value_heads"),
        vocab: size("vocab_size"),
        context: 2048,
    })
}

/// The adapters every engine is measured with: rank-8 q/v, seeded.
fn specs() -> Vec<(String, AdapterSpec)> {
    let mut specs: Vec<(String, AdapterSpec)> = (0..8)
        .map(|i| (format!("a{i}"), AdapterSpec::tiny(900 + i)))
        .collect();
    specs.extend((0..16).map(|i| (format!("fresh{i}"), AdapterSpec::tiny(5000 + i))));
    specs.push(("many".into(), AdapterSpec::tiny(77)));
    specs
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let shape = shape_of(&args.base)?;
    if let Some(dir) = &args.write_adapters {
        for (name, spec) in specs() {
            write_adapter(&dir.join(name), &shape, &spec)?;
        }
        return Ok(());
    }
    let adapters = args
        .adapters_dir
        .clone()
        .context("--adapters-dir (written by --write-adapters)")?;
    let spec_of = |name: &str| {
        specs()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, spec)| spec)
            .context("unknown adapter")
    };
    let rss_before = rss_bytes();
    let loading = Instant::now();
    let engine = load(&args.base, &args.engine).await?;
    let load_secs = loading.elapsed().as_secs_f64();
    let base_rss = rss_bytes().saturating_sub(rss_before);
    let mut load_ms = Vec::new();
    let mut names = Vec::new();
    for i in 0..8 {
        let name = format!("a{i}");
        let spec = spec_of(&name)?;
        let started = Instant::now();
        engine
            .load_adapter(&name, &adapter_files(&adapters.join(&name), &spec))
            .await?;
        load_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        names.push(name);
    }
    // Warm-up.
    stream(&engine, "base", 8).await?;
    let mut ttft = Vec::new();
    let mut decode = Vec::new();
    let mut adapter_decode = Vec::new();
    let mut aggregate_base = Vec::new();
    let mut aggregate_adapters = Vec::new();
    let mut first_token_after_load = Vec::new();
    let bases: Vec<String> = (0..8).map(|_| "base".to_string()).collect();
    for run in 0..args.runs {
        let (t, rate, _) = stream(&engine, "base", args.tokens).await?;
        ttft.push(t * 1000.0);
        decode.push(rate);
        adapter_decode.push(stream(&engine, "a0", args.tokens).await?.1);
        aggregate_base.push(concurrent(&engine, &bases, args.tokens).await?);
        aggregate_adapters.push(concurrent(&engine, &names, args.tokens).await?);
        // A fresh adapter: load, then its first token.
        let name = format!("fresh{run}");
        let spec = spec_of(&name)?;
        let started = Instant::now();
        engine
            .load_adapter(&name, &adapter_files(&adapters.join(&name), &spec))
            .await?;
        let (t, _, _) = stream(&engine, &name, 1).await?;
        let _ = t;
        first_token_after_load.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    // Many resident adapters (only where each is small).
    let mut per_adapter = serde_json::Value::Null;
    if args.adapters > 0 {
        let spec = spec_of("many")?;
        let dir = adapters.join("many");
        let file_bytes = std::fs::metadata(dir.join("adapter_model.safetensors"))?.len();
        let before = rss_bytes();
        for i in 0..args.adapters {
            engine
                .load_adapter(&format!("many{i}"), &adapter_files(&dir, &spec))
                .await?;
        }
        let grown = rss_bytes().saturating_sub(before);
        per_adapter = json!({
            "adapters": args.adapters,
            "file_bytes": file_bytes,
            "rss_growth_bytes": grown,
            "rss_per_adapter_mib": grown as f64 / args.adapters as f64 / 1048576.0,
            "ratio_to_file": grown as f64 / (file_bytes as f64 * args.adapters as f64),
        });
    }
    let report = json!({
        "engine": args.engine,
        "load_secs": load_secs,
        "base_rss_mib": base_rss as f64 / 1048576.0,
        "ttft_ms": median(ttft),
        "decode_tps": median(decode),
        "adapter_decode_tps": median(adapter_decode),
        "aggregate8_base_tps": median(aggregate_base),
        "aggregate8_adapters_tps": median(aggregate_adapters),
        "adapter_load_ms": median(load_ms),
        "load_to_first_token_ms": median(first_token_after_load),
        "resident": per_adapter,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
