//! Tenants over real HTTP: credentials, scopes, model isolation, limits and
//! their headers, usage metering.

use crate::common;

use std::time::Duration;

use crate::common::{MODEL, TestServer, authed, chat_body, client, new_key};
use serde_json::Value;

struct Keys {
    acme: String,
    globex: String,
    admin: String,
}

/// acme may use the tiny model with 3 requests a minute; globex may use only
/// a model that is not served.
fn tenancy(extra_acme_limits: &str) -> (String, Keys) {
    let (acme, acme_hash) = new_key();
    let (globex, globex_hash) = new_key();
    let (admin, admin_hash) = new_key();
    let toml = format!(
        r#"
[auth]
admin_api_keys = ["{admin_hash}"]
[[tenants]]
id = "acme"
api_keys = ["{acme_hash}"]
models = ["{MODEL}"]
[tenants.limits]
{extra_acme_limits}
[[tenants]]
id = "globex"
api_keys = ["{globex_hash}"]
models = ["some-other-model"]
"#
    );
    (
        toml,
        Keys {
            acme,
            globex,
            admin,
        },
    )
}

async fn chat(server: &TestServer, key: &str, max_tokens: usize) -> reqwest::Response {
    authed(client().post(server.url("/v1/chat/completions")), key)
        .json(&chat_body("hello", max_tokens))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_required_and_checked() {
    let (toml, keys) = tenancy("requests_per_minute = 100");
    let server = TestServer::with_toml(&toml, &[]);
    let (status, body) = server
        .post_json("/v1/chat/completions", &chat_body("hi", 2), None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(chat(&server, "lg-not-a-real-key", 2).await.status(), 401);
    let admin_on_inference = chat(&server, &keys.admin, 2).await;
    assert_eq!(admin_on_inference.status(), 403);
    assert_eq!(chat(&server, &keys.acme, 2).await.status(), 200);
    // Probes stay open.
    assert_eq!(
        client()
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let missing = common::metric(&server, "loragate_auth_failures_total{reason=\"missing\"}").await;
    let unknown = common::metric(
        &server,
        "loragate_auth_failures_total{reason=\"unknown_key\"}",
    )
    .await;
    assert_eq!((missing, unknown), (1.0, 1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_sees_and_uses_only_its_models() {
    let (toml, keys) = tenancy("requests_per_minute = 100");
    let server = TestServer::with_toml(&toml, &[]);
    let list = |key: String| {
        let url = server.url("/v1/models");
        async move {
            authed(client().get(url), &key)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(list(keys.acme.clone()).await["data"][0]["id"], MODEL);
    assert_eq!(
        list(keys.globex.clone()).await["data"],
        serde_json::json!([])
    );
    let refused = chat(&server, &keys.globex, 2).await;
    assert_eq!(
        refused.status(),
        404,
        "another tenant's model looks like no model at all"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    let retrieve = authed(
        client().get(server.url(&format!("/v1/models/{MODEL}"))),
        &keys.globex,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(retrieve.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_per_minute_answer_429_with_openai_headers() {
    let (toml, keys) = tenancy("requests_per_minute = 3\ntokens_per_minute = 100000");
    let server = TestServer::with_toml(&toml, &[]);
    let first = chat(&server, &keys.acme, 2).await;
    assert_eq!(first.status(), 200);
    let headers = first.headers();
    assert_eq!(headers["x-ratelimit-limit-requests"], "3");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "2");
    assert_eq!(headers["x-ratelimit-limit-tokens"], "100000");
    assert!(
        headers.contains_key("x-ratelimit-reset-requests")
            && headers.contains_key("x-ratelimit-remaining-tokens")
    );
    assert_eq!(chat(&server, &keys.acme, 2).await.status(), 200);
    assert_eq!(chat(&server, &keys.acme, 2).await.status(), 200);
    let limited = chat(&server, &keys.acme, 2).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.headers()["x-ratelimit-remaining-requests"], "0");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    // globex has no limits and is unaffected by acme's.
    let metric = "loragate_ratelimit_rejections_total{limit=\"requests\",tenant=\"acme\"}";
    assert_eq!(common::metric(&server, metric).await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_larger_than_the_token_limit_is_refused_outright() {
    let (toml, keys) = tenancy("tokens_per_minute = 500");
    let server = TestServer::with_toml(&toml, &[]);
    let refused = chat(&server, &keys.acme, 1000).await;
    assert_eq!(refused.status(), 429);
    assert!(
        !refused.headers().contains_key("retry-after"),
        "waiting would not help"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "tokens");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too large")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_is_metered_and_readable_by_admins_only() {
    let (toml, keys) = tenancy("requests_per_minute = 100");
    let server = TestServer::with_toml(&toml, &[]);
    let completion: Value = chat(&server, &keys.acme, 5).await.json().await.unwrap();
    let prompt = completion["usage"]["prompt_tokens"].as_u64().unwrap();
    let mut body = chat_body("stream me", 7);
    body["stream"] = serde_json::json!(true);
    let streamed = authed(
        client().post(server.url("/v1/chat/completions")),
        &keys.acme,
    )
    .json(&body)
    .send()
    .await
    .unwrap();
    let _ = streamed.text().await.unwrap();
    let url = server.url("/admin/v1/tenants/acme/usage");
    let mut report = Value::Null;
    for _ in 0..50 {
        report = common::get_json(&url, Some(&keys.admin)).await;
        if report["last_hour"]["total"]["requests"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(report["tenant"], "acme");
    let total = &report["last_hour"]["total"];
    assert_eq!(total["requests"], 2);
    assert_eq!(total["completion_tokens"], 12);
    assert!(total["prompt_tokens"].as_u64().unwrap() > prompt);
    assert_eq!(report["last_hour"]["models"][MODEL]["requests"], 2);
    assert_eq!(report["today"]["total"], report["last_hour"]["total"]);
    let as_tenant = authed(client().get(&url), &keys.acme).send().await.unwrap();
    assert_eq!(as_tenant.status(), 403);
    let unknown = authed(
        client().get(server.url("/admin/v1/tenants/nobody/usage")),
        &keys.admin,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
}
