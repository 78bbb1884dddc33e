//! The configuration file as written: every section refuses unknown keys so a
//! typo is an error at start-up, not a silently ignored setting.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub model: RawModel,
    #[serde(default)]
    pub admission: RawAdmission,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub auth: RawAuth,
    pub redis: Option<RawRedis>,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    #[serde(default)]
    pub adapters: RawAdapters,
    /// Present: the model is served by remote OpenAI-compatible replicas
    /// instead of the in-process engine.
    pub upstream: Option<RawUpstream>,
    #[serde(default)]
    pub metrics: RawMetrics,
}

/// Who may read `/metrics`, which names every tenant, adapter and replica.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Environment variable holding a scrape token: `/metrics` then needs
    /// `Authorization: Bearer <token>`.
    pub bearer_token_env: Option<String>,
    /// A second listener serving only `/metrics`; the main one then has none.
    pub bind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdapters {
    /// The adapter store; relative to this file's folder.
    pub dir: String,
    pub max_rank: usize,
    /// Largest accepted `adapter_model.safetensors`.
    pub max_bytes: u64,
    /// Adapters kept loaded at once, at most; the least recently used idle
    /// one is unloaded to make room.
    pub max_resident: usize,
    /// Memory loaded adapters may hold, in MiB: their own tensors on the
    /// shared-base engine, a whole copy of the base each on mistral.rs.
    pub resident_mib: u64,
    /// Longest wait for an adapter to load before the request gets a 503.
    pub load_timeout_secs: u64,
    /// Load a new adapter (or generation) into the engine as soon as it is uploaded.
    pub warm_on_upload: bool,
    /// Adapters stored at start-up when their name has none yet.
    pub seed: Vec<RawAdapterSeed>,
}

/// An adapter folder shipped with the configuration (the demo tenants').
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdapterSeed {
    /// Owner; `anonymous` (every caller while authentication is off) when absent.
    pub tenant: Option<String>,
    pub name: String,
    /// A peft folder (adapter_config.json, adapter_model.safetensors),
    /// relative to this file's folder.
    pub path: String,
    #[serde(default)]
    pub shared: bool,
}

