//! Application assembly. Every request passes, outermost first:
//! 1. `x-request-id`: echoes the caller's id or assigns one, on every response;
//! 2. HTTP metrics, labelled by route pattern;
//! 3. listener scope: with `metrics.bind`, that listener serves only
//!    `/metrics` and the main one everything else (404 otherwise);
//! 4. open mode (authentication off only): loopback `Host` and `Origin`, see
//!    `auth::open_mode` (403 otherwise);
//! 5. routing: unknown paths get a 404 and wrong methods a 405, both in
//!    OpenAI's error envelope.
//!
//! Authentication is not a layer: each handler names the caller it needs in
//! its extractor (`TenantCaller`, `AdminCaller`, see `auth`). Unauthenticated
//! routes: `/health`, `/ready`, `/metrics` (unless `metrics.bearer_token_env`
//! gives it a token), `/openapi.json`, `/docs`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpRequest, HttpServer, web};

use crate::adapters::validate::{BaseShape, Limits as AdapterLimits};
use crate::adapters::{AdapterStore, Residency};
use crate::api::extract::BodyLimit;
use crate::api::health::MetricsAccess;
use crate::api::routes;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::engine::{Admission, Engine};
use crate::error::ApiError;
use crate::metering::UsageMeter;
use crate::metrics::Metrics;
use crate::ratelimit::{GuardedLimiter, RedisHandle};

pub struct AppState {
    engine: OnceLock<Arc<dyn Engine>>,
    pub admission: Admission,
    pub auth: Authenticator,
    pub limiter: Arc<GuardedLimiter>,
    pub meter: Arc<UsageMeter>,
    pub metrics: Arc<Metrics>,
    pub default_max_tokens: Option<usize>,
    /// The base model's served name.
    pub base_model: String,
    pub store: Arc<AdapterStore>,
    pub residency: Arc<Residency>,
    /// Shapes adapters are checked against; `None` for a GGUF base.
    pub base_shape: Option<BaseShape>,
    pub adapter_limits: AdapterLimits,
    pub warm_on_upload: bool,
    /// How long a streaming client may take nothing while output waits.
    pub write_idle_timeout: std::time::Duration,
}

impl AppState {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<AppState> {
        let redis = config
            .redis
            .as_ref()
            .map(|redis| RedisHandle::new(redis).map(Arc::new))
            .transpose()?;
        let limiter =
            GuardedLimiter::new(redis.clone().zip(config.redis.as_ref()), metrics.clone());
        let mut tenants: Vec<String> = config.tenants.iter().map(|t| t.id.clone()).collect();
        if !config.auth.enabled {
            tenants.push(crate::auth::OPEN_MODE_TENANT.into());
        }
        metrics.prime(&tenants, &config.model.served_name);
        if !config.auth.enabled {
            tracing::warn!(
                open_admin = config.auth.allow_open_admin,
                "authentication is disabled: every caller is the anonymous tenant; only loopback Host and Origin are served"
            );
        }
        let scraped_at = config.metrics.bind.unwrap_or(config.server.bind);
        if config.metrics.bearer_token.is_none() && !scraped_at.ip().is_loopback() {
            tracing::warn!(
                address = %scraped_at,
                "/metrics names every tenant and is served without a token on a non-loopback address; set metrics.bearer_token_env"
            );
        }
        let store = Arc::new(AdapterStore::open(&config.adapters.dir).map_err(|e| {
            anyhow::anyhow!(
                "config key `adapters.dir`: cannot open {}: {e}",
                config.adapters.dir.display()
            )
        })?);
        let residency = Residency::new(
            store.clone(),
            config.adapters.max_resident,
            config.adapters.max_resident_bytes,
            config.adapters.load_timeout,
            metrics.clone(),
        );
        // Uploads are refused up front where nothing could serve them.
        let adapters_servable = config
            .upstream
            .as_ref()
            .is_none_or(|upstream| upstream.adapter_registration.is_some());
        let base_shape = config
            .base_model_dir()
            .filter(|_| adapters_servable)
            .map(BaseShape::from_model_dir)
            .transpose()?;
        Ok(AppState {
            base_model: config.model.served_name.clone(),
            residency: Arc::new(residency),
            store,
            base_shape,
            adapter_limits: AdapterLimits {
                max_rank: config.adapters.max_rank,
                max_bytes: config.adapters.max_bytes,
            },
            warm_on_upload: config.adapters.warm_on_upload,
            write_idle_timeout: config.server.write_idle_timeout,
            engine: OnceLock::new(),
            admission: Admission::new(&config.admission),
            auth: Authenticator::new(config)?,
            limiter: Arc::new(limiter),
            meter: Arc::new(UsageMeter::new(redis, metrics.clone())),
            metrics,
            default_max_tokens: config.model.default_max_tokens,
        })
    }

    /// Installs the engine once it has loaded; the gateway is ready from then on.
    pub fn install_engine(&self, engine: Arc<dyn Engine>) {
        if self.engine.set(engine).is_err() {
            tracing::warn!("engine installed twice; keeping the first");
        }
    }

