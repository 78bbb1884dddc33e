//! One chat completion from validated request to rendered answer: admission,
//! prompt measurement, the engine call, and assembling either a JSON body or
//! the chunk sequence of a stream.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;

use crate::adapters::AdapterLease;
use crate::api::accounting::{Outcome, Settlement};
use crate::api::routing;
use crate::api::validate::ValidatedChat;
use crate::api::wire::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChunkChoice, ChunkDelta,
    Usage, UsageField,
};
use crate::app::AppState;
use crate::auth::Tenant;
use crate::engine::admission::AdmissionError;
use crate::engine::{
    AdmissionPermit, EngineError, EventStream, FinishReason, GenerationEvent, GenerationStream,
    TokenUsage,
};
use crate::error::ApiError;
use crate::ratelimit::{Decision, LimitKind, RateSnapshot};

/// A generation that has produced its first event: from here on, failures
/// are reported inside the answer rather than as an HTTP status.
pub struct Generation {
    pub id: String,
    pub created: u64,
    /// The name the client asked for, echoed back in every answer.
    pub model: String,
    pub include_usage: bool,
    /// The tenant's limits after this request was admitted.
    pub rate: RateSnapshot,
    first: Option<Result<GenerationEvent, EngineError>>,
    events: EventStream,
    outcome: Outcome,
    settlement: Settlement,
    _permit: AdmissionPermit,
    /// Keeps the adapter loaded until this generation is over.
    _adapter: Option<AdapterLease>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An engine failure as the client sees it (also inside a started stream).
pub fn engine_error(error: EngineError) -> ApiError {
    match error {
        EngineError::UnknownModel(model) => ApiError::ModelNotFound(model),
        EngineError::Rejected(message) => ApiError::InvalidRequest {
            message,
            param: None,
            code: None,
        },
        EngineError::Unavailable(cause) | EngineError::Internal(cause) => ApiError::engine(cause),
        EngineError::BadGateway(message) => ApiError::Upstream {
            timeout: false,
            message,
        },
        EngineError::GatewayTimeout(message) => ApiError::Upstream {
            timeout: true,
            message,
        },
        EngineError::Overloaded { retry_after_secs } => ApiError::Overloaded { retry_after_secs },
    }
}

fn rate_limited(
    state: &AppState,
    tenant: &Tenant,
    decision: Decision,
    wanted_tokens: u64,
) -> Result<RateSnapshot, ApiError> {
    let (kind, retry_after, snapshot) = match decision {
        Decision::Admitted(snapshot) => return Ok(snapshot),
        Decision::Refused {
            kind,
            retry_after,
            snapshot,
        } => (kind, retry_after, snapshot),
    };
    state
        .metrics
        .ratelimit_rejections
        .with_label_values(&[&tenant.id, kind.as_str()])
        .inc();
    let message = match (kind, retry_after) {
        (LimitKind::Tokens, None) => format!(
            "Request too large: it needs {wanted_tokens} tokens (prompt plus max_tokens) but the limit is {} tokens per minute. Reduce max_tokens or the prompt.",
            tenant.limits.tokens_per_minute.unwrap_or(0)
        ),
        (kind, wait) => {
            let (limit, unit) = match kind {
                LimitKind::Requests => (tenant.limits.requests_per_minute, "requests per minute"),
                LimitKind::Tokens => (tenant.limits.tokens_per_minute, "tokens per minute"),
                LimitKind::Concurrency => (tenant.limits.max_concurrent, "concurrent requests"),
            };
            format!(
                "Rate limit reached for tenant {} on {unit}: limit {}. Please try again in {}.",
                tenant.id,
                limit.unwrap_or(0),
                crate::ratelimit::openai_duration(wait.unwrap_or_default())
            )
        }
    };
    Err(ApiError::RateLimited {
        kind,
        retry_after,
        snapshot,
        message,
    })
}

/// Checks the tenant's access and limits, measures the prompt, admits and
/// starts one generation, waiting for its first event so that an engine that
/// refuses the request still yields a proper status.
pub async fn start(
    state: &AppState,
    tenant: &Tenant,
    chat: ValidatedChat,
) -> Result<Generation, ApiError> {
    let engine = state.engine()?;
    let routed = routing::route(state, &engine, tenant, &chat.model).await?;
    let card = routed.card.clone();
    let prompt_tokens = engine
        .count_prompt_tokens(&card.id, &chat.messages)
        .await
        .map_err(engine_error)?;
    let model = chat.model.clone();
    let include_usage = chat.include_usage;
    let request = chat.into_generation(&card, prompt_tokens, state.default_max_tokens)?;
    let wanted_tokens = (prompt_tokens + request.max_tokens) as u64;
    let (decision, reservation) = state
        .limiter
        .acquire(&tenant.id, &tenant.limits, wanted_tokens)
        .await
        .map_err(|_| ApiError::LimiterUnavailable)?;
    let rate = rate_limited(state, tenant, decision, wanted_tokens)?;
    let mut settlement = Settlement::new(
        reservation,
        state.meter.clone(),
        state.metrics.clone(),
        &tenant.id,
        &routed.label,
        prompt_tokens,
    );
    let permit = {
        let waiting_since = Instant::now();
        state.metrics.queue_depth.inc();
        let admitted = state.admission.admit().await;
        state.metrics.queue_depth.dec();
        state
            .metrics
            .queue_wait
            .observe(waiting_since.elapsed().as_secs_f64());
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
    let GenerationStream {
        mut events,
        progress,
    } = engine.generate(request).await.map_err(engine_error)?;
    settlement.generating(progress);
    let mut outcome = Outcome::new(state.metrics.clone(), &tenant.id, &routed.label, started);
    let first = events.next().await;
    if let Some(event) = &first {
        outcome.observe(event);
        settlement.observe(event);
    }
    if let Some(Err(error)) = first {
        return Err(engine_error(error));
    }
    Ok(Generation {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: unix_now(),
        model,
        include_usage,
        rate,
        first,
        events,
        outcome,
        settlement,
        _permit: permit,
        _adapter: routed.lease,
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
            self.settlement.observe(event);
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
