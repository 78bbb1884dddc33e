//! Noisy neighbours: a victim tenant sends short requests one at a time
//! while an attacker tenant, within its own limits, runs each attack of the
//! isolation review in turn. Prints the victim's p50/p99 latency under each
//! attack against its solo baseline (target: within 1.5×).
//!
//! The gateway runs as its own process (the built binary), with two tenants:
//! `victim` (unlimited) and `attacker` (60 requests/min, 2 concurrent).
//!
//! Run: `scripts/bench-noisy-neighbour.sh [MODEL_DIR] [REQUESTS]`

#[path = "support/gateway.rs"]
mod gateway;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gateway::{Gateway, key_pair, percentile};
use serde_json::{Value, json};

struct Keys {
    victim: String,
    attacker: String,
    admin: String,
}

async fn start(binary: &str, model_dir: &str) -> Result<(Gateway, Keys)> {
    let port = gateway::free_port()?;
    let (victim, victim_hash) = key_pair();
    let (attacker, attacker_hash) = key_pair();
    let (admin, admin_hash) = key_pair();
    let config = |dir: &std::path::Path| {
        format!(
            r#"
[server]
bind = "127.0.0.1:{port}"
max_body_bytes = 8388608
write_idle_timeout_ms = 2000
[model]
served_name = "m"
path = "{model_dir}"
format = "safetensors"
dtype = "f32"
context_length = 2048
[adapters]
dir = "{adapters}"
max_resident = 1
warm_on_upload = false
[auth]
enabled = true
admin_api_keys = ["{admin_hash}"]
[[tenants]]
id = "victim"
api_keys = ["{victim_hash}"]
[[tenants]]
id = "attacker"
api_keys = ["{attacker_hash}"]
[tenants.limits]
requests_per_minute = 60
max_concurrent = 2
[logging]
level = "error"
"#,
            adapters = dir.join("adapters").display(),
        )
    };
    let gateway = gateway::start(binary, port, config).await?;
    Ok((
        gateway,
        Keys {
            victim,
            attacker,
            admin,
        },
    ))
}

fn chat(model: &str, content: &str, max_tokens: usize) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens, "temperature": 0})
}

async fn victim_latencies(base: &str, key: &str, model: &str, requests: usize) -> Result<Vec<f64>> {
    let client = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat(model, "Say hello.", 8))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200, "victim got {}", response.status());
        response.bytes().await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(latencies)
}

/// A request over a socket with a tiny receive buffer, never read.
fn stalled_stream(address: SocketAddr, key: &str, model: &str) -> Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_recv_buffer_size(2048)?;
    socket.connect(&address.into())?;
    let mut stream: TcpStream = socket.into();
    let mut body = chat(model, "Keep going", 1500);
    body["stream"] = json!(true);
    let body = body.to_string();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    Ok(stream)
}

/// One pooled client for every attack request: a client per request would
/// spend the shared 2 cores on the attacker's side (connection set-up, pool
/// creation) rather than on the gateway's.
fn attack_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new).clone()
}

