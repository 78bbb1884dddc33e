//! The in-process engine: mistral.rs 0.8.1 serving one base model.
//!
//! Every request is run as a streaming request inside the engine, even when the
//! client asked for one JSON body: the engine cancels a streaming sequence as
//! soon as its receiver is gone, so a client that disconnects stops its
//! generation either way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use either::Either;
use indexmap::IndexMap;
use mistralrs::core::RequestMessage;
use mistralrs::{
    Constraint, CustomLogitsProcessor, GgufModelBuilder, MemoryGpuConfig, Model, ModelDType,
    MultiModelBuilder, NormalRequest, PagedAttentionConfig, PagedAttentionMetaBuilder, Request,
    Response, SamplingParams, StopTokens, Tensor, TextModelBuilder,
};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::mistral_gate::{CacheGate, SharedPermit};
use super::mistral_lora::{BaseFiles, add_adapter_model, merged_copy_bytes, remove_adapter_model};
use super::stop::{JsonEnd, Scan, StopScanner};
use super::{
    AdapterFiles, Engine, EngineError, FinishReason, InferenceEvent, InferenceRequest,
    InferenceStream, ModelCard, OutputConstraint, PromptMessage, PromptTokens, TokenUsage,
    ToolSupport,
};
use crate::config::{DeviceKind, ModelConfig, ModelDtype, ModelFormat};
use crate::prompt::chat::{ChatPrompt, PromptError};

pub struct MistralEngine {
    model: Arc<Model>,
    card: ModelCard,
    /// The chat template and tokenizer, applied by the gateway so prompts are
    /// measured off the engine's loop (mistral.rs serves tokenize requests
    /// inline, between generation steps).
    prompt: Arc<ChatPrompt>,
    /// The base's files when adapters can be loaded over it (safetensors bases).
    base: Option<BaseFiles>,
    /// Loaded adapter models, by engine model id.
    adapters: parking_lot::RwLock<HashMap<String, ModelCard>>,
    /// Tokens the engine actually sampled, counted inside its sampler: the
    /// ground truth for "did this generation really stop".
    sampled_tokens: IntCounter,
    /// One KV-cache size at a time per model (see `mistral_gate`); `None`
    /// with paged attention, whose cache has no such sizes.
    cache_gate: Option<Arc<CacheGate>>,
}

/// How long after its stream ends a sequence mistral.rs still holds may keep
/// prompts of another cache size out (see `SharedPermit`): a safety net, far
/// beyond the few steps a parked, cancelled sequence takes to be dropped.
const CANCELLED_SEQUENCE_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

impl MistralEngine {
    pub async fn load(
        config: &ModelConfig,
        sampled_tokens: IntCounter,
    ) -> anyhow::Result<MistralEngine> {
        let served = config.served_name.clone();
        let builder = MultiModelBuilder::new().with_default_model(&served);
        let builder = match config.format {
            ModelFormat::Gguf => builder.add_model_with_alias(&served, gguf_builder(config)?),
            ModelFormat::Safetensors => {
                builder.add_model_with_alias(&served, safetensors_builder(config)?)
            }
        };
        let model = builder.build().await?;
        let engine_limit = model
            .max_sequence_length_with_model(Some(&served))
            .map_err(|e| anyhow::anyhow!("cannot read the model's context length: {e}"))?;
        let context_length = match (config.context_length, engine_limit) {
            (Some(wanted), Some(limit)) if wanted > limit => anyhow::bail!(
                "config key `model.context_length`: {wanted} exceeds the model's maximum of {limit}"
            ),
            (Some(wanted), _) => wanted,
            (None, Some(limit)) => limit,
            (None, None) => anyhow::bail!(
                "config key `model.context_length`: the model does not declare one; set it"
            ),
        };
        let vocab_size = probe_vocab_size(&model, &served).await?;
        let prompt = load_prompt(config)?;
        let max_token_bytes = prompt.max_token_bytes();
        let created = crate::clock::unix_now_secs();
        let base = match config.format {
            ModelFormat::Safetensors => Some(BaseFiles::of(config, dtype(config))?),
            ModelFormat::Gguf => None,
        };
        Ok(MistralEngine {
            model: Arc::new(model),
            prompt: Arc::new(prompt),
            base,
            adapters: parking_lot::RwLock::new(HashMap::new()),
            card: ModelCard {
                id: served,
                created,
                owned_by: config.owned_by.clone(),
                context_length,
                vocab_size,
                max_token_bytes,
                // 0.8.1 reports base-10 logs of raw logits under greedy decoding.
                logprobs: false,
                // mistral.rs renders the template itself and, given tools,
                // parses calls its own way; the gateway keeps tools to its
                // preamble (forced calls, history written as text) here.
                tools: ToolSupport::Preamble,
            },
            sampled_tokens,
            cache_gate: config
                .paged_attention
                .is_none()
                .then(|| Arc::new(CacheGate::default())),
        })
    }

