//! The gateway in front of remote replicas, all real processes over real
//! HTTP: another loragate running the real engine, and `mock-upstream`
//! replicas that name themselves in their answers (and fail on purpose).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::process::{GatewayProcess, MockUpstream, free_port};
use crate::common::{client, metrics_text, sample, tiny_adapter, tiny_model_dir};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A front gateway serving `fleet` from `replicas`; `upstream` adds keys to
/// `[upstream]`, `model_path` lets it check adapter uploads.
fn front(replicas: &[(&str, String)], upstream: &str, model_path: Option<&Path>) -> GatewayProcess {
    GatewayProcess::spawn_config(&front_config(replicas, upstream, model_path))
}

fn front_config(replicas: &[(&str, String)], upstream: &str, model_path: Option<&Path>) -> String {
    let path = model_path
        .map(|p| format!("path = \"{}\"\n", p.display()))
        .unwrap_or_default();
    let replicas: String = replicas
        .iter()
        .map(|(name, url)| format!("[[upstream.replicas]]\nname = \"{name}\"\nurl = \"{url}\"\n"))
        .collect();
    format!(
        r#"
[server]
bind = "127.0.0.1:0"
workers = 2
[model]
served_name = "fleet"
context_length = 4096
{path}
[auth]
enabled = false
allow_open_admin = true
[logging]
level = "error"
[adapters]
max_resident = 16
[upstream]
{upstream}
{replicas}
"#
    )
}

fn ask(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    })
}

