//! Function tools on chat completions: which functions a request offers,
//! how the served model gets to see them, and how its answer is read.
//!
//! - `required` and a named `tool_choice` are enforced by constrained
//!   decoding against the function's parameter schema, so even a tiny model
//!   writes a valid call: for a named function the output *is* the
//!   arguments object; for `required` it is `{"name": .., "arguments": ..}`
//!   under an `anyOf` over the functions.
//! - `auto` needs a chat template that renders `tools` and a call format
//!   the gateway can read back ([`ToolCallFormat`]); a model without one is
//!   refused with a 400 rather than having its tools silently dropped.
//! - A template without tools still serves forced calls: the functions are
//!   described in a system preamble, and earlier calls and results in the
//!   history are written out as text.
//! - A replica takes everything as sent and answers calls itself.

pub mod decode;
pub mod wire;

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use self::decode::OutputMode;
use self::wire::{FunctionDefinition, Tool, ToolChoice, ToolChoiceMode};
use crate::engine::{OutputConstraint, PromptMessage, Role, ToolSupport};
use crate::error::ApiError;

/// OpenAI's limit on the number of tools in one request.
pub const MAX_TOOLS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A request's tools, checked for shape before the model is known.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    functions: Vec<FunctionDefinition>,
    choice: Choice,
    parallel: bool,
    /// `tools`, `tool_choice`, `parallel_tool_calls` as sent, for a replica.
    raw: Map<String, Value>,
}

