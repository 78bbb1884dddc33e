//! The API error boundary: every failure a client can see is one `ApiError`,
//! rendered in exactly one place as OpenAI's envelope
//! `{"error":{"message","type","param","code"}}`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use std::time::Duration;

use crate::adapters::AdapterError;
use crate::ratelimit::{LimitKind, RateSnapshot};

/// OpenAI's error object, as the official SDKs parse it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Human-readable explanation.
    pub message: String,
    /// Error class, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request parameter at fault, if any.
    pub param: Option<String>,
    /// Machine-readable code, e.g. `model_not_found`.
    pub code: Option<String>,
}

/// The envelope around [`ErrorBody`].
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error(
        "This model's maximum context length is {limit} tokens. However, you requested {requested} tokens ({prompt} in the messages, {completion} in the completion). Please reduce the length of the messages or completion."
    )]
    ContextLengthExceeded {
        limit: usize,
        requested: usize,
        prompt: usize,
        completion: usize,
    },
    #[error(
        "This model's maximum context length is {limit} tokens. However, your messages are {bytes} bytes long, more than {limit} tokens can hold. Please reduce the length of the messages."
    )]
    PromptTooLong { limit: usize, bytes: usize },
    #[error("Request body is larger than the limit of {limit} bytes.")]
    PayloadTooLarge { limit: usize },
    #[error("Unknown request URL: {method} {path}. Please check the URL and method.")]
    RouteNotFound { method: String, path: String },
    #[error("Method {method} is not allowed for {path}; use {allowed}.")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("The server is at capacity; retry after {retry_after_secs} s.")]
    Overloaded { retry_after_secs: u64 },
    #[error("The model is not loaded yet; retry shortly.")]
    NotReady,
    #[error("The inference engine failed to process the request (reference {reference}).")]
    Engine { reference: String },
    /// A remote engine failed (502) or timed out (504).
    #[error("{message}")]
    Upstream { timeout: bool, message: String },
    #[error("Tenant `{0}` does not exist.")]
    TenantNotFound(String),
    #[error("{message}")]
    Unauthorized { message: String },
    #[error("{message}")]
    Forbidden { message: String },
    /// Refused for where the request comes from, not for its credentials:
    /// open mode's host and origin rules, admin routes closed in open mode.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error(
        "This route takes a JSON body: send it with `Content-Type: application/json` (got {received})."
    )]
    UnsupportedMediaType { received: String },
    #[error("{message}")]
    RateLimited {
        kind: LimitKind,
        retry_after: Option<Duration>,
        snapshot: RateSnapshot,
        message: String,
    },
    #[error("Rate limits cannot be checked right now; retry shortly.")]
    LimiterUnavailable,
    #[error(transparent)]
    Adapter(AdapterError),
    #[error("Multipart upload problem: {0}")]
    Upload(String),
    /// The client went away; nobody reads this answer.
    #[error("The client closed the connection before the answer was ready.")]
    ClientClosed,
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    pub fn invalid_with_code(
        param: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: Some(code),
        }
    }

    /// Logs the internal cause under a fresh reference and returns an error
    /// that tells the client only the reference, never the internals.
    pub fn engine(cause: impl std::fmt::Display) -> Self {
        let reference = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(%reference, error = %cause, "engine failure");
        ApiError::Engine { reference }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::ModelNotFound(_)
            | ApiError::ContextLengthExceeded { .. }
            | ApiError::PromptTooLong { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::RouteNotFound { .. }
            | ApiError::MethodNotAllowed { .. } => "invalid_request_error",
            ApiError::Unauthorized { .. }
            | ApiError::Forbidden { .. }
            | ApiError::Refused { .. }
            | ApiError::UnsupportedMediaType { .. }
            | ApiError::TenantNotFound(_)
            | ApiError::Upload(_) => "invalid_request_error",
            ApiError::Adapter(error) => match error {
                AdapterError::Load(_)
                | AdapterError::LoadTimeout
                | AdapterError::Busy
                | AdapterError::Io(_) => "server_error",
                _ => "invalid_request_error",
            },
            // OpenAI names the exhausted limit in `type`.
            ApiError::RateLimited { kind, .. } => match kind {
                LimitKind::Tokens => "tokens",
                LimitKind::Requests | LimitKind::Concurrency => "requests",
            },
            ApiError::LimiterUnavailable
            | ApiError::Overloaded { .. }
            | ApiError::NotReady
            | ApiError::Engine { .. }
            | ApiError::Upstream { .. }
            | ApiError::ClientClosed => "server_error",
        }
    }

    fn param(&self) -> Option<String> {
        match self {
            ApiError::InvalidRequest { param, .. } => param.clone(),
            ApiError::Adapter(AdapterError::Invalid { field, .. }) => Some(field.clone()),
            ApiError::Adapter(AdapterError::Conflict { .. }) => Some("expected_generation".into()),
            ApiError::ModelNotFound(_) => Some("model".into()),
            ApiError::ContextLengthExceeded { .. } | ApiError::PromptTooLong { .. } => {
                Some("messages".into())
            }
            _ => None,
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { code, .. } => *code,
            ApiError::ModelNotFound(_) => Some("model_not_found"),
            ApiError::ContextLengthExceeded { .. } | ApiError::PromptTooLong { .. } => {
                Some("context_length_exceeded")
            }
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::RouteNotFound { .. } => Some("unknown_url"),
            ApiError::MethodNotAllowed { .. } => Some("method_not_allowed"),
            ApiError::Overloaded { .. } => Some("server_overloaded"),
            ApiError::NotReady => Some("model_not_ready"),
            ApiError::Engine { .. } => Some("engine_error"),
            ApiError::Upstream { timeout: false, .. } => Some("upstream_error"),
            ApiError::Upstream { timeout: true, .. } => Some("upstream_timeout"),
            ApiError::ClientClosed => Some("client_closed_request"),
            ApiError::Unauthorized { .. } => Some("invalid_api_key"),
            ApiError::TenantNotFound(_) => Some("tenant_not_found"),
            ApiError::Upload(_) => Some("invalid_upload"),
            ApiError::Adapter(error) => Some(match error {
                AdapterError::Invalid { .. } => "invalid_adapter",
                AdapterError::TooLarge { .. } => "request_too_large",
                AdapterError::NotFound(_) => "adapter_not_found",
                AdapterError::Conflict { .. } => "generation_mismatch",
                AdapterError::NoPreviousGeneration(_) => "no_previous_generation",
                AdapterError::Unsupported => "adapters_unsupported",
                AdapterError::Load(_) => "adapter_load_failed",
                AdapterError::LoadTimeout => "adapter_load_timeout",
                AdapterError::Busy => "adapter_capacity_exhausted",
                AdapterError::Io(_) => "adapter_store_error",
            }),
            ApiError::Forbidden { .. } => Some("insufficient_permissions"),
            ApiError::Refused { code, .. } => Some(code),
            ApiError::UnsupportedMediaType { .. } => Some("unsupported_media_type"),
            ApiError::RateLimited { .. } => Some("rate_limit_exceeded"),
            ApiError::LimiterUnavailable => Some("rate_limiter_unavailable"),
        }
    }

    /// The envelope, also used for errors sent inside an SSE stream.
    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorBody {
                message: self.to_string(),
                kind: self.kind().to_string(),
                param: self.param(),
                code: self.code().map(str::to_string),
            },
        }
    }
}

