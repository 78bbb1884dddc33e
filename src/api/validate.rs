//! Turning an OpenAI chat request into a [`GenerationRequest`]: every bound is
//! checked here, with messages that name the parameter and its limits, before
//! anything reaches the engine.

use std::collections::HashMap;

use crate::api::wire::{
    ChatCompletionRequest, MessageContent, MessageRole, ResponseFormat, ResponseFormatKind,
    StopSequences,
};
use crate::engine::{
    GenerationRequest, ModelCard, OutputConstraint, PromptMessage, Role, Sampling,
};
use crate::error::ApiError;

/// OpenAI accepts at most four stop sequences.
pub const MAX_STOP_SEQUENCES: usize = 4;

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

fn messages(
    request_messages: Vec<crate::api::wire::ChatMessage>,
) -> Result<Vec<PromptMessage>, ApiError> {
    if request_messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must contain at least one message.",
        ));
    }
    Ok(request_messages
        .into_iter()
        .map(|message| PromptMessage {
            role: match message.role {
                MessageRole::System | MessageRole::Developer => Role::System,
                MessageRole::User => Role::User,
                MessageRole::Assistant => Role::Assistant,
            },
            content: flatten_content(message.content),
        })
        .collect())
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
        match request.n {
            None | Some(1) => {}
            Some(n) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("{n} is not a supported `n`: this gateway returns exactly 1 choice."),
                ));
            }
        }
        if request.logprobs == Some(true) || request.top_logprobs.is_some_and(|n| n != 0) {
            return Err(ApiError::invalid(
                if request.logprobs == Some(true) {
                    "logprobs"
                } else {
                    "top_logprobs"
                },
                "Log probabilities are not supported: the mistral.rs 0.8.1 engine reports wrong values under greedy decoding.",
            ));
        }
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
            },
            stop: stop_sequences(request.stop)?,
            constraint: output_constraint(request.response_format)?,
        })
    }

    /// Fixes the completion budget once the prompt's length is known, and
    /// refuses requests that cannot fit the model's context.
    pub fn into_generation(
        self,
        card: &ModelCard,
        prompt_tokens: usize,
        default_max_tokens: Option<usize>,
    ) -> Result<GenerationRequest, ApiError> {
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
        let room = card.context_length.saturating_sub(prompt_tokens);
        let max_tokens = match self.requested_max_tokens {
            Some(requested) => requested,
            None => default_max_tokens.map_or(room, |default| default.min(room)),
        };
        if max_tokens == 0 || prompt_tokens + max_tokens > card.context_length {
            return Err(ApiError::ContextLengthExceeded {
                limit: card.context_length,
                requested: prompt_tokens + max_tokens.max(1),
                prompt: prompt_tokens,
                completion: max_tokens.max(1),
            });
        }
        Ok(GenerationRequest {
            model: card.id.clone(),
            messages: self.messages,
            sampling: self.sampling,
            max_tokens,
            prompt_tokens,
            stop: self.stop,
            constraint: self.constraint,
            max_tokens_chosen: self.requested_max_tokens.is_some() || default_max_tokens.is_some(),
            stream: self.stream,
        })
    }
}

#[cfg(test)]
mod tests;
