//! Every HTTP path, written once. The `#[utoipa::path]` of each handler
//! names its constant, [`endpoints`] pairs the constants with methods and
//! handlers for the actix table, and a 405's `Allow` is worked out from
//! that table; a test checks the OpenAPI document lists the same endpoints.

use actix_web::http::Method;
use actix_web::{Route, web};

use crate::api::{admin, admin_adapters, chat, health, models, openapi, responses};

pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
pub const RESPONSES: &str = "/v1/responses";
pub const MODELS: &str = "/v1/models";
pub const MODEL: &str = "/v1/models/{model}";
pub const HEALTH: &str = "/health";
pub const READY: &str = "/ready";
pub const METRICS: &str = "/metrics";
pub const OPENAPI_JSON: &str = "/openapi.json";
pub const DOCS: &str = "/docs";
pub const TENANT_USAGE: &str = "/admin/v1/tenants/{tenant}/usage";
pub const ADAPTERS: &str = "/admin/v1/tenants/{tenant}/adapters";
pub const ADAPTER: &str = "/admin/v1/tenants/{tenant}/adapters/{name}";
pub const ADAPTER_ROLLBACK: &str = "/admin/v1/tenants/{tenant}/adapters/{name}/rollback";

/// The path parameters of the tenant routes, declared once for both the
/// extractor and the OpenAPI document.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// Tenant id from the configuration.
    pub tenant: String,
}

/// The path parameters of one tenant's adapter.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AdapterPath {
    /// Tenant id from the configuration.
    pub tenant: String,
    /// Adapter name.
    pub name: String,
}

/// One method of one path, and the handler that serves it.
pub struct Endpoint {
    pub path: &'static str,
    pub method: Method,
    handler: fn() -> Route,
}

impl Endpoint {
    fn new(path: &'static str, method: Method, handler: fn() -> Route) -> Endpoint {
        Endpoint {
            path,
            method,
            handler,
        }
    }

    /// The actix route: the handler, for this method only.
    pub fn route(&self) -> Route {
        (self.handler)().method(self.method.clone())
    }

    /// The path as actix matches it: a model id may contain `/`.
    pub fn pattern(&self) -> String {
        self.path.replace("{model}", "{model:.*}")
    }
}

/// Every endpoint the gateway serves, in the order they are matched.
pub fn endpoints() -> Vec<Endpoint> {
    use Method as M;
    vec![
        Endpoint::new(CHAT_COMPLETIONS, M::POST, || {
            web::to(chat::create_chat_completion)
        }),
        Endpoint::new(RESPONSES, M::POST, || web::to(responses::create_response)),
        Endpoint::new(MODELS, M::GET, || web::to(models::list_models)),
        Endpoint::new(MODEL, M::GET, || web::to(models::retrieve_model)),
        Endpoint::new(HEALTH, M::GET, || web::to(health::health)),
        Endpoint::new(READY, M::GET, || web::to(health::ready)),
        Endpoint::new(METRICS, M::GET, || web::to(health::metrics)),
        Endpoint::new(OPENAPI_JSON, M::GET, || web::to(openapi::openapi_json)),
        Endpoint::new(DOCS, M::GET, || web::to(openapi::docs)),
        Endpoint::new(TENANT_USAGE, M::GET, || web::to(admin::tenant_usage)),
        Endpoint::new(ADAPTERS, M::GET, || web::to(admin_adapters::list)),
        Endpoint::new(ADAPTERS, M::POST, || web::to(admin_adapters::upload)),
        Endpoint::new(ADAPTER, M::GET, || web::to(admin_adapters::get)),
        Endpoint::new(ADAPTER, M::DELETE, || web::to(admin_adapters::delete)),
        Endpoint::new(ADAPTER_ROLLBACK, M::POST, || {
            web::to(admin_adapters::rollback)
        }),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::OpenApi;

    use super::*;

    #[test]
    fn the_openapi_document_lists_exactly_the_served_endpoints() {
        let served: BTreeSet<(String, String)> = endpoints()
            .iter()
            .map(|e| (e.path.to_string(), e.method.as_str().to_lowercase()))
            .collect();
        let document = serde_json::to_value(openapi::ApiDoc::openapi()).unwrap();
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                let methods = item.as_object().unwrap().keys();
                methods.map(move |method| (path.clone(), method.clone()))
            })
            .filter(|(_, method)| method != "parameters")
            .collect();
        assert_eq!(served, documented);
    }
}
