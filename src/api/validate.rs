//! Turning an OpenAI chat request into a [`InferenceRequest`]: every bound is
//! checked here, with messages that name the parameter and its limits, before
//! anything reaches the engine.

use std::collections::HashMap;
use std::sync::Arc;

use crate::api::tools::decode::OutputMode;
use crate::api::tools::{self, ToolRequest};
use crate::api::wire::{
    ChatCompletionRequest, ChatMessage, MessageContent, MessageRole, ResponseFormat,
    ResponseFormatKind, StopSequences,
};
use crate::engine::{
    InferenceRequest, ModelCard, OutputConstraint, PromptMessage, PromptToolCall, Role, Sampling,
};
use crate::error::ApiError;
use crate::prompt::PromptSize;

/// OpenAI accepts at most four stop sequences.
pub const MAX_STOP_SEQUENCES: usize = 4;

/// Longest stop sequence, in bytes. Every generated token is checked against
/// every stop sequence (by the gateway, and by engines that also check), so
/// their length is work per token; real stop sequences are a few words.
pub const MAX_STOP_BYTES: usize = 256;

/// OpenAI's own bound on `n`; a replica is asked for up to this many.
pub const MAX_CHOICES: usize = 128;

/// Most choices an in-process engine runs for one request: each is a whole
/// sequence in the batch, held by one admission slot, so `n` multiplies
/// what one request costs the tenants it shares the engine with.
pub const MAX_IN_PROCESS_CHOICES: usize = 8;

/// A chat request whose fields are all within bounds; the prompt's length is
/// not known yet.
#[derive(Debug)]
pub struct ValidatedChat {
    pub model: String,
    pub messages: Vec<PromptMessage>,
    pub stream: bool,
    pub include_usage: bool,
    requested_max_tokens: Option<usize>,
    sampling: Sampling,
    stop: Vec<String>,
    constraint: OutputConstraint,
    tools: Option<ToolRequest>,
    /// Set by [`ValidatedChat::fit_model`].
    template_tools: Option<Arc<Vec<serde_json::Value>>>,
    output: OutputMode,
    passthrough: serde_json::Map<String, serde_json::Value>,
    /// Answers wanted (`n`).
    choices: usize,
}

fn in_range(param: &str, value: Option<f64>, low: f64, high: f64) -> Result<Option<f64>, ApiError> {
    match value {
        Some(v) if !(low..=high).contains(&v) || v.is_nan() => Err(ApiError::invalid(
            param,
            format!("{v} is not a valid `{param}`: it must be between {low} and {high}."),
        )),
        other => Ok(other),
    }
}

fn positive(param: &str, value: Option<i64>) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v >= 1 => usize::try_from(v)
            .map(Some)
            .map_err(|_| ApiError::invalid(param, format!("`{param}` is too large."))),
        Some(v) => Err(ApiError::invalid(
            param,
            format!("{v} is not a valid `{param}`: it must be at least 1."),
        )),
    }
}

fn flatten_content(content: MessageContent) -> String {
    match content {
        MessageContent::Text(text) => text,
        MessageContent::Parts(parts) => parts.into_iter().map(|part| part.text).collect(),
    }
}

fn messages(request_messages: Vec<ChatMessage>) -> Result<Vec<PromptMessage>, ApiError> {
    if request_messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must contain at least one message.",
        ));
    }
    request_messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| message_of(i, message))
        .collect()
}

