//! `GET /v1/models` and `GET /v1/models/{model}`: the base model and the
//! adapters the calling tenant may use, in OpenAI's model object.

use actix_web::{HttpResponse, web};

use crate::adapters::AdapterRecord;
use crate::api::routing::adapter_record;
use crate::api::wire::{ModelList, ModelObject};
use crate::app::AppState;
use crate::auth::TenantCaller;
use crate::engine::ModelCard;
use crate::error::{ApiError, ErrorResponse};

fn adapter_object(record: AdapterRecord, context_length: usize) -> ModelObject {
    ModelObject {
        id: record.name,
        object: "model".into(),
        created: record.created_at,
        owned_by: record.tenant,
        max_model_len: context_length,
    }
}

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
    path = crate::api::routes::MODELS,
    tag = "models",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The models the caller may use.", body = ModelList),
        crate::api::openapi::TenantAuthErrors,
        (status = 503, description = "Still loading.", body = ErrorResponse),
    )
)]
pub async fn list_models(
    caller: TenantCaller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let mut data: Vec<ModelObject> = engine
        .model(&state.base_model)
        .filter(|card| caller.0.models.allows(&card.id))
        .map(model_object)
        .into_iter()
        .collect();
    if let Some(context) = data.first().map(|base| base.max_model_len) {
        let adapters = state.store.list(&caller.0.id);
        data.extend(
            adapters
                .into_iter()
                .map(|record| adapter_object(record, context)),
        );
        let shared = state.store.list_shared().into_iter();
        data.extend(
            shared
                .filter(|record| record.tenant != caller.0.id)
                .map(|record| ModelObject {
                    id: format!("{}/{}", record.tenant, record.name),
                    ..adapter_object(record, context)
                }),
        );
    }
    Ok(HttpResponse::Ok().json(ModelList {
        object: "list".into(),
        data,
    }))
}

/// Describes one model.
#[utoipa::path(
    get,
    path = crate::api::routes::MODEL,
    tag = "models",
    params(("model" = String, Path, description = "Model id as listed by `GET /v1/models`.")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ModelObject),
        crate::api::openapi::TenantAuthErrors,
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
    let base = state
        .engine()?
        .model(&state.base_model)
        .ok_or_else(|| ApiError::ModelNotFound(id.clone()))?;
    let object = match adapter_record(&state, &caller.0, &id)? {
        None => model_object(base),
        Some(record) => ModelObject {
            id: id.clone(),
            ..adapter_object(record, base.context_length)
        },
    };
    Ok(HttpResponse::Ok().json(object))
}
