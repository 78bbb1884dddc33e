//! OpenAI Responses API wire types, as the official SDKs send and parse
//! them: the request, the Response object, and its output items.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::tools::wire::{ToolChoiceMode, ToolKind};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "model": "smollm2-135m-instruct",
    "input": "What is the capital of France?",
    "max_output_tokens": 32,
    "temperature": 0
}))]
pub struct CreateResponseRequest {
    /// Served model or adapter name (see `GET /v1/models`).
    #[schema(min_length = 1)]
    pub model: String,
    /// A user message, or message / `function_call` / `function_call_output` items.
    #[schema(value_type = InputSchema)]
    pub input: ResponseInput,
    /// A system message put before the input.
    pub instructions: Option<String>,
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    pub text: Option<TextConfig>,
    /// Function tools (other tool types are refused).
    #[schema(max_items = 128)]
    pub tools: Option<Vec<FunctionTool>>,
    /// `none`, `auto`, `required`, or `{"type": "function", "name": ..}`.
    pub tool_choice: Option<ResponseToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub stream: Option<bool>,
    /// Only `false`: the gateway keeps no responses.
    pub store: Option<bool>,
    /// Refused: the gateway keeps no responses to continue from.
    pub previous_response_id: Option<String>,
    /// Echoed back.
    pub metadata: Option<HashMap<String, String>>,
    pub user: Option<String>,
    /// Only `disabled` (too long an input is refused).
    pub truncation: Option<String>,
    /// Accepted and ignored.
    pub service_tier: Option<String>,
}

/// A string, or a list of input items; items are read one by one, so an
/// error names the item.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ResponseInput {
    Text(String),
    Items(Vec<Value>),
}

/// What [`ResponseInput`] accepts, for the OpenAPI description.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum InputSchema {
    Text(String),
    Items(Vec<InputItem>),
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ResponseToolChoice {
    Mode(ToolChoiceMode),
    Function(NamedFunction),
}

/// `{"type": "function", "name": ..}`: call this function.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedFunction {
    #[serde(rename = "type", deserialize_with = "crate::api::wire::by_name")]
    pub kind: ToolKind,
    pub name: String,
}

/// One input item (documentation of what [`ResponseInput::Items`] holds).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum InputItem {
    Message(InputMessage),
    FunctionCall(FunctionCallItem),
    FunctionCallOutput(FunctionCallOutputItem),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InputMessage {
    /// May be left out.
    #[serde(rename = "type")]
    pub kind: Option<MessageItemKind>,
    pub role: InputRole,
    /// Text, or `input_text` / `output_text` parts.
    pub content: InputContent,
    pub id: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MessageItemKind {
    Message,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputRole {
    User,
    System,
    Developer,
    Assistant,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum InputContent {
    Text(String),
    Parts(Vec<InputPart>),
}

/// Text only: the served models are text-only.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InputPart {
    #[serde(rename = "type")]
    pub kind: InputPartKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputPartKind {
    InputText,
    /// Text of an earlier answer sent back.
    OutputText,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FunctionCallKind {
    FunctionCall,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FunctionCallOutputKind {
    FunctionCallOutput,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct FunctionCallItem {
    #[serde(rename = "type")]
    pub kind: FunctionCallKind,
    pub call_id: String,
    pub name: String,
    /// JSON string.
    pub arguments: String,
    pub id: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct FunctionCallOutputItem {
    #[serde(rename = "type")]
    pub kind: FunctionCallOutputKind,
    pub call_id: String,
    pub output: String,
    pub id: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub format: Option<TextFormat>,
    /// Accepted and ignored.
    pub verbosity: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Required with `json_schema`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A function tool in the Responses shape (flat, not under `function`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionTool {
    #[serde(rename = "type", deserialize_with = "crate::api::wire::by_name")]
    pub kind: ToolKind,
    /// Letters, digits, `_` and `-`, at most 64.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// The Response object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseObject {
    /// `resp_…`
    pub id: String,
    /// Always `response`.
    pub object: &'static str,
    pub created_at: u64,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: &'static str,
    /// Always null: a failed stream ends with an `error` event.
    pub error: Option<Value>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub tool_choice: Value,
    pub tools: Vec<FunctionTool>,
    pub text: Value,
    /// Always `disabled`.
    pub truncation: &'static str,
    /// Always false.
    pub store: bool,
    pub metadata: HashMap<String, String>,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens`
    pub reason: &'static str,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: usize,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: usize,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InputTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Message {
        /// `msg_…`
        id: String,
        status: &'static str,
        /// Always `assistant`.
        role: &'static str,
        content: Vec<OutputText>,
    },
    FunctionCall {
        /// `fc_…`
        id: String,
        /// `call_…`; a `function_call_output` answers it by this id.
        call_id: String,
        name: String,
        arguments: String,
        status: &'static str,
    },
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputText {
    /// Always `output_text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<Value>,
}

impl OutputText {
    pub fn new(text: String) -> OutputText {
        OutputText {
            kind: "output_text",
            text,
            annotations: Vec::new(),
        }
    }
}

/// One server-sent event of a streamed response: `event: <type>` and
/// `data: <the event as JSON, with the same type and a sequence_number>`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResponseStreamEvent {
    /// `response.created`, `response.in_progress`,
    /// `response.output_item.added`, `response.content_part.added`,
    /// `response.output_text.delta`, `response.output_text.done`,
    /// `response.content_part.done`,
    /// `response.function_call_arguments.delta` / `.done`,
    /// `response.output_item.done`, `response.completed`, or `error`.
    pub event: String,
    #[schema(content_media_type = "application/json")]
    pub data: String,
}