    /// The underlying mistral.rs handle, for benchmarks that call it directly.
    pub fn mistral(&self) -> &Model {
        &self.model
    }

    /// The engine's request queue. A closed one belongs to an engine thread
    /// still unwinding from a panic; mistral.rs starts a new engine on the
    /// first `get_sender` after that thread has ended, so this waits for it
    /// (bounded) instead of failing the request.
    async fn live_sender(&self, model: &str) -> Result<mpsc::Sender<Request>, EngineError> {
        const POLL: std::time::Duration = std::time::Duration::from_millis(50);
        const POLLS: usize = 100;
        for _ in 0..POLLS {
            let sender = self
                .model
                .inner()
                .get_sender(Some(model))
                .map_err(|e| EngineError::Unavailable(e.to_string()))?;
            if !sender.is_closed() {
                return Ok(sender);
            }
            tokio::time::sleep(POLL).await;
        }
        Err(EngineError::Unavailable(
            "the engine stopped and did not restart".into(),
        ))
    }

    fn check_model(&self, model: &str) -> Result<(), EngineError> {
        if model == self.card.id || self.adapters.read().contains_key(model) {
            Ok(())
        } else {
            Err(EngineError::UnknownModel(model.to_string()))
        }
    }
}

/// The vocabulary size is not exposed by mistral.rs; one greedy token with a
/// processor that looks at the logits' width tells it.
async fn probe_vocab_size(model: &Model, served: &str) -> anyhow::Result<usize> {
    let width = Arc::new(AtomicU64::new(0));
    let seen = width.clone();
    let probe = move |logits: &Tensor, _context: &[u32]| {
        let vocab = logits.dims().last().copied().unwrap_or(0);
        seen.store(vocab as u64, Ordering::Relaxed);
        Ok(logits.clone())
    };
    let (tx, mut rx) = mpsc::channel(4);
    let request = NormalRequest {
        logits_processors: Some(vec![Arc::new(probe)]),
        model_id: Some(served.to_string()),
        ..NormalRequest::new_simple(
            RequestMessage::Chat {
                messages: chat_messages(&[PromptMessage::text(super::Role::User, "hi")]),
                enable_thinking: None,
                reasoning_effort: None,
            },
            SamplingParams {
                max_len: Some(1),
                ..SamplingParams::deterministic()
            },
            tx,
            model.inner().next_request_id(),
            None,
            None,
        )
    };
    model
        .inner()
        .get_sender(Some(served))?
        .send(Request::Normal(Box::new(request)))
        .await
        .map_err(|_| anyhow::anyhow!("engine stopped during start-up"))?;
    match rx.recv().await {
        Some(Response::Done(_)) => {}
        Some(Response::InternalError(e) | Response::ValidationError(e)) => {
            anyhow::bail!("the model failed its first generation: {e}")
        }
        Some(Response::ModelError(message, _)) => {
            anyhow::bail!("the model failed its first generation: {message}")
        }
        _ => anyhow::bail!("the model gave no answer to its first generation"),
    }
    match width.load(Ordering::Relaxed) {
        0 => anyhow::bail!("could not determine the model's vocabulary size"),
        vocab => Ok(vocab as usize),
    }
}

