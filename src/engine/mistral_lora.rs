//! Adapter models for mistral.rs 0.8.1: each LoRA adapter is merged into its
//! own copy of the base weights while it loads (0.8.1 has no per-request
//! adapters), through the engine's real LoRA loader with local paths.
//!
//! Two 0.8.1 bugs shape this: the applied-adapter list is thread-local and
//! never cleared, so every load runs on a fresh OS thread; and
//! `remove_model` panics inside an async runtime, so removal does too.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use mistralrs::core::{
    AdapterPaths, AutoDeviceMapParams, DeviceMapSetting, EngineConfig, LocalModelPaths,
    LoraAdapterPaths, ModelPaths, NormalLoaderBuilder, NormalSpecificConfig,
};
use mistralrs::core::{AddModelConfig, Pipeline};
use mistralrs::{DefaultSchedulerMethod, Model, ModelDType, PagedAttentionConfig, SchedulerConfig};
use tokio::sync::Mutex;

use super::{AdapterFiles, EngineError};
use crate::config::ModelConfig;

/// What an adapter pipeline is built from: the base model folder.
#[derive(Clone)]
pub struct BaseFiles {
    dir: PathBuf,
    weights: Vec<PathBuf>,
    dtype: ModelDType,
    force_cpu: bool,
    max_num_seqs: usize,
    prefix_cache_entries: usize,
    /// Each adapter model gets its own fixed-size KV pool.
    paged: Option<PagedAttentionConfig>,
}

impl BaseFiles {
    pub fn of(config: &ModelConfig, dtype: ModelDType) -> Result<BaseFiles, EngineError> {
        let dir = config.path.clone();
        let mut weights: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| EngineError::Internal(format!("cannot list {}: {e}", dir.display())))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "safetensors"))
            .collect();
        weights.sort();
        Ok(BaseFiles {
            dir,
            weights,
            dtype,
            force_cpu: config.device == crate::config::DeviceKind::Cpu,
            max_num_seqs: config.max_num_seqs,
            prefix_cache_entries: config.prefix_cache_entries,
            paged: super::mistral::paged_attention(config)
                .map_err(|e| EngineError::Internal(e.to_string()))?,
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn optional(&self, name: &str) -> Option<PathBuf> {
        Some(self.file(name)).filter(|p| p.is_file())
    }
}

fn build_pipeline(
    base: &BaseFiles,
    id: &str,
    adapter: &AdapterFiles,
) -> anyhow::Result<Arc<Mutex<dyn Pipeline>>> {
    // A fresh thread starts with an empty applied-adapter list; clear anyway.
    mistralrs_quant::clear_applied_loras();
    let loader = NormalLoaderBuilder::new(
        NormalSpecificConfig::default(),
        None,
        None,
        Some(base.dir.display().to_string()),
        false,
        None,
    )
    .with_lora(vec![id.to_string()])
    .build(None)?;
    let lora_config = mistralrs_quant::LoraConfig {
        rank: adapter.rank,
        alpha: adapter.alpha,
        target_modules: adapter.target_modules.iter().cloned().collect(),
    };
    let paths: Box<dyn ModelPaths> = Box::new(LocalModelPaths::new(
        base.file("tokenizer.json"),
        base.file("config.json"),
        base.file("tokenizer_config.json"),
        base.weights.clone(),
        AdapterPaths::Lora(vec![LoraAdapterPaths {
            lora_config,
            adapter_path: adapter.weights.clone(),
        }]),
        base.optional("generation_config.json"),
        None,
        None,
        None,
    ));
    let device = mistralrs::best_device(base.force_cpu)?;
    let pipeline = loader.load_model_from_path(
        &paths,
        &base.dtype,
        &device,
        true,
        DeviceMapSetting::Auto(AutoDeviceMapParams::default_text()),
        None,
        base.paged,
    )?;
    mistralrs_quant::clear_applied_loras();
    Ok(pipeline)
}

/// Loads `adapter` over the base and adds it to the running engine as `id`.
pub async fn add_adapter_model(
    model: &Model,
    base: &BaseFiles,
    id: &str,
    adapter: &AdapterFiles,
) -> Result<(), EngineError> {
    let (base_files, model_id, files) = (base.clone(), id.to_string(), adapter.clone());
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("adapter-load-{id}"))
        .spawn(move || {
            let _ = sender.send(build_pipeline(&base_files, &model_id, &files));
        })
        .map_err(|e| EngineError::Internal(format!("cannot start a load thread: {e}")))?;
    let pipeline = receiver
        .await
        .map_err(|_| EngineError::Internal("adapter load thread died".into()))?
        .map_err(|e| {
            EngineError::Rejected(format!("the engine could not load the adapter: {e}"))
        })?;
    let seqs = NonZeroUsize::new(base.max_num_seqs).unwrap_or(NonZeroUsize::MIN);
    let cache = match base.paged {
        Some(_) => pipeline.lock().await.get_metadata().cache_config.clone(),
        None => None,
    };
    let scheduler = match cache {
        Some(config) => SchedulerConfig::PagedAttentionMeta {
            max_num_seqs: base.max_num_seqs,
            config,
        },
        None => SchedulerConfig::DefaultScheduler {
            method: DefaultSchedulerMethod::Fixed(seqs),
        },
    };
    let engine_config = EngineConfig {
        no_prefix_cache: base.prefix_cache_entries == 0,
        prefix_cache_n: base.prefix_cache_entries.max(1),
        ..EngineConfig::default()
    };
    model
        .add_model(
            id.to_string(),
            pipeline,
            scheduler,
            AddModelConfig::new(engine_config),
        )
        .await
        .map_err(|e| EngineError::Internal(format!("cannot add the adapter model: {e}")))
}

/// Removes an adapter model, off the async runtime (0.8.1 panics inside it).
pub async fn remove_adapter_model(model: Arc<Model>, id: &str) -> Result<(), EngineError> {
    let id = id.to_string();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("adapter-unload".into())
        .spawn(move || {
            let _ = sender.send(model.remove_model(&id).map_err(|e| e.to_string()));
        })
        .map_err(|e| EngineError::Internal(format!("cannot start an unload thread: {e}")))?;
    receiver
        .await
        .map_err(|_| EngineError::Internal("adapter unload thread died".into()))?
        .map_err(EngineError::Internal)
}

/// Rough resident size of one adapter model: a full copy of the base weights
/// (the cost of a merged copy), measured from the weight files.
pub fn merged_copy_bytes(base: &BaseFiles) -> u64 {
    let on_disk: u64 = base
        .weights
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    on_disk
}
