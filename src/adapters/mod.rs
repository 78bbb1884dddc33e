//! Tenant LoRA adapters: validation, the on-disk store with generations,
//! uploads staged on disk while they arrive, and residency in the engine.

pub mod residency;
pub mod seed;
pub mod staging;
pub mod store;
pub mod validate;

use serde::Serialize;
use utoipa::ToSchema;

pub use residency::{AdapterLease, Residency};
pub use staging::Staging;
pub use store::AdapterStore;

/// Adapter names appear in paths, URLs and model names: a safe charset only.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
        && !name.starts_with('.')
        && !name.contains("..")
}

/// One stored generation of an adapter, as the admin API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema, PartialEq)]
pub struct AdapterRecord {
    pub tenant: String,
    pub name: String,
    pub generation: u64,
    pub rank: usize,
    pub alpha: f64,
    pub target_modules: Vec<String>,
    pub size_bytes: u64,
    pub sha256: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Usable by every tenant as `<owner>/<name>` (set by an admin at upload).
    #[serde(default)]
    pub shared: bool,
}

impl AdapterRecord {
    /// A checked upload about to be stored: the store assigns its generation.
    pub fn from_validated(
        tenant: &str,
        name: String,
        validated: validate::ValidatedAdapter,
        shared: bool,
    ) -> AdapterRecord {
        AdapterRecord {
            tenant: tenant.to_string(),
            name,
            generation: 0,
            rank: validated.rank,
            alpha: validated.alpha,
            target_modules: validated.target_modules,
            size_bytes: validated.size_bytes,
            sha256: validated.sha256,
            created_at: crate::clock::unix_now_secs(),
            shared,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("adapter_model.safetensors is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("adapter `{0}` does not exist")]
    NotFound(String),
    #[error("generation mismatch: expected {expected}, current is {current}")]
    Conflict { expected: u64, current: u64 },
    #[error("adapter `{0}` has no earlier generation to roll back to")]
    NoPreviousGeneration(String),
    #[error(
        "this gateway cannot serve adapters: they need a safetensors base model, or with [upstream] a model.path holding config.json and upstream.register_adapters = true"
    )]
    Unsupported,
    #[error("the adapter could not be loaded: {0}")]
    Load(String),
    #[error("timed out loading the adapter")]
    LoadTimeout,
    #[error("all adapter slots are busy; retry shortly")]
    Busy,
    #[error("adapter store I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names_are_restricted() {
        for good in ["support-bot", "v2.1", "a_b"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "UPPER",
            ".hidden",
            "a..b",
            "sp ace",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
