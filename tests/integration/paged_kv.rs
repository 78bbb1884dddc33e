//! The shared-base engine with paged KV (`model.paged_attention`), over
//! HTTP on the tiny model: answers equal the contiguous cache's even when a
//! pool too small for the batch forces sequences out to be recomputed, and
//! every block comes back when requests finish or their clients leave.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::common::{self, MODEL, TestServer, chat_body, client};

const PREEMPTIONS: &str = "loragate_engine_kv_preemptions_total";
const FREE_BLOCKS: &str = "loragate_engine_kv_blocks_free";

/// A pool of `blocks` blocks of 8 tokens.
fn paged(blocks: usize) -> TestServer {
    let tokens = (blocks * 8).to_string();
    TestServer::with(&[
        ("adapters.max_resident", "16"),
        ("model.paged_attention.enabled", "true"),
        ("model.paged_attention.block_size", "8"),
        ("model.paged_attention.context_tokens", &tokens),
    ])
}

/// The free-block gauge once it reads `expected` (or what it reads after
/// 30 s).
async fn free_blocks_reach(server: &TestServer, expected: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = common::metric(server, FREE_BLOCKS).await;
        if now == expected || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn content(answer: &Value) -> String {
    answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn answers(server: &TestServer, models: &[String], together: bool) -> Vec<String> {
    let body = |model: &str| {
        let mut body = chat_body("Tell me something long", 48);
        body["model"] = json!(model);
        body
    };
    if !together {
        let mut alone = Vec::new();
        for model in models {
            alone.push(content(&server.chat_ok(&body(model)).await));
        }
        return alone;
    }
    futures_util::future::join_all(models.iter().map(|model| {
        let body = body(model);
        async move { content(&server.chat_ok(&body).await) }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn paged_answers_equal_contiguous_ones_through_preemption() {
    let contiguous = TestServer::with(&[("adapters.max_resident", "16")]);
    // 40 blocks of 8: about four of the nine sequences' whole budgets.
    let small_pool = paged(40);
    let mut models = vec![MODEL.to_string()];
    for index in 0..8u64 {
        let name = format!("p{index}");
        for server in [&contiguous, &small_pool] {
            let adapter = common::tiny_adapter(300 + index);
            common::upload_adapter(server, None, "anonymous", &name, adapter.path()).await;
        }
        models.push(name);
    }
    let expected = answers(&contiguous, &models, false).await;
    let distinct: std::collections::HashSet<&String> = expected.iter().collect();
    assert!(
        distinct.len() >= 5,
        "the adapters answer differently: {expected:?}"
    );
    assert_eq!(answers(&small_pool, &models, false).await, expected);
    assert_eq!(
        common::metric(&small_pool, PREEMPTIONS).await,
        0.0,
        "one at a time, every sequence fits"
    );
    assert_eq!(answers(&small_pool, &models, true).await, expected);
    let preempted = common::metric(&small_pool, PREEMPTIONS).await;
    assert!(
        preempted >= 1.0,
        "nine growing sequences in 40 blocks must preempt ({preempted})"
    );
    assert_eq!(
        free_blocks_reach(&small_pool, 40.0).await,
        40.0,
        "every block is back once the requests are done"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_gives_its_blocks_back() {
    let server = paged(64);
    let mut body = chat_body("Keep going", 400);
    body["stream"] = json!(true);
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut frames = response.bytes_stream();
    for _ in 0..4 {
        frames.next().await.expect("a frame").expect("readable");
    }
    let held = common::metric(&server, FREE_BLOCKS).await;
    assert!(held < 64.0, "a running stream holds blocks ({held} free)");
    drop(frames);
    assert_eq!(free_blocks_reach(&server, 64.0).await, 64.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_larger_than_the_whole_pool_is_refused() {
    let server = paged(8);
    let (status, answer) = server
        .post_json("/v1/chat/completions", &chat_body("Hello", 100), None)
        .await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("64"), "names the pool's size: {message}");
    // A request that fits is served by the same engine.
    let (status, _) = server
        .post_json("/v1/chat/completions", &chat_body("Hello", 8), None)
        .await;
    assert_eq!(status, 200);
}
