//! One validation step per section: each turns its raw table into the
//! checked config or names the offending key. Rules that span sections
//! (open mode and the bind address, seeds and tenants) stay in `validate`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{AdmissionPolicy, RawAdapters, RawAdmission, RawLogging, RawModel, RawServer};
use super::{
    AdapterSeed, AdaptersConfig, AdmissionConfig, ConfigError, DeviceKind, EngineKind,
    LoggingConfig, ModelConfig, ModelDtype, ModelFormat, PagedAttention, ServerConfig, expand_path,
    prefix_cache_supported,
};
use crate::engine::admission::Policy;

/// `[server]`.
pub(super) fn server(raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let bind: SocketAddr = raw
        .bind
        .parse()
        .map_err(|e| ConfigError::key("server.bind", format!("`{}`: {e}", raw.bind)))?;
    if raw.write_idle_timeout_ms == 0 {
        return Err(ConfigError::key(
            "server.write_idle_timeout_ms",
            "must be positive",
        ));
    }
    if raw.max_body_bytes < 1024 {
        return Err(ConfigError::key(
            "server.max_body_bytes",
            "must be at least 1024",
        ));
    }

    Ok(ServerConfig {
        bind,
        max_body_bytes: raw.max_body_bytes,
        workers: raw.workers,
        write_idle_timeout: Duration::from_millis(raw.write_idle_timeout_ms),
        shutdown_timeout: Duration::from_secs(raw.shutdown_timeout_secs),
    })
}

/// `[model]`; `remote`: served by `[upstream]` replicas, not in-process.
pub(super) fn model(
    model: RawModel,
    remote: bool,
    scheduling: Policy,
    base_dir: &Path,
) -> Result<ModelConfig, ConfigError> {
    if model.served_name.trim().is_empty() || model.served_name.contains(char::is_whitespace) {
        return Err(ConfigError::key(
            "model.served_name",
            "must be a non-empty name without spaces",
        ));
    }
    let path = match &model.path {
        Some(path) => expand_path(path, base_dir),
        None if remote => PathBuf::new(),
        None => {
            return Err(ConfigError::key(
                "model.path",
                "required: the GGUF file or the model folder",
            ));
        }
    };
    match model.format {
        _ if remote => {
            if model.path.is_some() && !path.join("config.json").is_file() {
                return Err(ConfigError::key(
                    "model.path",
                    format!(
                        "with [upstream], a folder holding the model's config.json (and optionally tokenizer.json); {} has none",
                        path.display()
                    ),
                ));
            }
            if model.context_length.is_none() {
                return Err(ConfigError::key(
                    "model.context_length",
                    "required with [upstream]: the replicas' context length",
                ));
            }
        }
        ModelFormat::Gguf if !path.is_file() => {
            return Err(ConfigError::key(
                "model.path",
                format!(
                    "GGUF file {} does not exist (run scripts/fetch-default-model.sh for the default model)",
                    path.display()
                ),
            ));
        }
        ModelFormat::Safetensors if !path.join("config.json").is_file() => {
            return Err(ConfigError::key(
                "model.path",
                format!(
                    "{} is not a model directory with config.json (scripts/convert-default-model.sh writes the default model's)",
                    path.display()
                ),
            ));
        }
        _ => {}
    }
    if model.device == DeviceKind::Cpu && model.dtype == ModelDtype::Bf16 {
        return Err(ConfigError::key(
            "model.dtype",
            "bf16 is not supported on CPU by the engine; use f32 or f16",
        ));
    }
    if model.device == DeviceKind::Cuda && !cfg!(feature = "cuda") {
        return Err(ConfigError::key(
            "model.device",
            "cuda requested but this binary was built without the `cuda` feature",
        ));
    }
    if model.context_length == Some(0) {
        return Err(ConfigError::key("model.context_length", "must be positive"));
    }
    if model.max_num_seqs == 0 {
        return Err(ConfigError::key("model.max_num_seqs", "must be positive"));
    }
    let paged = &model.paged_attention;
    let paged_attention = match paged.enabled {
        false => None,
        true if ![8, 16, 32].contains(&paged.block_size) => {
            return Err(ConfigError::key(
                "model.paged_attention.block_size",
                "must be 8, 16 or 32",
            ));
        }
        true if paged.context_tokens < paged.block_size => {
            return Err(ConfigError::key(
                "model.paged_attention.context_tokens",
                "must hold at least one block",
            ));
        }
        true => Some(PagedAttention {
            block_size: paged.block_size,
            context_tokens: paged.context_tokens,
        }),
    };
    let engine = match (model.engine, model.format) {
        (EngineKind::Auto, ModelFormat::Safetensors) => EngineKind::SharedBase,
        (EngineKind::Auto, ModelFormat::Gguf) => EngineKind::Mistralrs,
        (EngineKind::SharedBase, ModelFormat::Gguf) => {
            return Err(ConfigError::key(
                "model.engine",
                "the shared-base engine serves safetensors folders; GGUF files need engine = \"mistralrs\"",
            ));
        }
        (chosen, _) => chosen,
    };
    // mistral.rs 0.8.1 pages on CUDA only; the shared-base engine pages on
    // every device (on CPU with its own loop over the kernels' layout).
    if engine == EngineKind::Mistralrs
        && paged_attention.is_some()
        && model.device != DeviceKind::Cuda
        && !remote
    {
        return Err(ConfigError::key(
            "model.paged_attention.enabled",
            "paged attention with engine = \"mistralrs\" needs model.device = \"cuda\" (mistral.rs has no CPU paged attention)",
        ));
    }
    if engine == EngineKind::SharedBase && paged_attention.is_some() && model.kv_cache_mib.is_some()
    {
        return Err(ConfigError::key(
            "model.kv_cache_mib",
            "with paged attention the shared-base engine's KV pool is sized by model.paged_attention.context_tokens; remove one of the two",
        ));
    }
    if !remote && model.prefix_cache_entries > 0 {
        prefix_cache_supported(engine, paged_attention.is_some())
            .map_err(|why| ConfigError::key("model.prefix_cache_entries", why))?;
    }
    if model.max_step_tokens == 0 {
        return Err(ConfigError::key(
            "model.max_step_tokens",
            "must be positive",
        ));
    }
    if model.kv_cache_mib == Some(0) {
        return Err(ConfigError::key("model.kv_cache_mib", "must be positive"));
    }
    if model.default_max_tokens == Some(0) {
        return Err(ConfigError::key(
            "model.default_max_tokens",
            "must be positive",
        ));
    }

    Ok(ModelConfig {
        served_name: model.served_name,
        path,
        format: model.format,
        dtype: model.dtype,
        device: model.device,
        engine,
        kv_cache_bytes: model.kv_cache_mib.map(|mib| mib << 20),
        max_step_tokens: model.max_step_tokens,
        scheduling,
        context_length: model.context_length,
        max_num_seqs: model.max_num_seqs,
        prefix_cache_entries: model.prefix_cache_entries,
        default_max_tokens: model.default_max_tokens,
        owned_by: model.owned_by,
        paged_attention,
    })
}