impl From<AdapterError> for ApiError {
    /// Load and storage failures are internal: logged under a reference,
    /// never shown with their paths and causes.
    fn from(error: AdapterError) -> Self {
        match error {
            AdapterError::Load(_) | AdapterError::Io(_) => ApiError::engine(error),
            other => ApiError::Adapter(other),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::ContextLengthExceeded { .. }
            | ApiError::PromptTooLong { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded { .. } | ApiError::NotReady | ApiError::LimiterUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::TenantNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Upload(_) => StatusCode::BAD_REQUEST,
            ApiError::Adapter(error) => match error {
                AdapterError::Invalid { .. } | AdapterError::Unsupported => StatusCode::BAD_REQUEST,
                AdapterError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                AdapterError::NotFound(_) => StatusCode::NOT_FOUND,
                AdapterError::Conflict { .. } | AdapterError::NoPreviousGeneration(_) => {
                    StatusCode::CONFLICT
                }
                AdapterError::LoadTimeout | AdapterError::Busy => StatusCode::SERVICE_UNAVAILABLE,
                AdapterError::Load(_) | AdapterError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Forbidden { .. } | ApiError::Refused { .. } => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Engine { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Upstream { timeout: false, .. } => StatusCode::BAD_GATEWAY,
            ApiError::Upstream { timeout: true, .. } => StatusCode::GATEWAY_TIMEOUT,
            // nginx's 499: recorded in metrics, never read by the departed client.
            ApiError::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Overloaded { retry_after_secs } = self {
            response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        if let ApiError::MethodNotAllowed { allowed, .. } = self {
            response.insert_header((header::ALLOW, *allowed));
        }
        if let ApiError::RateLimited {
            retry_after,
            snapshot,
            ..
        } = self
        {
            if let Some(wait) = retry_after {
                response.insert_header((
                    header::RETRY_AFTER,
                    wait.as_secs_f64().ceil().max(1.0).to_string(),
                ));
                response.insert_header(("retry-after-ms", wait.as_millis().to_string()));
            }
            for (name, value) in snapshot.headers() {
                response.insert_header((name, value));
            }
        }
        if matches!(
            self,
            ApiError::NotReady
                | ApiError::LimiterUnavailable
                | ApiError::Adapter(AdapterError::LoadTimeout | AdapterError::Busy)
        ) {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        response.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_all_four_fields_even_when_null() {
        let value = serde_json::to_value(
            ApiError::Overloaded {
                retry_after_secs: 2,
            }
            .body(),
        )
        .expect("serialises");
        let error = &value["error"];
        assert_eq!(error["type"], "server_error");
        assert_eq!(error["code"], "server_overloaded");
        assert!(error.get("param").is_some_and(|p| p.is_null()));
        assert!(error["message"].as_str().is_some_and(|m| m.contains("2 s")));
    }

    #[test]
    fn statuses_follow_openai() {
        assert_eq!(ApiError::ModelNotFound("x".into()).status_code(), 404);
        assert_eq!(
            ApiError::ContextLengthExceeded {
                limit: 1,
                requested: 2,
                prompt: 1,
                completion: 1
            }
            .status_code(),
            400
        );
        assert_eq!(ApiError::PayloadTooLarge { limit: 1 }.status_code(), 413);
        assert_eq!(
            ApiError::Overloaded {
                retry_after_secs: 1
            }
            .status_code(),
            503
        );
        let engine = ApiError::engine("secret internal path /root/x");
        assert_eq!(engine.status_code(), 500);
        assert!(!engine.to_string().contains("/root/x"));
    }

    #[test]
    fn overload_carries_retry_after() {
        let response = ApiError::Overloaded {
            retry_after_secs: 3,
        }
        .error_response();
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
    }
}
