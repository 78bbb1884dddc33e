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

use std::collections::VecDeque;
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
    AdmissionPermit, EngineError, FinishReason, InferenceEvent, InferenceStream, TokenLogprob,
    TokenUsage,
};
use crate::error::ApiError;
use crate::ratelimit::{Decision, LimitKind, RateSnapshot, TopUp};

/// A completion whose engine work has produced its first event: from here
/// on, failures are reported inside the answer rather than as an HTTP status.
pub struct RunningCompletion {
    pub id: String,
    pub created: u64,
    /// The name the client asked for, echoed back in every answer.
    pub model: String,
    pub include_usage: bool,
    /// The client reads the answer as a stream.
    pub stream: bool,
    /// The tenant's limits after this request was admitted.
    pub rate: RateSnapshot,
    /// The answer carries log probabilities.
    pub logprobs: bool,
    /// Answers to the prompt (`n`), numbered from 0.
    pub choices: usize,
    first: Option<Result<InferenceEvent, EngineError>>,
    events: ClientSide,
    /// Read function calls out of each choice's text.
    decoders: Vec<OutputDecoder>,
    /// Outputs decided and not yet taken: a choice's last pieces and its
    /// end, then, after the last choice, the usage.
    pending: VecDeque<Output>,
    unfinished: usize,
    /// The finished choices' usage: the prompt once, every completion.
    usage: TokenUsage,
}

