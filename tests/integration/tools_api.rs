//! Tool calls and the Responses API over real HTTP, on the tiny fixture
//! model (random weights, a ChatML template without tools): forced calls
//! must still come out valid, because constrained decoding writes them.

use crate::common::{MODEL, TestServer, chat_body, client, sse_data};
use serde_json::{Value, json};

fn weather_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7}
                },
                "required": ["city", "days"],
                "additionalProperties": false
            }
        }
    })
}

fn time_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                "required": ["zone"],
                "additionalProperties": false
            }
        }
    })
}

/// The arguments hold exactly the schema's keys, of its types and bounds.
fn assert_valid_arguments(name: &str, arguments: &str) {
    let arguments: Value = serde_json::from_str(arguments)
        .unwrap_or_else(|e| panic!("arguments {arguments:?} are not JSON: {e}"));
    let object = arguments.as_object().expect("an object");
    match name {
        "get_weather" => {
            assert_eq!(object.len(), 2, "{arguments}");
            let city = object["city"].as_str().expect("city is a string");
            assert!(["Paris", "Tokyo", "Lima"].contains(&city), "{city}");
            let days = object["days"].as_i64().expect("days is an integer");
            assert!((1..=7).contains(&days), "{days}");
        }
        "get_time" => {
            assert_eq!(object.len(), 1, "{arguments}");
            assert!(["UTC", "CET"].contains(&object["zone"].as_str().unwrap()));
        }
        other => panic!("unexpected function {other}"),
    }
}

fn body(tool_choice: Value, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [weather_tool(), time_tool()],
        "tool_choice": tool_choice,
        "max_tokens": 96,
        "temperature": 0,
        "stream": stream,
    })
}

