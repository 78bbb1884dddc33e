//! A stand-in OpenAI-compatible replica for the upstream tests and the
//! gateway-overhead benchmark: fixed small answers, optionally late, failing
//! or malformed on purpose, plus vLLM's adapter registration endpoints.
//! Every answer names the replica and the model it was asked for, so a test
//! can see where a request went. Given `tools`, it calls the first (or the
//! named) function; given `logprobs`, it reports them for every word; an
//! answer after a `tool` message quotes that message; given `n`, it answers
//! that many choices, each after the first naming its index (`#1`, ...).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[derive(Parser, Debug, Clone)]
struct Options {
    #[arg(long, default_value = "127.0.0.1:8000")]
    bind: String,
    /// Named in every answer.
    #[arg(long, default_value = "mock")]
    name: String,
    /// The base model served without registration.
    #[arg(long, default_value = "mock-model")]
    model: String,
    /// Content chunks per answer (the answer's completion tokens).
    #[arg(long, default_value_t = 8)]
    tokens: usize,
    /// Wait before answering a chat request.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Wait between the frames of a streamed answer.
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
    /// Answer chat requests with this HTTP status and an OpenAI error body.
    #[arg(long)]
    fail_status: Option<u16>,
    /// The error body's message with `--fail-status` (default: names the replica).
    #[arg(long)]
    fail_message: Option<String>,
    /// Answer chat requests with 200 and a body that is not JSON.
    #[arg(long)]
    malformed: bool,
    /// Leave usage out of answers.
    #[arg(long)]
    no_usage: bool,
    /// End a streamed answer after this many content frames, unfinished.
    #[arg(long)]
    break_after: Option<usize>,
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

struct Mock {
    options: Options,
    registered: Mutex<HashSet<String>>,
}

fn error(status: u16, message: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(
        json!({"error": {"message": message, "type": "mock_error", "param": null, "code": null}}),
    )
}

fn words(mock: &Mock, model: &str) -> Vec<String> {
    let mut words = vec![format!("[{} {}]", mock.options.name, model)];
    words.extend((1..mock.options.tokens).map(|i| format!(" w{i}")));
    words
}

async fn chat(mock: web::Data<Mock>, body: web::Json<Value>) -> HttpResponse {
    let options = &mock.options;
    if options.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(options.delay_ms)).await;
    }
    if let Some(status) = options.fail_status {
        let message = options
            .fail_message
            .clone()
            .unwrap_or_else(|| format!("mock replica {} failing on purpose", options.name));
        return error(status, &message);
    }
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let known = model == options.model
        || mock
            .registered
            .lock()
            .is_ok_and(|registered| registered.contains(&model));
    if !known {
        return error(404, &format!("The model `{model}` does not exist."));
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    if options.malformed {
        let body = if stream {
            "data: {\"choices\": [oops\n\n"
        } else {
            "{\"choices\": [oops"
        };
        return HttpResponse::Ok()
            .content_type(if stream {
                "text/event-stream"
            } else {
                "application/json"
            })
            .body(body);
    }
    let prompt_tokens = body["messages"].as_array().map_or(0, |m| m.len() * 5);
    let mut words = words(&mock, &model);
    let last = body["messages"].as_array().and_then(|m| m.last());
    if let Some(result) = last.filter(|m| m["role"] == "tool") {
        words.push(format!(
            " tool {} said {}",
            result["tool_call_id"].as_str().unwrap_or_default(),
            result["content"].as_str().unwrap_or_default()
        ));
    }
    let choices = body["n"].as_u64().unwrap_or(1).clamp(1, 128) as usize;
    // Choice i > 0 says which it is, so a test can tell the choices apart.
    let words_of = |choice: usize| -> Vec<String> {
        let mut words = words.clone();
        if choice > 0 {
            words[0] = format!("{} #{choice}", words[0]);
        }
        words
    };
    let call = tool_call(&body);
    let call_id = |choice: usize| format!("call_mock{}", choice + 1);
    let logprobs = body["logprobs"].as_bool() == Some(true);
    let top = body["top_logprobs"].as_u64().unwrap_or(0) as usize;
    let logprobs_of = |text: &str| {
        let entry = |rank: usize| json!({"token": text, "logprob": -0.25 * (rank + 1) as f64, "bytes": text.as_bytes()});
        let mut first = entry(0);
        first["top_logprobs"] = (0..top).map(entry).collect();
        json!({"content": [first], "refusal": null})
    };
    let completion_tokens = choices * words.len();
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let id = "chatcmpl-mock";
    if !stream {
        let answers = (0..choices).map(|index| {
            let words = words_of(index);
            let mut choice = json!({"index": index, "message": {"role": "assistant", "content": words.concat()}, "finish_reason": "stop"});
            if logprobs {
                let entries: Vec<Value> = words
                    .iter()
                    .map(|w| logprobs_of(w)["content"][0].clone())
                    .collect();
                choice["logprobs"] = json!({"content": entries, "refusal": null});
            }
            if let Some((name, arguments)) = &call {
                choice["message"]["content"] = Value::Null;
                choice["message"]["tool_calls"] = json!([{"id": call_id(index), "type": "function", "function": {"name": name, "arguments": arguments}}]);
                choice["finish_reason"] = json!("tool_calls");
            }
            choice
        });
        let mut answer = json!({
            "id": id, "object": "chat.completion", "created": 0, "model": model,
            "choices": answers.collect::<Vec<_>>(),
        });
        if !options.no_usage {
            answer["usage"] = usage;
        }
        return HttpResponse::Ok().json(answer);
    }
    let chunk = |index: usize, delta: Value, finish: Value| {
        let chunk = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]});
        format!("data: {chunk}\n\n")
    };
    // Each choice's frames, then interleaved as a real replica sends them.
    let per_choice: Vec<Vec<String>> = (0..choices)
        .map(|index| {
            let mut frames = vec![chunk(
                index,
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )];
            match &call {
                Some((name, arguments)) => {
                    let (head, tail) = arguments.split_at(arguments.len() / 2);
                    frames.push(chunk(
                        index,
                        json!({"tool_calls": [{"index": 0, "id": call_id(index), "type": "function", "function": {"name": name, "arguments": ""}}]}),
                        Value::Null,
                    ));
                    for part in [head, tail] {
                        frames.push(chunk(
                            index,
                            json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                            Value::Null,
                        ));
                    }
                    frames.push(chunk(index, json!({}), json!("tool_calls")));
                }
                None => {
                    for word in words_of(index) {
                        let mut frame = chunk(index, json!({"content": word}), Value::Null);
                        if logprobs {
                            let mut value: Value =
                                serde_json::from_str(frame.trim_start_matches("data: ").trim())
                                    .unwrap_or_default();
                            value["choices"][0]["logprobs"] = logprobs_of(&word);
                            frame = format!("data: {value}\n\n");
                        }
                        frames.push(frame);
                    }
                    frames.push(chunk(index, json!({}), json!("stop")));
                }
            }
            frames
        })
        .collect();
    let longest = per_choice.iter().map(Vec::len).max().unwrap_or(0);
    let mut frames: Vec<String> = (0..longest)
        .flat_map(|at| {
            per_choice
                .iter()
                .filter_map(move |frames| frames.get(at).cloned())
        })
        .collect();
    let wants_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    if wants_usage && !options.no_usage {
        let last = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [], "usage": usage});
        frames.push(format!("data: {last}\n\n"));
    }
    frames.push("data: [DONE]\n\n".into());
    if let Some(content_frames) = options.break_after {
        frames.truncate(1 + content_frames);
    }
    if options.token_delay_ms == 0 {
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .body(frames.concat());
    }
    let pause = Duration::from_millis(options.token_delay_ms);
    let paced = futures_util::stream::iter(frames).then(move |frame| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, actix_web::Error>(actix_web::web::Bytes::from(frame))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(paced)
}

