//! Metric names follow Prometheus conventions and label sets stay bounded
//! whatever clients send.

use crate::common;

use crate::common::{TestServer, chat_body, client};

async fn exposition(server: &TestServer) -> String {
    common::metrics_text(&server.base).await
}

fn series(text: &str) -> usize {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn names_follow_prometheus_conventions() {
    let server = TestServer::start();
    let _ = client()
        .post(server.url("/v1/chat/completions"))
        .json(&chat_body("hi", 2))
        .send()
        .await
        .unwrap();
    let text = exposition(&server).await;
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line["# TYPE ".len()..].split_whitespace();
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            name.starts_with("loragate_") || name.starts_with("process_"),
            "{name}: one prefix"
        );
        match kind {
            "counter" => assert!(name.ends_with("_total"), "{name}: counters end in _total"),
            "histogram" => assert!(
                name.ends_with("_seconds"),
                "{name}: histograms here measure seconds"
            ),
            _ => assert!(
                !name.ends_with("_total"),
                "{name}: only counters end in _total"
            ),
        }
    }
    assert!(text.contains("loragate_build_info{"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_unknown_models_add_no_series() {
    let server = TestServer::start();
    // One request of each kind first, so every series they create exists.
    let mut body = chat_body("hi", 2);
    body["model"] = "warm-up-unknown".into();
    let _ = client()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    // Scraping is itself counted: the first scrape creates the /metrics series.
    let _ = exposition(&server).await;
    let before = exposition(&server).await;
    let requests = (0..1000).map(|i| {
        let mut body = chat_body("hi", 2);
        body["model"] = format!("unknown-model-{i}").into();
        client()
            .post(server.url("/v1/chat/completions"))
            .json(&body)
            .send()
    });
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.unwrap().status(), 404);
    }
    let after = exposition(&server).await;
    let names = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name.to_string()))
            .collect()
    };
    let new: Vec<_> = names(&after).difference(&names(&before)).cloned().collect();
    assert_eq!(
        series(&after),
        series(&before),
        "series count unchanged; new: {new:?}"
    );
    assert!(
        !after.contains("unknown-model-"),
        "client-chosen names never become labels"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outcome_and_token_series_exist_at_zero_before_any_request() {
    let server = TestServer::start();
    let text = exposition(&server).await;
    for series in [
        "loragate_requests_finished_total{model=\"tiny\",reason=\"stop\",tenant=\"anonymous\"} 0",
        "loragate_requests_finished_total{model=\"tiny\",reason=\"error\",tenant=\"anonymous\"} 0",
        "loragate_prompt_tokens_total{model=\"tiny\",tenant=\"anonymous\"} 0",
        "loragate_completion_tokens_total{model=\"tiny\",tenant=\"anonymous\"} 0",
    ] {
        assert!(text.lines().any(|line| line == series), "{series} missing");
    }
}
