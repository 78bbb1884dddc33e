//! Configuration: one TOML file plus `LORAGATE__SECTION__KEY` environment
//! overrides, parsed strictly and validated once at start-up. Every error names
//! the offending key.

mod env;
mod exposure;
mod raw;
mod secrets;
mod sections;
mod tenancy;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use env::Environment;
pub use exposure::MetricsConfig;
use raw::RawConfig;
pub use raw::{DeviceKind, EngineKind, LogFormat, ModelDtype, ModelFormat};
pub use tenancy::{
    AuthConfig, JwtAlgorithm, JwtConfig, KeyHash, Limits, ModelAccess, RedisConfig,
    RedisFailurePolicy, TenantConfig, valid_tenant_id,
};
pub use upstream::{ReplicaConfig, UpstreamConfig};

/// Prefix of environment variables that override file settings.
pub const ENV_PREFIX: &str = "LORAGATE__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub admission: AdmissionConfig,
    pub logging: LoggingConfig,
    pub auth: AuthConfig,
    /// Absent: rate limits and usage are kept in this process only.
    pub redis: Option<RedisConfig>,
    pub tenants: Vec<TenantConfig>,
    pub adapters: AdaptersConfig,
    /// `Some`: the model is served by remote replicas, not in-process.
    pub upstream: Option<UpstreamConfig>,
    pub metrics: MetricsConfig,
}

impl Config {
    /// The folder whose `config.json` describes the base model (adapter
    /// uploads are checked against it); `None` for a GGUF base or an
    /// upstream without `model.path`.
    pub fn base_model_dir(&self) -> Option<&Path> {
        match (&self.upstream, self.model.format) {
            // Validation made sure a given upstream `model.path` has config.json.
            (Some(_), _) if !self.model.path.as_os_str().is_empty() => Some(&self.model.path),
            (None, ModelFormat::Safetensors) => Some(&self.model.path),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdaptersConfig {
    pub dir: PathBuf,
    pub max_rank: usize,
    pub max_bytes: u64,
    pub max_resident: usize,
    pub max_resident_bytes: u64,
    pub load_timeout: Duration,
    pub warm_on_upload: bool,
    pub seeds: Vec<AdapterSeed>,
}

/// An adapter stored at start-up unless its name already has a generation:
/// a first run serves it, and an admin's later upload is never overwritten.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSeed {
    pub tenant: String,
    pub name: String,
    pub dir: PathBuf,
    pub shared: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub max_body_bytes: usize,
    pub workers: usize,
    pub write_idle_timeout: Duration,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub served_name: String,
    /// Empty with `[upstream]` and no `model.path`.
    pub path: PathBuf,
    pub format: ModelFormat,
    pub dtype: ModelDtype,
    pub device: DeviceKind,
    /// Resolved: never `Auto`.
    pub engine: EngineKind,
    pub kv_cache_bytes: Option<usize>,
    pub max_step_tokens: usize,
    /// The engine's own queue follows the admission policy.
    pub scheduling: crate::engine::admission::Policy,
    pub context_length: Option<usize>,
    pub max_num_seqs: usize,
    pub prefix_cache_entries: usize,
    pub default_max_tokens: Option<usize>,
    pub owned_by: String,
    /// `Some` when paged attention is on.
    pub paged_attention: Option<PagedAttention>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedAttention {
    pub block_size: usize,
    pub context_tokens: usize,
}

#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    pub max_in_flight: usize,
    pub max_queued: usize,
    pub queue_timeout: Duration,
    pub policy: crate::engine::admission::Policy,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Config {
    /// Reads `path`, applies overrides from the process environment, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Config::from_toml_str(&text, std::env::vars(), base_dir).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text with the given environment (its `LORAGATE__*`
    /// overrides and the secrets the file names); a relative model path is
    /// resolved against `base_dir` (the config file's folder).
    pub fn from_toml_str(
        text: &str,
        environment: impl IntoIterator<Item = (String, String)>,
        base_dir: &Path,
    ) -> Result<Config, ConfigError> {
        let mut document: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: PathBuf::new(),
                    message: e.to_string(),
                })?;
        let environment = Environment::new(environment);
        env::apply_overrides(&mut document, &environment)?;
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(document))
            .map_err(|e| {
                let key = e.path().to_string();
                ConfigError::key(&key, e.into_inner().to_string())
            })?;
        validate(raw, base_dir, &environment)
    }
}

pub(crate) fn expand_path(raw: &str, base_dir: &Path) -> PathBuf {
    let expanded = match (raw.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(raw),
    };
    if expanded.is_absolute() {
        expanded
    } else {
        base_dir.join(expanded)
    }
}

