//! One chat completion from validated request to rendered answer: admission,
//! prompt measurement, the engine call, and assembling either a JSON body or
//! the chunk sequence of a stream.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;

use crate::api::validate::ValidatedChat;
use crate::api::wire::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChunkChoice, ChunkDelta,
    Usage, UsageField,
};
use crate::app::AppState;
use crate::engine::admission::AdmissionError;
use crate::engine::{
    AdmissionPermit, EngineError, EventStream, FinishReason, GenerationEvent, TokenUsage,
};
use crate::error::ApiError;

/// A generation that has produced its first event: from here on, failures
/// are reported inside the answer rather than as an HTTP status.
pub struct Generation {
    pub id: String,
    pub created: u64,
    /// The name the client asked for, echoed back in every answer.
    pub model: String,
    pub include_usage: bool,
    first: Option<Result<GenerationEvent, EngineError>>,
    events: EventStream,
    outcome: Outcome,
    _permit: AdmissionPermit,
}

/// Records how the generation ended, once, when it is dropped: finished,
/// failed, or abandoned by a client that went away.
struct Outcome {
    metrics: actix_web::web::Data<crate::metrics::Metrics>,
    model: String,
    started: Instant,
    first_text_seen: bool,
    ended: Option<&'static str>,
}

impl Outcome {
    fn observe(&mut self, event: &Result<GenerationEvent, EngineError>) {
        match event {
            Ok(GenerationEvent::Delta { text }) if !text.is_empty() && !self.first_text_seen => {
                self.first_text_seen = true;
                self.metrics
                    .time_to_first_token
                    .with_label_values(&[&self.model])
                    .observe(self.started.elapsed().as_secs_f64());
            }
            Ok(GenerationEvent::Finished { reason, usage }) => {
                self.ended = Some(reason.as_str());
                self.metrics
                    .prompt_tokens
                    .with_label_values(&[&self.model])
                    .inc_by(usage.prompt_tokens as u64);
                self.metrics
                    .completion_tokens
                    .with_label_values(&[&self.model])
                    .inc_by(usage.completion_tokens as u64);
            }
            Err(_) => self.ended = Some("error"),
            Ok(_) => {}
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let reason = self.ended.unwrap_or("cancelled");
        self.metrics
            .finished
            .with_label_values(&[&self.model, reason])
            .inc();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn engine_error(error: EngineError) -> ApiError {
    match error {
        EngineError::UnknownModel(model) => ApiError::ModelNotFound(model),
        EngineError::Rejected(message) => ApiError::InvalidRequest {
            message,
            param: None,
            code: None,
        },
        EngineError::Unavailable(cause) | EngineError::Internal(cause) => ApiError::engine(cause),
    }
}

/// Admits, measures and starts one generation, waiting for its first event so
/// that an engine that refuses the request still yields a proper status.
pub async fn start(state: &AppState, chat: ValidatedChat) -> Result<Generation, ApiError> {
    let engine = state.engine()?;
    let card = engine
        .model(&chat.model)
        .ok_or_else(|| ApiError::ModelNotFound(chat.model.clone()))?;
    let permit = {
        state.metrics.queue_depth.inc();
        let admitted = state.admission.admit().await;
        state.metrics.queue_depth.dec();
        admitted.map_err(|rejection| {
            let reason = match rejection {
                AdmissionError::QueueFull => "queue_full",
                AdmissionError::QueueTimeout => "queue_timeout",
            };
            state
                .metrics
                .admission_rejections
                .with_label_values(&[reason])
                .inc();
            ApiError::Overloaded {
                retry_after_secs: state.admission.retry_after_secs(),
            }
        })?
    };
    let started = Instant::now();
    let prompt_tokens = engine
        .count_prompt_tokens(&card.id, &chat.messages)
        .await
        .map_err(engine_error)?;
    let model = chat.model.clone();
    let include_usage = chat.include_usage;
    let request = chat.into_generation(&card, prompt_tokens, state.default_max_tokens)?;
    let mut events = engine.generate(request).await.map_err(engine_error)?;
    let mut outcome = Outcome {
        metrics: state.metrics.clone(),
        model: card.id.clone(),
        started,
        first_text_seen: false,
        ended: None,
    };
    let first = events.next().await;
    let first = match first {
        Some(Err(error)) => {
            outcome.ended = Some("error");
            return Err(engine_error(error));
        }
        Some(event) => {
            outcome.observe(&event);
            Some(event)
        }
        None => None,
    };
    Ok(Generation {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: unix_now(),
        model,
        include_usage,
        first,
        events,
        outcome,
        _permit: permit,
    })
}

impl Generation {
    /// The next engine event, or `None` once the stream is exhausted.
    pub async fn next_event(&mut self) -> Option<Result<GenerationEvent, EngineError>> {
        let event = match self.first.take() {
            Some(first) => Some(first),
            None => self.events.next().await,
        };
        if let Some(event) = &event {
            self.outcome.observe(event);
        }
        event
    }

    /// Runs the generation to its end and builds the JSON answer.
    pub async fn collect(mut self) -> Result<ChatCompletion, ApiError> {
        let mut content = String::new();
        loop {
            match self.next_event().await {
                Some(Ok(GenerationEvent::Delta { text })) => content.push_str(&text),
                Some(Ok(GenerationEvent::Finished { reason, usage })) => {
                    return Ok(ChatCompletion {
                        id: self.id.clone(),
                        object: "chat.completion",
                        created: self.created,
                        model: self.model.clone(),
                        system_fingerprint: None,
                        choices: vec![ChatChoice {
                            index: 0,
                            message: AssistantMessage {
                                role: "assistant",
                                content: Some(content),
                                refusal: None,
                            },
                            logprobs: None,
                            finish_reason: reason.as_str().to_string(),
                        }],
                        usage: usage_of(usage),
                    });
                }
                Some(Err(error)) => return Err(engine_error(error)),
                None => return Err(ApiError::engine("engine stream ended without finishing")),
            }
        }
    }

    pub fn chunk(&self, delta: ChunkDelta, finish: Option<FinishReason>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish.map(|reason| reason.as_str().to_string()),
            }],
            usage: if self.include_usage {
                UsageField::Pending
            } else {
                UsageField::Omitted
            },
        }
    }

    pub fn usage_chunk(&self, usage: TokenUsage) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices: Vec::new(),
            usage: UsageField::Final(usage_of(usage)),
        }
    }
}

fn usage_of(usage: TokenUsage) -> Usage {
    Usage {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.prompt_tokens + usage.completion_tokens,
    }
}

/// Errors that surface after the stream has started, in the envelope.
pub fn stream_error(error: EngineError) -> ApiError {
    engine_error(error)
}
