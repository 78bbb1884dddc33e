//! The shared-base engine: one copy of a Llama-family base model on
//! candle, and LoRA adapters applied unmerged, chosen per sequence, so a
//! resident adapter costs its own megabytes rather than a copy of the model.
//! mistral.rs 0.8.1 merges every adapter into its own copy of the base and
//! exposes no per-request adapter, so this engine is the gateway's own; it
//! serves safetensors bases, and mistral.rs keeps GGUF bases.
//!
//! - [`config`]: the model's shape from `config.json`
//! - [`model`]: the forward pass over a flattened, mixed-adapter batch
//! - [`attention`]: attention over per-sequence caches of any length
//! - [`kv`]: the caches and their byte budget
//! - [`lora`]: adapter weights and their per-row update
//! - [`sampler`], [`constraint`]: choosing tokens, honestly and reproducibly
//! - [`sequence`], [`scheduler`]: one generation, and the continuous batch

pub mod attention;
pub mod config;
pub mod constraint;
pub mod kv;
pub mod lora;
pub mod model;
pub mod paged;
pub mod plan;
pub mod sampler;
pub mod scheduler;
pub mod sequence;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use candle_core::{DType, Device};
use futures_util::StreamExt;
use parking_lot::RwLock;
use prometheus::IntCounter;

use self::config::LlamaConfig;
use self::constraint::ConstraintFactory;
use self::kv::{KvPool, KvStore};
use self::lora::AdapterWeights;
use self::model::Model;
use self::paged::PagedPool;
use self::sampler::{Sampler, SamplingConfig};
use self::scheduler::{Command, Scheduler, SchedulerConfig, SchedulerMetrics};
use self::sequence::{LoadedAdapter, Sequence};
use super::stop::StopScanner;
use super::{
    AdapterFiles, Engine, EngineError, EngineMetrics, InferenceRequest, InferenceStream, ModelCard,
    OutputConstraint, PromptMessage, PromptTokens,
};
use crate::config::{DeviceKind, ModelConfig, ModelDtype};
use crate::prompt::chat::{ChatPrompt, PromptError};
use crate::prompt::detokenize::IncrementalDecoder;
use crate::prompt::run_blocking;
use crate::prompt::token_bytes::TokenBytes;

pub struct SharedBaseEngine {
    card: ModelCard,
    model: Arc<Model>,
    prompt: Arc<ChatPrompt>,
    token_bytes: Arc<TokenBytes>,
    eos: Arc<Vec<u32>>,
    adapters: RwLock<HashMap<String, Arc<LoadedAdapter>>>,
    commands: Sender<Command>,
    /// Built on the first constrained request (it indexes the vocabulary).
    constraints: OnceLock<Arc<ConstraintFactory>>,
    sampled_tokens: IntCounter,
}

impl Drop for SharedBaseEngine {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
    }
}

/// Where the weights, adapters and caches live, and in what precision:
/// `f32` on CPU unless `model.dtype` says `f16`; `bf16` by default on CUDA
/// (config validation refused `bf16` on CPU and CUDA without the feature).
fn placement(settings: &ModelConfig) -> anyhow::Result<(Device, DType)> {
    let device = match settings.device {
        DeviceKind::Cpu => Device::Cpu,
        DeviceKind::Cuda => Device::new_cuda(0)
            .map_err(|e| anyhow::anyhow!("config key `model.device`: no CUDA device: {e}"))?,
    };
    let dtype = match (settings.dtype, settings.device) {
        (ModelDtype::F32, _) | (ModelDtype::Auto, DeviceKind::Cpu) => DType::F32,
        (ModelDtype::F16, _) => DType::F16,
        (ModelDtype::Bf16, _) | (ModelDtype::Auto, DeviceKind::Cuda) => DType::BF16,
    };
    Ok((device, dtype))
}

fn blocking_error(error: crate::prompt::blocking::BlockingError) -> EngineError {
    EngineError::Internal(error.to_string())
}

impl SharedBaseEngine {
    pub async fn load(
        config: &ModelConfig,
        metrics: EngineMetrics,
    ) -> anyhow::Result<SharedBaseEngine> {
        let dir = config.path.clone();
        let settings = config.clone();
        run_blocking(move || SharedBaseEngine::load_blocking(&dir, &settings, metrics))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
    }

