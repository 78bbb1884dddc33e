//! The seam between HTTP and inference. Only validated requests
//! ([`InferenceRequest`], built by `api::validate`) cross it; every engine,
//! in-process or remote, answers with the same stream of [`InferenceEvent`]s.
//! Dropping that stream cancels the generation.

pub mod admission;
pub mod kv_blocks;
pub mod mistral;
mod mistral_gate;
mod mistral_lora;
pub mod shared_base;
mod stop;
pub mod upstream;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use async_trait::async_trait;
use futures_util::Stream;

pub use admission::{Admission, AdmissionPermit};

/// The metrics an in-process engine updates from its own loop.
#[derive(Clone)]
pub struct EngineMetrics {
    pub sampled_tokens: prometheus::IntCounter,
    pub kv_preemptions: prometheus::IntCounter,
    pub kv_blocks_free: prometheus::IntGauge,
}

impl EngineMetrics {
    /// The gateway's own, for the served model `model`.
    pub fn exported(metrics: &crate::metrics::Metrics, model: &str) -> EngineMetrics {
        EngineMetrics {
            sampled_tokens: metrics.sampled_tokens.with_label_values(&[model]),
            kv_preemptions: metrics.kv_preemptions.clone(),
            kv_blocks_free: metrics.kv_blocks_free.clone(),
        }
    }

    /// Registered nowhere: for an engine run outside the gateway (benches,
    /// direct-engine tests).
    pub fn detached() -> EngineMetrics {
        let counter = |name: &str| prometheus::IntCounter::new(name, name).expect("valid metric");
        EngineMetrics {
            sampled_tokens: counter("sampled_tokens"),
            kv_preemptions: counter("kv_preemptions"),
            kv_blocks_free: prometheus::IntGauge::new("kv_blocks_free", "kv_blocks_free")
                .expect("valid metric"),
        }
    }
}

/// One message of the prompt, its content flattened to plain text. Tool
/// calls and tool results reach an engine only when the model's chat
/// template renders them (or a replica does); otherwise the gateway has
/// already written them out as text.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptMessage {
    pub role: Role,
    pub content: String,
    /// An assistant turn's function calls.
    pub tool_calls: Vec<PromptToolCall>,
    /// A `tool` message answers this call.
    pub tool_call_id: Option<String>,
}

impl PromptMessage {
    /// A message of text alone.
    pub fn text(role: Role, content: impl Into<String>) -> PromptMessage {
        PromptMessage {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// The message as an OpenAI message object, as chat templates and
    /// replicas read it. An assistant turn that only calls tools has
    /// `content: null`, as OpenAI clients send it.
    pub fn to_json(&self) -> serde_json::Value {
        let mut message = serde_json::Map::new();
        message.insert("role".into(), self.role.as_str().into());
        let content = if self.content.is_empty() && !self.tool_calls.is_empty() {
            serde_json::Value::Null
        } else {
            self.content.clone().into()
        };
        message.insert("content".into(), content);
        if !self.tool_calls.is_empty() {
            let calls = self.tool_calls.iter().map(PromptToolCall::to_json);
            message.insert("tool_calls".into(), calls.collect());
        }
        if let Some(id) = &self.tool_call_id {
            message.insert("tool_call_id".into(), id.clone().into());
        }
        serde_json::Value::Object(message)
    }
}

/// One function call of an earlier assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the client sent them: a JSON string.
    pub arguments: String,
}

impl PromptToolCall {
    /// OpenAI's shape, but with the arguments as an object when they parse
    /// as one: chat templates (Hermes, Qwen, Llama 3) write them with
    /// `tojson`, which would otherwise quote the string a second time.
    pub fn template_json(&self) -> serde_json::Value {
        let arguments = serde_json::from_str::<serde_json::Value>(&self.arguments)
            .ok()
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| self.arguments.clone().into());
        serde_json::json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": arguments},
        })
    }

    /// Exactly OpenAI's shape (arguments as a string), for replicas.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A function's result, answering an assistant's tool call.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// How a served model takes function tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSupport {
    /// Its chat template has no tools: the gateway describes the functions
    /// in a system preamble, and only forced calls (constrained decoding)
    /// are possible.
    Preamble,
    /// Its chat template renders `tools`; `format` is how the model writes
    /// a call, when the gateway knows it (else `auto` cannot be parsed).
    Template(Option<ToolCallFormat>),
    /// A remote replica takes tools and answers calls itself.
    PassThrough,
}