/// What serving a request's tools on one model takes.
#[derive(Debug)]
pub struct ToolPlan {
    /// `tools` for the chat template.
    pub template_tools: Option<Arc<Vec<Value>>>,
    /// The grammar a forced call is decoded under.
    pub constraint: Option<OutputConstraint>,
    /// A system message describing the functions (templates without tools).
    pub preamble: Option<String>,
    /// Write tool calls and results in the history as text.
    pub flatten_history: bool,
    pub output: OutputMode,
    /// Fields for a replica.
    pub passthrough: Map<String, Value>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl ToolRequest {
    pub fn from_wire(
        tools: Option<Vec<Tool>>,
        tool_choice: Option<ToolChoice>,
        parallel_tool_calls: Option<bool>,
    ) -> Result<Option<ToolRequest>, ApiError> {
        let tools = tools.unwrap_or_default();
        if tools.is_empty() {
            if tool_choice.is_some() {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` is only allowed when `tools` are specified.",
                ));
            }
            if parallel_tool_calls.is_some() {
                return Err(ApiError::invalid(
                    "parallel_tool_calls",
                    "`parallel_tool_calls` is only allowed when `tools` are specified.",
                ));
            }
            return Ok(None);
        }
        if tools.len() > MAX_TOOLS {
            return Err(ApiError::invalid(
                "tools",
                format!(
                    "At most {MAX_TOOLS} tools are allowed; got {}.",
                    tools.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, tool) in tools.iter().enumerate() {
            let name = &tool.function.name;
            if !valid_name(name) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    format!(
                        "Invalid function name {name:?}: use 1 to 64 letters, digits, `_` or `-`."
                    ),
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    format!("Function {name:?} is defined twice in `tools`."),
                ));
            }
        }
        let choice = match &tool_choice {
            None | Some(ToolChoice::Mode(ToolChoiceMode::Auto)) => Choice::Auto,
            Some(ToolChoice::Mode(ToolChoiceMode::None)) => Choice::None,
            Some(ToolChoice::Mode(ToolChoiceMode::Required)) => Choice::Required,
            Some(ToolChoice::Named(named)) => {
                let name = &named.function.name;
                if !seen.contains(name.as_str()) {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("`tool_choice` names function {name:?}, which is not in `tools`."),
                    ));
                }
                Choice::Named(name.clone())
            }
        };
        let mut raw = Map::new();
        let tools_json = serde_json::to_value(&tools).unwrap_or_default();
        raw.insert("tools".into(), tools_json);
        if let Some(choice) = &tool_choice {
            raw.insert(
                "tool_choice".into(),
                serde_json::to_value(choice).unwrap_or_default(),
            );
        }
        if let Some(parallel) = parallel_tool_calls {
            raw.insert("parallel_tool_calls".into(), parallel.into());
        }
        Ok(Some(ToolRequest {
            functions: tools.into_iter().map(|tool| tool.function).collect(),
            choice,
            parallel: parallel_tool_calls.unwrap_or(true),
            raw,
        }))
    }

    pub fn choice(&self) -> &Choice {
        &self.choice
    }

    /// OpenAI's `tools` array, as chat templates take it.
    fn template_tools(&self) -> Arc<Vec<Value>> {
        Arc::new(
            self.functions
                .iter()
                .map(|function| json!({"type": "function", "function": function_json(function)}))
                .collect(),
        )
    }

    fn function(&self, name: &str) -> Option<&FunctionDefinition> {
        self.functions.iter().find(|f| f.name == name)
    }
}

/// A function as templates and the preamble show it: parameters always
/// present (templates index into them).
fn function_json(function: &FunctionDefinition) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), function.name.clone().into());
    if let Some(description) = &function.description {
        out.insert("description".into(), description.clone().into());
    }
    out.insert("parameters".into(), parameters(function));
    Value::Object(out)
}

fn parameters(function: &FunctionDefinition) -> Value {
    match &function.parameters {
        Some(schema) => Value::Object(schema.clone()),
        None => json!({"type": "object", "properties": {}}),
    }
}

/// Forced calls are written compactly, with OpenAI's separators: no
/// whitespace choices, so a weak model cannot spend its tokens on blanks
/// (a random-weight model otherwise fills every gap to the bound).
fn compact(mut schema: Value) -> Value {
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// The grammar of a forced call.
fn forced_constraint(request: &ToolRequest) -> Option<(OutputConstraint, OutputMode)> {
    match &request.choice {
        Choice::None | Choice::Auto => None,
        Choice::Named(name) => {
            let schema = request.function(name).map(parameters)?;
            Some((
                OutputConstraint::JsonSchema(compact(schema)),
                OutputMode::Arguments { name: name.clone() },
            ))
        }
        Choice::Required => {
            // `name` before `arguments` (serde_json keeps insertion order
            // here), so the call's name is known before its arguments stream.
            let calls: Vec<Value> = request
                .functions
                .iter()
                .map(|function| {
                    json!({
                        "type": "object",
                        "properties": {
                            "name": {"const": function.name},
                            "arguments": parameters(function),
                        },
                        "required": ["name", "arguments"],
                        "additionalProperties": false,
                    })
                })
                .collect();
            Some((
                OutputConstraint::JsonSchema(compact(json!({"anyOf": calls}))),
                OutputMode::Call,
            ))
        }
    }
}

/// The system preamble for a template that cannot show tools itself.
fn preamble(request: &ToolRequest) -> String {
    let functions: Vec<String> = request
        .functions
        .iter()
        .map(|f| function_json(f).to_string())
        .collect();
    format!(
        "You can call these functions:\n{}\nTo call one, answer with a JSON object {{\"name\": function name, \"arguments\": its arguments}}.",
        functions.join("\n")
    )
}

/// How `request` (possibly no tools) is served on a model with `support`.
/// `response_format`: the request also constrains its output.
pub fn plan(
    request: Option<&ToolRequest>,
    support: ToolSupport,
    response_format: bool,
) -> Result<ToolPlan, ApiError> {
    let mut plan = ToolPlan {
        template_tools: None,
        constraint: None,
        preamble: None,
        flatten_history: support == ToolSupport::Preamble,
        output: OutputMode::Text,
        passthrough: Map::new(),
    };
    let Some(request) = request else {
        if support == ToolSupport::PassThrough {
            plan.output = OutputMode::Remote;
        }
        return Ok(plan);
    };
    if support == ToolSupport::PassThrough {
        plan.output = OutputMode::Remote;
        plan.passthrough = request.raw.clone();
        return Ok(plan);
    }
    if response_format && request.choice != Choice::None {
        return Err(ApiError::invalid(
            "response_format",
            "`response_format` cannot be combined with `tools` unless `tool_choice` is \"none\": both would constrain the answer.",
        ));
    }
    if let Some((constraint, output)) = forced_constraint(request) {
        plan.constraint = Some(constraint);
        plan.output = output;
    }
    match (support, &request.choice) {
        (ToolSupport::Template(_), Choice::None) => {
            plan.template_tools = Some(request.template_tools());
        }
        (ToolSupport::Template(format), Choice::Auto) => {
            let Some(format) = format else {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "This model's chat template renders tools but writes calls in a format the gateway cannot read back (it reads Hermes `<tool_call>` and Llama 3 JSON calls); use `tool_choice: \"required\"` or a named function, which are enforced by constrained decoding.",
                ));
            };
            plan.template_tools = Some(request.template_tools());
            plan.output = OutputMode::Parse {
                format,
                parallel: request.parallel,
            };
        }
        (ToolSupport::Template(_), _) => plan.template_tools = Some(request.template_tools()),
        (ToolSupport::Preamble, Choice::Auto) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "This model's chat template declares no tool-call format, so the model cannot choose to call a function (`tool_choice: \"auto\"`). Use `tool_choice: \"required\"` or a named function, which the gateway enforces by constrained decoding, or `\"none\"`.",
            ));
        }
        (ToolSupport::Preamble, Choice::None) => {}
        (ToolSupport::Preamble, _) => plan.preamble = Some(preamble(request)),
        (ToolSupport::PassThrough, _) => {}
    }
    Ok(plan)
}

/// The history for a template without tools: each call written as the
/// JSON a forced call produces, each result as a user message naming the
/// call it answers. Consecutive results stay separate messages.
pub fn flatten_history(messages: Vec<PromptMessage>) -> Vec<PromptMessage> {
    let mut names = std::collections::HashMap::new();
    messages
        .into_iter()
        .map(|message| match message.role {
            Role::Assistant if !message.tool_calls.is_empty() => {
                let mut text = message.content;
                for call in &message.tool_calls {
                    names.insert(call.id.clone(), call.name.clone());
                    let arguments = serde_json::from_str::<Value>(&call.arguments)
                        .unwrap_or_else(|_| call.arguments.clone().into());
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&json!({"name": call.name, "arguments": arguments}).to_string());
                }
                PromptMessage::text(Role::Assistant, text)
            }
            Role::Tool => {
                let id = message.tool_call_id.unwrap_or_default();
                let name = names.get(&id).map_or("a function", String::as_str);
                PromptMessage::text(
                    Role::User,
                    format!("Result of {name} (call {id}):\n{}", message.content),
                )
            }
            _ => message,
        })
        .collect()
}

#[cfg(test)]
mod tests;