    pub fn engine(&self) -> Result<Arc<dyn Engine>, ApiError> {
        self.engine.get().cloned().ok_or(ApiError::NotReady)
    }
}

async fn route_not_found(request: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound {
        method: request.method().to_string(),
        path: request.path().to_string(),
    })
}

/// One resource per path, serving the methods [`routes::endpoints`] gives
/// it; any other method gets 405 with `Allow` naming those.
fn resources() -> Vec<actix_web::Resource> {
    let mut by_path: Vec<(&'static str, Vec<routes::Endpoint>)> = Vec::new();
    for endpoint in routes::endpoints() {
        match by_path.iter_mut().find(|(path, _)| *path == endpoint.path) {
            Some((_, endpoints)) => endpoints.push(endpoint),
            None => by_path.push((endpoint.path, vec![endpoint])),
        }
    }
    by_path
        .into_iter()
        .map(|(_, endpoints)| {
            let allowed: Vec<&str> = endpoints.iter().map(|e| e.method.as_str()).collect();
            let allowed = allowed.join(", ");
            let resource = web::resource(endpoints[0].pattern());
            let resource = endpoints.iter().fold(resource, |resource, endpoint| {
                resource.route(endpoint.route())
            });
            resource.default_service(web::to(move |request: HttpRequest| {
                let allowed = allowed.clone();
                async move {
                    Err::<actix_web::HttpResponse, _>(ApiError::MethodNotAllowed {
                        method: request.method().to_string(),
                        path: request.path().to_string(),
                        allowed,
                    })
                }
            }))
        })
        .collect()
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

async fn request_id(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .filter(|value| value.len() <= 128)
        .cloned()
        .or_else(|| HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string()).ok());
    let mut response = next.call(request).await?;
    if let Some(id) = id {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    Ok(response)
}

/// With a metrics listener of its own, it serves `/metrics` alone, and the
/// public listener does not serve it at all.
async fn listener_scope(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let listener = request
        .app_data::<web::Data<MetricsAccess>>()
        .and_then(|access| access.listener);
    if let Some(listener) = listener {
        let on_metrics_listener = request.app_config().local_addr() == listener;
        if on_metrics_listener != (request.path() == routes::METRICS) {
            let error = ApiError::RouteNotFound {
                method: request.method().to_string(),
                path: request.path().to_string(),
            };
            return Ok(request.error_response(error).map_into_right_body());
        }
    }
    next.call(request)
        .await
        .map(ServiceResponse::map_into_left_body)
}

pub fn create_app(
    state: web::Data<AppState>,
    body_limit: usize,
    metrics_access: web::Data<MetricsAccess>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let metrics = web::Data::from(state.metrics.clone());
    App::new()
        .app_data(state)
        .app_data(metrics)
        .app_data(web::Data::new(BodyLimit(body_limit)))
        .app_data(metrics_access)
        .wrap(from_fn(crate::auth::open_mode::guard))
        .wrap(from_fn(listener_scope))
        .wrap(from_fn(crate::metrics::track_http))
        .wrap(from_fn(request_id))
        .service(resources())
        .default_service(web::to(route_not_found))
}

/// A bound, running HTTP server whose engine may still be loading.
pub struct Running {
    pub addresses: Vec<SocketAddr>,
    pub server: Server,
    pub state: web::Data<AppState>,
    pub metrics: Arc<Metrics>,
}

/// Binds and starts serving at once (`/health` answers, `/ready` says
/// loading); the caller loads the engine and installs it. `addresses` lists
/// the main listener first, then the metrics listener if there is one.
pub fn bind(config: &Config) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let state = web::Data::new(AppState::new(config, metrics.clone())?);
    let app_state = state.clone();
    let body_limit = config.server.max_body_bytes;
    // Bound here, before the app exists, so the app knows the listener's
    // address (port 0 included) when it sorts requests by listener.
    let metrics_listener = config
        .metrics
        .bind
        .map(|address| {
            std::net::TcpListener::bind(address).map_err(|e| {
                anyhow::anyhow!("config key `metrics.bind`: cannot listen on {address}: {e}")
            })
        })
        .transpose()?;
    let metrics_access = web::Data::new(MetricsAccess {
        token: config.metrics.bearer_token,
        listener: metrics_listener
            .as_ref()
            .map(std::net::TcpListener::local_addr)
            .transpose()?,
    });
    let mut server =
        HttpServer::new(move || create_app(app_state.clone(), body_limit, metrics_access.clone()))
            .on_connect(crate::api::disconnect::remember_socket)
            .shutdown_timeout(config.server.shutdown_timeout.as_secs())
            .bind(config.server.bind)?;
    if let Some(listener) = metrics_listener {
        server = server.listen(listener)?;
    }
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let addresses = server.addrs();
    Ok(Running {
        addresses,
        server: server.run(),
        state,
        metrics,
    })
}