/// The call to answer with when the request offers tools (unless
/// `tool_choice` is `none`): the named function, else the first.
fn tool_call(body: &Value) -> Option<(String, String)> {
    let tools = body["tools"].as_array().filter(|tools| !tools.is_empty())?;
    if body["tool_choice"] == "none" {
        return None;
    }
    let name = body["tool_choice"]["function"]["name"]
        .as_str()
        .or_else(|| tools[0]["function"]["name"].as_str())?;
    Some((
        name.to_string(),
        json!({"city": "Paris", "days": 3}).to_string(),
    ))
}

async fn load_lora(mock: web::Data<Mock>, body: web::Json<Value>) -> HttpResponse {
    let (Some(name), Some(_path)) = (body["lora_name"].as_str(), body["lora_path"].as_str()) else {
        return error(400, "lora_name and lora_path are required");
    };
    let inserted = mock
        .registered
        .lock()
        .is_ok_and(|mut registered| registered.insert(name.to_string()));
    if inserted {
        HttpResponse::Ok().body(format!(
            "Success: LoRA adapter '{name}' added successfully."
        ))
    } else {
        error(
            400,
            &format!("The lora adapter '{name}' has already been loaded."),
        )
    }
}

async fn unload_lora(mock: web::Data<Mock>, body: web::Json<Value>) -> HttpResponse {
    let name = body["lora_name"].as_str().unwrap_or_default().to_string();
    let removed = mock
        .registered
        .lock()
        .is_ok_and(|mut registered| registered.remove(&name));
    if removed {
        HttpResponse::Ok().body(format!(
            "Success: LoRA adapter '{name}' removed successfully."
        ))
    } else {
        error(404, &format!("The lora adapter '{name}' cannot be found."))
    }
}

async fn models(mock: web::Data<Mock>) -> HttpResponse {
    let mut data = vec![json!({"id": mock.options.model, "object": "model"})];
    if let Ok(registered) = mock.registered.lock() {
        data.extend(
            registered
                .iter()
                .map(|name| json!({"id": name, "object": "model"})),
        );
    }
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let options = Options::parse();
    let mock = web::Data::new(Mock {
        options: options.clone(),
        registered: Mutex::new(HashSet::new()),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(mock.clone())
            .app_data(web::JsonConfig::default().limit(16 * 1024 * 1024))
            .route("/v1/chat/completions", web::post().to(chat))
            .route("/v1/load_lora_adapter", web::post().to(load_lora))
            .route("/v1/unload_lora_adapter", web::post().to(unload_lora))
            .route("/v1/models", web::get().to(models))
            .route("/health", web::get().to(HttpResponse::Ok))
    })
    .workers(options.workers.max(1))
    .backlog(4096)
    .bind(&options.bind)?;
    for address in server.addrs() {
        println!("mock-upstream {} listening on {address}", options.name);
    }
    server.run().await
}
