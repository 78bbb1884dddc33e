//! Who can reach what: an unauthenticated gateway stays on loopback unless
//! the operator says otherwise by name, and `/metrics` (which lists every
//! tenant, adapter and replica) can need a token or live on its own listener.

use std::net::SocketAddr;

use super::env::Environment;
use super::raw::RawMetrics;
use super::{AuthConfig, ConfigError, KeyHash, secrets};

#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// SHA-256 of the scrape token; `None`: `/metrics` is open.
    pub bearer_token: Option<KeyHash>,
    /// A listener serving only `/metrics`; the main listener then has none.
    pub bind: Option<SocketAddr>,
}

/// With authentication off every caller is an admin, so only this machine
/// may be able to connect, unless the operator accepts otherwise by name.
pub(super) fn check_open_mode(auth: &AuthConfig, bind: SocketAddr) -> Result<(), ConfigError> {
    if auth.enabled || bind.ip().is_loopback() || auth.allow_open_on_public_bind {
        return Ok(());
    }
    Err(ConfigError::key(
        "auth.allow_open_on_public_bind",
        format!(
            "authentication is off (auth.enabled = false) and server.bind {bind} is not a loopback address, so anyone who can connect would be an admin. Turn authentication on, bind 127.0.0.1, or set auth.allow_open_on_public_bind = true if only this machine can reach that address (e.g. a container port published on loopback)"
        ),
    ))
}

pub(super) fn metrics(
    raw: RawMetrics,
    main_bind: SocketAddr,
    environment: &Environment,
) -> Result<MetricsConfig, ConfigError> {
    let bearer_token = raw
        .bearer_token_env
        .map(|variable| {
            secrets::read(environment, "metrics.bearer_token_env", &variable, 32)
                .map(|token| KeyHash::of_key(&token))
        })
        .transpose()?;
    let bind = raw
        .bind
        .map(|text| {
            text.parse::<SocketAddr>()
                .map_err(|e| ConfigError::key("metrics.bind", format!("`{text}`: {e}")))
        })
        .transpose()?;
    if let Some(bind) = bind
        && bind.port() != 0
        && bind.port() == main_bind.port()
        && (bind.ip() == main_bind.ip()
            || bind.ip().is_unspecified()
            || main_bind.ip().is_unspecified())
    {
        return Err(ConfigError::key(
            "metrics.bind",
            format!(
                "{bind} overlaps server.bind {main_bind}; give the metrics listener its own port"
            ),
        ));
    }
    Ok(MetricsConfig { bearer_token, bind })
}
