//! `POST /v1/responses`, stateless: a Responses request is translated into
//! a chat request and served by the same validated path as
//! `/v1/chat/completions` (auth, limits, adapters, metering, metrics), then
//! its answer is rendered as a Response object or the typed event stream.
//! Nothing is stored, so `store: true` and `previous_response_id` are
//! refused rather than ignored.

pub mod stream;
pub mod wire;

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use self::wire::{
    CreateResponseRequest, FunctionTool, IncompleteDetails, InputTokensDetails, OutputItem,
    OutputText, OutputTokensDetails, ResponseInput, ResponseObject, ResponseStreamEvent,
    ResponseUsage,
};
use crate::api::extract::{InferenceCaller, JsonBody};
use crate::api::serve::{Rendering, serve};
use crate::api::tools::wire::{
    FunctionCall, FunctionDefinition, NamedToolChoice, Tool, ToolCall, ToolChoice, ToolKind,
};
use crate::api::validate::ValidatedChat;
use crate::api::wire::{
    ChatCompletion, ChatCompletionRequest, ChatMessage, ContentPart, ContentPartKind,
    JsonSchemaFormat, MessageContent, MessageRole, ResponseFormat, ResponseFormatKind,
};
use crate::app::AppState;
use crate::engine::TokenUsage;
use crate::error::{ApiError, ErrorResponse};

/// Creates a model response, as one JSON body or as typed server-sent events.
#[utoipa::path(
    post,
    path = crate::api::routes::RESPONSES,
    tag = "responses",
    request_body = CreateResponseRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The Response; with `stream: true`, `text/event-stream` events `event: <type>` / `data: <event>` from `response.created` to `response.completed`.",
            content(
                (ResponseObject = "application/json"),
                (ResponseStreamEvent = "text/event-stream"),
            )),
        crate::api::openapi::TenantAuthErrors,
        crate::api::openapi::InferenceErrors,
        (status = 400, description = "Invalid parameter; `store: true` or `previous_response_id` (nothing is stored); input over the context (`context_length_exceeded`).", body = ErrorResponse),
    )
)]
pub async fn create_response(
    request: HttpRequest,
    caller: InferenceCaller,
    state: web::Data<AppState>,
    body: JsonBody<CreateResponseRequest>,
) -> Result<HttpResponse, ApiError> {
    let (chat, echo) = translate(body.into_inner())?;
    let chat = ValidatedChat::from_request(chat)?;
    serve(&request, &state, &caller.0, chat, |running| {
        let shell = echo.shell(&running.id, running.created, &running.model);
        if running.stream {
            Rendering::Stream(stream::respond(running, shell))
        } else {
            Rendering::Whole(async move {
                let completion = running.collect().await?;
                Ok(HttpResponse::Ok().json(finish(shell, completion)))
            })
        }
    })
    .await
}

/// What a Response repeats of its request.
pub struct Echo {
    instructions: Option<String>,
    max_output_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    tool_choice: Value,
    tools: Vec<FunctionTool>,
    text: Value,
    parallel_tool_calls: bool,
    metadata: HashMap<String, String>,
    user: Option<String>,
}

impl Echo {
    /// The Response before any output: `in_progress`, without usage.
    fn shell(&self, chat_id: &str, created_at: u64, model: &str) -> ResponseObject {
        let id = chat_id.strip_prefix("chatcmpl-").unwrap_or(chat_id);
        ResponseObject {
            id: format!("resp_{id}"),
            object: "response",
            created_at,
            status: "in_progress",
            error: None,
            incomplete_details: None,
            instructions: self.instructions.clone(),
            max_output_tokens: self.max_output_tokens,
            model: model.to_string(),
            output: Vec::new(),
            parallel_tool_calls: self.parallel_tool_calls,
            previous_response_id: None,
            temperature: self.temperature,
            top_p: self.top_p,
            tool_choice: self.tool_choice.clone(),
            tools: self.tools.clone(),
            text: self.text.clone(),
            truncation: "disabled",
            store: false,
            metadata: self.metadata.clone(),
            usage: None,
            user: self.user.clone(),
        }
    }
}

pub fn item_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The finished Response: status from the finish reason, usage.
pub fn complete(
    mut shell: ResponseObject,
    finish_reason: &str,
    usage: TokenUsage,
) -> ResponseObject {
    if finish_reason == "length" {
        shell.status = "incomplete";
        shell.incomplete_details = Some(IncompleteDetails {
            reason: "max_output_tokens",
        });
    } else {
        shell.status = "completed";
    }
    shell.usage = Some(ResponseUsage {
        input_tokens: usage.prompt_tokens,
        input_tokens_details: InputTokensDetails { cached_tokens: 0 },
        output_tokens: usage.completion_tokens,
        output_tokens_details: OutputTokensDetails {
            reasoning_tokens: 0,
        },
        total_tokens: usage.prompt_tokens + usage.completion_tokens,
    });
    shell
}

