//! Validation of the `[auth]`, `[redis]` and `[[tenants]]` sections.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::env::Environment;
pub use super::raw::{JwtAlgorithm, RedisFailurePolicy};
use super::raw::{RawAuth, RawLimits, RawRedis, RawTenant};
use super::{ConfigError, secrets};

/// SHA-256 of an API key; the key itself is never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of_key(key: &str) -> KeyHash {
        use sha2::Digest;
        KeyHash(sha2::Sha256::digest(key.as_bytes()).into())
    }

    /// Parses the `sha256:<64 hex digits>` form used in the config file.
    pub fn parse(text: &str) -> Option<KeyHash> {
        let digits = text.strip_prefix("sha256:")?;
        let bytes = hex::decode(digits).ok()?;
        Some(KeyHash(bytes.try_into().ok()?))
    }

    pub fn to_config_string(self) -> String {
        format!("sha256:{}", hex::encode(self.0))
    }
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub enabled: bool,
    /// Validation has already refused an open gateway on a public address
    /// unless this is set.
    pub allow_open_on_public_bind: bool,
    /// Admin routes answer everyone while authentication is off.
    pub allow_open_admin: bool,
    pub admin_keys: Vec<KeyHash>,
    pub jwt: Option<JwtConfig>,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub algorithms: Vec<JwtAlgorithm>,
    pub hs256_secret: Option<Vec<u8>>,
    pub public_key_pem: Option<Vec<u8>>,
    pub jwks: Option<Vec<u8>>,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub key_prefix: String,
    pub on_failure: RedisFailurePolicy,
    pub timeout: Duration,
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u64>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelAccess {
    All,
    Only(HashSet<String>),
}

