//! Every failure a client can cause, answered in OpenAI's error envelope with
//! OpenAI's status, over real HTTP.

use crate::common::{MODEL, TestServer, chat_body, client};
use serde_json::{Value, json};

async fn post_raw(server: &TestServer, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.expect("error bodies are JSON"),
    )
}

fn assert_envelope(body: &Value) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "all four fields: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_is_400() {
    let server = TestServer::start();
    let (status, body) = post_raw(&server, "{\"model\": ").await;
    assert_eq!(status, 400);
    assert_envelope(&body);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = post_raw(&server, "").await;
    assert_eq!(status, 400);
    assert_envelope(&body);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_types_name_the_field() {
    let server = TestServer::start();
    let mut request = chat_body("hi", 4);
    request["max_tokens"] = json!("four");
    let (status, body) = post_raw(&server, request.to_string()).await;
    assert_eq!(status, 400);
    assert_envelope(&body);
    assert_eq!(body["error"]["param"], "max_tokens");
    request["max_tokens"] = json!(4);
    request["messages"][0]["role"] = json!("robot");
    let (status, body) = post_raw(&server, request.to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "messages[0].role");
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_values_are_400_with_param() {
    let server = TestServer::start();
    let mut request = chat_body("hi", 4);
    request["temperature"] = json!(7);
    let (status, body) = post_raw(&server, request.to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "temperature");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("between 0 and 2")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_model_is_404_model_not_found() {
    let server = TestServer::start();
    let mut request = chat_body("hi", 4);
    request["model"] = json!("gpt-17");
    let (status, body) = post_raw(&server, request.to_string()).await;
    assert_eq!(status, 404);
    assert_envelope(&body);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");
}

#[tokio::test(flavor = "multi_thread")]
async fn prompt_plus_max_tokens_over_context_is_400() {
    let server = TestServer::start();
    let (status, body) = post_raw(&server, chat_body("hi", 5000).to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    let long_prompt = "x".repeat(2100);
    let (status, body) = post_raw(&server, chat_body(&long_prompt, 1).to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "context_length_exceeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_the_cap_is_413() {
    let server = TestServer::with(&[("server.max_body_bytes", "2048")]);
    let (status, body) = post_raw(&server, chat_body(&"y".repeat(4096), 4).to_string()).await;
    assert_eq!(status, 413);
    assert_envelope(&body);
    // Without a Content-Length the cap still holds while reading.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let (status, _) = post_raw(&server, reqwest::Body::wrap_stream(chunks)).await;
    assert_eq!(status, 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_route_and_wrong_method_use_the_envelope() {
    let server = TestServer::start();
    let response = client()
        .get(server.url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_envelope(&response.json().await.unwrap());
    let response = client()
        .get(server.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_envelope(&body);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let response = client()
        .delete(server.url(&format!("/v1/models/{MODEL}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupported_features_are_refused_clearly() {
    // mistral.rs 0.8.1 cannot give honest log probabilities; the shared-base
    // engine (the default) can.
    let mistral = TestServer::with(&[("model.engine", "mistralrs")]);
    let mut request = chat_body("hi", 4);
    request["logprobs"] = json!(true);
    let (status, body) = post_raw(&mistral, request.to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "logprobs");
    let server = TestServer::start();
    let (status, body) = post_raw(&server, request.to_string()).await;
    assert_eq!(status, 200, "{body}");
    // Each choice is a sequence of its own: in-process, at most 8.
    for n in [0, 9, 129] {
        let mut request = chat_body("hi", 4);
        request["n"] = json!(n);
        let (status, body) = post_raw(&server, request.to_string()).await;
        assert_eq!(status, 400, "n = {n}");
        assert_eq!(body["error"]["param"], "n");
    }
}
