//! Authentication: `Authorization: Bearer <credential>`, where the credential
//! is an API key (hashed, compared in constant time) or a JWT (pinned
//! algorithms, `exp`/`nbf`/`iss`/`aud` checked). The permission a handler
//! needs is written in its extractor's type: [`TenantCaller`] or [`AdminCaller`].
//!
//! Unauthenticated routes: `/health`, `/ready`, `/metrics` (unless it has a
//! scrape token), `/openapi.json`, `/docs`. Everything else takes one of the
//! extractors. With authentication off, every caller is one unlimited tenant,
//! the admin routes are closed unless `auth.allow_open_admin` opens them, and
//! [`open_mode`] refuses requests a foreign web page could have sent.

pub mod jwt;
pub mod keys;
pub mod open_mode;

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};

use crate::app::AppState;
use crate::config::{Config, ConfigError, Limits, ModelAccess};
use crate::error::ApiError;
use jwt::{JwtVerifier, Scope};
use keys::{KeyOwner, KeyRing};

/// The one tenant every request belongs to while authentication is off.
pub const OPEN_MODE_TENANT: &str = "anonymous";

/// A tenant as the gateway serves it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub models: ModelAccess,
    pub limits: Limits,
    pub default_adapter: Option<String>,
    /// Share of contended engine slots (fair admission).
    pub weight: u32,
    /// Served before lower classes when slots are contended.
    pub priority: u8,
}

/// Whoever presented valid credentials.
#[derive(Debug, Clone)]
pub enum Identity {
    Tenant(Arc<Tenant>),
    Admin,
}

/// Why credentials were refused; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    UnknownKey,
    Token(jwt::JwtError),
    UnknownTenant,
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::Token(error) => error.reason(),
            AuthFailure::UnknownTenant => "unknown_tenant",
        }
    }

    fn message(self) -> String {
        match self {
            AuthFailure::Missing => {
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.".into()
            }
            AuthFailure::Malformed => "The Authorization header must be `Bearer <key>`.".into(),
            AuthFailure::UnknownKey => "Incorrect API key provided.".into(),
            AuthFailure::Token(error) => format!("Invalid token: {error}."),
            AuthFailure::UnknownTenant => "The token names a tenant that does not exist.".into(),
        }
    }
}

pub struct Authenticator {
    enabled: bool,
    /// Admin routes answer anyone while authentication is off.
    open_admin: bool,
    keys: KeyRing,
    jwt: Option<JwtVerifier>,
    tenants: HashMap<String, Arc<Tenant>>,
    /// Who the caller is when authentication is disabled.
    anonymous: Arc<Tenant>,
}

