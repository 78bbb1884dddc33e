//! The seam between HTTP and inference. Only validated requests
//! ([`GenerationRequest`], built by `api::validate`) cross it; every engine,
//! in-process or remote, answers with the same stream of [`GenerationEvent`]s.
//! Dropping that stream cancels the generation.

pub mod admission;
pub mod mistral;
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

/// One message of the prompt, already flattened to plain text.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptMessage {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
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
pub struct GenerationRequest {
    pub model: String,
    pub messages: Vec<PromptMessage>,
    pub sampling: Sampling,
    pub max_tokens: usize,
    /// Prompt length measured during validation.
    pub prompt_tokens: usize,
    pub stop: Vec<String>,
    pub constraint: OutputConstraint,
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
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// New text, and the log probabilities of the tokens behind it when
    /// they were asked for.
    Delta {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// The last event of a successful generation.
    Finished {
        reason: FinishReason,
        usage: TokenUsage,
    },
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

pub type EventStream = Pin<Box<dyn Stream<Item = Result<GenerationEvent, EngineError>> + Send>>;

/// A started generation: its events, and its completion tokens so far
/// (what an aborted request is charged).
pub struct GenerationStream {
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
    async fn count_prompt_tokens(
        &self,
        model: &str,
        messages: &[PromptMessage],
    ) -> Result<PromptTokens, EngineError>;

    /// Starts generating. Dropping the returned stream cancels the generation.
    async fn generate(&self, request: GenerationRequest) -> Result<GenerationStream, EngineError>;

    /// Serves `adapter` over the base model as model `id`; returns the memory
    /// the loaded adapter holds. `Rejected` when this engine cannot.
    async fn load_adapter(&self, id: &str, adapter: &AdapterFiles) -> Result<u64, EngineError>;

    /// Stops serving adapter model `id` and frees it.
    async fn unload_adapter(&self, id: &str) -> Result<(), EngineError>;
}