/// The model's chat template and tokenizer as the gateway reads them
/// (mistral.rs keeps its own private): from the folder, or rebuilt from the
/// GGUF's metadata.
fn load_prompt(config: &ModelConfig) -> anyhow::Result<ChatPrompt> {
    match config.format {
        ModelFormat::Safetensors => ChatPrompt::from_model_dir(&config.path),
        ModelFormat::Gguf => {
            use crate::prompt::gguf;
            let content = gguf::read_content(&config.path)?;
            let tokenizer = gguf::tokenizer(&content)?;
            let (template, bos, eos) = gguf::chat_template(&content)?;
            let template =
                crate::prompt::template::ChatTemplate::from_parts(&template, &bos, &eos)?;
            Ok(ChatPrompt::new(template, tokenizer))
        }
    }
}

fn dtype(config: &ModelConfig) -> ModelDType {
    match config.dtype {
        ModelDtype::Auto => ModelDType::Auto,
        ModelDtype::F32 => ModelDType::F32,
        ModelDtype::F16 => ModelDType::F16,
        ModelDtype::Bf16 => ModelDType::BF16,
    }
}

fn gguf_builder(config: &ModelConfig) -> anyhow::Result<GgufModelBuilder> {
    let (dir, file) = split_file(&config.path)?;
    let mut builder = GgufModelBuilder::new(dir, vec![file])
        .with_max_num_seqs(config.max_num_seqs)
        .with_prefix_cache_n(prefix_cache(config));
    if let Some(paged) = paged_attention(config)? {
        builder = builder.with_paged_attn(paged);
    }
    if config.device == DeviceKind::Cpu {
        builder = builder.with_force_cpu();
    }
    Ok(builder)
}

fn safetensors_builder(config: &ModelConfig) -> anyhow::Result<TextModelBuilder> {
    let mut builder = TextModelBuilder::new(config.path.display())
        .with_dtype(dtype(config))
        .with_max_num_seqs(config.max_num_seqs)
        .with_prefix_cache_n(prefix_cache(config));
    if let Some(paged) = paged_attention(config)? {
        builder = builder.with_paged_attn(paged);
    }
    if config.device == DeviceKind::Cpu {
        builder = builder.with_force_cpu();
    }
    Ok(builder)
}

/// The engine's paged-attention settings: a fixed KV pool per model.
pub(super) fn paged_attention(
    config: &ModelConfig,
) -> anyhow::Result<Option<PagedAttentionConfig>> {
    config
        .paged_attention
        .map(|paged| {
            PagedAttentionMetaBuilder::default()
                .with_block_size(paged.block_size)
                .with_gpu_memory(MemoryGpuConfig::ContextSize(paged.context_tokens))
                .build()
        })
        .transpose()
}

fn prefix_cache(config: &ModelConfig) -> Option<usize> {
    (config.prefix_cache_entries > 0).then_some(config.prefix_cache_entries)
}

fn split_file(path: &Path) -> anyhow::Result<(String, String)> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("model path {} has no folder", path.display()))?;
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| anyhow::anyhow!("model path {} has no file name", path.display()))?;
    Ok((dir.display().to_string(), file.to_string()))
}

fn chat_messages(messages: &[PromptMessage]) -> Vec<IndexMap<String, mistralrs::MessageContent>> {
    messages
        .iter()
        .map(|message| {
            let mut entry = IndexMap::new();
            entry.insert(
                "role".to_string(),
                Either::Left(message.role.as_str().to_string()),
            );
            entry.insert("content".to_string(), Either::Left(message.content.clone()));
            entry
        })
        .collect()
}

/// mistral.rs hands the schema to llguidance as it is; the whitespace bound
/// is the shared-base engine's (see `JSON_WHITESPACE`), so a small model
/// cannot loop on newlines inside a forced call or a JSON answer.
fn constraint(constraint: &OutputConstraint) -> Constraint {
    let bounded = |mut schema: serde_json::Value| {
        if let Some(object) = schema.as_object_mut() {
            object.entry("x-guidance").or_insert_with(|| {
                serde_json::json!({"whitespace_pattern": super::shared_base::constraint::JSON_WHITESPACE})
            });
        }
        Constraint::JsonSchema(schema)
    };
    match constraint {
        OutputConstraint::None => Constraint::None,
        OutputConstraint::JsonObject => bounded(serde_json::json!({"type": "object"})),
        OutputConstraint::JsonSchema(schema) => bounded(schema.clone()),
    }
}

