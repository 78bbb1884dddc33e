//! One chat completion from validated request to rendered answer. The order
//! is the point: everything cheap and everything that can refuse comes
//! before anything that costs the engine work.
//!
//! 1. resolve the model (no adapter is loaded yet) and bound the prompt by
//!    its bytes;
//! 2. the tenant's limits, reserving a lower bound of the prompt's tokens;
//! 3. tokenize (off the engine loop and the HTTP workers), check the
//!    context, and reserve the rest of the exact count;
//! 4. admission, then the adapter load, then the engine.
//!
//! From the first event on, [`delivery`](crate::api::delivery) drains the
//! engine whatever the client does.

use std::time::Instant;

use crate::clock::unix_now_secs;

use futures_util::StreamExt;

use crate::api::accounting::{Outcome, Settlement};
use crate::api::delivery::{self, ClientSide, EngineSide};
use crate::api::routing;
use crate::api::tools::decode::{OutputDecoder, Piece};
use crate::api::tools::wire::{FunctionCall, ToolCall, ToolKind};
use crate::api::validate::ValidatedChat;
use crate::api::wire::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChoiceLogprobs, ChunkChoice,
    ChunkDelta, TokenLogprobEntry, Usage, UsageField,
};
use crate::app::AppState;
use crate::auth::Tenant;
use crate::engine::admission::{AdmissionError, Claim};
use crate::engine::{
    AdmissionPermit, EngineError, FinishReason, GenerationEvent, GenerationStream, TokenLogprob,
    TokenUsage,
};
use crate::error::ApiError;
use crate::ratelimit::{Decision, LimitKind, RateSnapshot, TopUp};

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
    /// The answer carries log probabilities.
    pub logprobs: bool,
    first: Option<Result<GenerationEvent, EngineError>>,
    events: ClientSide,
    /// Reads function calls out of the generated text.
    decoder: OutputDecoder,
    /// The engine's finish, held while the decoder's last pieces go out.
    finished: Option<(FinishReason, TokenUsage)>,
}

/// The answer as the client sees it, piece by piece.
pub enum Output {
    /// Content and calls, with the log probabilities of the tokens behind
    /// them when they were asked for.
    Pieces {
        pieces: Vec<Piece>,
        logprobs: Vec<TokenLogprob>,
    },
    Finished {
        reason: FinishReason,
        usage: TokenUsage,
    },
}

fn rate_limited(
    state: &AppState,
    tenant: &Tenant,
    decision: Decision,
    wanted_tokens: u64,
) -> Result<RateSnapshot, ApiError> {
    match decision {
        Decision::Admitted(snapshot) => Ok(snapshot),
        Decision::Refused {
            kind,
            retry_after,
            snapshot,
        } => Err(refusal(
            state,
            tenant,
            kind,
            retry_after,
            snapshot,
            wanted_tokens,
        )),
    }
}

fn refusal(
    state: &AppState,
    tenant: &Tenant,
    kind: LimitKind,
    retry_after: Option<std::time::Duration>,
    snapshot: RateSnapshot,
    wanted_tokens: u64,
) -> ApiError {
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
    ApiError::RateLimited {
        kind,
        retry_after,
        snapshot,
        message,
    }
}

fn claim_of(tenant: &Tenant) -> Claim {
    Claim {
        tenant: tenant.id.clone(),
        weight: tenant.weight,
        priority: tenant.priority,
    }
}

async fn admit(state: &AppState, tenant: &Tenant) -> Result<AdmissionPermit, ApiError> {
    let waiting_since = Instant::now();
    let depth = state
        .metrics
        .tenant_queue_depth
        .with_label_values(&[&tenant.id]);
    state.metrics.queue_depth.inc();
    depth.inc();
    let admitted = state.admission.admit(&claim_of(tenant)).await;
    state.metrics.queue_depth.dec();
    depth.dec();
    let waited = waiting_since.elapsed().as_secs_f64();
    state.metrics.queue_wait.observe(waited);
    state
        .metrics
        .tenant_queue_wait
        .with_label_values(&[&tenant.id])
        .observe(waited);
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
    })
}

