//! OpenAI's function-tool wire types: the request's `tools` and
//! `tool_choice`, the calls in an assistant message, and their streamed
//! pieces.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A function the model may call.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }
}))]
pub struct Tool {
    #[serde(rename = "type", deserialize_with = "crate::api::wire::by_name")]
    pub kind: ToolKind,
    pub function: FunctionDefinition,
}

/// Only function tools exist on chat completions.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    Function,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionDefinition {
    /// Letters, digits, `_` and `-`, at most 64.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema object for the arguments; none means no arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    /// Accepted: forced calls always follow the schema exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `none`, `auto`, `required`, or one named function.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(ToolChoiceMode),
    Named(NamedToolChoice),
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoiceMode {
    /// Never call a function.
    None,
    /// The model decides (needs a chat template with a tool-call format).
    Auto,
    /// Call one of the functions (constrained decoding).
    Required,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedToolChoice {
    #[serde(rename = "type", deserialize_with = "crate::api::wire::by_name")]
    pub kind: ToolKind,
    pub function: FunctionName,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionName {
    pub name: String,
}

/// One function call of an assistant message.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// `call_…`; a `tool` message answers it by this id.
    pub id: String,
    #[serde(rename = "type", deserialize_with = "crate::api::wire::by_name")]
    pub kind: ToolKind,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON string.
    pub arguments: String,
}

/// A piece of a streamed call: the first piece of call `index` carries its
/// `id`, `type` and `function.name`, later ones only argument text.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ToolCallChunk {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ToolKind>,
    pub function: FunctionCallChunk,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunctionCallChunk {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}