/// The answer as the client sees it, piece by piece.
pub enum Output {
    /// Content and calls of one choice, with the log probabilities of the
    /// tokens behind them when they were asked for.
    Pieces {
        choice: usize,
        pieces: Vec<Piece>,
        logprobs: Vec<TokenLogprob>,
    },
    /// One choice has ended.
    ChoiceFinished { choice: usize, reason: FinishReason },
    /// Every choice has ended: the last output.
    Finished { usage: TokenUsage },
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

/// The 429 for a limiter's refusal (counted in
/// `loragate_ratelimit_rejections_total`).
pub(crate) fn refusal(
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
            "Request too large: it needs {wanted_tokens} tokens (prompt plus max_tokens for each choice) but the limit is {} tokens per minute. Reduce max_tokens, n or the prompt.",
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
) -> Result<RunningCompletion, ApiError> {
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
    let stream = chat.stream;
    let logprobs = chat.wants_logprobs();
    let choices = chat.choices();
    let decoders = (0..choices)
        .map(|_| OutputDecoder::new(chat.output_mode()))
        .collect();
    let mut request = chat.into_request(card, prompt_tokens, state.default_max_tokens)?;
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
    let (events, progress) = if resolved.card.is_remote() {
        let (events, progress) = generate_retrying_once(state, &engine, request).await?;
        (events, vec![progress])
    } else {
        generate_choices(state, &engine, request).await?
    };
    settlement.generating(prompt_tokens, progress);
    let outcome = Outcome::new(state.metrics.clone(), &tenant.id, &resolved.label, started);
    let engine_side = EngineSide {
        events,
        outcome,
        settlement,
        permit,
        lease: routed.lease,
        choices,
    };
    let mut events = delivery::start(engine_side, state.write_idle_timeout, peer);
    let first = events.next().await;
    if let Some(Err(error)) = first {
        return Err(error.into());
    }
    Ok(RunningCompletion {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: unix_now_secs(),
        model,
        include_usage,
        stream,
        rate,
        logprobs,
        choices,
        first,
        events,
        decoders,
        pending: VecDeque::new(),
        unfinished: choices,
        usage: TokenUsage::default(),
    })
}

/// Starts one in-process generation per choice (an in-process engine
/// answers one) and merges their events, each numbered by its choice. A
/// seeded request seeds choice `i` with `seed + i`, so the choices differ
/// and stay reproducible.
async fn generate_choices(
    state: &AppState,
    engine: &std::sync::Arc<dyn crate::engine::Engine>,
    mut request: crate::engine::InferenceRequest,
) -> Result<
    (
        crate::engine::EventStream,
        Vec<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ),
    ApiError,
> {
    let choices = std::mem::replace(&mut request.choices, 1);
    // Started together, so the engine batches their prompts in one step;
    // a failure drops the choices already started, which cancels them.
    let started = futures_util::future::try_join_all((0..choices).map(|choice| {
        let mut one = request.clone();
        one.sampling.seed = request.sampling.seed.map(|s| s.wrapping_add(choice as u64));
        generate_retrying_once(state, engine, one)
    }))
    .await?;
    let mut streams = Vec::with_capacity(choices);
    let mut progress = Vec::with_capacity(choices);
    for (choice, (events, counted)) in started.into_iter().enumerate() {
        streams.push(events.map(move |event| event.map(|e| e.for_choice(choice))));
        progress.push(counted);
    }
    let events = match streams.len() {
        1 => streams.pop().map(StreamExt::boxed),
        _ => Some(futures_util::stream::select_all(streams).boxed()),
    };
    let events = events.ok_or_else(|| ApiError::engine("no choice was started"))?;
    Ok((events, progress))
}

/// An admitted request may still wait inside an in-process engine
/// (mistral.rs's cache-size gate runs one cache size at a time), and other
/// tenants' prompts decide how long: that wait is bounded like the queue's,
/// with the same 503. Replicas keep their own request timeout.
async fn start_within_queue_timeout(
    state: &AppState,
    engine: &std::sync::Arc<dyn crate::engine::Engine>,
    request: &crate::engine::InferenceRequest,
) -> Result<Result<InferenceStream, EngineError>, ApiError> {
    let starting = engine.generate(request.clone());
    if engine
        .model(&request.model)
        .is_some_and(|card| card.is_remote())
    {
        return Ok(starting.await);
    }
    match tokio::time::timeout(state.admission.queue_timeout(), starting).await {
        Ok(started) => Ok(started),
        Err(_) => {
            state
                .metrics
                .admission_rejections
                .with_label_values(&["engine_start_timeout"])
                .inc();
            Err(ApiError::Overloaded {
                retry_after_secs: state.admission.retry_after_secs(),
            })
        }
    }
}

/// Starts the generation and waits for its first event. An engine failure
/// at the start or as the first event (mistral.rs restarts its engine
/// thread after a panic, failing whatever it held) is retried once: the
/// client has seen nothing yet. The first event is put back in front of the
/// stream.
async fn generate_retrying_once(
    state: &AppState,
    engine: &std::sync::Arc<dyn crate::engine::Engine>,
    request: crate::engine::InferenceRequest,
) -> Result<
    (
        crate::engine::EventStream,
        std::sync::Arc<std::sync::atomic::AtomicU64>,
    ),
    ApiError,
> {
    let mut retried = false;
    loop {
        let (first, started) = match start_within_queue_timeout(state, engine, &request).await? {
            Ok(InferenceStream {
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

impl RunningCompletion {
    /// The next engine event, or `None` once the stream is exhausted.
    pub async fn next_event(&mut self) -> Option<Result<InferenceEvent, EngineError>> {
        match self.first.take() {
            Some(first) => Some(first),
            None => self.events.next().await,
        }
    }

    /// The next piece of the answer, or `None` once it has ended.
    pub async fn next_output(&mut self) -> Option<Result<Output, EngineError>> {
        if let Some(output) = self.pending.pop_front() {
            return Some(Ok(output));
        }
        let event = match self.next_event().await? {
            Ok(event) => event,
            Err(error) => return Some(Err(error)),
        };
        let choice = event.choice();
        let Some(decoder) = self.decoders.get_mut(choice) else {
            return Some(Err(EngineError::Internal(format!(
                "the engine answered choice {choice} of {}",
                self.choices
            ))));
        };
        let output = match event {
            InferenceEvent::Delta { text, logprobs, .. } => Output::Pieces {
                choice,
                pieces: decoder.push(&text),
                logprobs,
            },
            InferenceEvent::ToolCall(delta) => Output::Pieces {
                choice,
                pieces: decoder.remote_call(delta),
                logprobs: Vec::new(),
            },
            InferenceEvent::Finished { reason, usage, .. } => {
                let tail = decoder.finish();
                let reason = match reason {
                    FinishReason::Stop if decoder.called() => FinishReason::ToolCalls,
                    other => other,
                };
                self.unfinished = self.unfinished.saturating_sub(1);
                self.usage.prompt_tokens = usage.prompt_tokens;
                self.usage.completion_tokens += usage.completion_tokens;
                if !tail.is_empty() {
                    self.pending.push_back(Output::Pieces {
                        choice,
                        pieces: tail,
                        logprobs: Vec::new(),
                    });
                }
                self.pending
                    .push_back(Output::ChoiceFinished { choice, reason });
                if self.unfinished == 0 {
                    self.pending
                        .push_back(Output::Finished { usage: self.usage });
                }
                self.pending.pop_front()?
            }
        };
        Some(Ok(output))
    }

    /// Runs the generation to its end and builds the JSON answer.
    pub async fn collect(mut self) -> Result<ChatCompletion, ApiError> {
        let mut answers: Vec<ChoiceBuilder> =
            (0..self.choices).map(|_| Default::default()).collect();
        loop {
            match self.next_output().await {
                Some(Ok(Output::Pieces {
                    choice,
                    pieces,
                    logprobs,
                })) => {
                    let answer = &mut answers[choice];
                    for piece in pieces {
                        add_piece(&mut answer.content, &mut answer.calls, piece);
                    }
                    let entries = logprobs.iter().map(TokenLogprobEntry::from);
                    answer.logprobs.content.extend(entries);
                }
                Some(Ok(Output::ChoiceFinished { choice, reason })) => {
                    answers[choice].reason = Some(reason);
                }
                Some(Ok(Output::Finished { usage })) => {
                    let choices = answers.into_iter().enumerate();
                    return Ok(ChatCompletion {
                        id: self.id.clone(),
                        object: "chat.completion",
                        created: self.created,
                        model: self.model.clone(),
                        system_fingerprint: None,
                        choices: choices
                            .map(|(index, answer)| answer.build(index, self.logprobs))
                            .collect(),
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
        choice: usize,
        delta: ChunkDelta,
        logprobs: Option<ChoiceLogprobs>,
        finish: Option<FinishReason>,
    ) -> ChatCompletionChunk {
        let choice = ChunkChoice {
            index: choice,
            delta,
            logprobs,
            finish_reason: finish.map(|reason| reason.as_str().to_string()),
        };
        let usage = if self.include_usage {
            UsageField::Pending
        } else {
            UsageField::Omitted
        };
        self.chunk_of(vec![choice], usage)
    }

    pub fn usage_chunk(&self, usage: TokenUsage) -> ChatCompletionChunk {
        self.chunk_of(Vec::new(), UsageField::Final(usage_of(usage)))
    }

    fn chunk_of(&self, choices: Vec<ChunkChoice>, usage: UsageField) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        }
    }
}

/// One choice of a whole answer, as its pieces arrive.
#[derive(Default)]
struct ChoiceBuilder {
    content: String,
    calls: Vec<ToolCall>,
    logprobs: ChoiceLogprobs,
    reason: Option<FinishReason>,
}

impl ChoiceBuilder {
    fn build(self, index: usize, logprobs: bool) -> ChatChoice {
        let (content, tool_calls) = if self.calls.is_empty() {
            (Some(self.content), None)
        } else {
            (
                (!self.content.is_empty()).then_some(self.content),
                Some(self.calls),
            )
        };
        ChatChoice {
            index,
            message: AssistantMessage {
                role: "assistant",
                content,
                refusal: None,
                tool_calls,
            },
            logprobs: logprobs.then_some(self.logprobs),
            finish_reason: self
                .reason
                .unwrap_or(FinishReason::Stop)
                .as_str()
                .to_string(),
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