impl ModelAccess {
    pub fn allows(&self, model: &str) -> bool {
        match self {
            ModelAccess::All => true,
            ModelAccess::Only(models) => models.contains(model),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub id: String,
    pub name: String,
    pub keys: Vec<KeyHash>,
    pub models: ModelAccess,
    pub limits: Limits,
    pub default_adapter: Option<String>,
    pub weight: u32,
    pub priority: u8,
}

/// Tenant ids appear in Redis keys, metric labels and URLs.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn key_hashes(key: &str, hashes: &[String]) -> Result<Vec<KeyHash>, ConfigError> {
    hashes
        .iter()
        .map(|text| {
            KeyHash::parse(text).ok_or_else(|| {
                ConfigError::key(
                    key,
                    "each key must be `sha256:<64 hex digits>` (see `loragate keys create`)",
                )
            })
        })
        .collect()
}

fn read_file(key: &str, path: &str, base_dir: &Path) -> Result<Vec<u8>, ConfigError> {
    let path = super::expand_path(path, base_dir);
    std::fs::read(&path)
        .map_err(|e| ConfigError::key(key, format!("cannot read {}: {e}", path.display())))
}

pub(super) fn auth(
    raw: RawAuth,
    base_dir: &Path,
    environment: &Environment,
) -> Result<AuthConfig, ConfigError> {
    let admin_keys = key_hashes("auth.admin_api_keys", &raw.admin_api_keys)?;
    let jwt = match raw.jwt {
        None => None,
        Some(jwt) => {
            if jwt.algorithms.is_empty() {
                return Err(ConfigError::key(
                    "auth.jwt.algorithms",
                    "pin at least one algorithm",
                ));
            }
            let hs256_secret = match (
                &jwt.hs256_secret_env,
                jwt.algorithms.contains(&JwtAlgorithm::HS256),
            ) {
                (Some(variable), true) => Some(
                    secrets::read(environment, "auth.jwt.hs256_secret_env", variable, 32)?
                        .into_bytes(),
                ),
                (None, true) => {
                    return Err(ConfigError::key(
                        "auth.jwt.hs256_secret_env",
                        "HS256 is pinned but no secret is configured",
                    ));
                }
                (_, false) => None,
            };
            let asymmetric = jwt.algorithms.iter().any(|a| *a != JwtAlgorithm::HS256);
            let public_key_pem = jwt
                .public_key_pem
                .as_deref()
                .map(|path| read_file("auth.jwt.public_key_pem", path, base_dir))
                .transpose()?;
            let jwks = jwt
                .jwks_file
                .as_deref()
                .map(|path| read_file("auth.jwt.jwks_file", path, base_dir))
                .transpose()?;
            if asymmetric && public_key_pem.is_none() && jwks.is_none() {
                return Err(ConfigError::key(
                    "auth.jwt.public_key_pem",
                    "RS256/ES256 are pinned but neither public_key_pem nor jwks_file is set",
                ));
            }
            Some(JwtConfig {
                algorithms: jwt.algorithms,
                hs256_secret,
                public_key_pem,
                jwks,
                issuer: jwt.issuer,
                audience: jwt.audience,
                leeway_secs: jwt.leeway_secs,
            })
        }
    };
    Ok(AuthConfig {
        enabled: raw.enabled,
        allow_open_on_public_bind: raw.allow_open_on_public_bind,
        allow_open_admin: raw.allow_open_admin,
        admin_keys,
        jwt,
    })
}

pub(super) fn redis(raw: RawRedis) -> Result<RedisConfig, ConfigError> {
    if !(raw.url.starts_with("redis://")
        || raw.url.starts_with("rediss://")
        || raw.url.starts_with("unix://"))
    {
        return Err(ConfigError::key(
            "redis.url",
            "must start with redis://, rediss:// or unix://",
        ));
    }
    if raw.timeout_ms == 0 {
        return Err(ConfigError::key("redis.timeout_ms", "must be positive"));
    }
    if raw.lease_ttl_secs == 0 {
        return Err(ConfigError::key("redis.lease_ttl_secs", "must be positive"));
    }
    Ok(RedisConfig {
        url: raw.url,
        key_prefix: raw.key_prefix,
        on_failure: raw.on_failure,
        timeout: Duration::from_millis(raw.timeout_ms),
        lease_ttl: Duration::from_secs(raw.lease_ttl_secs),
    })
}

fn limits(index: usize, raw: RawLimits) -> Result<Limits, ConfigError> {
    for (name, value) in [
        ("requests_per_minute", raw.requests_per_minute),
        ("tokens_per_minute", raw.tokens_per_minute),
        ("max_concurrent", raw.max_concurrent),
    ] {
        if value == Some(0) {
            return Err(ConfigError::key(
                &format!("tenants[{index}].limits.{name}"),
                "must be positive (omit it for no limit)",
            ));
        }
    }
    Ok(Limits {
        requests_per_minute: raw.requests_per_minute,
        tokens_per_minute: raw.tokens_per_minute,
        max_concurrent: raw.max_concurrent,
    })
}

pub(super) fn tenants(
    raw: Vec<RawTenant>,
    admin_keys: &[KeyHash],
) -> Result<Vec<TenantConfig>, ConfigError> {
    let mut ids = HashSet::new();
    let mut keys: HashSet<KeyHash> = admin_keys.iter().copied().collect();
    let mut tenants = Vec::with_capacity(raw.len());
    for (index, tenant) in raw.into_iter().enumerate() {
        if !valid_tenant_id(&tenant.id) {
            return Err(ConfigError::key(
                &format!("tenants[{index}].id"),
                "use 1-64 characters of a-z, 0-9, '-' and '_'",
            ));
        }
        if !ids.insert(tenant.id.clone()) {
            return Err(ConfigError::key(
                &format!("tenants[{index}].id"),
                format!("duplicate tenant `{}`", tenant.id),
            ));
        }
        let tenant_keys = key_hashes(&format!("tenants[{index}].api_keys"), &tenant.api_keys)?;
        for key in &tenant_keys {
            if !keys.insert(*key) {
                return Err(ConfigError::key(
                    &format!("tenants[{index}].api_keys"),
                    "a key hash is used twice",
                ));
            }
        }
        let models = if tenant.models.iter().any(|m| m == "*") {
            ModelAccess::All
        } else {
            ModelAccess::Only(tenant.models.into_iter().collect())
        };
        tenants.push(TenantConfig {
            name: tenant.name.unwrap_or_else(|| tenant.id.clone()),
            id: tenant.id,
            keys: tenant_keys,
            models,
            limits: limits(index, tenant.limits)?,
            default_adapter: tenant.default_adapter,
            weight: match tenant.weight {
                0 => {
                    return Err(ConfigError::key(
                        &format!("tenants[{index}].weight"),
                        "must be at least 1",
                    ));
                }
                weight => weight,
            },
            priority: tenant.priority,
        });
    }
    Ok(tenants)
}