/// A chat template's way of writing a function call in plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes,
    /// Qwen 2.5/3, SmolLM3).
    Hermes,
    /// A bare `{"name": ..., "parameters": {...}}` object (Llama 3.1-3.3),
    /// possibly after `<|python_tag|>`.
    LlamaJson,
}

/// Output constraint from `response_format`.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputConstraint {
    None,
    JsonObject,
    JsonSchema(serde_json::Value),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    /// `Some(0.0)` means greedy.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub logit_bias: HashMap<u32, f32>,
    /// Report the chosen token's log probability.
    pub logprobs: bool,
    /// And this many alternatives (0..=20).
    pub top_logprobs: usize,
}

/// A request that passed validation: bounds checked, model resolved, token
/// budget known to fit the context.
#[derive(Debug, Clone)]
pub struct InferenceRequest {
    pub model: String,
    pub messages: Vec<PromptMessage>,
    pub sampling: Sampling,
    pub max_tokens: usize,
    /// Prompt length measured during validation.
    pub prompt_tokens: usize,
    pub stop: Vec<String>,
    pub constraint: OutputConstraint,
    /// Function tools for the chat template (OpenAI's `tools` array), when
    /// the model's template renders them.
    pub tools: Option<Arc<Vec<serde_json::Value>>>,
    /// Fields a remote replica answers itself, passed to it as the client
    /// sent them (`tools`, `tool_choice`, `parallel_tool_calls`, `n`,
    /// `logprobs`, `top_logprobs`); in-process engines ignore them.
    pub passthrough: serde_json::Map<String, serde_json::Value>,
    /// Whether the client or the configuration chose `max_tokens` (else it
    /// is the rest of the context, which a remote engine works out itself).
    pub max_tokens_chosen: bool,
    /// The client reads the answer as a stream (a remote engine is asked
    /// for the same, so nothing is buffered on the way).
    pub stream: bool,
    /// The prompt's token ids when the engine measured it itself (so it is
    /// not tokenized twice).
    pub prompt_ids: Option<Arc<Vec<u32>>>,
    /// Whose request this is, for an engine that queues work itself.
    pub claim: admission::Claim,
    /// Answers wanted for the prompt (OpenAI's `n`). A replica is asked for
    /// all of them; an in-process engine is always asked for one, and the
    /// gateway starts one generation per choice.
    pub choices: usize,
}

impl InferenceRequest {
    /// One greedy, streamed answer of `max_tokens` to `messages` measured as
    /// `prompt`, with nothing else asked: what callers of an engine without
    /// the gateway in front (benchmarks, reference tests) send.
    pub fn greedy(
        model: &str,
        messages: Vec<PromptMessage>,
        prompt: PromptTokens,
        max_tokens: usize,
    ) -> InferenceRequest {
        InferenceRequest {
            model: model.into(),
            messages,
            sampling: Sampling {
                temperature: Some(0.0),
                ..Sampling::default()
            },
            max_tokens,
            prompt_tokens: prompt.count,
            stop: Vec::new(),
            constraint: OutputConstraint::None,
            tools: None,
            passthrough: serde_json::Map::new(),
            max_tokens_chosen: true,
            stream: true,
            prompt_ids: prompt.ids,
            claim: Default::default(),
            choices: 1,
        }
    }
}

/// A measured prompt: its length, and its ids when the engine has them.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTokens {
    pub count: usize,
    pub ids: Option<Arc<Vec<u32>>>,
}

impl PromptTokens {
    pub fn counted(count: usize) -> PromptTokens {
        PromptTokens { count, ids: None }
    }
}