async fn post_chat(gateway: &GatewayProcess, body: &Value) -> reqwest::Response {
    client()
        .post(gateway.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn chat(gateway: &GatewayProcess, body: &Value) -> (u16, Value) {
    let response = post_chat(gateway, body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A streamed answer: its content, its usage chunk, and when the first
/// content and the end arrived.
struct Streamed {
    status: u16,
    content: String,
    usage: Option<Value>,
    errors: Vec<Value>,
    first_content: Option<Duration>,
    total: Duration,
}

async fn stream(gateway: &GatewayProcess, body: &Value) -> Streamed {
    let started = Instant::now();
    let response = post_chat(gateway, body).await;
    let mut result = Streamed {
        status: response.status().as_u16(),
        content: String::new(),
        usage: None,
        errors: Vec::new(),
        first_content: None,
        total: Duration::ZERO,
    };
    let mut bytes = response.bytes_stream();
    let mut pending = String::new();
    while let Some(chunk) = bytes.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = pending.find("\n\n") {
            let frame: String = pending.drain(..end + 2).collect();
            let Some(data) = frame.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let value: Value = serde_json::from_str(data).unwrap();
            if value.get("error").is_some() {
                result.errors.push(value);
                continue;
            }
            if let Some(text) = value["choices"][0]["delta"]["content"].as_str()
                && !text.is_empty()
            {
                result.first_content.get_or_insert(started.elapsed());
                result.content.push_str(text);
            }
            if value["usage"].is_object() {
                result.usage = Some(value["usage"].clone());
            }
        }
    }
    result.total = started.elapsed();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_a_real_engine_and_settles_on_its_usage() {
    let back = GatewayProcess::spawn("");
    let fleet = front(&[("back", back.base.clone())], "model = \"tiny\"", None);

    let (status, direct) = chat(&back, &ask("tiny", false)).await;
    assert_eq!(status, 200, "{direct}");
    let (status, relayed) = chat(&fleet, &ask("fleet", false)).await;
    assert_eq!(status, 200, "{relayed}");
    assert_eq!(relayed["model"], "fleet");
    assert_eq!(
        relayed["choices"][0]["message"]["content"],
        direct["choices"][0]["message"]["content"]
    );
    assert_eq!(relayed["usage"], direct["usage"]);
    assert_eq!(
        relayed["choices"][0]["finish_reason"],
        direct["choices"][0]["finish_reason"]
    );

    let streamed = stream(&fleet, &ask("fleet", true)).await;
    assert_eq!(streamed.status, 200);
    assert!(streamed.errors.is_empty(), "{:?}", streamed.errors);
    assert_eq!(
        streamed.content,
        direct["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(streamed.usage.as_ref(), Some(&direct["usage"]));

    // Limits and metering settle on the replica's counts, not the estimate.
    let prompt = direct["usage"]["prompt_tokens"].as_f64().unwrap();
    let completion = direct["usage"]["completion_tokens"].as_f64().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = metrics_text(&fleet.base).await;
    let labels = "{model=\"fleet\",tenant=\"anonymous\"}";
    assert_eq!(
        sample(&text, &format!("loragate_prompt_tokens_total{labels}")),
        2.0 * prompt
    );
    assert_eq!(
        sample(&text, &format!("loragate_completion_tokens_total{labels}")),
        2.0 * completion
    );
    assert_eq!(
        sample(
            &text,
            "loragate_upstream_requests_total{outcome=\"ok\",replica=\"back\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_frames_are_relayed_as_they_arrive() {
    let slow = MockUpstream::start("slow", &["--tokens", "6", "--token-delay-ms", "400"]);
    let fleet = front(&[("slow", slow.url())], "model = \"mock-model\"", None);
    let streamed = stream(&fleet, &ask("fleet", true)).await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.content, "[slow mock-model] w1 w2 w3 w4 w5");
    // Ten frames 400 ms apart: the first content must not wait for the last.
    let first = streamed.first_content.expect("content arrived");
    assert!(
        streamed.total >= Duration::from_millis(3500),
        "{:?}",
        streamed.total
    );
    assert!(
        first + Duration::from_millis(2000) < streamed.total,
        "first content at {first:?} of {:?}: the stream was buffered",
        streamed.total
    );
    assert_eq!(streamed.usage.unwrap()["completion_tokens"], 6);
}

async fn upload(gateway: &GatewayProcess, name: &str, dir: &Path) {
    let response = try_upload(gateway, name, dir).await;
    let status = response.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        response.text().await.unwrap()
    );
}

async fn try_upload(gateway: &GatewayProcess, name: &str, dir: &Path) -> reqwest::Response {
    let part = |file: &str| {
        reqwest::multipart::Part::bytes(std::fs::read(dir.join(file)).unwrap())
            .file_name(file.to_string())
    };
    let form = reqwest::multipart::Form::new()
        .text("name", name.to_string())
        .part("adapter_config", part("adapter_config.json"))
        .part("adapter_model", part("adapter_model.safetensors"));
    client()
        .post(gateway.url("/admin/v1/tenants/anonymous/adapters"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_refused_when_no_replica_could_load_them() {
    let replica = MockUpstream::start("a", &[]);
    let fleet = front(
        &[("a", replica.url())],
        "model = \"mock-model\"",
        Some(tiny_model_dir()),
    );
    let response = try_upload(&fleet, "bot", tiny_adapter(1).path()).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "adapters_unsupported", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("register_adapters"), "{body}");
}

/// The replica that answered, from the mock's `[<replica> <model>]` prefix.
async fn served_by(gateway: &GatewayProcess, model: &str) -> String {
    let (status, body) = chat(gateway, &ask(model, false)).await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let replica = content
        .trim_start_matches('[')
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(
        content.contains(&format!("adapter:anonymous/{model}@")),
        "the replica was asked for the registered adapter: {content}"
    );
    replica
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_stick_to_a_replica_fail_over_and_come_back() {
    let mut mocks = [
        MockUpstream::start("a", &[]),
        MockUpstream::start("b", &[]),
        MockUpstream::start("c", &[]),
    ];
    let replicas: Vec<(&str, String)> = ["a", "b", "c"]
        .into_iter()
        .zip(mocks.iter().map(MockUpstream::url))
        .collect();
    let fleet = front(
        &replicas,
        "model = \"mock-model\"\nregister_adapters = true\nhealth_interval_ms = 200\neject_after_failures = 1\neject_for_ms = 500",
        Some(tiny_model_dir()),
    );
    let names: Vec<String> = (0..6).map(|i| format!("bot{i}")).collect();
    for (seed, name) in names.iter().enumerate() {
        upload(&fleet, name, tiny_adapter(seed as u64 + 1).path()).await;
    }
    let mut home = Vec::new();
    for name in &names {
        let first = served_by(&fleet, name).await;
        for _ in 0..10 {
            assert_eq!(served_by(&fleet, name).await, first, "{name} moved");
        }
        home.push(first);
    }
    let mut distinct = home.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 2, "six adapters all on {distinct:?}");

    // Kill bot0's replica: its traffic moves to one other replica at once.
    let victim = home[0].clone();
    let index = ["a", "b", "c"].iter().position(|n| *n == victim).unwrap();
    mocks[index].kill();
    let fallback = served_by(&fleet, "bot0").await;
    assert_ne!(fallback, victim);
    for _ in 0..10 {
        assert_eq!(served_by(&fleet, "bot0").await, fallback);
    }
    // Adapters homed elsewhere are undisturbed.
    for (name, replica) in names.iter().zip(&home) {
        if *replica != victim {
            assert_eq!(&served_by(&fleet, name).await, replica);
        }
    }

    // It returns (restarted, without its adapters); traffic follows it back
    // once its health check passes and the ejection ends.
    mocks[index].restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if served_by(&fleet, "bot0").await == victim {
            break;
        }
        assert!(Instant::now() < deadline, "bot0 never returned to {victim}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        assert_eq!(served_by(&fleet, "bot0").await, victim);
    }
    // Its death was noticed: by a request refused on its port, or (when the
    // health check got there first, as on a loaded machine) by the health
    // check's ejection.
    let text = metrics_text(&fleet.base).await;
    let refused = sample(
        &text,
        &format!("loragate_upstream_requests_total{{outcome=\"refused\",replica=\"{victim}\"}}"),
    );
    let ejected = sample(
        &text,
        &format!("loragate_upstream_ejections_total{{replica=\"{victim}\"}}"),
    );
    assert!(
        refused + ejected >= 1.0,
        "refused {refused}, ejected {ejected}"
    );
}

/// A replica that dies between requests is taken out of rotation by the
/// health check alone, and that counts as an ejection like failed requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_counts_as_an_ejection() {
    let mut replica = MockUpstream::start("h", &[]);
    let fleet = front(
        &[("h", replica.url())],
        "model = \"mock-model\"\nhealth_interval_ms = 100",
        None,
    );
    let up = "loragate_upstream_replica_up{replica=\"h\"}";
    let ejections = "loragate_upstream_ejections_total{replica=\"h\"}";
    let deadline = Instant::now() + Duration::from_secs(15);
    while sample(&metrics_text(&fleet.base).await, up) != 1.0 {
        assert!(Instant::now() < deadline, "the replica never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replica.kill();
    while sample(&metrics_text(&fleet.base).await, up) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the dead replica stayed in rotation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sample(&metrics_text(&fleet.base).await, ejections), 1.0);
}

async fn expect_error(gateway: &GatewayProcess, status: u16, code: &str) -> Value {
    let (got, body) = chat(gateway, &ask("fleet", false)).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    for field in ["message", "type", "param", "code"] {
        assert!(
            body["error"].get(field).is_some(),
            "{field} missing: {body}"
        );
    }
    let streamed = stream(gateway, &ask("fleet", true)).await;
    assert_eq!(
        streamed.status, status,
        "streamed: same status before any frame"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_gateway_statuses() {
    let failing = MockUpstream::start("f", &["--fail-status", "500"]);
    let fleet = front(&[("f", failing.url())], "model = \"mock-model\"", None);
    let body = expect_error(&fleet, 502, "upstream_error").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP 500")
    );
    drop(fleet);

    let slow = MockUpstream::start("s", &["--delay-ms", "3000"]);
    let fleet = front(
        &[("s", slow.url())],
        "model = \"mock-model\"\nrequest_timeout_ms = 300",
        None,
    );
    expect_error(&fleet, 504, "upstream_timeout").await;
    drop(fleet);

    let nobody = format!("http://127.0.0.1:{}", free_port());
    let fleet = front(&[("gone", nobody)], "model = \"mock-model\"", None);
    let body = expect_error(&fleet, 502, "upstream_error").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could be reached")
    );
    drop(fleet);

    let garbled = MockUpstream::start("g", &["--malformed"]);
    let fleet = front(&[("g", garbled.url())], "model = \"mock-model\"", None);
    expect_error(&fleet, 502, "upstream_error").await;
    drop(fleet);

    let refusing = MockUpstream::start("r", &["--fail-status", "400"]);
    let fleet = front(&[("r", refusing.url())], "model = \"mock-model\"", None);
    let (status, body) = chat(&fleet, &ask("fleet", false)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failing on purpose")
    );
    drop(fleet);

    let saturated = MockUpstream::start("o", &["--fail-status", "429"]);
    let fleet = front(&[("o", saturated.url())], "model = \"mock-model\"", None);
    let response = post_chat(&fleet, &ask("fleet", false)).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_counted_when_the_upstream_reports_none() {
    let quiet = MockUpstream::start("q", &["--no-usage", "--tokens", "5"]);
    let fleet = front(&[("q", quiet.url())], "model = \"mock-model\"", None);
    let (status, body) = chat(&fleet, &ask("fleet", false)).await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, "[q mock-model] w1 w2 w3 w4");
    // No tokenizer configured: about four bytes a token.
    let counted = content.len().div_ceil(4) as u64;
    assert_eq!(body["usage"]["completion_tokens"], counted);
    let streamed = stream(&fleet, &ask("fleet", true)).await;
    assert_eq!(streamed.usage.unwrap()["completion_tokens"], counted);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = metrics_text(&fleet.base).await;
    assert_eq!(
        sample(
            &text,
            "loragate_completion_tokens_total{model=\"fleet\",tenant=\"anonymous\"}"
        ),
        2.0 * counted as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_unnoticed_gets_its_adapters_again() {
    let mut replica = MockUpstream::start("a", &[]);
    // Health checks too rare to notice the restart: the gateway still
    // believes the adapter is registered there.
    let fleet = front(
        &[("a", replica.url())],
        "model = \"mock-model\"\nregister_adapters = true\nhealth_interval_ms = 600000",
        Some(tiny_model_dir()),
    );
    upload(&fleet, "bot", tiny_adapter(3).path()).await;
    assert_eq!(served_by(&fleet, "bot").await, "a");
    replica.restart();
    // The replica answers 404 for the forgotten adapter; the gateway
    // registers it again and resends, and the client never sees it.
    assert_eq!(served_by(&fleet, "bot").await, "a");
    assert_eq!(served_by(&fleet, "bot").await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_replica_passes_requests_to_the_next_without_ejection() {
    let busy = MockUpstream::start("busy", &["--fail-status", "429"]);
    let idle = MockUpstream::start("idle", &[]);
    let fleet = front(
        &[("busy", busy.url()), ("idle", idle.url())],
        "model = \"mock-model\"\neject_after_failures = 1",
        None,
    );
    for _ in 0..6 {
        let (status, body) = chat(&fleet, &ask("fleet", false)).await;
        assert_eq!(status, 200, "{body}");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(content.starts_with("[idle "), "{content}");
    }
    let text = metrics_text(&fleet.base).await;
    assert_eq!(
        sample(&text, "loragate_upstream_ejections_total{replica=\"busy\"}"),
        0.0
    );
    assert!(
        sample(
            &text,
            "loragate_upstream_requests_total{outcome=\"rejected\",replica=\"busy\"}"
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_ends_with_an_error_event() {
    let cut = MockUpstream::start("cut", &["--break-after", "2"]);
    let fleet = front(&[("cut", cut.url())], "model = \"mock-model\"", None);
    let streamed = stream(&fleet, &ask("fleet", true)).await;
    assert_eq!(streamed.status, 200, "the stream had begun");
    assert_eq!(streamed.content, "[cut mock-model] w1");
    assert_eq!(streamed.errors.len(), 1, "{:?}", streamed.errors);
    assert_eq!(streamed.errors[0]["error"]["code"], "upstream_error");
    assert!(streamed.usage.is_none());
    // Not streamed, the same replica's answer is whole and fine.
    let (status, _) = chat(&fleet, &ask("fleet", false)).await;
    assert_eq!(status, 200);
}

/// A replica's own error text can name its files and hosts: a tenant gets a
/// generic 502 with a reference, and the detail is in the gateway's log
/// under that reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_error_details_reach_the_log_not_the_client() {
    const DETAIL: &str = "CUDA out of memory loading /srv/models/llama-70b/model-00003.safetensors on gpu-node-7.internal";
    let failing = MockUpstream::start("f", &["--fail-status", "500", "--fail-message", DETAIL]);
    let fleet = GatewayProcess::spawn_logged(
        &front_config(&[("f", failing.url())], "model = \"mock-model\"", None),
        &[],
    );
    let replica_address = failing.url().trim_start_matches("http://").to_string();
    let mut references = Vec::new();
    for streamed in [false, true] {
        let response = post_chat(&fleet, &ask("fleet", streamed)).await;
        assert_eq!(response.status(), 502);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "upstream_error", "{body}");
        let message = body["error"]["message"].as_str().unwrap().to_string();
        for secret in ["/srv/models", "gpu-node-7", "CUDA", &replica_address] {
            assert!(!message.contains(secret), "`{secret}` leaked: {message}");
        }
        assert!(message.contains("HTTP 500"), "{message}");
        let reference = message
            .split("reference ")
            .nth(1)
            .map(|rest| rest.trim_end_matches(['.', ')']).to_string())
            .unwrap_or_default();
        assert_eq!(reference.len(), 32, "a reference in: {message}");
        references.push(reference);
    }
    assert_ne!(references[0], references[1], "one reference per failure");
    let log = fleet.log();
    for reference in &references {
        let line = log
            .lines()
            .find(|line| line.contains(reference.as_str()))
            .unwrap_or_else(|| panic!("reference {reference} not logged:\n{log}"));
        assert!(
            line.contains(DETAIL),
            "the detail is logged with it: {line}"
        );
    }
}

async fn stream_choices(gateway: &GatewayProcess, body: &Value) -> crate::common::StreamedChoices {
    let response = post_chat(gateway, body).await;
    crate::common::streamed_choices(&response.text().await.unwrap())
}

/// `n` goes to the replica, which answers every choice; the gateway relays
/// them by index, streamed (interleaved) or not, with the replica's usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_choices_pass_through_to_the_replica() {
    let replica = MockUpstream::start("t", &["--tokens", "3"]);
    let fleet = front(&[("t", replica.url())], "model = \"mock-model\"", None);
    let mut request = ask("fleet", false);
    request["n"] = json!(3);
    let (status, body) = chat(&fleet, &request).await;
    assert_eq!(status, 200, "{body}");
    let contents: Vec<&str> = body["choices"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, choice)| {
            assert_eq!(choice["index"], i);
            assert_eq!(choice["finish_reason"], "stop");
            choice["message"]["content"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        contents,
        [
            "[t mock-model] w1 w2",
            "[t mock-model] #1 w1 w2",
            "[t mock-model] #2 w1 w2"
        ]
    );
    assert_eq!(body["usage"]["completion_tokens"], 9);
    assert_eq!(body["usage"]["prompt_tokens"], 5);

    let mut streamed = ask("fleet", true);
    streamed["n"] = json!(2);
    let answer = stream_choices(&fleet, &streamed).await;
    assert_eq!(answer.content[&0], contents[0]);
    assert_eq!(answer.content[&1], contents[1]);
    assert_eq!(answer.finish.len(), 2);
    assert_eq!(answer.usage.unwrap()["completion_tokens"], 6);

    streamed["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let answer = stream_choices(&fleet, &streamed).await;
    assert_eq!(answer.call_ids[&0], ["call_mock1"]);
    assert_eq!(answer.call_ids[&1], ["call_mock2"]);
    assert!(answer.finish.values().all(|reason| reason == "tool_calls"));

    request["n"] = json!(129);
    let (status, body) = chat(&fleet, &request).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "n");
}

/// Tools, tool messages, `logprobs` and the replica's calls travel through
/// unchanged in meaning, streamed or not; usage still settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_and_logprobs_pass_through() {
    let replica = MockUpstream::start("t", &["--tokens", "3"]);
    let fleet = front(&[("t", replica.url())], "model = \"mock-model\"", None);
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let mut request = ask("fleet", false);
    request["tools"] = tools.clone();
    request["tool_choice"] = json!("auto");
    let (status, body) = chat(&fleet, &request).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_mock1");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris", "days": 3}));

    let mut streamed = ask("fleet", true);
    streamed["tools"] = tools.clone();
    let response = post_chat(&fleet, &streamed).await;
    let frames = crate::common::sse_data(&response.text().await.unwrap());
    let mut arguments = String::new();
    let mut id = None;
    let mut finish = None;
    for frame in frames.iter().filter(|f| f.as_str() != "[DONE]") {
        let chunk: Value = serde_json::from_str(frame).unwrap();
        for call in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(call["index"], 0);
            id = id.or(call["id"].as_str().map(str::to_string));
            arguments += call["function"]["arguments"].as_str().unwrap_or_default();
        }
        finish = finish.or(chunk["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_string));
    }
    assert_eq!(id.as_deref(), Some("call_mock1"));
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Paris", "days": 3})
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));

    // The result goes back as a `tool` message; the replica quotes it.
    let mut round = ask("fleet", false);
    round["tools"] = tools;
    round["tool_choice"] = json!("none");
    round["messages"] = json!([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_mock1", "content": "sunny"}
    ]);
    let (status, body) = chat(&fleet, &round).await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.ends_with("tool call_mock1 said sunny"), "{content}");

    // Log probabilities: refused in-process by mistral.rs, answered here.
    let mut with_logprobs = ask("fleet", false);
    with_logprobs["logprobs"] = json!(true);
    with_logprobs["top_logprobs"] = json!(2);
    let (status, body) = chat(&fleet, &with_logprobs).await;
    assert_eq!(status, 200, "{body}");
    let entries = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[1]["token"], " w1");
    assert_eq!(entries[1]["top_logprobs"].as_array().unwrap().len(), 2);
    with_logprobs["stream"] = json!(true);
    let streamed = stream(&fleet, &with_logprobs).await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.content, "[t mock-model] w1 w2");
}