fn sampling_params(request: &InferenceRequest) -> SamplingParams {
    let sampling = &request.sampling;
    SamplingParams {
        // mistral.rs reads an absent temperature as 1.0 (OpenAI's default) and
        // anything below 1e-7 as greedy, so 0 must be passed through as 0.
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        frequency_penalty: sampling.frequency_penalty,
        presence_penalty: sampling.presence_penalty,
        stop_toks: (!request.stop.is_empty()).then(|| StopTokens::Seqs(request.stop.clone())),
        max_len: Some(request.max_tokens),
        n_choices: 1,
        ..SamplingParams::neutral()
    }
}

#[async_trait]
impl Engine for MistralEngine {
    fn models(&self) -> Vec<ModelCard> {
        let mut cards = vec![self.card.clone()];
        cards.extend(self.adapters.read().values().cloned());
        cards
    }

    // Without cloning every adapter's card on each request.
    fn model(&self, id: &str) -> Option<ModelCard> {
        if id == self.card.id {
            return Some(self.card.clone());
        }
        self.adapters.read().get(id).cloned()
    }

    async fn load_adapter(&self, id: &str, adapter: &AdapterFiles) -> Result<u64, EngineError> {
        let base = self.base.as_ref().ok_or_else(|| {
            EngineError::Rejected(
                "adapters need a safetensors base model (model.format = \"safetensors\")".into(),
            )
        })?;
        add_adapter_model(&self.model, base, id, adapter).await?;
        let card = ModelCard {
            id: id.to_string(),
            ..self.card.clone()
        };
        self.adapters.write().insert(id.to_string(), card);
        Ok(merged_copy_bytes(base))
    }

    async fn unload_adapter(&self, id: &str) -> Result<(), EngineError> {
        if self.adapters.write().remove(id).is_none() {
            return Err(EngineError::UnknownModel(id.to_string()));
        }
        remove_adapter_model(self.model.clone(), id).await
    }

    async fn count_prompt_tokens(
        &self,
        model: &str,
        messages: &[PromptMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<PromptTokens, EngineError> {
        self.check_model(model)?;
        let (prompt, messages) = (self.prompt.clone(), messages.to_vec());
        let tools = tools.map(<[serde_json::Value]>::to_vec);
        let ids = crate::prompt::run_blocking(move || prompt.tokenize(&messages, tools.as_deref()))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
            .map_err(|error| match error {
                PromptError::Template(message) => EngineError::Rejected(message),
                other => EngineError::Internal(other.to_string()),
            })?;
        // mistral.rs renders and tokenizes again itself: only the count is kept.
        Ok(PromptTokens::counted(ids.len()))
    }

    async fn generate(&self, request: InferenceRequest) -> Result<InferenceStream, EngineError> {
        self.check_model(&request.model)?;
        let permit = match &self.cache_gate {
            Some(gate) => Some(gate.enter(&request.model, request.prompt_tokens).await),
            None => None,
        };
        let permit = SharedPermit::new(permit);
        let sender = self.live_sender(&request.model).await?;
        let request_tokens = Arc::new(AtomicU64::new(0));
        let tap = SamplerTap {
            permit: permit.clone(),
            sampled_tokens: self.sampled_tokens.clone(),
            request_tokens: request_tokens.clone(),
            max_tokens: request.max_tokens as u64,
            logit_bias: request.sampling.logit_bias.clone(),
            bias_tensor: OnceLock::new(),
        };
        let (tx, rx) = mpsc::channel(16);
        let normal = NormalRequest {
            messages: RequestMessage::Chat {
                messages: chat_messages(&request.messages),
                enable_thinking: None,
                reasoning_effort: None,
            },
            sampling_params: sampling_params(&request),
            response: tx,
            // Needed for the first token's raw text (see `LeadingSpace`).
            return_logprobs: true,
            is_streaming: true,
            id: self.model.inner().next_request_id(),
            constraint: constraint(&request.constraint),
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: Some(vec![Arc::new(tap)]),
            return_raw_logits: false,
            web_search_options: None,
            model_id: Some(request.model.clone()),
            truncate_sequence: false,
        };
        // Failing here means the engine died since `live_sender`: nothing
        // was generated, so the caller may retry.
        sender
            .send(Request::Normal(Box::new(normal)))
            .await
            .map_err(|_| EngineError::Internal("engine stopped".into()))?;
        let budget = TokenBudget {
            prompt_tokens: request.prompt_tokens,
            max_tokens: request.max_tokens,
            sampled: request_tokens.clone(),
        };
        let engine = EngineLiveness { sender };
        Ok(InferenceStream {
            events: Box::pin(events(
                permit.stream_hold(CANCELLED_SEQUENCE_GRACE),
                rx,
                StopScanner::new(request.stop),
                budget,
                engine,
                (request.constraint != OutputConstraint::None).then(JsonEnd::default),
            )),
            progress: request_tokens,
        })
    }
}

/// Runs inside the engine's sampler for every token of one request.
/// It counts sampled tokens (so cancellation is observable) and applies
/// `logit_bias`, which mistral.rs 0.8.1 accepts in `SamplingParams` but
/// never applies.
struct SamplerTap {
    sampled_tokens: IntCounter,
    /// This request's own count: its completion length, even when the
    /// engine never sends a final chunk.
    request_tokens: Arc<AtomicU64>,
    max_tokens: u64,
    logit_bias: HashMap<u32, f32>,
    bias_tensor: OnceLock<Tensor>,
    /// Dropped with the sequence, inside mistral.rs.
    permit: SharedPermit,
}

impl Drop for SamplerTap {
    fn drop(&mut self) {
        self.permit.release();
    }
}

impl CustomLogitsProcessor for SamplerTap {
    fn apply(&self, logits: &Tensor, _context: &[u32]) -> mistralrs::Result<Tensor> {
        self.sampled_tokens.inc();
        // 0.8.1 can run the sampler once more after the last token it sends
        // (257 samples for max_tokens 256): what a cancelled or failed
        // generation is charged stops at the budget, as its output does.
        let _ = self
            .request_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_tokens).then_some(n + 1)
            });
        if self.logit_bias.is_empty() {
            return Ok(logits.clone());
        }
        let bias = match self.bias_tensor.get() {
            Some(bias) => bias,
            None => {
                let vocab = logits.dims().last().copied().unwrap_or(0);
                let mut dense = vec![0f32; vocab];
                for (&token, &value) in &self.logit_bias {
                    if let Some(slot) = dense.get_mut(token as usize) {
                        *slot = value;
                    }
                }
                let tensor =
                    Tensor::from_vec(dense, vocab, logits.device())?.to_dtype(logits.dtype())?;
                self.bias_tensor.get_or_init(|| tensor)
            }
        };
        logits.broadcast_add(bias)
    }
}