    fn load_blocking(
        dir: &std::path::Path,
        settings: &ModelConfig,
        metrics: EngineMetrics,
    ) -> anyhow::Result<SharedBaseEngine> {
        let llama = LlamaConfig::from_model_dir(dir)?;
        let (device, dtype) = placement(settings)?;
        let prompt = ChatPrompt::from_model_dir(dir)?;
        let context_length = match settings.context_length {
            Some(wanted) if wanted > llama.max_positions => anyhow::bail!(
                "config key `model.context_length`: {wanted} exceeds the model's maximum of {}",
                llama.max_positions
            ),
            Some(wanted) => wanted,
            None => llama.max_positions,
        };
        let mut eos = llama.eos_tokens.clone();
        if let Some(id) = prompt.eos_token_id()
            && !eos.contains(&id)
        {
            eos.push(id);
        }
        if eos.is_empty() {
            anyhow::bail!(
                "{}: the model names no end-of-sequence token",
                dir.display()
            );
        }
        let model = Arc::new(Model::load(dir, llama.clone(), dtype, &device)?);
        let bytes_per_token = llama.kv_bytes_per_token(dtype.size_in_bytes());
        let (store, kv_budget) = match settings.paged_attention {
            Some(paged) => {
                let blocks = paged.context_tokens.div_ceil(paged.block_size);
                let pool = PagedPool::new(&llama, dtype, &device, blocks, paged.block_size)?;
                metrics.kv_blocks_free.set(blocks as i64);
                let bytes = pool.capacity_tokens() * bytes_per_token;
                (KvStore::Paged(pool), bytes)
            }
            None => {
                let budget = settings
                    .kv_cache_bytes
                    .unwrap_or(settings.max_num_seqs * context_length * bytes_per_token);
                (
                    KvStore::Contiguous(KvPool::new(&llama, dtype, budget)),
                    budget,
                )
            }
        };
        let paged = matches!(store, KvStore::Paged(_));
        let (commands, receiver) = std::sync::mpsc::channel();
        let scheduler = Scheduler::new(
            model.clone(),
            store,
            SchedulerConfig {
                max_sequences: settings.max_num_seqs,
                policy: settings.scheduling,
                max_step_tokens: settings.max_step_tokens,
            },
            receiver,
            device,
            SchedulerMetrics {
                preemptions: metrics.kv_preemptions.clone(),
                kv_blocks_free: metrics.kv_blocks_free.clone(),
            },
        );
        std::thread::Builder::new()
            .name("shared-base-engine".into())
            .spawn(move || scheduler.run())?;
        let created = crate::clock::unix_now_secs();
        tracing::info!(
            device = ?model.device().location(),
            dtype = ?dtype,
            weights_mib = model.weight_bytes() / (1 << 20),
            kv_budget_mib = kv_budget / (1 << 20),
            paged_attention = paged,
            layers = llama.layers,
            "shared-base engine loaded"
        );
        Ok(SharedBaseEngine {
            card: ModelCard {
                id: settings.served_name.clone(),
                created,
                owned_by: settings.owned_by.clone(),
                context_length,
                vocab_size: llama.vocab,
                max_token_bytes: prompt.max_token_bytes(),
                logprobs: true,
                tools: prompt.tool_support(),
            },
            model,
            token_bytes: Arc::new(TokenBytes::new(prompt.tokenizer())),
            prompt: Arc::new(prompt),
            eos: Arc::new(eos),
            adapters: RwLock::new(HashMap::new()),
            commands,
            constraints: OnceLock::new(),
            sampled_tokens: metrics.sampled_tokens,
        })
    }

    async fn constraint_factory(&self) -> Result<Arc<ConstraintFactory>, EngineError> {
        if let Some(factory) = self.constraints.get() {
            return Ok(factory.clone());
        }
        let (tokenizer, eos, vocab) = (
            self.prompt.tokenizer().clone(),
            self.eos.clone(),
            self.model.config.vocab,
        );
        let factory = run_blocking(move || ConstraintFactory::new(&tokenizer, &eos, vocab))
            .await
            .map_err(blocking_error)?
            .map_err(|e| EngineError::Internal(format!("grammar engine: {e}")))?;
        Ok(self.constraints.get_or_init(|| Arc::new(factory)).clone())
    }

    async fn constraint(
        &self,
        wanted: &OutputConstraint,
    ) -> Result<Option<constraint::Constraint>, EngineError> {
        let schema = match wanted {
            OutputConstraint::None => return Ok(None),
            OutputConstraint::JsonObject => None,
            OutputConstraint::JsonSchema(schema) => Some(schema.clone()),
        };
        let factory = self.constraint_factory().await?;
        run_blocking(move || match schema {
            None => factory.json_object(),
            Some(schema) => factory.json_schema(&schema),
        })
        .await
        .map_err(blocking_error)?
        .map(Some)
        .map_err(|e| EngineError::Rejected(format!("response_format: {e}")))
    }

    fn adapter(&self, model: &str) -> Result<Option<Arc<LoadedAdapter>>, EngineError> {
        if model == self.card.id {
            return Ok(None);
        }
        self.adapters
            .read()
            .get(model)
            .cloned()
            .map(Some)
            .ok_or_else(|| EngineError::UnknownModel(model.to_string()))
    }

