//! Adapter administration (admin scope): upload a PEFT LoRA adapter for a
//! tenant as multipart form data, list, inspect, delete, roll back. A
//! replacement names the generation it replaces (`If-Match` or the
//! `expected_generation` field); a mismatch is 409.

mod form;

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::adapters::validate::validate_file;
use crate::adapters::{AdapterError, AdapterRecord, Staging, valid_name};
use crate::api::routes::{AdapterPath, TenantPath};
use crate::app::AppState;
use crate::auth::AdminCaller;
use crate::error::{ApiError, ErrorResponse};

/// An adapter as the admin API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdapterInfo {
    #[serde(flatten)]
    pub record: AdapterRecord,
    /// Loaded in the engine right now.
    pub resident: bool,
    /// Every stored generation, oldest first.
    pub generations: Vec<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdapterList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<AdapterInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdapterDeleted {
    pub name: String,
    pub deleted: bool,
    pub generations: Vec<u64>,
}

/// The multipart form of an upload (documentation only).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AdapterUpload {
    /// Adapter name: 1-64 of a-z, 0-9, '-', '_', '.'.
    name: String,
    /// The PEFT `adapter_config.json`.
    #[schema(value_type = String, format = Binary)]
    adapter_config: Vec<u8>,
    /// The PEFT `adapter_model.safetensors`.
    #[schema(value_type = String, format = Binary)]
    adapter_model: Vec<u8>,
    /// Generation being replaced (required to replace; `If-Match` also works).
    expected_generation: Option<u64>,
    /// `true`: every tenant may use it as `<tenant>/<name>`.
    shared: Option<bool>,
}

fn known_tenant(state: &AppState, tenant: &str) -> Result<(), ApiError> {
    if state.auth.knows_tenant(tenant) {
        Ok(())
    } else {
        Err(ApiError::TenantNotFound(tenant.to_string()))
    }
}

fn info(state: &AppState, record: AdapterRecord) -> AdapterInfo {
    AdapterInfo {
        resident: state.residency.is_resident(&record),
        generations: state.store.generations(&record.tenant, &record.name),
        record,
    }
}

/// `If-Match: "3"` (or `3`, or `W/"3"`).
fn if_match(request: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(value) = request.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::Upload(format!(
            "If-Match must be a generation number, got `{text}`"
        ))
    })
}

fn etag(generation: u64) -> (header::HeaderName, String) {
    (header::ETAG, format!("\"{generation}\""))
}

/// Uploads an adapter (or a new generation of one) for a tenant.
#[utoipa::path(
    post,
    path = crate::api::routes::ADAPTERS,
    tag = "admin",
    params(crate::api::routes::TenantPath),
    request_body(content = AdapterUpload, content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored and serving; with warm_on_upload also loaded, when a slot is free or idle (a busy slot is never waited for). `ETag` is the generation.", body = AdapterInfo),
        (status = 400, description = "Invalid adapter or form (`invalid_adapter`, `invalid_upload`); the message names the problem.", body = ErrorResponse),
        crate::api::openapi::AdminTenantErrors,
        (status = 409, description = "`expected_generation` / `If-Match` does not match the current generation.", body = ErrorResponse),
        (status = 413, description = "A file is over its size cap.", body = ErrorResponse),
        (status = 500, description = "The adapter could not be stored or loaded.", body = ErrorResponse),
        (status = 503, description = "Model loading, or no adapter slot free.", body = ErrorResponse),
    )
)]
pub async fn upload(
    _admin: AdminCaller,
    request: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<TenantPath>,
    form: Multipart,
) -> Result<HttpResponse, ApiError> {
    let tenant = path.into_inner().tenant;
    known_tenant(&state, &tenant)?;
    state.base_shape.ok_or(AdapterError::Unsupported)?;
    let header_expectation = if_match(&request)?;
    let engine = state.engine()?;
    let staging = state.store.stage().await?;
    let (record, config, expected) = match prepare(&state, &tenant, form, &staging).await {
        Ok((record, config, expected)) => (record, config, header_expectation.or(expected)),
        Err(error) => {
            staging.discard().await;
            return Err(error);
        }
    };
    let (store, residency) = (state.store.clone(), state.residency.clone());
    let (warm, warm_engine) = (state.warm_on_upload, engine.clone());
    // The store's part runs on its own task: a client that goes away
    // mid-load cannot leave a generation half switched.
    let stored = tokio::spawn(async move {
        store
            .put(record, staging, config, expected, |record| async move {
                if warm {
                    residency.warm(warm_engine, &record).await.map(drop)
                } else {
                    Ok(())
                }
            })
            .await
    });
    let (stored, replaced) = stored.await.map_err(ApiError::engine)??;
    if let Some(previous) = replaced {
        // New requests already reach the new generation; the old one goes
        // once its last request finishes.
        state.residency.retire(&engine, &previous);
    }
    let generation = stored.generation;
    Ok(HttpResponse::Created()
        .insert_header(etag(generation))
        .json(info(&state, stored)))
}