/// A non-streamed chat answer as a Response: its text as one message item
/// (when there is text or nothing else), then one item per call.
fn finish(shell: ResponseObject, completion: ChatCompletion) -> ResponseObject {
    let usage = TokenUsage {
        prompt_tokens: completion.usage.prompt_tokens,
        completion_tokens: completion.usage.completion_tokens,
    };
    let Some(choice) = completion.choices.into_iter().next() else {
        return complete(shell, "stop", usage);
    };
    let status = if choice.finish_reason == "length" {
        "incomplete"
    } else {
        "completed"
    };
    let calls = choice.message.tool_calls.unwrap_or_default();
    let mut output = Vec::new();
    match choice.message.content {
        Some(text) if !text.is_empty() || calls.is_empty() => output.push(OutputItem::Message {
            id: item_id("msg"),
            status,
            role: "assistant",
            content: vec![OutputText::new(text)],
        }),
        _ => {}
    }
    output.extend(calls.into_iter().map(|call| OutputItem::FunctionCall {
        id: item_id("fc"),
        call_id: call.id,
        name: call.function.name,
        arguments: call.function.arguments,
        status,
    }));
    let mut response = complete(shell, &choice.finish_reason, usage);
    response.output = output;
    response
}

/// The chat request a Responses request means, and what its Response echoes.
pub fn translate(
    request: CreateResponseRequest,
) -> Result<(ChatCompletionRequest, Echo), ApiError> {
    if request.store == Some(true) {
        return Err(ApiError::invalid(
            "store",
            "`store: true` is not supported: this gateway keeps no responses. Send `store: false` (or leave it out) and keep the conversation on the client.",
        ));
    }
    if request.previous_response_id.is_some() {
        return Err(ApiError::invalid(
            "previous_response_id",
            "`previous_response_id` is not supported: this gateway keeps no responses to continue from. Send the earlier output items in `input` instead.",
        ));
    }
    match request.truncation.as_deref() {
        None | Some("disabled") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "truncation",
                format!(
                    "`truncation: {other:?}` is not supported: only \"disabled\" (an input over the context is refused)."
                ),
            ));
        }
    }
    let mut messages = Vec::new();
    if let Some(instructions) = &request.instructions {
        messages.push(text_message(MessageRole::System, instructions.clone()));
    }
    match request.input {
        ResponseInput::Text(text) => messages.push(text_message(MessageRole::User, text)),
        ResponseInput::Items(items) => {
            for (i, item) in items.into_iter().enumerate() {
                add_item(&mut messages, i, item)?;
            }
        }
    }
    let (response_format, text) = text_format(request.text)?;
    let tool_choice = request.tool_choice.map(tool_choice);
    if let Some(n) = request.max_output_tokens.filter(|&n| n < 1) {
        return Err(ApiError::invalid(
            "max_output_tokens",
            format!("{n} is not a valid `max_output_tokens`: it must be at least 1."),
        ));
    }
    let tools = request.tools.unwrap_or_default();
    let echo = Echo {
        instructions: request.instructions,
        max_output_tokens: request.max_output_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        tool_choice: match &tool_choice {
            None => json!("auto"),
            Some(ToolChoice::Named(named)) => {
                json!({"type": "function", "name": named.function.name})
            }
            Some(choice) => serde_json::to_value(choice).unwrap_or_default(),
        },
        tools: tools.clone(),
        text,
        parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
        metadata: request.metadata.unwrap_or_default(),
        user: request.user.clone(),
    };
    let chat = ChatCompletionRequest {
        model: request.model,
        messages,
        stream: request.stream,
        stream_options: None,
        max_tokens: None,
        max_completion_tokens: request.max_output_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        stop: None,
        seed: None,
        presence_penalty: None,
        frequency_penalty: None,
        n: None,
        logit_bias: None,
        logprobs: None,
        top_logprobs: None,
        response_format,
        tools: (!tools.is_empty()).then(|| tools.into_iter().map(chat_tool).collect()),
        tool_choice,
        parallel_tool_calls: request.parallel_tool_calls,
        user: request.user,
        store: None,
        metadata: None,
        service_tier: None,
    };
    Ok((chat, echo))
}

fn text_message(role: MessageRole, text: String) -> ChatMessage {
    ChatMessage {
        role,
        content: Some(MessageContent::Text(text)),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        refusal: None,
    }
}

fn chat_tool(tool: FunctionTool) -> Tool {
    Tool {
        kind: ToolKind::Function,
        function: FunctionDefinition {
            name: tool.name,
            description: tool.description,
            parameters: tool.parameters,
            strict: tool.strict,
        },
    }
}

