//! Test harness: the real gateway, on the tiny fixture model, over real HTTP
//! on a loopback port.

pub mod direct;
pub mod process;
pub mod reference;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use loragate::config::Config;
use loragate::engine::Engine;
use serde_json::Value;

pub const MODEL: &str = "tiny";

pub type LoadFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Engine>> + Send>>;

/// The tiny model, written once per test binary.
pub fn tiny_model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("loragate-tiny-{}", std::process::id()));
        loragate::fixture::write_tiny_llama(&dir, loragate::fixture::DEFAULT_SEED)
            .expect("fixture model");
        dir
    })
}

/// The test configuration; `extra` holds whole sections (`[auth]`,
/// `[redis]`, `[[tenants]]`); without them authentication is off and the
/// admin routes are open (as `auth.allow_open_admin` allows on loopback).
pub fn config_text(extra: &str) -> String {
    let extra = if extra.is_empty() {
        "[auth]\nenabled = false\nallow_open_admin = true\n"
    } else {
        extra
    };
    format!(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 2
[model]
served_name = "{MODEL}"
path = "{}"
format = "safetensors"
dtype = "f32"
max_num_seqs = 8
[logging]
level = "warn"
{extra}
"#,
        tiny_model_dir().display()
    )
}

pub struct TestServer {
    pub base: String,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The adapter store, unless the test chose its own `adapters.dir`.
    _adapters: Option<tempfile::TempDir>,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with(&[])
    }

    /// Overrides keys (`"admission.max_queued"`) the way the environment
    /// does in production (`LORAGATE__ADMISSION__MAX_QUEUED`).
    pub fn with(overrides: &[(&str, &str)]) -> TestServer {
        TestServer::with_toml("", overrides)
    }

    pub fn with_toml(extra: &str, overrides: &[(&str, &str)]) -> TestServer {
        TestServer::with_engine(extra, overrides, |engine| engine)
    }

    /// Like `with_toml`, with the loaded engine passed through `wrap` (to
    /// observe or hold up what the gateway asks of it).
    pub fn with_engine(
        extra: &str,
        overrides: &[(&str, &str)],
        wrap: impl FnOnce(Arc<dyn Engine>) -> Arc<dyn Engine> + Send + 'static,
    ) -> TestServer {
        TestServer::with_loader(extra, overrides, move |model, metrics| {
            Box::pin(async move {
                let engine = loragate::server::load_engine(&model, metrics)
                    .await
                    .expect("tiny model loads");
                wrap(engine)
            })
        })
    }

    /// Like `with_toml`, with the engine loaded by `load` from the model's
    /// configuration (to keep a handle on a concrete engine).
    pub fn with_loader(
        extra: &str,
        overrides: &[(&str, &str)],
        load: impl FnOnce(loragate::config::ModelConfig, loragate::engine::EngineMetrics) -> LoadFuture
        + Send
        + 'static,
    ) -> TestServer {
        let adapters = (!overrides.iter().any(|(key, _)| *key == "adapters.dir"))
            .then(|| tempfile::tempdir().expect("adapter store"));
        let mut environment: Vec<(String, String)> = overrides
            .iter()
            .map(|(key, value)| {
                (
                    format!("LORAGATE__{}", key.replace('.', "__").to_uppercase()),
                    value.to_string(),
                )
            })
            .collect();
        if let Some(dir) = &adapters {
            environment.push((
                "LORAGATE__ADAPTERS__DIR".into(),
                dir.path().display().to_string(),
            ));
        }
        let config = Config::from_toml_str(&config_text(extra), environment, Path::new("/"))
            .expect("test config is valid");
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let running = loragate::app::bind(&config).expect("bind");
                let metrics = loragate::engine::EngineMetrics::exported(&running.metrics, MODEL);
                let engine = load(config.model.clone(), metrics).await;
                running.state.install_engine(engine);
                sender
                    .send((running.addresses[0], running.server.handle()))
                    .expect("report address");
                let _ = running.server.await;
            });
        });
        let (address, handle) = receiver
            .recv_timeout(Duration::from_secs(120))
            .expect("server started");
        TestServer {
            base: format!("http://{address}"),
            handle,
            thread: Some(thread),
            _adapters: adapters,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn address(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// A chat completion that must succeed: its JSON answer.
    pub async fn chat_ok(&self, body: &serde_json::Value) -> serde_json::Value {
        let (status, answer) = self.post_json("/v1/chat/completions", body, None).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    /// POSTs `body` as JSON to `path` (with a bearer key when given): the
    /// status and the parsed answer (`Null` when it is not JSON).
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        key: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = client().post(self.url(path)).json(body);
        if let Some(key) = key {
            request = authed(request, key);
        }
        let response = request.send().await.expect("answered");
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        let stopper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(handle.stop(false));
            }
        });
        let _ = stopper.join();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