/// Checks, limits, measures, admits and starts one generation, waiting
/// for its first event so that an engine that refuses the request still
/// yields a proper status. `peer` is the client's connection (for
/// streams, so a client that stops reading can be cut off).
pub async fn start(
    state: &AppState,
    tenant: &Tenant,
    mut chat: ValidatedChat,
    peer: Option<socket2::Socket>,
) -> Result<Generation, ApiError> {
    let engine = state.engine()?;
    let resolved = routing::resolve(state, &engine, tenant, &chat.model)?;
    let card = &resolved.card;
    chat.fit_model(card)?;
    let size = chat.prompt_size(card)?;
    let reserved = chat.wanted_tokens(card, size.min_tokens, state.default_max_tokens);
    let (decision, reservation) = state
        .limiter
        .acquire(&tenant.id, &tenant.limits, reserved)
        .await
        .map_err(|_| ApiError::LimiterUnavailable)?;
    let mut rate = rate_limited(state, tenant, decision, reserved)?;
    let mut settlement = Settlement::new(
        reservation,
        state.meter.clone(),
        state.metrics.clone(),
        &tenant.id,
        &resolved.label,
        chat.stream,
    );
    let measuring = Instant::now();
    let prompt = engine
        .count_prompt_tokens(&card.id, &chat.messages, chat.template_tools())
        .await
        .map_err(ApiError::from)?;
    let prompt_tokens = prompt.count;
    state
        .metrics
        .prompt_tokenization
        .observe(measuring.elapsed().as_secs_f64());
    let wanted = chat.wanted_tokens(card, prompt_tokens, state.default_max_tokens);
    let model = chat.model.clone();
    let include_usage = chat.include_usage;
    let logprobs = chat.wants_logprobs();
    let decoder = OutputDecoder::new(chat.output_mode());
    let mut request = chat.into_generation(card, prompt_tokens, state.default_max_tokens)?;
    request.prompt_ids = prompt.ids;
    request.claim = claim_of(tenant);
    if let Some(reservation) = settlement.reservation() {
        let extra = wanted.saturating_sub(reserved);
        match reservation
            .top_up(extra, wanted)
            .await
            .map_err(|_| ApiError::LimiterUnavailable)?
        {
            TopUp::Taken { tokens } => rate.tokens = tokens.or(rate.tokens),
            TopUp::Refused {
                retry_after,
                tokens,
            } => {
                rate.tokens = tokens.or(rate.tokens);
                let kind = LimitKind::Tokens;
                return Err(refusal(state, tenant, kind, retry_after, rate, wanted));
            }
        }
    }
    let permit = admit(state, tenant).await?;
    let routed = resolved.load(state, &engine).await?;
    request.model = routed.engine_model;
    let started = Instant::now();
    let (events, progress) = generate_retrying_once(state, &engine, request).await?;
    settlement.generating(prompt_tokens, progress);
    let outcome = Outcome::new(state.metrics.clone(), &tenant.id, &resolved.label, started);
    let engine_side = EngineSide {
        events,
        outcome,
        settlement,
        permit,
        lease: routed.lease,
    };
    let mut events = delivery::start(engine_side, state.write_idle_timeout, peer);
    let first = events.next().await;
    if let Some(Err(error)) = first {
        return Err(error.into());
    }
    Ok(Generation {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: unix_now_secs(),
        model,
        include_usage,
        rate,
        logprobs,
        first,
        events,
        decoder,
        finished: None,
    })
}

/// Starts the generation and waits for its first event. An engine failure
/// at the start or as the first event (mistral.rs restarts its engine
/// thread after a panic, failing whatever it held) is retried once: the
/// client has seen nothing yet. The first event is put back in front of the
/// stream.
async fn generate_retrying_once(
    state: &AppState,
    engine: &std::sync::Arc<dyn crate::engine::Engine>,
    request: crate::engine::GenerationRequest,
) -> Result<
    (
        crate::engine::EventStream,
        std::sync::Arc<std::sync::atomic::AtomicU64>,
    ),
    ApiError,
> {
    let mut retried = false;
    loop {
        let (first, started) = match engine.generate(request.clone()).await {
            Ok(GenerationStream {
                mut events,
                progress,
            }) => (events.next().await, Some((events, progress))),
            Err(error) => (Some(Err(error)), None),
        };
        // Tokens the engine may already have sampled do not matter: none
        // reached the client, and the failed attempt is not charged.
        if let Some(Err(EngineError::Internal(cause))) = &first
            && !retried
        {
            tracing::warn!(error = %cause, "the engine failed before the client got anything; retrying once");
            state.metrics.engine_retries.inc();
            retried = true;
            continue;
        }
        let Some((events, progress)) = started else {
            return Err(first
                .and_then(Result::err)
                .map(ApiError::from)
                .unwrap_or_else(|| ApiError::engine("the engine did not start")));
        };
        let events = futures_util::stream::iter(first).chain(events).boxed();
        return Ok((events, progress));
    }
}

