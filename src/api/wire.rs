//! OpenAI wire types for chat completions and models, as the official SDKs
//! send and parse them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::tools::wire::{Tool, ToolCall, ToolCallChunk, ToolChoice};
use crate::api::validate::MAX_STOP_SEQUENCES;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "model": "smollm2-135m-instruct",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 32,
    "temperature": 0
}))]
pub struct ChatCompletionRequest {
    /// Served model name (see `GET /v1/models`).
    #[schema(min_length = 1)]
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Deprecated by OpenAI in favour of `max_completion_tokens`; both work.
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[schema(schema_with = stop_schema)]
    pub stop: Option<StopSequences>,
    pub seed: Option<i64>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f64>,
    /// Choices to generate (default 1). A replica (`[upstream]`) answers up
    /// to 128 itself; an in-process model runs at most 8, one sequence each.
    /// `usage` counts the prompt once and every choice's tokens.
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<i64>,
    /// Token id (as a string) to a bias in [-100, 100].
    pub logit_bias: Option<HashMap<String, f64>>,
    /// Return each generated token's log probability (natural log, of the
    /// distribution the token was drawn from).
    pub logprobs: Option<bool>,
    /// Also the most likely alternatives at each position (needs `logprobs`).
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<i64>,
    pub response_format: Option<ResponseFormat>,
    /// Functions the model may call (at most 128).
    #[schema(max_items = 128)]
    pub tools: Option<Vec<Tool>>,
    /// `auto` (the default with tools), `none`, `required`, or a named
    /// function. `required` and a named function are enforced by
    /// constrained decoding; `auto` needs a chat template with a tool-call
    /// format.
    pub tool_choice: Option<ToolChoice>,
    /// With `false`, at most one call per answer (forced calls are one).
    pub parallel_tool_calls: Option<bool>,
    pub user: Option<String>,
    /// Accepted and ignored (OpenAI storage option).
    pub store: Option<bool>,
    /// Accepted and ignored (OpenAI's string-to-string tags).
    pub metadata: Option<HashMap<String, String>>,
    /// Accepted and ignored.
    pub service_tier: Option<String>,
}

/// Up to four stop sequences, or one.
fn stop_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let text = || ObjectBuilder::new().schema_type(Type::String);
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(text())
        .item(
            ArrayBuilder::new()
                .items(text())
                .max_items(Some(MAX_STOP_SEQUENCES)),
        )
        .build()
        .into()
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    System,
    /// OpenAI's newer name for `system`.
    Developer,
    User,
    Assistant,
    /// A function's result, answering the call `tool_call_id`.
    Tool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    #[serde(deserialize_with = "by_name")]
    pub role: MessageRole,
    /// Null only on an assistant message that calls tools.
    pub content: Option<MessageContent>,
    /// Accepted and ignored.
    pub name: Option<String>,
    /// An assistant message's function calls.
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
    /// Accepted and ignored (an assistant's earlier refusal).
    pub refusal: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// Only text parts: the served models are text-only.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type", deserialize_with = "by_name")]
    pub kind: ContentPartKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ContentPartKind {
    Text,
}

/// Reads a unit enum only from its name. serde's derived enums also accept
/// the variant's index (`"role": 0`), which no OpenAI client means.
pub(crate) fn by_name<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let name = String::deserialize(deserializer)?;
    serde_json::from_value(serde_json::Value::String(name)).map_err(serde::de::Error::custom)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopSequences {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices.
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseFormat {
    #[serde(rename = "type", deserialize_with = "by_name")]
    pub kind: ResponseFormatKind,
    /// Required when `type` is `json_schema`.
    pub json_schema: Option<JsonSchemaFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormatKind {
    Text,
    JsonObject,
    JsonSchema,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct JsonSchemaFormat {
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Map<String, serde_json::Value>>,
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    pub created: u64,
    /// The name the client asked for.
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

/// OpenAI's `logprobs` of a choice: one entry per generated token.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChoiceLogprobs {
    pub content: Vec<TokenLogprobEntry>,
    /// Always null: refusals are not generated separately.
    pub refusal: Option<Vec<TokenLogprobEntry>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenLogprobEntry {
    pub token: String,
    /// Natural log; -9999.0 for a token the sampler could not have chosen.
    pub logprob: f32,
    /// The token's UTF-8 bytes (a token may hold part of a character).
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl From<&crate::engine::TokenLogprob> for TokenLogprobEntry {
    fn from(entry: &crate::engine::TokenLogprob) -> Self {
        TokenLogprobEntry {
            token: entry.token.clone(),
            logprob: entry.logprob,
            bytes: entry.bytes.clone(),
            top_logprobs: entry
                .top
                .iter()
                .map(|(token, bytes, logprob)| TopLogprob {
                    token: token.clone(),
                    logprob: *logprob,
                    bytes: bytes.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop`, `length`, or `tool_calls`.
    pub finish_reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// Null when the answer is only function calls.
    pub content: Option<String>,
    pub refusal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// One server-sent event of a streamed completion, as an SSE parser sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatStreamEvent {
    /// A JSON `ChatCompletionChunk`, an error envelope, or the literal `[DONE]`.
    #[schema(content_media_type = "application/json")]
    pub data: String,
    pub event: Option<String>,
}

/// The JSON inside one `data:` frame of a streamed completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChunkChoice>,
    /// Present (null until the last chunk) only with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "UsageField::is_omitted")]
    #[schema(value_type = Option<Usage>)]
    pub usage: UsageField,
}

/// OpenAI omits `usage` from chunks unless usage was asked for, and then sends
/// `null` on every chunk but the last.
#[derive(Debug, Clone)]
pub enum UsageField {
    Omitted,
    Pending,
    Final(Usage),
}

impl UsageField {
    fn is_omitted(&self) -> bool {
        matches!(self, UsageField::Omitted)
    }
}

impl Serialize for UsageField {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            UsageField::Final(usage) => usage.serialize(serializer),
            _ => serializer.serialize_none(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: ChunkDelta,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ChunkDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallChunk>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelObject {
    pub id: String,
    /// Always `model`.
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// Longest prompt plus completion, in tokens.
    pub max_model_len: usize,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelObject>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    /// `ok`, or `loading` while the model is not ready.
    pub status: &'static str,
}