/// `[admission]`.
pub(super) fn admission(admission: RawAdmission) -> Result<AdmissionConfig, ConfigError> {
    if admission.max_in_flight == 0 {
        return Err(ConfigError::key(
            "admission.max_in_flight",
            "must be positive",
        ));
    }
    if admission.queue_timeout_ms == 0 {
        return Err(ConfigError::key(
            "admission.queue_timeout_ms",
            "must be positive",
        ));
    }
    Ok(AdmissionConfig {
        max_in_flight: admission.max_in_flight,
        max_queued: admission.max_queued,
        queue_timeout: Duration::from_millis(admission.queue_timeout_ms),
        policy: match admission.policy {
            AdmissionPolicy::Fair => Policy::Fair,
            AdmissionPolicy::Fifo => Policy::Fifo,
        },
    })
}

/// `[adapters]`, with its seeds already checked against the tenants.
pub(super) fn adapters(
    adapters: RawAdapters,
    seeds: Vec<AdapterSeed>,
    base_dir: &Path,
) -> Result<AdaptersConfig, ConfigError> {
    if adapters.max_rank == 0
        || adapters.max_resident == 0
        || adapters.resident_mib == 0
        || adapters.load_timeout_secs == 0
    {
        return Err(ConfigError::key(
            "adapters",
            "max_rank, max_resident, resident_mib and load_timeout_secs must be positive",
        ));
    }
    Ok(AdaptersConfig {
        dir: expand_path(&adapters.dir, base_dir),
        max_rank: adapters.max_rank,
        max_bytes: adapters.max_bytes,
        max_resident: adapters.max_resident,
        max_resident_bytes: adapters.resident_mib << 20,
        load_timeout: Duration::from_secs(adapters.load_timeout_secs),
        warm_on_upload: adapters.warm_on_upload,
        seeds,
    })
}

/// `[logging]`.
pub(super) fn logging(raw: RawLogging) -> Result<LoggingConfig, ConfigError> {
    if raw.level.parse::<tracing_subscriber::EnvFilter>().is_err() {
        return Err(ConfigError::key("logging.level", "not a valid log filter"));
    }
    Ok(LoggingConfig {
        level: raw.level,
        format: raw.format,
    })
}