/// mistral.rs trims whitespace from the start of the first streamed delta;
/// the first token's own text (sent with its logprob) shows what was cut.
#[derive(Default)]
struct LeadingSpace {
    restored: bool,
}

impl LeadingSpace {
    fn restore(&mut self, delta: String, first_token: Option<&[u8]>) -> String {
        if self.restored {
            return delta;
        }
        self.restored = true;
        let raw = first_token.map(String::from_utf8_lossy).unwrap_or_default();
        let cut: String = raw.chars().take_while(|c| c.is_whitespace()).collect();
        if cut.is_empty() || delta.starts_with(&cut) {
            delta
        } else {
            cut + &delta
        }
    }
}

/// What the gateway knows about a generation's length independently of the
/// engine's final chunk.
struct TokenBudget {
    prompt_tokens: usize,
    max_tokens: usize,
    sampled: Arc<AtomicU64>,
}

impl TokenBudget {
    /// Never more than the budget: 0.8.1 can run its sampler (and this
    /// count) once more after the last token it sends.
    fn usage(&self) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: (self.sampled.load(Ordering::Relaxed) as usize).min(self.max_tokens),
        }
    }

    /// mistral.rs 0.8.1 sends no final chunk when the last token ends inside
    /// a multi-byte character; it simply drops the sender. Reaching the
    /// budget explains that; anything else ended the sequence naturally.
    fn reached(&self) -> bool {
        self.sampled.load(Ordering::Relaxed) as usize >= self.max_tokens
    }

    fn silent_end_reason(&self) -> FinishReason {
        if self.reached() {
            FinishReason::Length
        } else {
            FinishReason::Stop
        }
    }
}

