//! Operations routes: liveness, readiness and the Prometheus exposition.

use std::net::SocketAddr;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use subtle::ConstantTimeEq;

use crate::api::wire::HealthStatus;
use crate::app::AppState;
use crate::config::KeyHash;
use crate::error::{ApiError, ErrorResponse};

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = crate::api::routes::HEALTH, tag = "operations", responses((status = 200, body = HealthStatus)))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(HealthStatus { status: "ok" })
}

/// Readiness: the model is loaded and accepting requests.
#[utoipa::path(
    get,
    path = crate::api::routes::READY,
    tag = "operations",
    responses(
        (status = 200, body = HealthStatus),
        (status = 503, description = "The model is still loading.", body = HealthStatus),
    )
)]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    if state.engine().is_ok() {
        HttpResponse::Ok().json(HealthStatus { status: "ok" })
    } else {
        HttpResponse::ServiceUnavailable().json(HealthStatus { status: "loading" })
    }
}

/// Who may scrape `/metrics`, which names every tenant, adapter and replica.
#[derive(Debug, Clone, Default)]
pub struct MetricsAccess {
    /// SHA-256 of the scrape token; `None`: open.
    pub token: Option<KeyHash>,
    /// The listener that alone serves `/metrics`, when it has its own.
    pub listener: Option<SocketAddr>,
}

impl MetricsAccess {
    /// Hashes before comparing, in constant time, as API keys are.
    fn authorize(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let presented = authorization
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim);
        match presented {
            Some(presented) if bool::from(KeyHash::of_key(presented).0.ct_eq(&token.0)) => Ok(()),
            _ => Err(ApiError::Unauthorized {
                message: "/metrics needs the scrape token: send `Authorization: Bearer <token>` (the value of the variable named by metrics.bearer_token_env).".into(),
            }),
        }
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = crate::api::routes::METRICS,
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format.", content_type = "text/plain", body = String),
        (status = 401, description = "`metrics.bearer_token_env` is set and the request lacks that bearer token.", body = ErrorResponse),
    )
)]
pub async fn metrics(
    request: HttpRequest,
    metrics: web::Data<crate::metrics::Metrics>,
    access: web::Data<MetricsAccess>,
) -> Result<HttpResponse, ApiError> {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    access.authorize(authorization)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render()))
}
