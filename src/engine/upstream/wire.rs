//! What goes to a replica and what comes back, in OpenAI's chat shape.
//! Parsing is lenient about fields we do not use (replicas add their own)
//! and strict about the ones we do.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::engine::{
    FinishReason, InferenceRequest, OutputConstraint, TokenLogprob, ToolCallDelta,
};

/// The request body for `model` on a replica.
pub fn request_body(request: &InferenceRequest, model: &str) -> Vec<u8> {
    let messages: Vec<Value> = request.messages.iter().map(|m| m.to_json()).collect();
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
    if request.choices > 1 {
        body.insert("n".into(), request.choices.into());
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
        ("logprobs", sampling.logprobs.then_some(Value::from(true))),
        (
            "top_logprobs",
            (sampling.top_logprobs > 0).then_some(Value::from(sampling.top_logprobs)),
        ),
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
    for (name, value) in &request.passthrough {
        body.insert(name.clone(), value.clone());
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
    #[serde(default)]
    index: Option<usize>,
    message: CompletionMessage,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Logprobs>,
}

#[derive(Debug, Deserialize)]
struct CompletionMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

/// A call as a replica writes it; in streams every field but `index` may
/// be missing from later pieces.
#[derive(Debug, Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

impl WireToolCall {
    fn delta(self, choice: usize, position: usize) -> ToolCallDelta {
        let (name, arguments) = match self.function {
            Some(function) => (function.name, function.arguments.unwrap_or_default()),
            None => (None, String::new()),
        };
        ToolCallDelta {
            choice,
            index: self.index.unwrap_or(position),
            id: self.id,
            name,
            arguments,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Logprobs {
    #[serde(default)]
    content: Option<Vec<LogprobEntry>>,
}

#[derive(Debug, Deserialize)]
struct LogprobEntry {
    token: String,
    logprob: f32,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
    #[serde(default)]
    top_logprobs: Vec<TopEntry>,
}

#[derive(Debug, Deserialize)]
struct TopEntry {
    token: String,
    logprob: f32,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
}

fn logprobs_of(logprobs: Option<Logprobs>) -> Vec<TokenLogprob> {
    let bytes =
        |token: &str, bytes: Option<Vec<u8>>| bytes.unwrap_or_else(|| token.as_bytes().to_vec());
    logprobs
        .and_then(|l| l.content)
        .unwrap_or_default()
        .into_iter()
        .map(|entry| TokenLogprob {
            bytes: bytes(&entry.token, entry.bytes),
            top: entry
                .top_logprobs
                .into_iter()
                .map(|top| {
                    let b = bytes(&top.token, top.bytes);
                    (top.token, b, top.logprob)
                })
                .collect(),
            token: entry.token,
            logprob: entry.logprob,
        })
        .collect()
}

/// One choice of a non-streamed answer, reduced to what the gateway needs.
#[derive(Debug, PartialEq)]
pub struct ChoiceAnswer {
    pub index: usize,
    pub text: String,
    pub finish: FinishReason,
    /// Whole calls (each delta carries id, name and all the arguments).
    pub tool_calls: Vec<ToolCallDelta>,
    pub logprobs: Vec<TokenLogprob>,
}

/// A non-streamed answer: its choices in the replica's order.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub choices: Vec<ChoiceAnswer>,
    pub usage: Option<UpstreamUsage>,
}

pub fn parse_completion(body: &[u8]) -> Result<Answer, String> {
    let completion: Completion =
        serde_json::from_slice(body).map_err(|e| format!("unreadable completion: {e}"))?;
    if completion.choices.is_empty() {
        return Err("a completion without choices".into());
    }
    let choices = completion
        .choices
        .into_iter()
        .enumerate()
        .map(|(position, choice)| {
            let index = choice.index.unwrap_or(position);
            ChoiceAnswer {
                index,
                text: choice.message.content.unwrap_or_default(),
                finish: finish_reason(choice.finish_reason.as_deref()),
                tool_calls: tool_call_deltas(index, choice.message.tool_calls),
                logprobs: logprobs_of(choice.logprobs),
            }
        })
        .collect();
    Ok(Answer {
        choices,
        usage: completion.usage,
    })
}

fn tool_call_deltas(choice: usize, calls: Option<Vec<WireToolCall>>) -> Vec<ToolCallDelta> {
    calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(position, call)| call.delta(choice, position))
        .collect()
}

/// `length` and `tool_calls` as sent; anything else ends the answer
/// normally (`stop`, and the `content_filter` some servers send).
fn finish_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        Some("tool_calls") => FinishReason::ToolCalls,
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
    index: Option<usize>,
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Logprobs>,
}

#[derive(Debug, Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

/// One choice's part of a streamed frame.
#[derive(Debug, Default, PartialEq)]
pub struct ChoiceFrame {
    pub index: usize,
    pub text: String,
    pub finish: Option<FinishReason>,
    pub tool_calls: Vec<ToolCallDelta>,
    pub logprobs: Vec<TokenLogprob>,
}

/// One `data:` frame of a streamed answer.
#[derive(Debug, Default, PartialEq)]
pub struct Frame {
    pub choices: Vec<ChoiceFrame>,
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
    let choices = chunk
        .choices
        .into_iter()
        .enumerate()
        .map(|(position, choice)| {
            let index = choice.index.unwrap_or(position);
            let (text, calls) = match choice.delta {
                Some(delta) => (delta.content.unwrap_or_default(), delta.tool_calls),
                None => (String::new(), None),
            };
            ChoiceFrame {
                index,
                text,
                finish: choice
                    .finish_reason
                    .as_deref()
                    .map(|r| finish_reason(Some(r))),
                tool_calls: tool_call_deltas(index, calls),
                logprobs: logprobs_of(choice.logprobs),
            }
        })
        .collect();
    Ok(Frame {
        choices,
        usage: chunk.usage,
    })
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

    fn request(stream: bool) -> InferenceRequest {
        InferenceRequest {
            model: "m".into(),
            messages: vec![PromptMessage::text(Role::User, "hi")],
            sampling: Sampling {
                temperature: Some(0.0),
                logit_bias: [(7, -100.0)].into(),
                ..Sampling::default()
            },
            max_tokens: 12,
            prompt_tokens: 3,
            stop: vec!["END".into()],
            constraint: OutputConstraint::JsonObject,
            tools: None,
            passthrough: Map::new(),
            max_tokens_chosen: false,
            stream,
            prompt_ids: None,
            claim: Default::default(),
            choices: 1,
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
        assert!(body.get("n").is_none());
        let three = InferenceRequest {
            choices: 3,
            ..request(false)
        };
        let body: Value = serde_json::from_slice(&request_body(&three, "up")).unwrap();
        assert_eq!(body["n"], 3);
        let plain: Value = serde_json::from_slice(&request_body(&request(false), "up")).unwrap();
        assert!(plain.get("stream_options").is_none());
    }

    #[test]
    fn frames_parse_text_finish_usage_and_errors() {
        let frame = parse_frame(r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#);
        assert_eq!(frame.unwrap().choices[0].text, "Hi");
        let last = parse_frame(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(last.choices[0].finish, Some(FinishReason::Length));
        let second = parse_frame(
            r#"{"choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":""}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(second.choices[0].index, 1);
        assert_eq!(second.choices[0].tool_calls[0].choice, 1);
        assert_eq!(second.choices[0].tool_calls[0].name.as_deref(), Some("f"));
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
        assert_eq!(answer.choices[0].text, "ok");
        assert_eq!(answer.usage, None);
        let two = parse_completion(
            br#"{"choices":[{"index":0,"message":{"content":"a"},"finish_reason":"stop"},{"index":1,"message":{"content":"b"},"finish_reason":"length"}]}"#,
        )
        .unwrap();
        assert_eq!(two.choices.len(), 2);
        assert_eq!(
            (two.choices[1].index, two.choices[1].text.as_str()),
            (1, "b")
        );
        assert_eq!(two.choices[1].finish, FinishReason::Length);
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
