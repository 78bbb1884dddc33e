//! Admission control and client disconnects, observed through the engine's
//! own sampled-token counter.

use crate::common;

use std::io::Write;
use std::time::Duration;

use crate::common::{MODEL, TestServer, chat_body, client, settled_metric};
use futures_util::StreamExt;
use serde_json::json;

fn sampled() -> String {
    format!("loragate_engine_sampled_tokens_total{{model=\"{MODEL}\"}}")
}

fn finished(reason: &str) -> String {
    format!(
        "loragate_requests_finished_total{{model=\"{MODEL}\",reason=\"{reason}\",tenant=\"anonymous\"}}"
    )
}

/// A generation long enough that finishing it would take far longer than
/// the test waits: the whole context.
fn long_request(stream: bool) -> serde_json::Value {
    let mut body = chat_body("Keep going", 2000);
    body["stream"] = json!(stream);
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_stream_stops_generation_in_the_engine() {
    let server = TestServer::start();
    let before = settled_metric(&server, &sampled(), Duration::from_millis(200)).await;
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .json(&long_request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    for _ in 0..3 {
        body.next().await.expect("a frame").expect("readable");
    }
    drop(body);
    let after = settled_metric(&server, &sampled(), Duration::from_millis(500)).await;
    let generated = after - before;
    assert!(
        generated >= 3.0,
        "the engine generated before the disconnect ({generated})"
    );
    assert!(
        generated < 1000.0,
        "generation stopped early instead of running to 2000 tokens ({generated})"
    );
    assert_eq!(
        settled_metric(&server, &finished("cancelled"), Duration::from_millis(100)).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_connection_stops_a_non_streamed_generation() {
    let server = TestServer::start();
    let before = settled_metric(&server, &sampled(), Duration::from_millis(200)).await;
    let body = long_request(false).to_string();
    let mut socket = std::net::TcpStream::connect(server.address()).unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Wait until the engine is visibly generating, then hang up.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::metric(&server, &sampled()).await - before < 5.0
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    socket.shutdown(std::net::Shutdown::Both).unwrap();
    drop(socket);
    let after = settled_metric(&server, &sampled(), Duration::from_millis(500)).await;
    let generated = after - before;
    // Left running, it would sample its whole budget (2000 tokens, less the
    // prompt). The tiny model samples about a thousand tokens while a loaded
    // machine notices the hang-up, so the bound sits well below the budget,
    // not at a fixed time.
    assert!(
        generated < 1800.0,
        "generation ran on after the client left ({generated} of 2000)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn past_capacity_the_gateway_answers_503_with_retry_after() {
    let server = TestServer::with(&[
        ("admission.max_in_flight", "1"),
        ("admission.max_queued", "0"),
    ]);
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .json(&long_request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut held = response.bytes_stream();
    held.next().await.expect("first frame").expect("readable");
    let refused = client()
        .post(server.url("/v1/chat/completions"))
        .json(&chat_body("me too", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "server_overloaded");
    drop(held);
    // The slot comes back once the first client has gone.
    let mut answered = false;
    for _ in 0..100 {
        let retry = client()
            .post(server.url("/v1/chat/completions"))
            .json(&chat_body("again", 2))
            .send()
            .await
            .unwrap();
        if retry.status() == 200 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the freed slot admits the next request");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_request_waits_for_a_free_slot() {
    let server = TestServer::with(&[
        ("admission.max_in_flight", "1"),
        ("admission.max_queued", "4"),
    ]);
    let first = client()
        .post(server.url("/v1/chat/completions"))
        .json(&chat_body("one", 40));
    let second = client()
        .post(server.url("/v1/chat/completions"))
        .json(&chat_body("two", 40));
    let (a, b) = tokio::join!(first.send(), second.send());
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 200);
}