pub fn chat_body(content: &str, max_tokens: usize) -> serde_json::Value {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0
    })
}

/// The `/metrics` exposition of the gateway at `base`.
pub async fn metrics_text(base: &str) -> String {
    client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body")
}

/// A sample's value (`name{labels}`) in an exposition; 0 when absent.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Reads a metric sample (`name{labels}`) from `/metrics`.
pub async fn metric(server: &TestServer, name: &str) -> f64 {
    sample(&metrics_text(&server.base).await, name)
}

/// A rank-8 PEFT adapter for the tiny model, seeded, in a fresh folder.
pub fn tiny_adapter(seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("adapter folder");
    loragate::fixture::lora::write_adapter(
        dir.path(),
        &loragate::fixture::TINY,
        &loragate::fixture::lora::AdapterSpec::tiny(seed),
    )
    .expect("adapter written");
    dir
}

/// Waits until a metric stops changing for `quiet`, returning its value.
pub async fn settled_metric(server: &TestServer, sample: &str, quiet: Duration) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = metric(server, sample).await;
    loop {
        tokio::time::sleep(quiet).await;
        let now = metric(server, sample).await;
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|frame| frame.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// A streamed chat answer put back together choice by choice, as the SDKs
/// do it: by each chunk choice's `index`.
#[derive(Debug, Default)]
pub struct StreamedChoices {
    pub content: std::collections::BTreeMap<u64, String>,
    pub finish: std::collections::BTreeMap<u64, String>,
    pub call_ids: std::collections::BTreeMap<u64, Vec<String>>,
    /// Chunks that started a choice with `role: assistant`.
    pub roles: Vec<u64>,
    pub usage: Option<Value>,
}

pub fn streamed_choices(body: &str) -> StreamedChoices {
    let mut streamed = StreamedChoices::default();
    for data in sse_data(body).iter().filter(|d| d.as_str() != "[DONE]") {
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert!(chunk.get("error").is_none(), "{chunk}");
        if chunk["usage"].is_object() {
            streamed.usage = Some(chunk["usage"].clone());
        }
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let index = choice["index"].as_u64().unwrap();
            let delta = &choice["delta"];
            if delta["role"] == "assistant" {
                streamed.roles.push(index);
            }
            let text = delta["content"].as_str().unwrap_or_default();
            streamed.content.entry(index).or_default().push_str(text);
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                if let Some(id) = call["id"].as_str() {
                    streamed.call_ids.entry(index).or_default().push(id.into());
                }
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                let earlier = streamed.finish.insert(index, reason.into());
                assert!(earlier.is_none(), "choice {index} finished twice");
            }
        }
    }
    streamed
}

/// A key and the config line that accepts it.
pub fn new_key() -> (String, String) {
    let key = loragate::auth::keys::generate_key();
    let hash = loragate::config::KeyHash::of_key(&key).to_config_string();
    (key, hash)
}

/// A Redis key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("loragate-test-{}", uuid::Uuid::new_v4().simple())
}

pub fn authed(request: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
    request.header("authorization", format!("Bearer {key}"))
}

/// GETs `url` (with a bearer key when given) and parses the JSON answer.
pub async fn get_json(url: impl reqwest::IntoUrl, key: Option<&str>) -> serde_json::Value {
    let mut request = client().get(url);
    if let Some(key) = key {
        request = authed(request, key);
    }
    request
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON body")
}

/// The multipart form of an adapter upload from a PEFT folder.
pub fn adapter_form(name: &str, dir: &Path) -> reqwest::multipart::Form {
    let read = |file: &str| std::fs::read(dir.join(file)).expect("adapter file");
    reqwest::multipart::Form::new()
        .text("name", name.to_string())
        .part(
            "adapter_config",
            reqwest::multipart::Part::bytes(read("adapter_config.json"))
                .file_name("adapter_config.json"),
        )
        .part(
            "adapter_model",
            reqwest::multipart::Part::bytes(read("adapter_model.safetensors"))
                .file_name("adapter_model.safetensors"),
        )
}

/// Uploads the PEFT folder `dir` as `tenant`'s adapter `name` (with the
/// admin key when given) and checks it was created.
pub async fn upload_adapter(
    server: &TestServer,
    admin_key: Option<&str>,
    tenant: &str,
    name: &str,
    dir: &Path,
) {
    let mut request = client()
        .post(server.url(&format!("/admin/v1/tenants/{tenant}/adapters")))
        .multipart(adapter_form(name, dir));
    if let Some(key) = admin_key {
        request = authed(request, key);
    }
    let response = request.send().await.expect("answered");
    let status = response.status();
    assert_eq!(
        status,
        201,
        "upload: {}",
        response.text().await.unwrap_or_default()
    );
}
