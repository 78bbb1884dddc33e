//! `[upstream]`: the model served by remote OpenAI-compatible replicas.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::RawUpstream;
use super::{ConfigError, expand_path};

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The base model's name on the replicas.
    pub model: String,
    pub replicas: Vec<ReplicaConfig>,
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_connections: usize,
    pub keepalive_idle: Duration,
    pub health_path: String,
    pub health_interval: Duration,
    pub eject_after_failures: u32,
    pub eject_for: Duration,
    /// `Some(where the replicas see the adapter store)` when adapters are
    /// registered with `/v1/load_lora_adapter`.
    pub adapter_registration: Option<PathBuf>,
    pub vocab_size: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub name: String,
    /// Without a trailing slash.
    pub url: String,
}

pub(super) fn upstream(
    raw: RawUpstream,
    served_name: &str,
    adapter_dir: &Path,
    base_dir: &Path,
    environment: &super::env::Environment,
) -> Result<UpstreamConfig, ConfigError> {
    if raw.replicas.is_empty() {
        return Err(ConfigError::key(
            "upstream.replicas",
            "name at least one replica",
        ));
    }
    let mut replicas: Vec<ReplicaConfig> = Vec::with_capacity(raw.replicas.len());
    for (index, replica) in raw.replicas.into_iter().enumerate() {
        let key = |field: &str| format!("upstream.replicas[{index}].{field}");
        let url = replica.url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| ConfigError::key(&key("url"), format!("`{url}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ConfigError::key(
                &key("url"),
                format!("`{url}` must be an http(s) URL with a host"),
            ));
        }
        if url.ends_with("/v1") {
            return Err(ConfigError::key(
                &key("url"),
                "give the base URL without /v1; the gateway adds the API paths",
            ));
        }
        // Named by address by default, not by position, so the affinity of
        // every other replica's adapters survives adding or removing one.
        let name = replica.name.unwrap_or_else(|| {
            let host = parsed.host_str().unwrap_or_default();
            match parsed.port_or_known_default() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            }
        });
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(ConfigError::key(
                &key("name"),
                "use letters, digits, '-', '_', '.' and ':'",
            ));
        }
        if replicas.iter().any(|r| r.name == name || r.url == url) {
            return Err(ConfigError::key(
                &key("url"),
                format!("replica `{name}` at {url} is listed twice"),
            ));
        }
        replicas.push(ReplicaConfig { name, url });
    }
    let api_key = raw
        .api_key_env
        .map(|variable| {
            environment
                .get(&variable)
                .map(str::to_string)
                .ok_or_else(|| {
                    ConfigError::key(
                        "upstream.api_key_env",
                        format!("environment variable {variable} is not set"),
                    )
                })
        })
        .transpose()?;
    for (key, value) in [
        ("upstream.connect_timeout_ms", raw.connect_timeout_ms),
        ("upstream.request_timeout_ms", raw.request_timeout_ms),
        ("upstream.idle_timeout_ms", raw.idle_timeout_ms),
        ("upstream.keepalive_idle_ms", raw.keepalive_idle_ms),
        ("upstream.health_interval_ms", raw.health_interval_ms),
        ("upstream.eject_for_ms", raw.eject_for_ms),
        (
            "upstream.eject_after_failures",
            u64::from(raw.eject_after_failures),
        ),
    ] {
        if value == 0 {
            return Err(ConfigError::key(key, "must be positive"));
        }
    }
    if !raw.health_path.starts_with('/') {
        return Err(ConfigError::key(
            "upstream.health_path",
            "must start with '/'",
        ));
    }
    if raw.vocab_size == Some(0) {
        return Err(ConfigError::key("upstream.vocab_size", "must be positive"));
    }
    let adapter_registration = match (raw.register_adapters, raw.adapter_dir_on_replicas) {
        (true, Some(dir)) => Some(expand_path(&dir, base_dir)),
        (true, None) => Some(adapter_dir.to_path_buf()),
        (false, Some(_)) => {
            return Err(ConfigError::key(
                "upstream.adapter_dir_on_replicas",
                "only used with register_adapters = true",
            ));
        }
        (false, None) => None,
    };
    Ok(UpstreamConfig {
        model: raw.model.unwrap_or_else(|| served_name.to_string()),
        replicas,
        api_key,
        connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
        request_timeout: Duration::from_millis(raw.request_timeout_ms),
        idle_timeout: Duration::from_millis(raw.idle_timeout_ms),
        max_idle_connections: raw.max_idle_connections,
        keepalive_idle: Duration::from_millis(raw.keepalive_idle_ms),
        health_path: raw.health_path,
        health_interval: Duration::from_millis(raw.health_interval_ms),
        eject_after_failures: raw.eject_after_failures,
        eject_for: Duration::from_millis(raw.eject_for_ms),
        adapter_registration,
        vocab_size: raw.vocab_size,
    })
}