/// Reads the form (the weights into `staging`) and validates it; returns
/// the record to store, the config and the form's `expected_generation`.
async fn prepare(
    state: &AppState,
    tenant: &str,
    form: Multipart,
    staging: &Staging,
) -> Result<(AdapterRecord, Vec<u8>, Option<u64>), ApiError> {
    let base = state.base_shape.ok_or(AdapterError::Unsupported)?;
    let upload = form::read_upload(form, staging, state.adapter_limits.max_bytes).await?;
    if !valid_name(&upload.name) {
        return Err(ApiError::invalid(
            "name",
            "Adapter names use 1-64 characters of a-z, 0-9, '-', '_' and '.', and no '..'.",
        ));
    }
    if upload.name == state.base_model {
        return Err(ApiError::invalid(
            "name",
            "An adapter cannot take the base model's name.",
        ));
    }
    let limits = state.adapter_limits;
    let (config, weights, received) = (upload.config, staging.weights_path(), upload.weights);
    let (validated, config) = web::block(move || {
        validate_file(&config, &weights, &received, &base, &limits).map(|v| (v, config))
    })
    .await
    .map_err(ApiError::engine)??;
    let record = AdapterRecord::from_validated(tenant, upload.name, validated, upload.shared);
    Ok((record, config, upload.expected))
}

/// Lists a tenant's adapters (their current generations).
#[utoipa::path(
    get,
    path = crate::api::routes::ADAPTERS,
    tag = "admin",
    params(crate::api::routes::TenantPath),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AdapterList),
        crate::api::openapi::AdminTenantErrors,
    )
)]
pub async fn list(
    _admin: AdminCaller,
    state: web::Data<AppState>,
    path: web::Path<TenantPath>,
) -> Result<HttpResponse, ApiError> {
    let tenant = path.into_inner().tenant;
    known_tenant(&state, &tenant)?;
    let data = state
        .store
        .list(&tenant)
        .into_iter()
        .map(|record| info(&state, record))
        .collect();
    Ok(HttpResponse::Ok().json(AdapterList {
        object: "list",
        data,
    }))
}

/// Describes one adapter: config, size, sha256, generation, residency.
#[utoipa::path(
    get,
    path = crate::api::routes::ADAPTER,
    tag = "admin",
    params(crate::api::routes::AdapterPath),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AdapterInfo),
        crate::api::openapi::AdminAdapterErrors,
    )
)]
pub async fn get(
    _admin: AdminCaller,
    state: web::Data<AppState>,
    path: web::Path<AdapterPath>,
) -> Result<HttpResponse, ApiError> {
    let AdapterPath { tenant, name } = path.into_inner();
    known_tenant(&state, &tenant)?;
    let record = state
        .store
        .current(&tenant, &name)
        .ok_or(AdapterError::NotFound(name))?;
    let generation = record.generation;
    Ok(HttpResponse::Ok()
        .insert_header(etag(generation))
        .json(info(&state, record)))
}

/// Deletes an adapter and all its generations.
#[utoipa::path(
    delete,
    path = crate::api::routes::ADAPTER,
    tag = "admin",
    params(crate::api::routes::AdapterPath),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AdapterDeleted),
        crate::api::openapi::AdminAdapterErrors,
        (status = 409, description = "`If-Match` does not match the current generation.", body = ErrorResponse),
    )
)]
pub async fn delete(
    _admin: AdminCaller,
    request: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<AdapterPath>,
) -> Result<HttpResponse, ApiError> {
    let AdapterPath { tenant, name } = path.into_inner();
    known_tenant(&state, &tenant)?;
    let removed = state
        .store
        .delete(&tenant, &name, if_match(&request)?)
        .await?;
    if let Ok(engine) = state.engine() {
        removed
            .iter()
            .for_each(|record| state.residency.retire(&engine, record));
    }
    let generations = removed.iter().map(|record| record.generation).collect();
    Ok(HttpResponse::Ok().json(AdapterDeleted {
        name,
        deleted: true,
        generations,
    }))
}

/// Makes the previous generation current again and discards the newer one.
#[utoipa::path(
    post,
    path = crate::api::routes::ADAPTER_ROLLBACK,
    tag = "admin",
    params(crate::api::routes::AdapterPath),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The generation now served.", body = AdapterInfo),
        crate::api::openapi::AdminAdapterErrors,
        (status = 409, description = "No earlier generation, or `If-Match` mismatch.", body = ErrorResponse),
    )
)]
pub async fn rollback(
    _admin: AdminCaller,
    request: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<AdapterPath>,
) -> Result<HttpResponse, ApiError> {
    let AdapterPath { tenant, name } = path.into_inner();
    known_tenant(&state, &tenant)?;
    let (now, undone) = state
        .store
        .rollback(&tenant, &name, if_match(&request)?)
        .await?;
    if let Ok(engine) = state.engine() {
        state.residency.retire(&engine, &undone);
    }
    let generation = now.generation;
    Ok(HttpResponse::Ok()
        .insert_header(etag(generation))
        .json(info(&state, now)))
}