fn validate(
    raw: RawConfig,
    base_dir: &Path,
    environment: &Environment,
) -> Result<Config, ConfigError> {
    let server = sections::server(raw.server)?;
    let admission = sections::admission(raw.admission)?;
    // The engine's own queue follows the admission policy.
    let model = sections::model(
        raw.model,
        raw.upstream.is_some(),
        admission.policy,
        base_dir,
    )?;
    let auth = tenancy::auth(raw.auth, base_dir, environment)?;
    exposure::check_open_mode(&auth, server.bind)?;
    let metrics = exposure::metrics(raw.metrics, server.bind, environment)?;
    let redis = raw.redis.map(tenancy::redis).transpose()?;
    let tenants = tenancy::tenants(raw.tenants, &auth.admin_keys)?;
    let mut adapters = raw.adapters;
    let seeds = adapter_seeds(
        std::mem::take(&mut adapters.seed),
        &auth,
        &tenants,
        &model.served_name,
        base_dir,
    )?;
    let adapters = sections::adapters(adapters, seeds, base_dir)?;
    let upstream = raw
        .upstream
        .map(|upstream| {
            upstream::upstream(
                upstream,
                &model.served_name,
                &adapters.dir,
                base_dir,
                environment,
            )
        })
        .transpose()?;
    let logging = sections::logging(raw.logging)?;
    Ok(Config {
        server,
        model,
        admission,
        logging,
        auth,
        redis,
        tenants,
        adapters,
        upstream,
        metrics,
    })
}

/// Each seed names a tenant that exists, a valid adapter name, and a folder
/// holding the two files peft writes.
fn adapter_seeds(
    raw: Vec<raw::RawAdapterSeed>,
    auth: &AuthConfig,
    tenants: &[TenantConfig],
    served_name: &str,
    base_dir: &Path,
) -> Result<Vec<AdapterSeed>, ConfigError> {
    let mut seen = std::collections::HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(index, seed)| {
            let key = |field: &str| format!("adapters.seed[{index}].{field}");
            let tenant = seed
                .tenant
                .unwrap_or_else(|| crate::auth::OPEN_MODE_TENANT.into());
            let known = tenants.iter().any(|t| t.id == tenant)
                || (!auth.enabled && tenant == crate::auth::OPEN_MODE_TENANT);
            if !known {
                return Err(ConfigError::key(
                    &key("tenant"),
                    format!("`{tenant}` is not a configured tenant (`anonymous` exists only while auth is off)"),
                ));
            }
            if !crate::adapters::valid_name(&seed.name) || seed.name == served_name {
                return Err(ConfigError::key(
                    &key("name"),
                    "use 1-64 characters of a-z, 0-9, '-', '_' and '.', not the base model's name",
                ));
            }
            if !seen.insert((tenant.clone(), seed.name.clone())) {
                return Err(ConfigError::key(&key("name"), "seeded twice for this tenant"));
            }
            let dir = expand_path(&seed.path, base_dir);
            for file in ["adapter_config.json", "adapter_model.safetensors"] {
                if !dir.join(file).is_file() {
                    return Err(ConfigError::key(
                        &key("path"),
                        format!("{} has no {file}", dir.display()),
                    ));
                }
            }
            Ok(AdapterSeed {
                tenant,
                name: seed.name,
                dir,
                shared: seed.shared,
            })
        })
        .collect()
}

/// Whether an in-process engine can keep a prefix cache; why not otherwise.
///
/// mistral.rs 0.8.1's sequence-level prefix cache (the one used without
/// paged attention) hands a new sequence the stored KV cache of an earlier,
/// longer one, trimmed in length but not in capacity: the cache tensors grow
/// in steps of 512 tokens, so the restored sequence carries a capacity its own
/// length would not have. The scheduler batches sequences by length and
/// `NormalCacheManager::clone_in_cache` copies every sequence's cache into a
/// batch tensor shaped like the first one's, so two sequences of the same
/// length and different capacities panic the engine thread
/// (`kv_cache/mod.rs:329`, "shape mismatch on dim 2, 1024 <> 512"), failing
/// every request it held. Paged attention replaces that cache with blocks and
/// prefix caching with block hashes, which this does not touch.
pub fn prefix_cache_supported(engine: EngineKind, paged_attention: bool) -> Result<(), String> {
    match engine {
        EngineKind::Mistralrs if paged_attention => Ok(()),
        EngineKind::Mistralrs => Err(
            "must be 0 unless model.paged_attention is enabled: mistral.rs 0.8.1's prefix cache \
             restores a KV cache with the capacity of the longer sequence it was stored from \
             (caches grow in steps of 512 tokens), and batching it with a sequence of another \
             capacity panics the engine (mistralrs-core kv_cache/mod.rs:329, \
             \"shape mismatch on dim 2, 1024 <> 512\"), failing every request in flight"
                .into(),
        ),
        EngineKind::SharedBase | EngineKind::Auto => {
            Err("the shared-base engine has no prefix cache; set it to 0 or remove the key".into())
        }
    }
}

#[cfg(test)]
mod tests;