/// One message, its tool fields checked against its role.
fn message_of(i: usize, message: ChatMessage) -> Result<PromptMessage, ApiError> {
    let role = match message.role {
        MessageRole::System | MessageRole::Developer => Role::System,
        MessageRole::User => Role::User,
        MessageRole::Assistant => Role::Assistant,
        MessageRole::Tool => Role::Tool,
    };
    let calls = message.tool_calls.unwrap_or_default();
    if !calls.is_empty() && role != Role::Assistant {
        return Err(ApiError::invalid(
            format!("messages[{i}].tool_calls"),
            "Only assistant messages may have `tool_calls`.",
        ));
    }
    let tool_call_id = match (role, message.tool_call_id) {
        (Role::Tool, Some(id)) => Some(id),
        (Role::Tool, None) => {
            return Err(ApiError::invalid(
                format!("messages[{i}].tool_call_id"),
                "A `tool` message needs the `tool_call_id` of the call it answers.",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                format!("messages[{i}].tool_call_id"),
                "Only `tool` messages may have a `tool_call_id`.",
            ));
        }
        (_, None) => None,
    };
    let content = match message.content {
        Some(content) => flatten_content(content),
        None if !calls.is_empty() => String::new(),
        None => {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                "`content` may be null only on an assistant message with `tool_calls`.",
            ));
        }
    };
    Ok(PromptMessage {
        role,
        content,
        tool_calls: calls
            .into_iter()
            .map(|call| PromptToolCall {
                id: call.id,
                name: call.function.name,
                arguments: call.function.arguments,
            })
            .collect(),
        tool_call_id,
    })
}

fn stop_sequences(stop: Option<StopSequences>) -> Result<Vec<String>, ApiError> {
    let stops = match stop {
        None => Vec::new(),
        Some(StopSequences::One(one)) => vec![one],
        Some(StopSequences::Many(many)) => many,
    };
    if stops.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "At most {MAX_STOP_SEQUENCES} stop sequences are allowed; got {}.",
                stops.len()
            ),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "Stop sequences must not be empty strings.",
        ));
    }
    if let Some(long) = stops.iter().find(|stop| stop.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "Stop sequences may be at most {MAX_STOP_BYTES} bytes long; one is {} bytes.",
                long.len()
            ),
        ));
    }
    Ok(stops)
}

fn logit_bias(bias: Option<HashMap<String, f64>>) -> Result<HashMap<u32, f32>, ApiError> {
    let mut parsed = HashMap::new();
    for (token, value) in bias.unwrap_or_default() {
        let id: u32 = token.parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("Invalid key `{token}` in `logit_bias`: keys must be token ids."),
            )
        })?;
        if !(-100.0..=100.0).contains(&value) {
            return Err(ApiError::invalid(
                "logit_bias",
                format!(
                    "Invalid value {value} for token {id} in `logit_bias`: it must be between -100 and 100."
                ),
            ));
        }
        parsed.insert(id, value as f32);
    }
    Ok(parsed)
}

fn output_constraint(format: Option<ResponseFormat>) -> Result<OutputConstraint, ApiError> {
    let Some(format) = format else {
        return Ok(OutputConstraint::None);
    };
    match format.kind {
        ResponseFormatKind::Text => Ok(OutputConstraint::None),
        ResponseFormatKind::JsonObject => Ok(OutputConstraint::JsonObject),
        ResponseFormatKind::JsonSchema => match format.json_schema.and_then(|f| f.schema) {
            Some(schema) => Ok(OutputConstraint::JsonSchema(schema.into())),
            _ => Err(ApiError::invalid(
                "response_format.json_schema.schema",
                "`response_format.json_schema.schema` must be a JSON Schema object.",
            )),
        },
    }
}