/// Attack requests started in the current row.
static ATTACKS_SENT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `attack` in a loop until `stop` is set.
fn spawn_attack<F, Fut>(stop: Arc<AtomicBool>, attack: F) -> tokio::task::JoinHandle<usize>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            ATTACKS_SENT.fetch_add(1, Ordering::Relaxed);
            attack().await;
            sent += 1;
        }
        sent
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let binary = std::env::var("LORAGATE_BIN").context("LORAGATE_BIN names the gateway binary")?;
    let model_dir = args
        .get(1)
        .cloned()
        .context("usage: noisy_neighbour MODEL_DIR [REQUESTS]")?;
    let requests: usize = args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(30);
    let (gateway, keys) = start(&binary, &model_dir).await?;
    let base = gateway.base.clone();
    let address: SocketAddr = base.trim_start_matches("http://").parse()?;
    let client = reqwest::Client::new();
    // The attacker's adapter, so refused requests could load (and evict) it.
    let adapter = tempfile::tempdir()?;
    let config: Value =
        serde_json::from_slice(&std::fs::read(format!("{model_dir}/config.json"))?)?;
    let size = |k: &str| config[k].as_u64().unwrap_or(0) as usize;
    let shape = loragate::fixture::Shape {
        hidden: size("hidden_size"),
        intermediate: size("intermediate_size"),
        layers: size("num_hidden_layers"),
        heads: size("num_attention_heads"),
        kv_heads: size("num_key_value_heads"),
        vocab: size("vocab_size"),
        context: 2048,
    };
    loragate::fixture::lora::write_adapter(
        adapter.path(),
        &shape,
        &loragate::fixture::lora::AdapterSpec::tiny(5),
    )?;
    for (tenant, name) in [("attacker", "evil"), ("victim", "own")] {
        let read = |f: &str| std::fs::read(adapter.path().join(f));
        let form = reqwest::multipart::Form::new()
            .text("name", name)
            .part(
                "adapter_config",
                reqwest::multipart::Part::bytes(read("adapter_config.json")?),
            )
            .part(
                "adapter_model",
                reqwest::multipart::Part::bytes(read("adapter_model.safetensors")?),
            );
        let uploaded = client
            .post(format!("{base}/admin/v1/tenants/{tenant}/adapters"))
            .bearer_auth(&keys.admin)
            .multipart(form)
            .send()
            .await?;
        anyhow::ensure!(
            uploaded.status() == 201,
            "upload: {}",
            uploaded.text().await?
        );
    }
    // Warm up, then the victim alone.
    victim_latencies(&base, &keys.victim, "own", 3).await?;
    let mut solo = victim_latencies(&base, &keys.victim, "own", requests).await?;
    solo.sort_by(f64::total_cmp);
    let (solo50, solo99) = (percentile(&solo, 0.5), percentile(&solo, 0.99));
    println!(
        "victim: {requests} sequential requests of 8 tokens on its own adapter; attacker: 60 req/min, 2 concurrent\n"
    );
    println!(
        "| attack | victim p50 ms | victim p99 ms | p50 × solo | p99 × solo | attacker requests/s |"
    );
    println!("|---|---|---|---|---|---|");
    println!("| none (solo) | {solo50:.1} | {solo99:.1} | 1.00 | 1.00 | 0 |");
    type Attack = (
        &'static str,
        Box<dyn Fn(Arc<AtomicBool>) -> tokio::task::JoinHandle<usize>>,
    );
    let attacker = keys.attacker.clone();
    let attacks: Vec<Attack> = vec![
        ("stalled readers (streams never read)", {
            let key = attacker.clone();
            Box::new(move |stop| {
                let key = key.clone();
                spawn_attack(stop, move || {
                    let key = key.clone();
                    async move {
                        let held = stalled_stream(address, &key, "m");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        drop(held);
                    }
                })
            })
        }),
        ("4 MB prompts from a tenant at its limit", {
            let (key, base) = (attacker.clone(), base.clone());
            Box::new(move |stop| {
                let (key, base) = (key.clone(), base.clone());
                // Serialized once: the attacker's own CPU is not the gateway's
                // on a real deployment, so the bench spends as little as it can.
                let big = bytes::Bytes::from(
                    serde_json::to_vec(&chat("m", &"x".repeat(4 << 20), 4)).unwrap_or_default(),
                );
                spawn_attack(stop, move || {
                    let (key, base, big) = (key.clone(), base.clone(), big.clone());
                    async move {
                        let _ = attack_client()
                            .post(format!("{base}/v1/chat/completions"))
                            .bearer_auth(&key)
                            .header("content-type", "application/json")
                            .body(big)
                            .send()
                            .await;
                    }
                })
            })
        }),
        ("adapter requests, admitted and refused by limits", {
            let (key, base) = (attacker.clone(), base.clone());
            Box::new(move |stop| {
                let (key, base) = (key.clone(), base.clone());
                spawn_attack(stop, move || {
                    let (key, base) = (key.clone(), base.clone());
                    async move {
                        let _ = attack_client()
                            .post(format!("{base}/v1/chat/completions"))
                            .bearer_auth(&key)
                            .json(&chat("evil", "hi", 4))
                            .send()
                            .await;
                    }
                })
            })
        }),
        ("four 256-byte stop strings on long streams", {
            let (key, base) = (attacker.clone(), base.clone());
            Box::new(move |stop| {
                let (key, base) = (key.clone(), base.clone());
                spawn_attack(stop, move || {
                    let (key, base) = (key.clone(), base.clone());
                    async move {
                        let mut body = chat("m", "Keep going", 300);
                        body["stop"] = json!(
                            (0..4)
                                .map(|i| format!("{i}").repeat(256))
                                .collect::<Vec<_>>()
                        );
                        let _ = attack_client()
                            .post(format!("{base}/v1/chat/completions"))
                            .bearer_auth(&key)
                            .json(&body)
                            .send()
                            .await;
                    }
                })
            })
        }),
    ];
    for (name, attack) in attacks {
        let stop = Arc::new(AtomicBool::new(false));
        ATTACKS_SENT.store(0, Ordering::Relaxed);
        let began = Instant::now();
        let workers: Vec<_> = (0..4).map(|_| attack(stop.clone())).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut under = victim_latencies(&base, &keys.victim, "own", requests).await?;
        stop.store(true, Ordering::Relaxed);
        let rate = ATTACKS_SENT.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64();
        for worker in workers {
            worker.abort();
        }
        under.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&under, 0.5), percentile(&under, 0.99));
        println!(
            "| {name} | {p50:.1} | {p99:.1} | {:.2} | {:.2} | {rate:.0} |",
            p50 / solo50,
            p99 / solo99
        );
        // Let the attack's leftovers (limits, streams) drain before the next.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    drop(gateway);
    Ok(())
}