impl Default for RawAdapters {
    fn default() -> Self {
        RawAdapters {
            dir: "../adapters".into(),
            max_rank: 64,
            max_bytes: 512 * 1024 * 1024,
            max_resident: 100_000,
            resident_mib: 4096,
            load_timeout_secs: 120,
            warm_on_upload: true,
            seed: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub bind: String,
    pub max_body_bytes: usize,
    /// 0 lets actix choose one worker per core.
    pub workers: usize,
    /// A streaming client that takes nothing for this long while output
    /// waits for it is cut off (its generation cancelled and charged).
    pub write_idle_timeout_ms: u64,
    /// On SIGTERM, how long responses under way (streams included) may take
    /// to finish before the process exits; keep it below the orchestrator's
    /// grace period.
    pub shutdown_timeout_secs: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            bind: "127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            workers: 0,
            write_idle_timeout_ms: 30_000,
            shutdown_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// One `.gguf` file with its tokenizer and chat template inside.
    #[default]
    Gguf,
    /// A Hugging Face directory: `config.json`, `tokenizer.json`, `*.safetensors`.
    Safetensors,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelDtype {
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// The shared-base engine for safetensors Llama-family models, mistral.rs
    /// for GGUF files.
    #[default]
    Auto,
    /// One base, adapters applied per request (safetensors only).
    SharedBase,
    /// mistral.rs 0.8.1 (GGUF, other architectures; adapters merged into
    /// a copy of the base each).
    Mistralrs,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The name clients put in `model`.
    pub served_name: String,
    /// In-process: the weights. With `[upstream]`: optional, a folder whose
    /// `config.json` lets adapter uploads be checked and whose
    /// `tokenizer.json` counts tokens the replicas do not report.
    pub path: Option<String>,
    #[serde(default)]
    pub format: ModelFormat,
    #[serde(default)]
    pub dtype: ModelDtype,
    #[serde(default)]
    pub device: DeviceKind,
    /// Which in-process engine serves the model.
    #[serde(default)]
    pub engine: EngineKind,
    /// Shared-base engine: KV-cache memory for all sequences together, in
    /// MiB; defaults to `max_num_seqs` full contexts.
    pub kv_cache_mib: Option<usize>,
    /// Shared-base engine: tokens in one step at most (prompts are split into
    /// chunks of what is left after the decoding sequences' one token each).
    #[serde(default = "default_max_step_tokens")]
    pub max_step_tokens: usize,
    /// Caps the context below what the model supports; defaults to the model's.
    pub context_length: Option<usize>,
    /// Sequences the engine batches together in one step.
    #[serde(default = "default_max_num_seqs")]
    pub max_num_seqs: usize,
    /// Prompts kept in mistral.rs's prefix cache; 0 disables it. Only with
    /// paged attention (see `config::prefix_cache_supported`).
    #[serde(default = "default_prefix_cache")]
    pub prefix_cache_entries: usize,
    /// Tokens generated when a request sets no `max_tokens`; the rest of the
    /// context when absent.
    pub default_max_tokens: Option<usize>,
    #[serde(default = "default_owned_by")]
    pub owned_by: String,
    #[serde(default)]
    pub paged_attention: RawPagedAttention,
}

/// Paged attention (CUDA builds only). Every loaded model, the base and each
/// resident adapter, gets its own KV-cache pool of `context_tokens`, so a
/// second model never starves the first: budget GPU memory as
/// (1 + adapters.max_resident) × (weights + KV pool).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPagedAttention {
    #[serde(default)]
    pub enabled: bool,
    /// Tokens per KV block: 8, 16 or 32.
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    /// KV-cache capacity per model, in tokens (all its sequences together).
    #[serde(default = "default_context_tokens")]
    pub context_tokens: usize,
}

fn default_block_size() -> usize {
    32
}

fn default_context_tokens() -> usize {
    32768
}

fn default_max_step_tokens() -> usize {
    256
}

fn default_max_num_seqs() -> usize {
    16
}

fn default_prefix_cache() -> usize {
    0
}

fn default_owned_by() -> String {
    "loragate".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmission {
    /// Requests generating at once; more wait in the queue.
    pub max_in_flight: usize,
    /// Requests waiting for a slot; more are refused with 503 and `Retry-After`.
    pub max_queued: usize,
    /// How long a request may wait for a slot before it is refused.
    pub queue_timeout_ms: u64,
    /// Who gets a contended slot: `fair` (by tenant weight) or `fifo`.
    pub policy: AdmissionPolicy,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AdmissionPolicy {
    #[default]
    Fair,
    Fifo,
}

impl Default for RawAdmission {
    fn default() -> Self {
        RawAdmission {
            max_in_flight: 16,
            max_queued: 64,
            queue_timeout_ms: 30_000,
            policy: AdmissionPolicy::Fair,
        }
    }
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogging {
    pub level: String,
    pub format: LogFormat,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// `false` serves every caller as one unlimited tenant (local development
    /// only): start-up then needs a loopback `server.bind`, and requests need
    /// a loopback `Host` (and `Origin`, when sent).
    pub enabled: bool,
    /// With authentication off, start on a non-loopback `server.bind` anyway
    /// (e.g. inside a container whose port is published on loopback only).
    pub allow_open_on_public_bind: bool,
    /// With authentication off, open the admin routes to every caller
    /// (otherwise they answer 403).
    pub allow_open_admin: bool,
    /// API keys with admin scope, as `sha256:<hex>` hashes.
    pub admin_api_keys: Vec<String>,
    pub jwt: Option<RawJwt>,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            enabled: true,
            allow_open_on_public_bind: false,
            allow_open_admin: false,
            admin_api_keys: Vec::new(),
            jwt: None,
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// The only algorithms accepted; a token with any other `alg` is refused.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Environment variable holding the HS256 secret.
    pub hs256_secret_env: Option<String>,
    /// PEM public key (RSA for RS256, EC P-256 for ES256).
    pub public_key_pem: Option<String>,
    /// A JWKS document; keys are chosen by the token's `kid`.
    pub jwks_file: Option<String>,
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailurePolicy {
    /// Keep serving with a per-process limiter while Redis is unreachable.
    FailOpen,
    /// Refuse limited requests with 503 while Redis is unreachable.
    FailClosed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: String,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_failure_policy")]
    pub on_failure: RedisFailurePolicy,
    /// Longest wait for one Redis round trip before it counts as a failure.
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// Concurrency slots expire after this long unless renewed, so a
    /// crashed gateway does not hold them forever.
    #[serde(default = "default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
}

fn default_key_prefix() -> String {
    "loragate".into()
}

fn default_failure_policy() -> RedisFailurePolicy {
    RedisFailurePolicy::FailOpen
}

fn default_redis_timeout_ms() -> u64 {
    250
}

fn default_lease_ttl_secs() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub id: String,
    pub name: Option<String>,
    /// `sha256:<hex>` hashes of the tenant's API keys (`loragate keys create`).
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Served model names the tenant may use; `"*"` for all.
    #[serde(default = "default_all_models")]
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: RawLimits,
    /// Adapter applied when the tenant asks for the base model by name.
    pub default_adapter: Option<String>,
    /// Share of contended engine slots and queue places (fair admission).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// A higher class is admitted before any lower one when slots are contended.
    #[serde(default)]
    pub priority: u8,
}

fn default_weight() -> u32 {
    1
}

fn default_all_models() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub requests_per_minute: Option<u64>,
    /// Prompt plus completion tokens per minute.
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// The base model's name on the replicas; defaults to `model.served_name`.
    pub model: Option<String>,
    pub replicas: Vec<RawReplica>,
    /// Environment variable holding the bearer key the replicas expect.
    pub api_key_env: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Until the replica's response headers arrive; for a non-streamed
    /// request that is the whole generation.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Longest silence between two chunks of a streamed answer.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Keep-alive connections kept open per replica.
    #[serde(default = "default_max_idle_connections")]
    pub max_idle_connections: usize,
    /// How long an idle connection is kept; keep it under the replicas'
    /// own keep-alive timeout.
    #[serde(default = "default_keepalive_idle_ms")]
    pub keepalive_idle_ms: u64,
    #[serde(default = "default_health_path")]
    pub health_path: String,
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// Consecutive failed requests that take a replica out of rotation.
    #[serde(default = "default_eject_after_failures")]
    pub eject_after_failures: u32,
    /// How long an ejected replica stays out.
    #[serde(default = "default_eject_for_ms")]
    pub eject_for_ms: u64,
    /// Register adapters on the replicas with vLLM's `/v1/load_lora_adapter`.
    #[serde(default)]
    pub register_adapters: bool,
    /// Where the replicas see `adapters.dir` (shared storage); defaults to
    /// the same path.
    pub adapter_dir_on_replicas: Option<String>,
    /// Valid `logit_bias` token ids are below this; unchecked when absent.
    pub vocab_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplica {
    /// Metric label, log name and affinity identity; defaults to the URL's
    /// `host:port`. Gateways sharing replicas must agree on the names.
    pub name: Option<String>,
    /// Base URL without `/v1`, e.g. `http://10.0.0.5:8000`.
    pub url: String,
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}

fn default_request_timeout_ms() -> u64 {
    120_000
}

fn default_idle_timeout_ms() -> u64 {
    30_000
}

fn default_max_idle_connections() -> usize {
    256
}

fn default_keepalive_idle_ms() -> u64 {
    4_000
}

fn default_health_path() -> String {
    "/health".into()
}

fn default_health_interval_ms() -> u64 {
    2_000
}

fn default_eject_after_failures() -> u32 {
    3
}

fn default_eject_for_ms() -> u64 {
    10_000
}
