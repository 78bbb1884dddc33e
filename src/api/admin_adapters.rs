//! Adapter administration (admin scope): upload a PEFT LoRA adapter for a
//! tenant as multipart form data, list, inspect, delete, roll back. A
//! replacement names the generation it replaces (`If-Match` or the
//! `expected_generation` field); a mismatch is 409.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::TryStreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use crate::adapters::validate::validate;
use crate::adapters::{AdapterError, AdapterRecord, valid_name};
use crate::app::AppState;
use crate::auth::AdminCaller;
use crate::error::{ApiError, ErrorResponse};

/// Largest accepted `adapter_config.json`.
const MAX_CONFIG_BYTES: usize = 1024 * 1024;

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
    let open_mode_tenant = !state.auth.enabled() && tenant == "anonymous";
    if state.auth.tenant(tenant).is_some() || open_mode_tenant {
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

async fn read_field(
    field: &mut actix_multipart::Field,
    limit: u64,
    too_large: impl Fn() -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field
        .try_next()
        .await
        .map_err(|e| ApiError::Upload(e.to_string()))?
    {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

struct Upload {
    name: String,
    config: Vec<u8>,
    weights: Vec<u8>,
    expected: Option<u64>,
    shared: bool,
}

async fn read_upload(mut form: Multipart, max_bytes: u64) -> Result<Upload, ApiError> {
    let (mut name, mut config, mut weights, mut expected) = (None, None, None, None);
    let mut shared = false;
    while let Some(mut field) = form
        .try_next()
        .await
        .map_err(|e| ApiError::Upload(e.to_string()))?
    {
        let field_name = field.name().unwrap_or_default().to_string();
        match field_name.as_str() {
            "name" => {
                let bytes = read_field(&mut field, 256, || {
                    ApiError::Upload("`name` is too long".into())
                })
                .await?;
                name = Some(
                    String::from_utf8(bytes)
                        .map_err(|_| ApiError::Upload("`name` must be UTF-8".into()))?,
                );
            }
            "expected_generation" => {
                let bytes = read_field(&mut field, 32, || {
                    ApiError::Upload("`expected_generation` is too long".into())
                })
                .await?;
                let text = String::from_utf8_lossy(&bytes).trim().to_string();
                expected = Some(text.parse::<u64>().map_err(|_| {
                    ApiError::Upload(format!(
                        "`expected_generation` must be a number, got `{text}`"
                    ))
                })?);
            }
            "shared" => {
                let bytes = read_field(&mut field, 8, || {
                    ApiError::Upload("`shared` must be true or false".into())
                })
                .await?;
                shared = match String::from_utf8_lossy(&bytes).trim() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(ApiError::Upload(format!(
                            "`shared` must be true or false, got `{other}`"
                        )));
                    }
                };
            }
            "adapter_config" => {
                let limit = MAX_CONFIG_BYTES as u64;
                config = Some(
                    read_field(&mut field, limit, || {
                        AdapterError::TooLarge { limit }.into()
                    })
                    .await?,
                );
            }
            "adapter_model" => {
                weights = Some(
                    read_field(&mut field, max_bytes, || {
                        AdapterError::TooLarge { limit: max_bytes }.into()
                    })
                    .await?,
                );
            }
            other => {
                return Err(ApiError::Upload(format!(
                    "unexpected form field `{other}`; send name, adapter_config, adapter_model and optionally expected_generation and shared"
                )));
            }
        }
    }
    let missing = |field: &str| ApiError::Upload(format!("the form field `{field}` is missing"));
    Ok(Upload {
        name: name.ok_or_else(|| missing("name"))?,
        config: config.ok_or_else(|| missing("adapter_config"))?,
        weights: weights.ok_or_else(|| missing("adapter_model"))?,
        expected,
        shared,
    })
}

/// Uploads an adapter (or a new generation of one) for a tenant.
#[utoipa::path(
    post,
    path = "/admin/v1/tenants/{tenant}/adapters",
    tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id.")),
    request_body(content = AdapterUpload, content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored, loaded (with warm_on_upload) and serving; `ETag` is the generation.", body = AdapterInfo),
        (status = 400, description = "Invalid adapter or form (`invalid_adapter`, `invalid_upload`); the message names the problem.", body = ErrorResponse),
        (status = 401, description = "Missing or invalid credentials.", body = ErrorResponse),
        (status = 403, description = "Not an admin.", body = ErrorResponse),
        (status = 404, description = "No such tenant.", body = ErrorResponse),
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
    path: web::Path<String>,
    form: Multipart,
) -> Result<HttpResponse, ApiError> {
    let tenant = path.into_inner();
    known_tenant(&state, &tenant)?;
    let base = state.base_shape.ok_or(AdapterError::Unsupported)?;
    let header_expectation = if_match(&request)?;
    let upload = read_upload(form, state.adapter_limits.max_bytes).await?;
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
    let limits = crate::adapters::validate::Limits {
        ..state.adapter_limits
    };
    let (config, weights) = (upload.config, upload.weights);
    let checked = web::block(move || {
        validate(&config, &weights, &base, &limits).map(|v| (v, config, weights))
    })
    .await
    .map_err(ApiError::engine)??;
    let (validated, config, weights) = checked;
    let record = AdapterRecord {
        tenant: tenant.clone(),
        name: upload.name,
        generation: 0,
        rank: validated.rank,
        alpha: validated.alpha,
        target_modules: validated.target_modules,
        size_bytes: validated.size_bytes,
        sha256: validated.sha256,
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        shared: upload.shared,
    };
    let engine = state.engine()?;
    let warm = state.warm_on_upload;
    let (residency, warm_engine) = (state.residency.clone(), engine.clone());
    let (stored, replaced) = state
        .store
        .put(
            record,
            &config,
            &weights,
            header_expectation.or(upload.expected),
            |record| async move {
                if warm {
                    residency.acquire(warm_engine, &record).await.map(drop)
                } else {
                    Ok(())
                }
            },
        )
        .await?;
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

/// Lists a tenant's adapters (their current generations).
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{tenant}/adapters",
    tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id.")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AdapterList),
        (status = 401, description = "Missing or invalid credentials.", body = ErrorResponse),
        (status = 403, description = "Not an admin.", body = ErrorResponse),
        (status = 404, description = "No such tenant.", body = ErrorResponse),
    )
)]
pub async fn list(
    _admin: AdminCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = path.into_inner();
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
    path = "/admin/v1/tenants/{tenant}/adapters/{name}",
    tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id."), ("name" = String, Path, description = "Adapter name.")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AdapterInfo),
        (status = 401, description = "Missing or invalid credentials.", body = ErrorResponse),
        (status = 403, description = "Not an admin.", body = ErrorResponse),
        (status = 404, description = "No such tenant or adapter.", body = ErrorResponse),
    )
)]
pub async fn get(
    _admin: AdminCaller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
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
    path = "/admin/v1/tenants/{tenant}/adapters/{name}",
    tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id."), ("name" = String, Path, description = "Adapter name.")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AdapterDeleted),
        (status = 401, description = "Missing or invalid credentials.", body = ErrorResponse),
        (status = 403, description = "Not an admin.", body = ErrorResponse),
        (status = 404, description = "No such tenant or adapter.", body = ErrorResponse),
        (status = 409, description = "`If-Match` does not match the current generation.", body = ErrorResponse),
    )
)]
pub async fn delete(
    _admin: AdminCaller,
    request: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
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
    path = "/admin/v1/tenants/{tenant}/adapters/{name}/rollback",
    tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id."), ("name" = String, Path, description = "Adapter name.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The generation now served.", body = AdapterInfo),
        (status = 401, description = "Missing or invalid credentials.", body = ErrorResponse),
        (status = 403, description = "Not an admin.", body = ErrorResponse),
        (status = 404, description = "No such tenant or adapter.", body = ErrorResponse),
        (status = 409, description = "No earlier generation, or `If-Match` mismatch.", body = ErrorResponse),
    )
)]
pub async fn rollback(
    _admin: AdminCaller,
    request: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
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