impl Authenticator {
    pub fn new(config: &Config) -> Result<Authenticator, ConfigError> {
        let tenants: HashMap<String, Arc<Tenant>> = config
            .tenants
            .iter()
            .map(|t| {
                let tenant = Tenant {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    models: t.models.clone(),
                    limits: t.limits,
                    default_adapter: t.default_adapter.clone(),
                    weight: t.weight,
                    priority: t.priority,
                };
                (t.id.clone(), Arc::new(tenant))
            })
            .collect();
        let mut entries: Vec<_> = config
            .auth
            .admin_keys
            .iter()
            .map(|k| (*k, KeyOwner::Admin))
            .collect();
        for tenant in &config.tenants {
            entries.extend(
                tenant
                    .keys
                    .iter()
                    .map(|k| (*k, KeyOwner::Tenant(tenant.id.clone()))),
            );
        }
        Ok(Authenticator {
            enabled: config.auth.enabled,
            open_admin: config.auth.allow_open_admin,
            keys: KeyRing::new(entries),
            jwt: config.auth.jwt.as_ref().map(JwtVerifier::new).transpose()?,
            tenants,
            anonymous: Arc::new(Tenant {
                id: OPEN_MODE_TENANT.into(),
                name: "anonymous (authentication disabled)".into(),
                models: ModelAccess::All,
                limits: Limits::default(),
                default_adapter: None,
                weight: 1,
                priority: 0,
            }),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(id).cloned()
    }

    /// Whether `id` names a tenant: one of the config's, or with
    /// authentication off the open-mode tenant.
    pub fn knows_tenant(&self, id: &str) -> bool {
        self.tenants.contains_key(id) || (!self.enabled && id == OPEN_MODE_TENANT)
    }

    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, AuthFailure> {
        if !self.enabled {
            return Ok(Identity::Tenant(self.anonymous.clone()));
        }
        let value = authorization.ok_or(AuthFailure::Missing)?;
        let credential = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or(AuthFailure::Malformed)?;
        if jwt::looks_like_jwt(credential) {
            let verifier = self
                .jwt
                .as_ref()
                .ok_or(AuthFailure::Token(jwt::JwtError::Invalid))?;
            let claims = verifier.verify(credential).map_err(AuthFailure::Token)?;
            return match (claims.scope, claims.tenant) {
                (Scope::Admin, _) => Ok(Identity::Admin),
                (Scope::Tenant, Some(tenant)) => self
                    .tenant(&tenant)
                    .map(Identity::Tenant)
                    .ok_or(AuthFailure::UnknownTenant),
                (Scope::Tenant, None) => Err(AuthFailure::Token(jwt::JwtError::Invalid)),
            };
        }
        match self.keys.find(credential) {
            Some(KeyOwner::Admin) => Ok(Identity::Admin),
            Some(KeyOwner::Tenant(id)) => self
                .tenant(id)
                .map(Identity::Tenant)
                .ok_or(AuthFailure::UnknownTenant),
            None => Err(AuthFailure::UnknownKey),
        }
    }
}

fn identify(request: &HttpRequest) -> Result<(Identity, web::Data<AppState>), ApiError> {
    let state = request
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::engine("application state missing"))?;
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.auth.authenticate(authorization) {
        Ok(identity) => Ok((identity, state)),
        Err(failure) => {
            state
                .metrics
                .auth_failures
                .with_label_values(&[failure.reason()])
                .inc();
            Err(ApiError::Unauthorized {
                message: failure.message(),
            })
        }
    }
}

/// Valid credentials without the scope a route needs: counted, then 403.
fn forbidden(state: &AppState, message: &str) -> ApiError {
    state
        .metrics
        .auth_failures
        .with_label_values(&["forbidden"])
        .inc();
    ApiError::Forbidden {
        message: message.to_string(),
    }
}

/// Open mode makes every caller an admin, so the admin routes stay shut
/// unless the operator opened them by name.
fn admin_closed(state: &AppState) -> ApiError {
    state
        .metrics
        .auth_failures
        .with_label_values(&["forbidden"])
        .inc();
    ApiError::Refused {
        code: "admin_disabled",
        message: "Admin routes are closed while authentication is off. Turn authentication on (auth.enabled = true, with a key hash from `loragate keys create --admin` in auth.admin_api_keys), or set auth.allow_open_admin = true to open them to every local caller.".into(),
    }
}

/// A caller acting as a tenant (API key or `scope: tenant` token).
pub struct TenantCaller(pub Arc<Tenant>);

impl FromRequest for TenantCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            identify(request).and_then(|(identity, state)| match identity {
                Identity::Tenant(tenant) => Ok(TenantCaller(tenant)),
                Identity::Admin => Err(forbidden(
                    &state,
                    "Admin credentials cannot call inference routes; use a tenant's key.",
                )),
            }),
        )
    }
}

/// A caller with admin scope. With authentication disabled, anyone is when
/// `auth.allow_open_admin` says so; otherwise nobody is.
pub struct AdminCaller;

impl FromRequest for AdminCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            identify(request).and_then(|(identity, state)| match identity {
                Identity::Admin => Ok(AdminCaller),
                Identity::Tenant(_) if !state.auth.enabled() && state.auth.open_admin => {
                    Ok(AdminCaller)
                }
                Identity::Tenant(_) if !state.auth.enabled() => Err(admin_closed(&state)),
                Identity::Tenant(_) => Err(forbidden(&state, "This route needs admin scope.")),
            }),
        )
    }
}

#[cfg(test)]
mod tests;