/// One generated token's log probability, as OpenAI reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely alternatives: (token, bytes, logprob), best first.
    pub top: Vec<(String, Vec<u8>, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    /// The answer ends with function calls.
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What a generation produces. `choice` says which of the request's
/// answers an event belongs to (always 0 from an in-process engine); a
/// generation of `n` choices ends after `n` `Finished` events.
#[derive(Debug, Clone, PartialEq)]
pub enum InferenceEvent {
    /// New text, and the log probabilities of the tokens behind it when
    /// they were asked for.
    Delta {
        choice: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// A piece of a function call that a remote engine parsed itself, in
    /// OpenAI's streamed shape: the first piece of call `index` carries its
    /// id and name, later ones only argument text.
    ToolCall(ToolCallDelta),
    /// The last event of one choice: its reason, the prompt's tokens and
    /// this choice's completion tokens.
    Finished {
        choice: usize,
        reason: FinishReason,
        usage: TokenUsage,
    },
}

impl InferenceEvent {
    /// Text of the first (for an in-process engine, the only) choice.
    pub fn text(text: String, logprobs: Vec<TokenLogprob>) -> InferenceEvent {
        InferenceEvent::Delta {
            choice: 0,
            text,
            logprobs,
        }
    }

    /// The end of the first (for an in-process engine, the only) choice.
    pub fn finished(reason: FinishReason, usage: TokenUsage) -> InferenceEvent {
        InferenceEvent::Finished {
            choice: 0,
            reason,
            usage,
        }
    }

    pub fn choice(&self) -> usize {
        match self {
            InferenceEvent::Delta { choice, .. } | InferenceEvent::Finished { choice, .. } => {
                *choice
            }
            InferenceEvent::ToolCall(call) => call.choice,
        }
    }

    /// The same event, for choice `index` (one generation of several that
    /// answer one request).
    pub fn for_choice(mut self, index: usize) -> InferenceEvent {
        match &mut self {
            InferenceEvent::Delta { choice, .. } | InferenceEvent::Finished { choice, .. } => {
                *choice = index
            }
            InferenceEvent::ToolCall(call) => call.choice = index,
        }
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallDelta {
    pub choice: usize,
    pub index: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model `{0}` is not served by this engine")]
    UnknownModel(String),
    /// The engine refused the request's content (e.g. an unusable constraint).
    #[error("{0}")]
    Rejected(String),
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    #[error("engine failure: {0}")]
    Internal(String),
    /// A remote engine failed or answered nonsense; the text is safe to show.
    #[error("{0}")]
    BadGateway(String),
    /// A remote engine took longer than its configured timeout.
    #[error("{0}")]
    GatewayTimeout(String),
    /// A remote engine is saturated and asked us to come back later.
    #[error("upstream overloaded")]
    Overloaded { retry_after_secs: u64 },
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<InferenceEvent, EngineError>> + Send>>;

/// A started generation: its events, and its completion tokens so far
/// (what an aborted request is charged).
pub struct InferenceStream {
    pub events: EventStream,
    pub progress: Arc<AtomicU64>,
}

/// What `/v1/models` shows about a served model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    pub id: String,
    pub created: u64,
    pub owned_by: String,
    pub context_length: usize,
    /// Valid token ids are `0..vocab_size` (for `logit_bias`).
    pub vocab_size: usize,
    /// The most input bytes one token can cover: a prompt longer than
    /// `context_length * max_token_bytes` cannot fit, whatever it says.
    pub max_token_bytes: usize,
    /// The engine reports honest log probabilities (and reproduces seeded
    /// sampling): requests for `logprobs` are refused otherwise.
    pub logprobs: bool,
    pub tools: ToolSupport,
}

impl ModelCard {
    /// Served by a remote replica, which answers `n`, `logprobs` and tools
    /// itself.
    pub fn is_remote(&self) -> bool {
        self.tools == ToolSupport::PassThrough
    }
}

/// A validated LoRA adapter on disk, ready to load over the base model.
#[derive(Debug, Clone)]
pub struct AdapterFiles {
    pub weights: std::path::PathBuf,
    pub rank: usize,
    pub alpha: f64,
    pub target_modules: Vec<String>,
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    fn models(&self) -> Vec<ModelCard>;

    fn model(&self, id: &str) -> Option<ModelCard> {
        self.models().into_iter().find(|card| card.id == id)
    }

    /// Tokens the prompt occupies once the chat template is applied,
    /// including the assistant turn's header.
    /// `tools` is OpenAI's `tools` array for the chat template, when the
    /// request has tools the template renders.
    async fn count_prompt_tokens(
        &self,
        model: &str,
        messages: &[PromptMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<PromptTokens, EngineError>;

    /// Starts generating. Dropping the returned stream cancels the generation.
    async fn generate(&self, request: InferenceRequest) -> Result<InferenceStream, EngineError>;

    /// Serves `adapter` over the base model as model `id`; returns the memory
    /// the loaded adapter holds. `Rejected` when this engine cannot.
    async fn load_adapter(&self, id: &str, adapter: &AdapterFiles) -> Result<u64, EngineError>;

    /// Stops serving adapter model `id` and frees it.
    async fn unload_adapter(&self, id: &str) -> Result<(), EngineError>;
}
