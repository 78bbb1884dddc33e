//! `/metrics` names every tenant, adapter and replica: a scrape token or a
//! listener of its own keeps it from the public, over real HTTP against the
//! real binary.

use crate::common;

use crate::common::process::{GatewayProcess, free_port};
use crate::common::{client, new_key};

/// Auth on with two tenants, whose ids the exposition would reveal.
fn tenants(metrics: &str) -> String {
    let (_, acme) = new_key();
    let (_, globex) = new_key();
    common::config_text(&format!(
        "[auth]\nenabled = true\n[[tenants]]\nid = \"acme-secret-customer\"\napi_keys = [\"{acme}\"]\n[[tenants]]\nid = \"globex\"\napi_keys = [\"{globex}\"]\n{metrics}"
    ))
}

async fn get(url: String, token: Option<&str>) -> (u16, String) {
    let mut request = client().get(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_the_scrape_token_when_one_is_set() {
    let token = loragate::auth::keys::generate_key();
    let gateway = GatewayProcess::spawn_logged(
        &tenants("[metrics]\nbearer_token_env = \"SCRAPE_TOKEN\"\n"),
        &[("SCRAPE_TOKEN", &token)],
    );
    let (status, body) = get(gateway.url("/metrics"), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("acme-secret-customer"), "{body}");
    let envelope: serde_json::Value = serde_json::from_str(&body).expect("an error envelope");
    assert_eq!(envelope["error"]["code"], "invalid_api_key");
    assert!(
        envelope["error"]["message"]
            .as_str()
            .unwrap()
            .contains("metrics.bearer_token_env")
    );
    for wrong in ["nope", &format!("{token}x"), &token[..token.len() - 1]] {
        let (status, _) = get(gateway.url("/metrics"), Some(wrong)).await;
        assert_eq!(status, 401, "{wrong}");
    }
    let (status, body) = get(gateway.url("/metrics"), Some(&token)).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("tenant=\"acme-secret-customer\""),
        "the scraper sees everything"
    );
    // The probes stay open.
    assert_eq!(get(gateway.url("/health"), None).await.0, 200);
    assert_eq!(get(gateway.url("/ready"), None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_metrics_listener_serves_metrics_alone() {
    let port = free_port();
    let gateway = GatewayProcess::spawn_logged(
        &tenants(&format!("[metrics]\nbind = \"127.0.0.1:{port}\"\n")),
        &[],
    );
    let (status, body) = get(gateway.url("/metrics"), None).await;
    assert_eq!(status, 404, "the public listener has no /metrics: {body}");
    assert!(!body.contains("acme-secret-customer"));
    let envelope: serde_json::Value = serde_json::from_str(&body).expect("an error envelope");
    assert_eq!(envelope["error"]["code"], "unknown_url");
    let metrics_base = format!("http://127.0.0.1:{port}");
    let (status, body) = get(format!("{metrics_base}/metrics"), None).await;
    assert_eq!(status, 200);
    assert!(body.contains("tenant=\"acme-secret-customer\""));
    for path in [
        "/v1/models",
        "/health",
        "/openapi.json",
        "/admin/v1/tenants/globex/usage",
    ] {
        let (status, _) = get(format!("{metrics_base}{path}"), None).await;
        assert_eq!(
            status, 404,
            "the metrics listener serves only /metrics, not {path}"
        );
    }
    assert_eq!(get(gateway.url("/health"), None).await.0, 200);
}
