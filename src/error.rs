//! The API error boundary: every failure a client can see is one `ApiError`,
//! rendered in exactly one place as OpenAI's envelope
//! `{"error":{"message","type","param","code"}}`.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use std::time::Duration;

use crate::adapters::AdapterError;
use crate::engine::EngineError;
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
        allowed: String,
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

    /// Everything a client sees of this error besides its message: one row
    /// per variant, so a new error is one new line.
    fn row(&self) -> Row {
        use StatusCode as S;
        let row = Row::new;
        match self {
            ApiError::InvalidRequest { param, code, .. } => Row {
                param: param.clone(),
                ..row(S::BAD_REQUEST, INVALID, *code)
            },
            ApiError::ModelNotFound(_) => {
                row(S::NOT_FOUND, INVALID, Some("model_not_found")).param("model")
            }
            ApiError::ContextLengthExceeded { .. } | ApiError::PromptTooLong { .. } => {
                row(S::BAD_REQUEST, INVALID, Some("context_length_exceeded")).param("messages")
            }
            ApiError::PayloadTooLarge { .. } => {
                row(S::PAYLOAD_TOO_LARGE, INVALID, Some("request_too_large"))
            }
            ApiError::RouteNotFound { .. } => row(S::NOT_FOUND, INVALID, Some("unknown_url")),
            ApiError::MethodNotAllowed { .. } => {
                row(S::METHOD_NOT_ALLOWED, INVALID, Some("method_not_allowed"))
            }
            ApiError::Overloaded { retry_after_secs } => {
                row(S::SERVICE_UNAVAILABLE, SERVER, Some("server_overloaded"))
                    .retry_after(*retry_after_secs)
            }
            ApiError::NotReady => {
                row(S::SERVICE_UNAVAILABLE, SERVER, Some("model_not_ready")).retry_after(1)
            }
            ApiError::Engine { .. } => row(S::INTERNAL_SERVER_ERROR, SERVER, Some("engine_error")),
            ApiError::Upstream { timeout: false, .. } => {
                row(S::BAD_GATEWAY, SERVER, Some("upstream_error"))
            }
            ApiError::Upstream { timeout: true, .. } => {
                row(S::GATEWAY_TIMEOUT, SERVER, Some("upstream_timeout"))
            }
            ApiError::TenantNotFound(_) => row(S::NOT_FOUND, INVALID, Some("tenant_not_found")),
            ApiError::Unauthorized { .. } => row(S::UNAUTHORIZED, INVALID, Some("invalid_api_key")),
            ApiError::Forbidden { .. } => {
                row(S::FORBIDDEN, INVALID, Some("insufficient_permissions"))
            }
            ApiError::Refused { code, .. } => row(S::FORBIDDEN, INVALID, Some(code)),
            ApiError::UnsupportedMediaType { .. } => row(
                S::UNSUPPORTED_MEDIA_TYPE,
                INVALID,
                Some("unsupported_media_type"),
            ),
            // OpenAI names the exhausted limit in `type`; the Retry-After of
            // a limit is computed (see `error_response`).
            ApiError::RateLimited { kind, .. } => row(
                S::TOO_MANY_REQUESTS,
                match kind {
                    LimitKind::Tokens => "tokens",
                    LimitKind::Requests | LimitKind::Concurrency => "requests",
                },
                Some("rate_limit_exceeded"),
            ),
            ApiError::LimiterUnavailable => row(
                S::SERVICE_UNAVAILABLE,
                SERVER,
                Some("rate_limiter_unavailable"),
            )
            .retry_after(1),
            ApiError::Adapter(error) => adapter_row(error),
            ApiError::Upload(_) => row(S::BAD_REQUEST, INVALID, Some("invalid_upload")),
            // nginx's 499: recorded in metrics, never read by the departed client.
            ApiError::ClientClosed => row(
                S::from_u16(499).unwrap_or(S::BAD_REQUEST),
                SERVER,
                Some("client_closed_request"),
            ),
        }
    }

    /// The envelope, also used for errors sent inside an SSE stream.
    pub fn body(&self) -> ErrorResponse {
        let row = self.row();
        ErrorResponse {
            error: ErrorBody {
                message: self.to_string(),
                kind: row.kind.to_string(),
                param: row.param,
                code: row.code.map(str::to_string),
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

/// An engine failure as the client sees it (also inside a started stream).
impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::UnknownModel(model) => ApiError::ModelNotFound(model),
            EngineError::Rejected(message) => ApiError::InvalidRequest {
                message,
                param: None,
                code: None,
            },
            EngineError::Unavailable(cause) | EngineError::Internal(cause) => {
                ApiError::engine(cause)
            }
            EngineError::BadGateway(message) => ApiError::Upstream {
                timeout: false,
                message,
            },
            EngineError::GatewayTimeout(message) => ApiError::Upstream {
                timeout: true,
                message,
            },
            EngineError::Overloaded { retry_after_secs } => {
                ApiError::Overloaded { retry_after_secs }
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.row().status
    }

    fn error_response(&self) -> HttpResponse {
        let row = self.row();
        let mut response = HttpResponse::build(row.status);
        if let Some(seconds) = row.retry_after_secs {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if let ApiError::MethodNotAllowed { allowed, .. } = self {
            response.insert_header((header::ALLOW, allowed.as_str()));
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
        response.json(self.body())
    }
}

const INVALID: &str = "invalid_request_error";
const SERVER: &str = "server_error";

/// How one error is shown: status, OpenAI `type`, `code`, `param`, and the
/// fixed `Retry-After` of a transient refusal.
struct Row {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<String>,
    retry_after_secs: Option<u64>,
}

impl Row {
    fn new(status: StatusCode, kind: &'static str, code: Option<&'static str>) -> Row {
        Row {
            status,
            kind,
            code,
            param: None,
            retry_after_secs: None,
        }
    }

    fn param(self, param: &str) -> Row {
        Row {
            param: Some(param.to_string()),
            ..self
        }
    }

    fn retry_after(self, seconds: u64) -> Row {
        Row {
            retry_after_secs: Some(seconds),
            ..self
        }
    }
}

/// The adapter errors' rows. Load and storage failures are server errors
/// (their causes are logged, see `From<AdapterError>`).
fn adapter_row(error: &AdapterError) -> Row {
    use StatusCode as S;
    let row = Row::new;
    match error {
        AdapterError::Invalid { field, .. } => Row {
            param: Some(field.clone()),
            ..row(S::BAD_REQUEST, INVALID, Some("invalid_adapter"))
        },
        AdapterError::TooLarge { .. } => {
            row(S::PAYLOAD_TOO_LARGE, INVALID, Some("request_too_large"))
        }
        AdapterError::NotFound(_) => row(S::NOT_FOUND, INVALID, Some("adapter_not_found")),
        AdapterError::Conflict { .. } => {
            row(S::CONFLICT, INVALID, Some("generation_mismatch")).param("expected_generation")
        }
        AdapterError::NoPreviousGeneration(_) => {
            row(S::CONFLICT, INVALID, Some("no_previous_generation"))
        }
        AdapterError::Unsupported => row(S::BAD_REQUEST, INVALID, Some("adapters_unsupported")),
        AdapterError::Load(_) => row(
            S::INTERNAL_SERVER_ERROR,
            SERVER,
            Some("adapter_load_failed"),
        ),
        AdapterError::LoadTimeout => {
            row(S::SERVICE_UNAVAILABLE, SERVER, Some("adapter_load_timeout")).retry_after(1)
        }
        AdapterError::Busy => row(
            S::SERVICE_UNAVAILABLE,
            SERVER,
            Some("adapter_capacity_exhausted"),
        )
        .retry_after(1),
        AdapterError::Io(_) => row(
            S::INTERNAL_SERVER_ERROR,
            SERVER,
            Some("adapter_store_error"),
        ),
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
