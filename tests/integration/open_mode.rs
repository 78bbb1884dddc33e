//! A gateway without authentication (every caller is an admin) refuses what
//! a foreign web page or a foreign network could send it, over real HTTP;
//! and start-up refuses open mode off loopback and placeholder secrets.

use std::path::Path;
use std::process::Command;

use crate::common::{MODEL, TestServer, chat_body, client, tiny_adapter, tiny_model_dir};
use serde_json::Value;

/// Open mode exactly as an operator would write it: no admin opening.
const OPEN: &str = "[auth]\nenabled = false\n";

async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A 4xx in OpenAI's envelope, with all four fields, and this code.
fn assert_envelope(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(body["error"]["message"].as_str().is_some(), "{body}");
    assert!(body["error"].get("param").is_some(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_is_refused_in_open_mode() {
    let server = TestServer::with_toml(OPEN, &[]);
    // DNS rebinding: a foreign name resolved to 127.0.0.1 keeps its own Host.
    for host in ["evil.example", "evil.example:8080", "10.0.0.5:8080"] {
        let (status, body) =
            answer(client().get(server.url("/v1/models")).header("host", host)).await;
        assert_eq!(status, 403, "{host}: {body}");
        assert_envelope(&body, "forbidden_host");
        assert!(body["error"]["message"].as_str().unwrap().contains(host));
    }
    let (status, body) = answer(
        client()
            .post(server.url("/v1/chat/completions"))
            .header("host", "evil.example")
            .json(&chat_body("hi", 1)),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_envelope(&body, "forbidden_host");
    let port = server.address().rsplit(':').next().unwrap().to_string();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".into(),
    ] {
        let (status, _) =
            answer(client().get(server.url("/v1/models")).header("host", &host)).await;
        assert_eq!(status, 200, "{host} is this machine");
    }
    // Probes carry no data and come from orchestrators addressing the pod.
    let (status, _) = answer(
        client()
            .get(server.url("/health"))
            .header("host", "10.0.0.5:8080"),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused_in_open_mode() {
    // Admin routes opened, so only the Origin rule can refuse the upload.
    let server = TestServer::with_toml("[auth]\nenabled = false\nallow_open_admin = true\n", &[]);
    // A cross-site form post: text/plain needs no CORS preflight.
    let form_post = client()
        .post(server.url("/v1/chat/completions"))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(chat_body("hi", 1).to_string());
    let (status, body) = answer(form_post).await;
    assert_eq!(status, 403, "{body}");
    assert_envelope(&body, "forbidden_origin");
    let (status, body) = answer(
        client()
            .post(server.url("/v1/chat/completions"))
            .header("origin", "null")
            .json(&chat_body("hi", 1)),
    )
    .await;
    assert_eq!(status, 403, "sandboxed pages send `null`: {body}");

    let adapter = tiny_adapter(7);
    let upload = |origin: Option<&str>| {
        let part = |file: &str| {
            reqwest::multipart::Part::bytes(std::fs::read(adapter.path().join(file)).unwrap())
                .file_name(file.to_string())
        };
        let form = reqwest::multipart::Form::new()
            .text("name", "bot")
            .part("adapter_config", part("adapter_config.json"))
            .part("adapter_model", part("adapter_model.safetensors"));
        let mut request = client()
            .post(server.url("/admin/v1/tenants/anonymous/adapters"))
            .multipart(form);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request
    };
    let (status, body) = answer(upload(Some("https://evil.example"))).await;
    assert_eq!(status, 403, "{body}");
    assert_envelope(&body, "forbidden_origin");
    let (status, body) = answer(upload(None)).await;
    assert_eq!(
        status, 201,
        "the same upload without a foreign Origin: {body}"
    );

    let (status, body) = answer(
        client()
            .post(server.url("/v1/chat/completions"))
            .header("origin", "http://localhost:3000")
            .json(&chat_body("hi", 1)),
    )
    .await;
    assert_eq!(status, 200, "a page served from this machine: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_routes_need_a_json_content_type() {
    let server = TestServer::with_toml(OPEN, &[]);
    let body = chat_body("hi", 1).to_string();
    let post = |content_type: Option<&str>| {
        let mut request = client()
            .post(server.url("/v1/chat/completions"))
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request
    };
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/json; charset=latin1"),
        None,
    ] {
        let (status, answer_body) = answer(post(content_type)).await;
        assert_eq!(status, 415, "{content_type:?}: {answer_body}");
        assert_envelope(&answer_body, "unsupported_media_type");
    }
    // What the official SDKs send, and its spellings.
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
    ] {
        let (status, answer_body) = answer(post(Some(content_type))).await;
        assert_eq!(status, 200, "{content_type}: {answer_body}");
        assert_eq!(answer_body["model"], MODEL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_are_closed_in_open_mode() {
    let server = TestServer::with_toml(OPEN, &[]);
    let (status, body) =
        answer(client().get(server.url("/admin/v1/tenants/anonymous/usage"))).await;
    assert_eq!(status, 403, "{body}");
    assert_envelope(&body, "admin_disabled");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("auth.enabled") && message.contains("auth.allow_open_admin"),
        "says how to open them: {message}"
    );
    let (status, body) = answer(
        client()
            .delete(server.url("/admin/v1/tenants/anonymous/adapters/bot"))
            .header("authorization", "Bearer anything"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Inference stays open.
    let (status, _) = answer(
        client()
            .post(server.url("/v1/chat/completions"))
            .json(&chat_body("hi", 1)),
    )
    .await;
    assert_eq!(status, 200);
}

/// `loragate check-config` on `text` with `environment`: (success, stderr).
fn check_config(text: &str, environment: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_loragate"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("LORAGATE__SERVER__BIND")
        .envs(environment.iter().copied())
        .output()
        .expect("runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn config_with(server: &str, auth: &str) -> String {
    format!(
        "[server]\n{server}\n[model]\nserved_name = \"{MODEL}\"\npath = \"{}\"\nformat = \"safetensors\"\n{auth}",
        tiny_model_dir().display()
    )
}

#[test]
fn open_mode_on_a_public_bind_is_refused_at_start_up() {
    for bind in ["0.0.0.0:8080", "[::]:8080", "10.0.0.5:8080"] {
        let (ok, stderr) = check_config(&config_with(&format!("bind = \"{bind}\""), OPEN), &[]);
        assert!(!ok, "{bind} with authentication off must not start");
        assert!(
            stderr.contains("auth.allow_open_on_public_bind"),
            "{stderr}"
        );
        assert!(stderr.contains(bind), "names the address: {stderr}");
    }
    for (server, auth) in [
        ("bind = \"127.0.0.1:8080\"", OPEN),
        ("bind = \"[::1]:8080\"", OPEN),
        (
            "bind = \"0.0.0.0:8080\"",
            "[auth]\nenabled = false\nallow_open_on_public_bind = true\n",
        ),
        ("bind = \"0.0.0.0:8080\"", "[auth]\nenabled = true\n"),
    ] {
        let (ok, stderr) = check_config(&config_with(server, auth), &[]);
        assert!(ok, "{server} {auth}: {stderr}");
    }
}

/// A value from deploy/kubernetes/base/secret.yaml (`KEY: "value"`).
fn shipped_secret(key: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/base/secret.yaml");
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{key}:")))
        .map(|value| value.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("{key} in secret.yaml"))
}

#[test]
fn placeholder_secrets_are_refused_at_start_up() {
    let jwt = "[auth]\nenabled = true\n[auth.jwt]\nalgorithms = [\"HS256\"]\nhs256_secret_env = \"LORAGATE_JWT_SECRET\"\nissuer = \"i\"\naudience = \"a\"\n";
    let config = config_with("bind = \"127.0.0.1:8080\"", jwt);
    let placeholders = [
        shipped_secret("LORAGATE_JWT_SECRET"),
        // What the Secret shipped before: a JWT signed with it got admin.
        "REPLACE-ME-with-at-least-32-random-bytes-0000".to_string(),
        "please-change-me-before-you-deploy-this-gateway".to_string(),
        "x".repeat(48),
    ];
    for secret in &placeholders {
        let (ok, stderr) = check_config(&config, &[("LORAGATE_JWT_SECRET", secret)]);
        assert!(!ok, "{secret} must be refused");
        assert!(
            stderr.contains("auth.jwt.hs256_secret_env") && stderr.contains("LORAGATE_JWT_SECRET"),
            "names the key and the variable: {stderr}"
        );
        assert!(
            !stderr.contains(secret.as_str()),
            "never prints the secret: {stderr}"
        );
    }
    let random = loragate::auth::keys::generate_key();
    let (ok, stderr) = check_config(&config, &[("LORAGATE_JWT_SECRET", &random)]);
    assert!(ok, "a random secret is accepted: {stderr}");

    let metrics = format!(
        "{}[metrics]\nbearer_token_env = \"LORAGATE_METRICS_TOKEN\"\n",
        config_with("bind = \"127.0.0.1:8080\"", "")
    );
    let (ok, stderr) = check_config(
        &metrics,
        &[(
            "LORAGATE_METRICS_TOKEN",
            &shipped_secret("LORAGATE_METRICS_TOKEN"),
        )],
    );
    assert!(!ok);
    assert!(stderr.contains("metrics.bearer_token_env"), "{stderr}");
    let (ok, stderr) = check_config(&metrics, &[("LORAGATE_METRICS_TOKEN", &random)]);
    assert!(ok, "{stderr}");
}
