//! What goes to a replica and what comes back, in OpenAI's chat shape.
//! Parsing is lenient about fields we do not use (replicas add their own)
//! and strict about the ones we do.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::engine::{FinishReason, GenerationRequest, OutputConstraint};

/// The request body for `model` on a replica.
pub fn request_body(request: &GenerationRequest, model: &str) -> Vec<u8> {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
        .collect();
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("messages".into(), messages.into());
    body.insert("stream".into(), request.stream.into());
    if request.stream {
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if request.max_tokens_chosen {
        body.insert("max_tokens".into(), request.max_tokens.into());
    }
    let sampling = &request.sampling;
    let optional = [
        ("temperature", sampling.temperature.map(Value::from)),
        ("top_p", sampling.top_p.map(Value::from)),
        (
            "presence_penalty",
            sampling.presence_penalty.map(Value::from),
        ),
        (
            "frequency_penalty",
            sampling.frequency_penalty.map(Value::from),
        ),
        ("seed", sampling.seed.map(Value::from)),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            body.insert(name.into(), value);
        }
    }
    if !sampling.logit_bias.is_empty() {
        let bias: Map<String, Value> = sampling
            .logit_bias
            .iter()
            .map(|(token, bias)| (token.to_string(), Value::from(*bias)))
            .collect();
        body.insert("logit_bias".into(), bias.into());
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), request.stop.clone().into());
    }
    match &request.constraint {
        OutputConstraint::None => {}
        OutputConstraint::JsonObject => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        OutputConstraint::JsonSchema(schema) => {
            body.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}),
            );
        }
    }
    serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Deserialize)]
pub struct UpstreamError {
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Completion {
    choices: Vec<CompletionChoice>,
    #[serde(default)]
    usage: Option<UpstreamUsage>,
}

#[derive(Debug, Deserialize)]
struct CompletionChoice {
    message: CompletionMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CompletionMessage {
    #[serde(default)]
    content: Option<String>,
}

/// A non-streamed answer, reduced to what the gateway needs.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub text: String,
    pub finish: FinishReason,
    pub usage: Option<UpstreamUsage>,
}

pub fn parse_completion(body: &[u8]) -> Result<Answer, String> {
    let completion: Completion =
        serde_json::from_slice(body).map_err(|e| format!("unreadable completion: {e}"))?;
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or("a completion without choices")?;
    Ok(Answer {
        text: choice.message.content.unwrap_or_default(),
        finish: finish_reason(choice.finish_reason.as_deref()),
        usage: completion.usage,
    })
}

/// Anything but `length` ends the answer normally (`stop`, and the
/// `tool_calls`/`content_filter` some servers send).
fn finish_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<UpstreamUsage>,
    #[serde(default)]
    error: Option<UpstreamError>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
}

/// One `data:` frame of a streamed answer.
#[derive(Debug, Default, PartialEq)]
pub struct Frame {
    pub text: String,
    pub finish: Option<FinishReason>,
    pub usage: Option<UpstreamUsage>,
}

pub fn parse_frame(data: &str) -> Result<Frame, String> {
    let chunk: Chunk =
        serde_json::from_str(data).map_err(|e| format!("unreadable stream frame: {e}"))?;
    if let Some(error) = chunk.error {
        return Err(error
            .message
            .unwrap_or_else(|| "an error frame without a message".into()));
    }
    let mut frame = Frame {
        usage: chunk.usage,
        ..Frame::default()
    };
    if let Some(choice) = chunk.choices.into_iter().next() {
        frame.text = choice.delta.and_then(|d| d.content).unwrap_or_default();
        frame.finish = choice
            .finish_reason
            .as_deref()
            .map(|r| finish_reason(Some(r)));
    }
    Ok(frame)
}

/// The `error.message` of an OpenAI-style error body, if it has one.
pub fn error_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Envelope {
        error: UpstreamError,
    }
    // vLLM answers some failures with FastAPI's `{"detail": ...}` instead.
    #[derive(Deserialize)]
    struct Detail {
        detail: Value,
    }
    // Older vLLM: a flat `{"object":"error","message":...}`.
    #[derive(Deserialize)]
    struct Flat {
        message: String,
    }
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(body) {
        return envelope.error.message;
    }
    if let Ok(flat) = serde_json::from_slice::<Flat>(body) {
        return Some(flat.message);
    }
    serde_json::from_slice::<Detail>(body)
        .ok()
        .map(|d| match d.detail {
            Value::String(text) => text,
            other => other.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{PromptMessage, Role, Sampling};

    fn request(stream: bool) -> GenerationRequest {
        GenerationRequest {
            model: "m".into(),
            messages: vec![PromptMessage {
                role: Role::User,
                content: "hi".into(),
            }],
            sampling: Sampling {
                temperature: Some(0.0),
                logit_bias: [(7, -100.0)].into(),
                ..Sampling::default()
            },
            max_tokens: 12,
            prompt_tokens: 3,
            stop: vec!["END".into()],
            constraint: OutputConstraint::JsonObject,
            max_tokens_chosen: false,
            stream,
            prompt_ids: None,
            claim: Default::default(),
        }
    }

    #[test]
    fn request_carries_every_chosen_parameter_and_asks_for_usage() {
        let body: Value = serde_json::from_slice(&request_body(&request(true), "up")).unwrap();
        assert_eq!(body["model"], "up");
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["logit_bias"]["7"], -100.0);
        assert_eq!(body["stop"][0], "END");
        assert_eq!(body["response_format"]["type"], "json_object");
        // Left to the replica, which knows the real prompt length.
        assert!(body.get("max_tokens").is_none());
        assert!(body.get("top_p").is_none());
        let plain: Value = serde_json::from_slice(&request_body(&request(false), "up")).unwrap();
        assert!(plain.get("stream_options").is_none());
    }

    #[test]
    fn frames_parse_text_finish_usage_and_errors() {
        let frame = parse_frame(r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#);
        assert_eq!(frame.unwrap().text, "Hi");
        let last = parse_frame(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(last.finish, Some(FinishReason::Length));
        let usage = parse_frame(
            r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#,
        )
        .unwrap();
        assert_eq!(
            usage.usage,
            Some(UpstreamUsage {
                prompt_tokens: 4,
                completion_tokens: 2
            })
        );
        assert_eq!(
            parse_frame(r#"{"error":{"message":"boom"}}"#),
            Err("boom".to_string())
        );
        assert!(parse_frame("{not json").is_err());
    }

    #[test]
    fn completions_and_error_bodies_parse() {
        let answer = parse_completion(
            br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert_eq!(answer.text, "ok");
        assert_eq!(answer.usage, None);
        assert!(parse_completion(br#"{"choices":[]}"#).is_err());
        assert!(parse_completion(b"<html>").is_err());
        assert_eq!(
            error_message(br#"{"error":{"message":"bad","type":"x"}}"#),
            Some("bad".into())
        );
        assert_eq!(error_message(br#"{"detail":"nope"}"#), Some("nope".into()));
        assert_eq!(
            error_message(br#"{"object":"error","message":"flat","code":400}"#),
            Some("flat".into())
        );
        assert_eq!(error_message(b"plain"), None);
    }
}