async fn post(server: &TestServer, path: &str, body: &Value) -> (u16, String) {
    let response = client()
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn post_json(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = post(server, path, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Joins streamed `delta.tool_calls` the way the SDKs' stream helpers do:
/// by `index`, the first piece bringing id, type and name.
fn assemble(frames: &[String]) -> (Vec<(String, String, String)>, String, Option<String>) {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut content = String::new();
    let mut finish = None;
    for frame in frames.iter().filter(|f| f.as_str() != "[DONE]") {
        let chunk: Value = serde_json::from_str(frame).unwrap();
        let choice = &chunk["choices"][0];
        if let Some(text) = choice["delta"]["content"].as_str() {
            content.push_str(text);
        }
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().unwrap() as usize;
            if index == calls.len() {
                assert_eq!(call["type"], "function", "the first piece has the type");
                calls.push((
                    call["id"]
                        .as_str()
                        .expect("the first piece has the id")
                        .into(),
                    call["function"]["name"]
                        .as_str()
                        .expect("and the name")
                        .into(),
                    String::new(),
                ));
            } else {
                assert!(
                    call.get("id").is_none(),
                    "later pieces carry only arguments"
                );
            }
            calls[index].2 += call["function"]["arguments"].as_str().unwrap();
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = Some(reason.to_string());
        }
    }
    (calls, content, finish)
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_calls_validate_against_the_schema() {
    let server = TestServer::start();
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    for choice in [named, json!("required")] {
        let (status, completion) = post_json(
            &server,
            "/v1/chat/completions",
            &body(choice.clone(), false),
        )
        .await;
        assert_eq!(status, 200, "{completion}");
        let message = &completion["choices"][0]["message"];
        assert_eq!(
            completion["choices"][0]["finish_reason"], "tool_calls",
            "{completion}"
        );
        assert!(message["content"].is_null(), "{message}");
        let calls = message["tool_calls"].as_array().expect("tool_calls");
        assert_eq!(calls.len(), 1);
        let call = &calls[0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["type"], "function");
        let name = call["function"]["name"].as_str().unwrap();
        if choice.is_object() {
            assert_eq!(name, "get_weather");
        }
        assert_valid_arguments(name, call["function"]["arguments"].as_str().unwrap());
        assert!(completion["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_calls_stream_as_tool_call_deltas() {
    let server = TestServer::start();
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    for choice in [named, json!("required")] {
        let (status, text) =
            post(&server, "/v1/chat/completions", &body(choice.clone(), true)).await;
        assert_eq!(status, 200, "{text}");
        let frames = sse_data(&text);
        assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
        let (calls, content, finish) = assemble(&frames);
        assert_eq!(finish.as_deref(), Some("tool_calls"));
        assert_eq!(content, "", "a forced call has no content");
        assert_eq!(calls.len(), 1, "{text}");
        let (id, name, arguments) = &calls[0];
        assert!(id.starts_with("call_"));
        if choice.is_object() {
            assert_eq!(name, "get_time");
        }
        assert_valid_arguments(name, arguments);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_round_trip_answers_with_text() {
    let server = TestServer::start();
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let (_, first) = post_json(&server, "/v1/chat/completions", &body(named, false)).await;
    let message = first["choices"][0]["message"].clone();
    let call_id = message["tool_calls"][0]["id"].clone();
    let mut follow_up = body(json!("none"), false);
    follow_up["messages"] = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        message,
        {"role": "tool", "tool_call_id": call_id, "content": "{\"forecast\": \"sunny\"}"}
    ]);
    follow_up["max_tokens"] = json!(8);
    let (status, answer) = post_json(&server, "/v1/chat/completions", &follow_up).await;
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    assert!(choice["message"]["content"].is_string());
    assert!(choice["message"].get("tool_calls").is_none());
    assert_eq!(choice["finish_reason"], "length");
    // The call and its result were rendered: the prompt is longer than the
    // question alone.
    let question = chat_body("What is the weather in Paris?", 1);
    let (_, alone) = post_json(&server, "/v1/chat/completions", &question).await;
    let prompt = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt(&answer) > prompt(&alone) + 20, "{answer} {alone}");
    assert!(
        prompt(&first) > prompt(&alone),
        "the functions were described"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_on_a_template_without_tools_is_refused_by_name() {
    let server = TestServer::start();
    for choice in [json!("auto"), Value::Null] {
        let mut request = body(choice, false);
        if request["tool_choice"].is_null() {
            request.as_object_mut().unwrap().remove("tool_choice");
        }
        let (status, error) = post_json(&server, "/v1/chat/completions", &request).await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["param"], "tool_choice");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("chat template declares no tool-call format"),
            "{message}"
        );
    }
    let unknown = json!({"type": "function", "function": {"name": "nope"}});
    let (status, error) = post_json(&server, "/v1/chat/completions", &body(unknown, false)).await;
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("tool_choice"))
    );
}

/// The JSON of each event of a Responses stream, checking that its
/// `event:` line names its `type`.
fn events_of(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter(|frame| !frame.trim().is_empty())
        .map(|frame| {
            let mut lines = frame.lines();
            let kind = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .expect("an event line");
            let data = lines
                .next()
                .and_then(|l| l.strip_prefix("data: "))
                .expect("a data line");
            let event: Value = serde_json::from_str(data).unwrap();
            assert_eq!(event["type"], kind);
            event
        })
        .collect()
}

fn response_body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "instructions": "Answer briefly.",
        "input": "Say something.",
        "max_output_tokens": 10,
        "temperature": 0,
        "stream": stream,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_created_with_usage() {
    let server = TestServer::start();
    let (status, response) = post_json(&server, "/v1/responses", &response_body(false)).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["object"], "response");
    assert!(response["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(response["model"], MODEL);
    assert_eq!(
        response["status"], "incomplete",
        "10 tokens cut the answer off"
    );
    assert_eq!(
        response["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    let item = &response["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["content"][0]["type"], "output_text");
    let usage = &response["usage"];
    assert_eq!(usage["output_tokens"], 10);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["input_tokens"].as_u64().unwrap() + 10
    );

    let (status, text) = post(&server, "/v1/responses", &response_body(true)).await;
    assert_eq!(status, 200, "{text}");
    let events = events_of(&text);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        kinds[kinds.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.incomplete"
        ]
    );
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], n as u64);
    }
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    let done = events
        .iter()
        .find(|e| e["type"] == "response.output_text.done")
        .unwrap();
    assert_eq!(done["text"], deltas);
    let last = &events.last().unwrap()["response"];
    assert_eq!(last["usage"]["output_tokens"], 10);
    assert_eq!(last["output"][0]["content"][0]["text"], deltas);
    // Same request, greedy: the same text as the non-streamed one.
    assert_eq!(response["output"][0]["content"][0]["text"], deltas);
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_function_calls_are_output_items() {
    let server = TestServer::start();
    let tool = weather_tool()["function"].clone();
    let mut function = tool.as_object().unwrap().clone();
    function.insert("type".into(), "function".into());
    let request = json!({
        "model": MODEL,
        "input": [{"role": "user", "content": "Weather in Lima?"}],
        "tools": [function],
        "tool_choice": "required",
        "max_output_tokens": 96,
        "temperature": 0,
    });
    let (status, response) = post_json(&server, "/v1/responses", &request).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["status"], "completed");
    let item = &response["output"][0];
    assert_eq!(item["type"], "function_call", "{response}");
    assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
    assert_valid_arguments("get_weather", item["arguments"].as_str().unwrap());

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let (_, text) = post(&server, "/v1/responses", &streamed).await;
    let events = events_of(&text);
    let arguments: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_valid_arguments("get_weather", &arguments);
    let done = events
        .iter()
        .find(|e| e["type"] == "response.output_item.done")
        .unwrap();
    assert_eq!(done["item"]["arguments"], arguments);
    assert_eq!(events.last().unwrap()["type"], "response.completed");

    // The call and its output sent back as items.
    let follow_up = json!({
        "model": MODEL,
        "input": [
            {"role": "user", "content": "Weather in Lima?"},
            item,
            {"type": "function_call_output", "call_id": item["call_id"], "output": "sunny"}
        ],
        "max_output_tokens": 4,
    });
    let (status, answer) = post_json(&server, "/v1/responses", &follow_up).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["output"][0]["type"], "message");
}

