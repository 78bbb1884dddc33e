//! Prometheus metrics. Label values are bounded: routes come from the route
//! pattern, models from the served set, reasons from fixed enums.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for time to first token, from a cached prompt to a long prefill
/// (vLLM's, extended for CPU serving).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
/// Buckets for the time between two tokens of one stream (vLLM's).
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
];
const LOAD_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every metric family the gateway exports, all named `loragate_*` (the
/// process collector adds the standard `process_*`).
pub struct Metrics {
    registry: Registry,
    // HTTP, labelled by route pattern.
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    // Inference, by tenant and served model (or adapter).
    pub sampled_tokens: IntCounterVec,
    pub prompt_tokens: IntCounterVec,
    pub completion_tokens: IntCounterVec,
    pub finished: IntCounterVec,
    /// Generations started again because the engine failed before
    /// producing anything (an engine that stopped and restarted).
    pub engine_retries: IntCounter,
    /// Shared-base engine with paged KV: sequences that gave their blocks
    /// back to be recomputed, and the pool's free blocks.
    pub kv_preemptions: IntCounter,
    pub kv_blocks_free: IntGauge,
    pub time_to_first_token: HistogramVec,
    pub inter_token_latency: HistogramVec,
    pub generation_duration: HistogramVec,
    pub queue_wait: Histogram,
    pub queue_depth: IntGauge,
    /// Rendering and tokenizing prompts (only for requests within limits).
    pub prompt_tokenization: Histogram,
    /// Requests of each tenant waiting for a slot, and how long they waited.
    pub tenant_queue_depth: IntGaugeVec,
    pub tenant_queue_wait: HistogramVec,
    pub admission_rejections: IntCounterVec,
    // Tenancy and limits.
    pub ratelimit_rejections: IntCounterVec,
    pub redis_errors: IntCounterVec,
    pub limiter_fallbacks: IntCounterVec,
    pub auth_failures: IntCounterVec,
    // Adapters.
    pub adapter_loads: IntCounterVec,
    pub adapter_load_duration: HistogramVec,
    pub adapter_evictions: IntCounterVec,
    pub adapters_resident: IntGauge,
    pub adapters_resident_bytes: IntGauge,
    // Remote replicas (`[upstream]`), by configured replica name.
    pub upstream_requests: IntCounterVec,
    pub upstream_up: IntGaugeVec,
    pub upstream_ejections: IntCounterVec,
}

/// Outcomes of one request to a replica, as `upstream_requests_total` counts them.
pub const UPSTREAM_OUTCOMES: &[&str] = &["ok", "refused", "timeout", "error", "rejected"];

fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: T,
) -> T {
    // Names are static and unique, so registration cannot fail at run time.
    if let Err(error) = registry.register(Box::new(collector.clone())) {
        tracing::error!(%error, "metric registration failed");
    }
    collector
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("loragate")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let options = HistogramOpts::from(opts(name, help)).buckets(buckets.to_vec());
            register(
                &registry,
                HistogramVec::new(options, labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                &registry,
                IntGauge::with_opts(opts(name, help)).expect("valid metric"),
            )
        };
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(error) = registry.register(Box::new(process)) {
                tracing::warn!(%error, "process metrics unavailable");
            }
        }
        let build_info = opts("build_info", "Build of the running gateway (value 1).")
            .const_label("version", env!("CARGO_PKG_VERSION"))
            .const_label("engines", "shared-base,mistralrs-0.8.1")
            .const_label(
                "cuda",
                if cfg!(feature = "cuda") {
                    "true"
                } else {
                    "false"
                },
            );
        register(
            &registry,
            IntGauge::with_opts(build_info).expect("valid metric"),
        )
        .set(1);
        let tenant_model = &["tenant", "model"];
        Metrics {
            http_requests: counter(
                "http_requests_total",
                "HTTP requests by route pattern, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                "http_request_duration_seconds",
                "HTTP request duration until the response head.",
                &["route", "method"],
                REQUEST_BUCKETS,
            ),
            http_in_flight: gauge("http_requests_in_flight", "HTTP requests being served."),
            sampled_tokens: counter(
                "engine_sampled_tokens_total",
                "Tokens sampled inside the engine, delivered or not.",
                &["model"],
            ),
            prompt_tokens: counter(
                "prompt_tokens_total",
                "Prompt tokens of finished and aborted requests.",
                tenant_model,
            ),
            completion_tokens: counter(
                "completion_tokens_total",
                "Completion tokens of finished and aborted requests.",
                tenant_model,
            ),
            finished: counter(
                "requests_finished_total",
                "Generations by outcome: stop, length, cancelled, error.",
                &["tenant", "model", "reason"],
            ),
            engine_retries: register(
                &registry,
                IntCounter::with_opts(opts(
                    "engine_retries_total",
                    "Generations retried once because the engine failed before producing anything.",
                ))
                .expect("valid metric"),
            ),
            kv_preemptions: register(
                &registry,
                IntCounter::with_opts(opts(
                    "engine_kv_preemptions_total",
                    "Sequences whose KV blocks were taken back when the paged pool ran out (recomputed later).",
                ))
                .expect("valid metric"),
            ),
            kv_blocks_free: gauge(
                "engine_kv_blocks_free",
                "Free blocks of the shared-base engine's paged KV pool.",
            ),
            time_to_first_token: histogram(
                "time_to_first_token_seconds",
                "From admission to the first generated text.",
                tenant_model,
                TTFT_BUCKETS,
            ),
            inter_token_latency: histogram(
                "inter_token_latency_seconds",
                "Between consecutive text deltas of one generation.",
                tenant_model,
                ITL_BUCKETS,
            ),
            generation_duration: histogram(
                "generation_duration_seconds",
                "From admission to the last token.",
                tenant_model,
                REQUEST_BUCKETS,
            ),
            queue_wait: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::from(opts(
                        "queue_wait_seconds",
                        "Time waiting for a generation slot.",
                    ))
                    .buckets(REQUEST_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            tenant_queue_depth: register(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "tenant_queue_depth",
                        "Requests of a tenant waiting for a generation slot.",
                    ),
                    &["tenant"],
                )
                .expect("valid metric"),
            ),
            tenant_queue_wait: histogram(
                "tenant_queue_wait_seconds",
                "Time a tenant's requests waited for a generation slot (fair admission).",
                &["tenant"],
                REQUEST_BUCKETS,
            ),
            prompt_tokenization: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::from(opts(
                        "prompt_tokenization_seconds",
                        "Rendering and tokenizing one prompt, off the engine and HTTP threads.",
                    ))
                    .buckets(REQUEST_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            queue_depth: gauge(
                "admission_queue_depth",
                "Requests waiting for a generation slot.",
            ),
            admission_rejections: counter(
                "admission_rejections_total",
                "Requests refused by admission control.",
                &["reason"],
            ),
            ratelimit_rejections: counter(
                "ratelimit_rejections_total",
                "Requests refused by a tenant limit.",
                &["tenant", "limit"],
            ),
            redis_errors: counter(
                "redis_errors_total",
                "Failed or timed-out Redis operations.",
                &["operation"],
            ),
            limiter_fallbacks: counter(
                "ratelimit_redis_fallbacks_total",
                "Limit decisions taken without Redis, by policy (fail_open, fail_closed).",
                &["policy"],
            ),
            auth_failures: counter(
                "auth_failures_total",
                "Refused credentials by reason.",
                &["reason"],
            ),
            adapter_loads: counter(
                "adapter_loads_total",
                "Adapter loads into the engine by result (ok, error).",
                &["tenant", "result"],
            ),
            adapter_load_duration: histogram(
                "adapter_load_duration_seconds",
                "Time to load an adapter into the engine.",
                &["tenant"],
                LOAD_BUCKETS,
            ),
            adapter_evictions: counter(
                "adapter_evictions_total",
                "Adapters unloaded to stay within the residency budget.",
                &["tenant"],
            ),
            adapters_resident: gauge("adapters_resident", "Adapters loaded in the engine."),
            adapters_resident_bytes: gauge(
                "adapters_resident_bytes",
                "Estimated memory held by resident adapters.",
            ),
            upstream_requests: counter(
                "upstream_requests_total",
                "Requests sent to a replica by outcome (ok, refused, timeout, error, rejected).",
                &["replica", "outcome"],
            ),
            upstream_up: register(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "upstream_replica_up",
                        "1 while a replica is in rotation (health check passing, not ejected).",
                    ),
                    &["replica"],
                )
                .expect("valid metric"),
            ),
            upstream_ejections: counter(
                "upstream_ejections_total",
                "Times a replica was taken out of rotation: after consecutive failed requests, or a failed health check.",
                &["replica"],
            ),
            registry,
        }
    }

    /// Creates the bounded label combinations at zero, so dashboards show 0
    /// rather than "no data" and `increase()` sees the first event.
    /// Creates the bounded series at zero, so dashboards read 0 rather than
    /// "no data" before the first request (`base_model`: the served name).
    pub fn prime(&self, tenants: &[String], base_model: &str) {
        for reason in ["queue_full", "queue_timeout"] {
            self.admission_rejections.with_label_values(&[reason]);
        }
        for policy in ["fail_open", "fail_closed"] {
            self.limiter_fallbacks.with_label_values(&[policy]);
        }
        for operation in ["acquire", "settle", "renew", "usage_record", "usage_report"] {
            self.redis_errors.with_label_values(&[operation]);
        }
        for tenant in tenants {
            for limit in ["requests", "tokens", "concurrency"] {
                self.ratelimit_rejections
                    .with_label_values(&[tenant, limit]);
            }
            for result in ["ok", "error"] {
                self.adapter_loads.with_label_values(&[tenant, result]);
            }
            self.adapter_evictions.with_label_values(&[tenant]);
            self.tenant_queue_depth.with_label_values(&[tenant]);
            self.tenant_queue_wait.with_label_values(&[tenant]);
            self.prompt_tokens.with_label_values(&[tenant, base_model]);
            self.completion_tokens
                .with_label_values(&[tenant, base_model]);
            for reason in ["stop", "length", "tool_calls", "cancelled", "error"] {
                self.finished
                    .with_label_values(&[tenant, base_model, reason]);
            }
        }
    }

    pub fn prime_replicas(&self, replicas: &[String]) {
        for replica in replicas {
            for outcome in UPSTREAM_OUTCOMES {
                self.upstream_requests
                    .with_label_values(&[replica.as_str(), outcome]);
            }
            self.upstream_ejections.with_label_values(&[replica]);
            self.upstream_up.with_label_values(&[replica]).set(1);
        }
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "metrics encoding failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts every request by its route pattern (never the raw path).
pub async fn track_http(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let metrics = request.app_data::<web::Data<Metrics>>().cloned();
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    if let Some(metrics) = &metrics {
        metrics.http_in_flight.inc();
    }
    let response = next.call(request).await;
    if let Some(metrics) = &metrics {
        metrics.http_in_flight.dec();
        let status = match &response {
            Ok(response) => response.status().as_u16().to_string(),
            Err(error) => error.as_response_error().status_code().as_u16().to_string(),
        };
        let method = bounded_method(&method);
        metrics
            .http_requests
            .with_label_values(&[&route, method, &status])
            .inc();
        metrics
            .http_duration
            .with_label_values(&[&route, method])
            .observe(started.elapsed().as_secs_f64());
    }
    response
}

fn bounded_method(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}