fn tool_choice(choice: wire::ResponseToolChoice) -> ToolChoice {
    match choice {
        wire::ResponseToolChoice::Mode(mode) => ToolChoice::Mode(mode),
        wire::ResponseToolChoice::Function(named) => ToolChoice::Named(NamedToolChoice {
            kind: ToolKind::Function,
            function: crate::api::tools::wire::FunctionName { name: named.name },
        }),
    }
}

/// `text.format` as a chat `response_format`, and the `text` echoed.
fn text_format(
    text: Option<wire::TextConfig>,
) -> Result<(Option<ResponseFormat>, Value), ApiError> {
    let Some(format) = text.and_then(|t| t.format) else {
        return Ok((None, json!({"format": {"type": "text"}})));
    };
    let echoed = json!({"format": format.clone()});
    let kind = match format.kind.as_str() {
        "text" => ResponseFormatKind::Text,
        "json_object" => ResponseFormatKind::JsonObject,
        "json_schema" => ResponseFormatKind::JsonSchema,
        other => {
            return Err(ApiError::invalid(
                "text.format.type",
                format!(
                    "{other:?} is not a text format: use \"text\", \"json_object\" or \"json_schema\"."
                ),
            ));
        }
    };
    if kind == ResponseFormatKind::JsonSchema && format.schema.is_none() {
        return Err(ApiError::invalid(
            "text.format.schema",
            "`text.format.schema` must be a JSON Schema object with `type: \"json_schema\"`.",
        ));
    }
    let json_schema = (kind == ResponseFormatKind::JsonSchema).then(|| JsonSchemaFormat {
        name: format.name.unwrap_or_else(|| "response".into()),
        description: format.description,
        schema: format.schema,
        strict: format.strict,
    });
    Ok((Some(ResponseFormat { kind, json_schema }), echoed))
}

/// One input item as chat messages: consecutive `function_call` items
/// become one assistant message with several calls.
fn add_item(messages: &mut Vec<ChatMessage>, i: usize, item: Value) -> Result<(), ApiError> {
    let param = format!("input[{i}]");
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message")
        .to_string();
    // Each item is read on its own, so the error names it; a part that is
    // not text is named by its own index.
    let other_part = item_has_other_parts(&item);
    let invalid = |e: serde_json::Error| match other_part {
        Some(j) => ApiError::invalid(
            format!("{param}.content[{j}]"),
            "Only `input_text` and `output_text` parts are supported: the served models are text-only.",
        ),
        None => ApiError::invalid(param.clone(), format!("Invalid `{param}`: {e}")),
    };
    match kind.as_str() {
        "message" => {
            let message: wire::InputMessage = serde_json::from_value(item).map_err(invalid)?;
            let role = match message.role {
                wire::InputRole::User => MessageRole::User,
                wire::InputRole::System => MessageRole::System,
                wire::InputRole::Developer => MessageRole::Developer,
                wire::InputRole::Assistant => MessageRole::Assistant,
            };
            let content = match message.content {
                wire::InputContent::Text(text) => MessageContent::Text(text),
                wire::InputContent::Parts(parts) => MessageContent::Parts(
                    parts
                        .into_iter()
                        .map(|part| ContentPart {
                            kind: ContentPartKind::Text,
                            text: part.text,
                        })
                        .collect(),
                ),
            };
            messages.push(ChatMessage {
                content: Some(content),
                ..text_message(role, String::new())
            });
        }
        "function_call" => {
            let call: wire::FunctionCallItem = serde_json::from_value(item).map_err(invalid)?;
            let call = ToolCall {
                id: call.call_id,
                kind: ToolKind::Function,
                function: FunctionCall {
                    name: call.name,
                    arguments: call.arguments,
                },
            };
            match messages.last_mut() {
                Some(last) if last.role == MessageRole::Assistant && last.tool_calls.is_some() => {
                    last.tool_calls.get_or_insert_with(Vec::new).push(call);
                }
                _ => messages.push(ChatMessage {
                    role: MessageRole::Assistant,
                    content: None,
                    name: None,
                    tool_calls: Some(vec![call]),
                    tool_call_id: None,
                    refusal: None,
                }),
            }
        }
        "function_call_output" => {
            let output: wire::FunctionCallOutputItem =
                serde_json::from_value(item).map_err(invalid)?;
            messages.push(ChatMessage {
                tool_call_id: Some(output.call_id),
                ..text_message(MessageRole::Tool, output.output)
            });
        }
        other => {
            return Err(ApiError::invalid(
                format!("{param}.type"),
                format!(
                    "Input items of type {other:?} are not supported: use message, function_call or function_call_output."
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// The index of the first content part that is not text, if any.
fn item_has_other_parts(item: &Value) -> Option<usize> {
    item.get("content")?.as_array()?.iter().position(|part| {
        !matches!(
            part.get("type").and_then(Value::as_str),
            Some("input_text" | "output_text")
        )
    })
}