#[tokio::test(flavor = "multi_thread")]
async fn stateless_responses_refuse_storage_with_the_envelope() {
    let server = TestServer::start();
    for (field, value) in [
        ("store", json!(true)),
        ("previous_response_id", json!("resp_123")),
    ] {
        let mut request = response_body(false);
        request[field] = value;
        let (status, error) = post_json(&server, "/v1/responses", &request).await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["param"], field);
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("keeps no responses")
        );
    }
}

/// A Hermes-style template: the tools in a system turn, calls as
/// `<tool_call>` blocks, results under their own role.
const HERMES_TEMPLATE: &str = "{% if tools %}<|im_start|>system\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}Call a function as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>.<|im_end|>\n{% endif %}{% for message in messages %}<|im_start|>{{ message.role }}\n{% if message.content %}{{ message.content }}{% endif %}{% if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>{{ call.function | tojson }}</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[tokio::test(flavor = "multi_thread")]
async fn a_template_with_tools_renders_them_and_lets_the_model_choose() {
    let dir = tempfile::tempdir().unwrap();
    loragate::fixture::write_tiny_llama(dir.path(), loragate::fixture::DEFAULT_SEED).unwrap();
    let config_path = dir.path().join("tokenizer_config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["chat_template"] = json!(HERMES_TEMPLATE);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let server = TestServer::with(&[("model.path", dir.path().to_str().unwrap())]);

    // `auto` is served: the random model writes text, not a call.
    let (status, auto) =
        post_json(&server, "/v1/chat/completions", &body(json!("auto"), false)).await;
    assert_eq!(status, 200, "{auto}");
    assert!(auto["choices"][0]["message"]["content"].is_string());
    // The tools went through the template, schemas and all.
    let mut without = body(json!("auto"), false);
    without.as_object_mut().unwrap().remove("tools");
    without.as_object_mut().unwrap().remove("tool_choice");
    let (_, plain) = post_json(&server, "/v1/chat/completions", &without).await;
    let prompt = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    let schemas = weather_tool().to_string().len() + time_tool().to_string().len();
    assert!(
        prompt(&auto) > prompt(&plain) + schemas as u64 / 2,
        "{auto} {plain}"
    );

    // Forced calls are constrained here too, and their result goes back
    // under the template's own `tool` role.
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let (_, first) = post_json(&server, "/v1/chat/completions", &body(named, false)).await;
    let message = first["choices"][0]["message"].clone();
    assert_valid_arguments(
        "get_weather",
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    );
    let mut follow_up = body(json!("none"), false);
    follow_up["messages"] = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        message,
        {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "sunny"}
    ]);
    follow_up["max_tokens"] = json!(4);
    let (status, answer) = post_json(&server, "/v1/chat/completions", &follow_up).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        prompt(&answer) > prompt(&first),
        "the call and its result are in the prompt"
    );
}
