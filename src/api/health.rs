use actix_web::{HttpResponse, web};

use crate::api::wire::HealthStatus;
use crate::app::AppState;

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = HealthStatus)))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(HealthStatus { status: "ok" })
}

/// Readiness: the model is loaded and accepting requests.
#[utoipa::path(
    get,
    path = "/ready",
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

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format.", content_type = "text/plain", body = String))
)]
pub async fn metrics(metrics: web::Data<crate::metrics::Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}
