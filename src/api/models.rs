use actix_web::{HttpResponse, web};

use crate::api::wire::{ModelList, ModelObject};
use crate::app::AppState;
use crate::auth::TenantCaller;
use crate::engine::ModelCard;
use crate::error::{ApiError, ErrorResponse};

fn model_object(card: ModelCard) -> ModelObject {
    ModelObject {
        id: card.id,
        object: "model".into(),
        created: card.created,
        owned_by: card.owned_by,
        max_model_len: card.context_length,
    }
}

/// Lists the models this gateway serves.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The models the caller may use.", body = ModelList),
        (status = 401, description = "Missing or invalid credentials.", body = ErrorResponse),
        (status = 403, description = "Credentials without tenant scope.", body = ErrorResponse),
        (status = 503, description = "Still loading.", body = ErrorResponse),
    )
)]
pub async fn list_models(
    caller: TenantCaller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let data = state
        .engine()?
        .models()
        .into_iter()
        .filter(|card| caller.0.models.allows(&card.id))
        .map(model_object)
        .collect();
    Ok(HttpResponse::Ok().json(ModelList {
        object: "list".into(),
        data,
    }))
}

/// Describes one model.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "models",
    params(("model" = String, Path, description = "Model id as listed by `GET /v1/models`.")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ModelObject),
        (status = 401, description = "Missing or invalid credentials.", body = ErrorResponse),
        (status = 403, description = "Credentials without tenant scope.", body = ErrorResponse),
        (status = 404, description = "Unknown model (`model_not_found`).", body = ErrorResponse),
        (status = 503, description = "Still loading.", body = ErrorResponse),
    )
)]
pub async fn retrieve_model(
    caller: TenantCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let card = state
        .engine()?
        .model(&id)
        .filter(|_| caller.0.models.allows(&id))
        .ok_or(ApiError::ModelNotFound(id))?;
    Ok(HttpResponse::Ok().json(model_object(card)))
}