    async fn tokenize(
        &self,
        messages: &[PromptMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<Vec<u32>, EngineError> {
        let (prompt, messages) = (self.prompt.clone(), messages.to_vec());
        let tools = tools.map(<[serde_json::Value]>::to_vec);
        run_blocking(move || prompt.tokenize(&messages, tools.as_deref()))
            .await
            .map_err(blocking_error)?
            .map_err(|error| match error {
                PromptError::Template(message) => EngineError::Rejected(message),
                other => EngineError::Internal(other.to_string()),
            })
    }
}

#[async_trait]
impl Engine for SharedBaseEngine {
    fn models(&self) -> Vec<ModelCard> {
        let mut cards = vec![self.card.clone()];
        cards.extend(self.adapters.read().keys().map(|id| ModelCard {
            id: id.clone(),
            ..self.card.clone()
        }));
        cards
    }

    // Without cloning every adapter's card on each request.
    fn model(&self, id: &str) -> Option<ModelCard> {
        if id == self.card.id {
            return Some(self.card.clone());
        }
        self.adapters.read().contains_key(id).then(|| ModelCard {
            id: id.to_string(),
            ..self.card.clone()
        })
    }

    async fn count_prompt_tokens(
        &self,
        model: &str,
        messages: &[PromptMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<PromptTokens, EngineError> {
        self.adapter(model)?;
        let ids = self.tokenize(messages, tools).await?;
        Ok(PromptTokens {
            count: ids.len(),
            ids: Some(Arc::new(ids)),
        })
    }

    async fn generate(&self, request: InferenceRequest) -> Result<InferenceStream, EngineError> {
        let adapter = self.adapter(&request.model)?;
        let prompt = match &request.prompt_ids {
            Some(ids) => ids.as_ref().clone(),
            None => {
                self.tokenize(
                    &request.messages,
                    request.tools.as_deref().map(Vec::as_slice),
                )
                .await?
            }
        };
        let constraint = self.constraint(&request.constraint).await?;
        let sampling = &request.sampling;
        let sampler = Sampler::new(SamplingConfig {
            temperature: sampling.temperature.unwrap_or(1.0) as f32,
            top_p: sampling.top_p.unwrap_or(1.0) as f32,
            presence_penalty: sampling.presence_penalty.unwrap_or(0.0),
            frequency_penalty: sampling.frequency_penalty.unwrap_or(0.0),
            logit_bias: sampling.logit_bias.iter().map(|(&t, &b)| (t, b)).collect(),
            seed: sampling.seed.unwrap_or_else(rand::random),
            top_logprobs: sampling.top_logprobs,
            logprobs: sampling.logprobs,
        });
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let progress = Arc::new(AtomicU64::new(0));
        let tokenizer = self.prompt.tokenizer().clone();
        let sequence = Sequence {
            claim: request.claim.clone(),
            arrival: 0,
            prompt_len: prompt.len(),
            tokens: prompt,
            cached: 0,
            cache: None,
            adapter,
            max_tokens: request.max_tokens,
            sampler,
            constraint,
            decoder: IncrementalDecoder::new(tokenizer.clone(), true),
            stops: StopScanner::new(request.stop.clone()),
            eos: self.eos.clone(),
            events,
            progress: progress.clone(),
            sampled_tokens: self.sampled_tokens.clone(),
            logprobs: sampling.logprobs,
            tokenizer,
            token_bytes: self.token_bytes.clone(),
            done: false,
        };
        self.commands
            .send(Command::Start(Box::new(sequence)))
            .map_err(|_| EngineError::Unavailable("the engine has stopped".into()))?;
        let mut receiver = receiver;
        let events = async_stream::stream! {
            while let Some(event) = receiver.recv().await {
                yield event;
            }
        };
        Ok(InferenceStream {
            events: events.boxed(),
            progress,
        })
    }

    async fn load_adapter(&self, id: &str, adapter: &AdapterFiles) -> Result<u64, EngineError> {
        let (path, config) = (adapter.weights.clone(), self.model.config.clone());
        let scale = adapter.alpha / adapter.rank.max(1) as f64;
        let (dtype, device) = (self.model.dtype, self.model.device().clone());
        let weights =
            run_blocking(move || AdapterWeights::load(&path, &config, scale, dtype, &device))
                .await
                .map_err(blocking_error)?
                .map_err(|e| EngineError::Internal(format!("loading adapter {id}: {e}")))?;
        let bytes = weights.bytes() as u64;
        self.adapters.write().insert(
            id.to_string(),
            Arc::new(LoadedAdapter {
                id: id.to_string(),
                weights,
            }),
        );
        Ok(bytes)
    }

    async fn unload_adapter(&self, id: &str) -> Result<(), EngineError> {
        // Sequences that started with it keep their own reference.
        match self.adapters.write().remove(id) {
            Some(_) => Ok(()),
            None => Err(EngineError::UnknownModel(id.to_string())),
        }
    }
}