/// Tells a generation the engine ended from one whose engine thread died.
///
/// mistral.rs runs each model's engine on a thread of its own; a panic there
/// (an `unwrap` in its scheduler or KV cache) unwinds the thread, dropping
/// every sequence it held, the requests still queued for it, and the queue's
/// receiver. Each of those requests sees its response channel close without
/// a last chunk, exactly as a sequence that ends silently does (see
/// [`TokenBudget::silent_end_reason`]). The queue tells the two apart: it is
/// closed only when the engine is gone. The next `get_sender` restarts the
/// engine.
struct EngineLiveness {
    sender: mpsc::Sender<Request>,
}

impl EngineLiveness {
    /// How long a dying engine may take to drop its queue after its
    /// sequences: both happen in the same unwind, so this is only ever
    /// waited out by a sequence that really ended silently short of its
    /// budget (a rare end inside a multi-byte character).
    const UNWIND_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

    async fn stopped(&self) -> bool {
        tokio::time::timeout(Self::UNWIND_GRACE, self.sender.closed())
            .await
            .is_ok()
    }
}

/// `json_end`: the answer is constrained JSON, ended by the gateway when its
/// value closes (see [`JsonEnd`]).
fn events(
    permit: super::mistral_gate::StreamHold,
    mut rx: mpsc::Receiver<Response>,
    mut stops: StopScanner,
    budget: TokenBudget,
    engine: EngineLiveness,
    mut json_end: Option<JsonEnd>,
) -> impl futures_util::Stream<Item = Result<InferenceEvent, EngineError>> + Send {
    async_stream::stream! {
        let _permit = permit;
        let mut leading = LeadingSpace::default();
        loop {
            let chunk = match rx.recv().await {
                Some(Response::Chunk(chunk)) => chunk,
                Some(Response::ValidationError(e)) => {
                    yield Err(EngineError::Rejected(e.to_string()));
                    return;
                }
                Some(Response::InternalError(e)) => {
                    yield Err(EngineError::Internal(e.to_string()));
                    return;
                }
                Some(Response::ModelError(message, _)) => {
                    yield Err(EngineError::Internal(message));
                    return;
                }
                Some(_) => {
                    yield Err(EngineError::Internal("unexpected response kind from engine".into()));
                    return;
                }
                None => {
                    // At the budget a silent end is the engine's normal one;
                    // the client already has every token it asked for.
                    if !budget.reached() && engine.stopped().await {
                        yield Err(EngineError::Internal(
                            "the engine stopped during this generation (it is restarted for the next request)".into(),
                        ));
                        return;
                    }
                    let tail = stops.finish();
                    if !tail.is_empty() {
                        yield Ok(InferenceEvent::text(tail, Vec::new()));
                    }
                    yield Ok(InferenceEvent::finished(budget.silent_end_reason(), budget.usage()));
                    return;
                }
            };
            let engine_usage = chunk.usage.as_ref().map(|u| TokenUsage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens.min(budget.max_tokens),
            });
            for choice in chunk.choices {
                let raw = choice.logprobs.as_ref().and_then(|l| l.bytes.as_deref());
                let text = leading.restore(choice.delta.content.unwrap_or_default(), raw);
                let (mut text, mut stopped) = match stops.push(&text) {
                    Scan::Continue(text) => (text, false),
                    Scan::Stopped(text) => (text, true),
                };
                if let Some(end) = json_end.as_mut().and_then(|json| json.push(&text)) {
                    text.truncate(end);
                    stopped = true;
                }
                if !text.is_empty() {
                    yield Ok(InferenceEvent::text(text, Vec::new()));
                }
                let reason = if stopped {
                    Some(FinishReason::Stop)
                } else {
                    choice.finish_reason.as_deref().map(finish_reason)
                };
                if let Some(reason) = reason {
                    let tail = stops.finish();
                    if !stopped && !tail.is_empty() {
                        yield Ok(InferenceEvent::text(tail, Vec::new()));
                    }
                    // Cutting at a stop sequence drops the receiver, which cancels
                    // the sequence before the engine reports usage.
                    let usage = engine_usage.unwrap_or_else(|| budget.usage());
                    yield Ok(InferenceEvent::finished(reason, usage));
                    return;
                }
            }
        }
    }
}

fn finish_reason(engine_reason: &str) -> FinishReason {
    match engine_reason {
        "length" | "model_length" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}
