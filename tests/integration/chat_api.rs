//! The chat and models routes over real HTTP, on the tiny fixture model.

use crate::common;

use crate::common::{MODEL, TestServer, chat_body, client, sse_data};
use serde_json::{Value, json};

async fn stream(server: &TestServer, body: &Value) -> (reqwest::header::HeaderMap, Vec<String>) {
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    (headers, sse_data(&response.text().await.unwrap()))
}

fn content(completion: &Value) -> String {
    completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

fn streamed_text(frames: &[String]) -> String {
    frames
        .iter()
        .filter(|frame| frame.as_str() != "[DONE]")
        .filter_map(|frame| serde_json::from_str::<Value>(frame).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn non_streaming_completion_has_openai_shape() {
    let server = TestServer::start();
    let completion = server.chat_ok(&chat_body("Hello there", 12)).await;
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(
        completion["model"], MODEL,
        "the response names the requested model, not a path"
    );
    assert!(completion["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &completion["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "length");
    let usage = &completion["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    // ChatML wrapping of one user turn plus the assistant header, byte tokens.
    let prompt = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n";
    let expected_prompt_tokens =
        prompt.len() - 2 * ("<|im_start|>".len() - 1) - ("<|im_end|>".len() - 1);
    assert_eq!(usage["prompt_tokens"], expected_prompt_tokens);
    assert_eq!(usage["total_tokens"], expected_prompt_tokens + 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn greedy_decoding_is_deterministic() {
    let server = TestServer::start();
    let body = chat_body("Tell me a story", 24);
    let first = content(&server.chat_ok(&body).await);
    let second = content(&server.chat_ok(&body).await);
    assert!(!first.is_empty());
    assert_eq!(first, second);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_matches_the_non_streamed_text_and_ends_with_done() {
    let server = TestServer::start();
    let mut body = chat_body("Stream this please", 16);
    let expected = content(&server.chat_ok(&body).await);
    body["stream"] = json!(true);
    let (headers, frames) = stream(&server, &body).await;
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], MODEL);
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert!(
            chunk.get("usage").is_none(),
            "usage is omitted unless asked for"
        );
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(streamed_text(&frames), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn include_usage_adds_a_final_usage_chunk() {
    let server = TestServer::start();
    let mut body = chat_body("Count me", 9);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (_, frames) = stream(&server, &body).await;
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    let (usage_chunk, content_chunks) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 9);
    let prompt_tokens = usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);
    assert_eq!(usage_chunk["usage"]["total_tokens"], prompt_tokens + 9);
    for chunk in content_chunks {
        assert!(chunk["usage"].is_null(), "earlier chunks carry usage: null");
    }
}

/// With `n`, each choice opens with its role chunk and ends with its own
/// finishing chunk; the usage chunk counts the prompt once and every choice.
#[tokio::test(flavor = "multi_thread")]
async fn several_choices_stream_by_index_with_one_usage_chunk() {
    let server = TestServer::start();
    let mut body = chat_body("Count me", 6);
    body["n"] = json!(2);
    let whole = server.chat_ok(&body).await;
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let streamed = common::streamed_choices(&response.text().await.unwrap());
    assert_eq!(streamed.roles, [0, 1]);
    for index in 0..2u64 {
        let choice = &whole["choices"][index as usize];
        assert_eq!(choice["index"], index);
        // Greedy: the same text whether streamed or not, in every choice.
        assert_eq!(streamed.content[&index], content(&whole));
        assert_eq!(
            streamed.finish[&index],
            choice["finish_reason"].as_str().unwrap()
        );
    }
    let usage = streamed.usage.unwrap();
    assert_eq!(usage, whole["usage"]);
    let one = server.chat_ok(&chat_body("Count me", 6)).await;
    assert_eq!(usage["prompt_tokens"], one["usage"]["prompt_tokens"]);
    assert_eq!(
        usage["completion_tokens"].as_u64(),
        one["usage"]["completion_tokens"].as_u64().map(|n| 2 * n)
    );
}

/// mistral.rs runs the choices as sequences of one cache size, side by
/// side (greedy: the same text in each).
#[tokio::test(flavor = "multi_thread")]
async fn several_choices_on_mistralrs() {
    let server = TestServer::with(&[("model.engine", "mistralrs")]);
    let mut body = chat_body("Count me", 5);
    body["n"] = json!(3);
    let whole = server.chat_ok(&body).await;
    let one = server.chat_ok(&chat_body("Count me", 5)).await;
    let choices = whole["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index);
        assert_eq!(choice["message"], one["choices"][0]["message"]);
    }
    assert_eq!(
        whole["usage"]["completion_tokens"].as_u64(),
        one["usage"]["completion_tokens"].as_u64().map(|n| 3 * n)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn leading_space_of_the_first_token_is_kept() {
    let server = TestServer::start();
    let space = loragate::fixture::byte_token_id(b' ');
    let mut body = chat_body("Say spaces", 3);
    body["logit_bias"] = json!({ space.to_string(): 100 });
    let text = content(&server.chat_ok(&body).await);
    assert_eq!(text, "   ", "three space tokens, none trimmed");
    body["stream"] = json!(true);
    let (_, frames) = stream(&server, &body).await;
    let first_content = frames
        .iter()
        .filter_map(|f| serde_json::from_str::<Value>(f).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .find(|c| !c.is_empty())
        .unwrap();
    assert!(
        first_content.starts_with(' '),
        "first streamed chunk keeps its leading space"
    );
    assert_eq!(streamed_text(&frames), "   ");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_sequences_cut_the_text_in_both_modes() {
    let server = TestServer::start();
    let body = chat_body("Give me text", 40);
    let full = content(&server.chat_ok(&body).await);
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 10, "need some text to cut: {full:?}");
    let stop: String = chars[6..9].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];
    let mut stopped = body.clone();
    stopped["stop"] = json!([stop]);
    let completion = server.chat_ok(&stopped).await;
    assert_eq!(content(&completion), expected);
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    stopped["stream"] = json!(true);
    let (_, frames) = stream(&server, &stopped).await;
    assert_eq!(streamed_text(&frames), expected);
    let last: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_parameters_are_accepted() {
    let server = TestServer::start();
    let mut body = chat_body("Be creative", 8);
    body["temperature"] = json!(0.9);
    body["top_p"] = json!(0.8);
    body["presence_penalty"] = json!(0.5);
    body["frequency_penalty"] = json!(0.5);
    body["seed"] = json!(42);
    body["user"] = json!("someone");
    body["n"] = json!(1);
    body["max_completion_tokens"] = json!(5);
    let completion = server.chat_ok(&body).await;
    assert_eq!(completion["usage"]["completion_tokens"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn models_are_listed_and_retrievable() {
    let server = TestServer::start();
    let list: Value = common::get_json(server.url("/v1/models"), None).await;
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], MODEL);
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["max_model_len"], 2048);
    let one = client()
        .get(server.url(&format!("/v1/models/{MODEL}")))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let missing = client()
        .get(server.url("/v1/models/org/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_docs_and_request_ids() {
    let server = TestServer::start();
    let health = client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("x-request-id"));
    let ready = client().get(server.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let echoed = client()
        .get(server.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");
    let docs = client().get(server.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("/v1/chat/completions"));
    let spec: Value = common::get_json(server.url("/openapi.json"), None).await;
    assert!(spec["paths"]["/v1/chat/completions"]["post"].is_object());
}
