//! Admin routes (admin scope only).

use actix_web::{HttpResponse, web};

use crate::app::AppState;
use crate::auth::AdminCaller;
use crate::error::{ApiError, ErrorResponse};
use crate::metering::UsageReport;

/// A tenant's usage per model: the last hour and today (UTC).
#[utoipa::path(
    get,
    path = crate::api::routes::TENANT_USAGE,
    tag = "admin",
    params(crate::api::routes::TenantPath),
    security(("bearer" = [])),
    responses(
        (status = 200, body = UsageReport),
        crate::api::openapi::AdminTenantErrors,
        (status = 503, description = "The usage store is unreachable.", body = ErrorResponse),
    )
)]
pub async fn tenant_usage(
    _admin: AdminCaller,
    state: web::Data<AppState>,
    path: web::Path<crate::api::routes::TenantPath>,
) -> Result<HttpResponse, ApiError> {
    let tenant = path.into_inner().tenant;
    if !state.auth.knows_tenant(&tenant) {
        return Err(ApiError::TenantNotFound(tenant));
    }
    let report = state
        .meter
        .report(&tenant)
        .await
        .map_err(|_| ApiError::LimiterUnavailable)?;
    Ok(HttpResponse::Ok().json(report))
}