impl ValidatedChat {
    pub fn from_request(request: ChatCompletionRequest) -> Result<ValidatedChat, ApiError> {
        if request.model.trim().is_empty() {
            return Err(ApiError::invalid("model", "`model` must not be empty."));
        }
        let temperature = in_range("temperature", request.temperature, 0.0, 2.0)?;
        let top_p = in_range("top_p", request.top_p, 0.0, 1.0)?;
        if top_p == Some(0.0) {
            return Err(ApiError::invalid(
                "top_p",
                "0 is not a valid `top_p`: it must be greater than 0.",
            ));
        }
        let presence_penalty = in_range("presence_penalty", request.presence_penalty, -2.0, 2.0)?;
        let frequency_penalty =
            in_range("frequency_penalty", request.frequency_penalty, -2.0, 2.0)?;
        let choices = match request.n {
            None => 1,
            Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("{n} is not a valid `n`: it must be between 1 and {MAX_CHOICES}."),
                ));
            }
        };
        let logprobs = request.logprobs.unwrap_or(false);
        let top_logprobs = match request.top_logprobs {
            None => 0,
            Some(n) if !(0..=20).contains(&n) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("{n} is not a valid `top_logprobs`: it must be between 0 and 20."),
                ));
            }
            Some(n) if n > 0 && !logprobs => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs` set to true.",
                ));
            }
            Some(n) => n as usize,
        };
        let max_tokens = positive("max_tokens", request.max_tokens)?;
        let max_completion_tokens =
            positive("max_completion_tokens", request.max_completion_tokens)?;
        let stream = request.stream.unwrap_or(false);
        let include_usage = request
            .stream_options
            .as_ref()
            .and_then(|options| options.include_usage)
            .unwrap_or(false);
        if request.stream_options.is_some() && !stream {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true.",
            ));
        }
        let tools = ToolRequest::from_wire(
            request.tools,
            request.tool_choice,
            request.parallel_tool_calls,
        )?;
        Ok(ValidatedChat {
            model: request.model,
            messages: messages(request.messages)?,
            stream,
            include_usage,
            requested_max_tokens: max_completion_tokens.or(max_tokens),
            sampling: Sampling {
                temperature,
                top_p,
                presence_penalty: presence_penalty.map(|v| v as f32),
                frequency_penalty: frequency_penalty.map(|v| v as f32),
                seed: request.seed.map(|s| s as u64),
                logit_bias: logit_bias(request.logit_bias)?,
                logprobs,
                top_logprobs,
            },
            stop: stop_sequences(request.stop)?,
            constraint: output_constraint(request.response_format)?,
            tools,
            template_tools: None,
            output: OutputMode::Text,
            passthrough: serde_json::Map::new(),
            choices,
        })
    }

    /// Settles how the request's tools are served on the model it names
    /// (see [`tools`]): the prompt's final messages, the grammar of a
    /// forced call, and how the answer is read. Before anything is measured.
    pub fn fit_model(&mut self, card: &ModelCard) -> Result<(), ApiError> {
        if self.choices > MAX_IN_PROCESS_CHOICES && !card.is_remote() {
            return Err(ApiError::invalid(
                "n",
                format!(
                    "{} is too many choices for `{}`: its engine runs at most {MAX_IN_PROCESS_CHOICES} per request.",
                    self.choices, card.id
                ),
            ));
        }
        let response_format = self.constraint != OutputConstraint::None;
        let plan = tools::plan(self.tools.as_ref(), card.tools, response_format)?;
        if plan.flatten_history {
            self.messages = tools::flatten_history(std::mem::take(&mut self.messages));
        }
        if let Some(preamble) = plan.preamble {
            match self.messages.first_mut() {
                Some(first) if first.role == Role::System => {
                    first.content = format!("{preamble}\n\n{}", first.content);
                }
                _ => self
                    .messages
                    .insert(0, PromptMessage::text(Role::System, preamble)),
            }
        }
        if let Some(constraint) = plan.constraint {
            self.constraint = constraint;
        }
        self.template_tools = plan.template_tools;
        self.output = plan.output;
        self.passthrough = plan.passthrough;
        Ok(())
    }

    /// `tools` for the chat template, once [`ValidatedChat::fit_model`] ran.
    pub fn template_tools(&self) -> Option<&[serde_json::Value]> {
        self.template_tools.as_deref().map(Vec::as_slice)
    }

    /// How the generated text is read, once [`ValidatedChat::fit_model`] ran.
    pub fn output_mode(&self) -> OutputMode {
        self.output.clone()
    }

    /// Bytes of message text: with the model's longest token, a lower
    /// bound on the prompt's length in tokens before anything tokenizes it.
    pub fn prompt_size(&self, card: &ModelCard) -> Result<PromptSize, ApiError> {
        let calls = |m: &PromptMessage| -> usize {
            m.tool_calls
                .iter()
                .map(|c| c.name.len() + c.arguments.len())
                .sum()
        };
        let tools: usize = self
            .template_tools()
            .map_or(0, |tools| tools.iter().map(|t| t.to_string().len()).sum());
        let bytes = self
            .messages
            .iter()
            .map(|m| m.content.len() + calls(m))
            .sum::<usize>()
            + tools;
        let size = PromptSize::of(bytes, card.max_token_bytes);
        if size.min_tokens >= card.context_length {
            return Err(ApiError::PromptTooLong {
                limit: card.context_length,
                bytes,
            });
        }
        Ok(size)
    }

    /// Tokens the request takes from its tenant's budget: the prompt plus
    /// the completion budget (the rest of the context when none was set)
    /// of every choice.
    /// Growing with `prompt_tokens`, so a lower bound on the prompt gives a
    /// lower bound on the reservation.
    pub fn wanted_tokens(
        &self,
        card: &ModelCard,
        prompt_tokens: usize,
        default_max_tokens: Option<usize>,
    ) -> u64 {
        let completion = self.completion_budget(card, prompt_tokens, default_max_tokens);
        (prompt_tokens + completion * self.choices) as u64
    }

    /// Answers wanted (`n`).
    pub fn choices(&self) -> usize {
        self.choices
    }

    fn completion_budget(
        &self,
        card: &ModelCard,
        prompt_tokens: usize,
        default_max_tokens: Option<usize>,
    ) -> usize {
        let room = card.context_length.saturating_sub(prompt_tokens);
        match self.requested_max_tokens {
            Some(requested) => requested,
            None => default_max_tokens.map_or(room, |default| default.min(room)),
        }
    }

    /// Whether the answer carries log probabilities.
    pub fn wants_logprobs(&self) -> bool {
        self.sampling.logprobs
    }

    /// Fixes the completion budget once the prompt's length is known, and
    /// refuses requests that cannot fit the model's context.
    pub fn into_request(
        self,
        card: &ModelCard,
        prompt_tokens: usize,
        default_max_tokens: Option<usize>,
    ) -> Result<InferenceRequest, ApiError> {
        if let Some(token) = self
            .sampling
            .logit_bias
            .keys()
            .find(|&&t| t as usize >= card.vocab_size)
        {
            return Err(ApiError::invalid(
                "logit_bias",
                format!(
                    "Token id {token} in `logit_bias` is outside the vocabulary (0..{}).",
                    card.vocab_size
                ),
            ));
        }
        if self.sampling.logprobs && !card.logprobs && !card.is_remote() {
            return Err(ApiError::invalid(
                "logprobs",
                "Log probabilities are not available for this model: its engine (mistral.rs 0.8.1) does not report honest values.",
            ));
        }
        let max_tokens = self.completion_budget(card, prompt_tokens, default_max_tokens);
        if max_tokens == 0 || prompt_tokens + max_tokens > card.context_length {
            return Err(ApiError::ContextLengthExceeded {
                limit: card.context_length,
                requested: prompt_tokens + max_tokens.max(1),
                prompt: prompt_tokens,
                completion: max_tokens.max(1),
            });
        }
        Ok(InferenceRequest {
            model: card.id.clone(),
            messages: self.messages,
            sampling: self.sampling,
            max_tokens,
            prompt_tokens,
            stop: self.stop,
            constraint: self.constraint,
            tools: self.template_tools,
            passthrough: self.passthrough,
            max_tokens_chosen: self.requested_max_tokens.is_some() || default_max_tokens.is_some(),
            stream: self.stream,
            prompt_ids: None,
            claim: Default::default(),
            choices: self.choices,
        })
    }
}

#[cfg(test)]
mod tests;
