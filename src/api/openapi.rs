//! The OpenAPI description, served at `/openapi.json`, and a docs page at
//! `/docs` rendered on the server so it works without internet access.

use actix_web::HttpResponse;
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::path::Operation;

use crate::api::{admin, admin_adapters, chat, health, models, responses, wire};
use crate::error::{ErrorBody, ErrorResponse};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "loragate",
        description = "Multi-tenant, OpenAI-compatible inference gateway over mistral.rs.",
    ),
    paths(
        chat::create_chat_completion,
        responses::create_response,
        models::list_models,
        models::retrieve_model,
        health::health,
        health::ready,
        health::metrics,
        openapi_json,
        docs,
        admin::tenant_usage,
        admin_adapters::upload,
        admin_adapters::list,
        admin_adapters::get,
        admin_adapters::delete,
        admin_adapters::rollback,
    ),
    components(schemas(
        ErrorResponse,
        ErrorBody,
        wire::ChatCompletionRequest,
        wire::ChatCompletion,
        wire::ChatCompletionChunk,
        wire::ChatStreamEvent,
        responses::wire::CreateResponseRequest,
        responses::wire::ResponseObject,
        responses::wire::ResponseStreamEvent,
        wire::ModelList,
        wire::ModelObject,
        wire::HealthStatus,
    )),
    tags(
        (name = "chat", description = "OpenAI chat completions"),
        (name = "responses", description = "OpenAI Responses API (stateless)"),
        (name = "models", description = "Served models"),
        (name = "operations", description = "Probes and metrics"),
        (name = "admin", description = "Tenant administration (admin scope)"),
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The authentication refusals of every tenant route, declared once.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum TenantAuthErrors {
    /// Missing or invalid API key or token (`invalid_api_key`).
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// Credentials without tenant scope.
    #[response(status = 403)]
    Forbidden(ErrorResponse),
}

/// The refusals of every admin route about one tenant, declared once.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum AdminTenantErrors {
    /// Missing or invalid credentials.
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// Not an admin.
    #[response(status = 403)]
    Forbidden(ErrorResponse),
    /// No such tenant (`tenant_not_found`).
    #[response(status = 404)]
    NoTenant(ErrorResponse),
}

/// The refusals of every admin route about one adapter, declared once.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum AdminAdapterErrors {
    /// Missing or invalid credentials.
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// Not an admin.
    #[response(status = 403)]
    Forbidden(ErrorResponse),
    /// No such tenant (`tenant_not_found`) or adapter (`adapter_not_found`).
    #[response(status = 404)]
    NotFound(ErrorResponse),
}

/// The refusals every inference route (chat, responses) shares past
/// authentication and its own validation (400), declared once.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum InferenceErrors {
    /// A tenant limit is exhausted (`rate_limit_exceeded`); see `Retry-After` and `x-ratelimit-*`.
    #[response(status = 429)]
    RateLimited(ErrorResponse),
    /// Unknown model (`model_not_found`).
    #[response(status = 404)]
    UnknownModel(ErrorResponse),
    /// Body over the configured size cap.
    #[response(status = 413)]
    TooLarge(ErrorResponse),
    /// The body is not declared as JSON (`unsupported_media_type`).
    #[response(status = 415)]
    NotJson(ErrorResponse),
    /// Engine failure; the message carries a reference, never internals.
    #[response(status = 500)]
    Engine(ErrorResponse),
    /// With `[upstream]`: a replica failed, answered nonsense or could not be reached (`upstream_error`).
    #[response(status = 502)]
    Upstream(ErrorResponse),
    /// At capacity or still loading; see `Retry-After`.
    #[response(status = 503)]
    Unavailable(ErrorResponse),
    /// With `[upstream]`: a replica did not answer in time (`upstream_timeout`).
    #[response(status = 504)]
    UpstreamTimeout(ErrorResponse),
}

/// Declares the `bearer` scheme the routes' `security` refers to.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A tenant or admin API key (`lg-…`), or a JWT"))
                    .build(),
            ),
        );
    }
}

/// The spec as committed in `openapi.json` (pretty JSON, trailing newline).
pub fn spec_json() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".into());
    json.push('\n');
    json
}

#[utoipa::path(get, path = crate::api::routes::OPENAPI_JSON, tag = "operations", responses((status = 200, description = "This OpenAPI document.", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(spec_json())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn operation_html(method: &str, path: &str, operation: &Operation) -> String {
    let summary = operation
        .summary
        .as_deref()
        .or(operation.description.as_deref())
        .unwrap_or("");
    let responses: String = operation
        .responses
        .responses
        .iter()
        .map(|(status, response)| {
            let description = match response {
                RefOr::T(response) => response.description.clone(),
                RefOr::Ref(reference) => reference.ref_location.clone(),
            };
            format!("<li><code>{status}</code> {}</li>", escape(&description))
        })
        .collect();
    format!(
        "<section><h2><code>{method} {}</code></h2><p>{}</p><ul>{responses}</ul></section>",
        escape(path),
        escape(summary)
    )
}

#[utoipa::path(get, path = crate::api::routes::DOCS, tag = "operations", responses((status = 200, description = "Human-readable API reference.", content_type = "text/html", body = String)))]
pub async fn docs() -> HttpResponse {
    let spec = ApiDoc::openapi();
    let mut sections = String::new();
    for (path, item) in &spec.paths.paths {
        let operations = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                sections.push_str(&operation_html(method, path, operation));
            }
        }
    }
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>loragate API</title>\
         <style>body{{font-family:sans-serif;max-width:60rem;margin:auto}}section{{border-top:1px solid #ccc}}</style></head>\
         <body><h1>loragate API</h1><p>Machine-readable spec: <a href=\"/openapi.json\">/openapi.json</a>. \
         Errors use OpenAI's envelope <code>{{\"error\":{{\"message\",\"type\",\"param\",\"code\"}}}}</code>.</p>{sections}</body></html>"
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page)
}