impl Generation {
    /// The next engine event, or `None` once the stream is exhausted.
    pub async fn next_event(&mut self) -> Option<Result<GenerationEvent, EngineError>> {
        match self.first.take() {
            Some(first) => Some(first),
            None => self.events.next().await,
        }
    }

    /// The next piece of the answer, or `None` once it has ended.
    pub async fn next_output(&mut self) -> Option<Result<Output, EngineError>> {
        if let Some((reason, usage)) = self.finished.take() {
            return Some(Ok(Output::Finished { reason, usage }));
        }
        let pieces = match self.next_event().await? {
            Ok(GenerationEvent::Delta { text, logprobs }) => {
                let pieces = self.decoder.push(&text);
                return Some(Ok(Output::Pieces { pieces, logprobs }));
            }
            Ok(GenerationEvent::ToolCall(delta)) => self.decoder.remote_call(delta),
            Ok(GenerationEvent::Finished { reason, usage }) => {
                let tail = self.decoder.finish();
                let reason = match reason {
                    FinishReason::Stop if self.decoder.called() => FinishReason::ToolCalls,
                    other => other,
                };
                if tail.is_empty() {
                    return Some(Ok(Output::Finished { reason, usage }));
                }
                self.finished = Some((reason, usage));
                tail
            }
            Err(error) => return Some(Err(error)),
        };
        Some(Ok(Output::Pieces {
            pieces,
            logprobs: Vec::new(),
        }))
    }

    /// Runs the generation to its end and builds the JSON answer.
    pub async fn collect(mut self) -> Result<ChatCompletion, ApiError> {
        let mut content = String::new();
        let mut calls: Vec<ToolCall> = Vec::new();
        let mut logprobs = ChoiceLogprobs::default();
        loop {
            match self.next_output().await {
                Some(Ok(Output::Pieces {
                    pieces,
                    logprobs: entries,
                })) => {
                    for piece in pieces {
                        add_piece(&mut content, &mut calls, piece);
                    }
                    logprobs
                        .content
                        .extend(entries.iter().map(TokenLogprobEntry::from));
                }
                Some(Ok(Output::Finished { reason, usage })) => {
                    let (content, tool_calls) = if calls.is_empty() {
                        (Some(content), None)
                    } else {
                        ((!content.is_empty()).then_some(content), Some(calls))
                    };
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
                                content,
                                refusal: None,
                                tool_calls,
                            },
                            logprobs: self.logprobs.then_some(logprobs),
                            finish_reason: reason.as_str().to_string(),
                        }],
                        usage: usage_of(usage),
                    });
                }
                Some(Err(error)) => return Err(error.into()),
                None => return Err(ApiError::engine("engine stream ended without finishing")),
            }
        }
    }

    /// A chunk's `logprobs`: present (possibly empty) when they were asked for.
    pub fn chunk_logprobs(&self, entries: &[TokenLogprob]) -> Option<ChoiceLogprobs> {
        self.logprobs.then(|| ChoiceLogprobs {
            content: entries.iter().map(TokenLogprobEntry::from).collect(),
            refusal: None,
        })
    }

    pub fn chunk(
        &self,
        delta: ChunkDelta,
        logprobs: Option<ChoiceLogprobs>,
        finish: Option<FinishReason>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs,
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

/// Adds one piece to a whole answer's content and calls.
pub fn add_piece(content: &mut String, calls: &mut Vec<ToolCall>, piece: Piece) {
    match piece {
        Piece::Text(text) => content.push_str(&text),
        Piece::CallStart { id, name, .. } => calls.push(ToolCall {
            id,
            kind: ToolKind::Function,
            function: FunctionCall {
                name,
                arguments: String::new(),
            },
        }),
        Piece::CallArguments { index, text } => {
            if let Some(call) = calls.get_mut(index) {
                call.function.arguments.push_str(&text);
            }
        }
    }
}

pub fn usage_of(usage: TokenUsage) -> Usage {
    Usage {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.prompt_tokens + usage.completion_tokens,
    }
}
