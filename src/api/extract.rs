//! A JSON body extractor whose every failure is an OpenAI error: a body not
//! declared as JSON gives 415, the size cap 413, malformed JSON and wrong
//! types 400 naming the field. And the inference routes' caller, refused
//! before its body is read while its tenant's last rate-limit refusal holds.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, mime, web};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::auth::{Tenant, TenantCaller};
use crate::error::ApiError;
use crate::ratelimit::Decision;

/// A tenant calling an inference route. Extracted before the body: while
/// the limiter's last refusal of the tenant still holds, the request is
/// refused here with that same 429, and its body is never read (nor the
/// limiter asked), so flooding past a limit costs the gateway little.
pub struct InferenceCaller(pub std::sync::Arc<Tenant>);

impl FromRequest for InferenceCaller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let tenant = match TenantCaller::from_request(request, payload).into_inner() {
            Ok(TenantCaller(tenant)) => tenant,
            Err(error) => return std::future::ready(Err(error)),
        };
        let refused = request
            .app_data::<web::Data<AppState>>()
            .and_then(|state| Some((state.limiter.recent_refusal(&tenant.id)?, state)));
        std::future::ready(match refused {
            Some((
                Decision::Refused {
                    kind,
                    retry_after,
                    snapshot,
                },
                state,
            )) => Err(crate::api::completion::refusal(
                state,
                &tenant,
                kind,
                retry_after,
                snapshot,
                0,
            )),
            _ => Ok(InferenceCaller(tenant)),
        })
    }
}

/// Largest accepted request body, set once as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

pub struct JsonBody<T>(pub T);

impl<T> JsonBody<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if let Err(error) = require_json(request) {
            return Box::pin(async move { Err(error) });
        }
        let limit = request
            .app_data::<web::Data<BodyLimit>>()
            .map(|limit| limit.0)
            .unwrap_or(4 * 1024 * 1024);
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if declared.is_some_and(|length| length > limit) {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| ApiError::InvalidRequest {
                    message: format!("Could not read the request body: {e}"),
                    param: None,
                    code: None,
                })?;
                if body.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            parse(&body).map(JsonBody)
        })
    }
}

/// A browser sends `text/plain`, form and multipart bodies cross-site without
/// asking (no CORS preflight), but never `application/json`; the official
/// OpenAI SDKs always send `application/json`. Requiring it keeps a foreign
/// page from posting to a gateway that has no credentials to check.
fn require_json(request: &HttpRequest) -> Result<(), ApiError> {
    let declared = request.headers().get(header::CONTENT_TYPE);
    let json = declared
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|media: mime::Mime| {
            media.essence_str() == "application/json"
                && media
                    .get_param(mime::CHARSET)
                    .is_none_or(|charset| charset == mime::UTF_8)
        });
    if json {
        return Ok(());
    }
    let received = match declared {
        None => "no Content-Type".to_string(),
        Some(value) => format!(
            "`{}`",
            String::from_utf8_lossy(value.as_bytes())
                .chars()
                .take(100)
                .collect::<String>()
        ),
    };
    Err(ApiError::UnsupportedMediaType { received })
}

/// Parses with the path of the failing field kept, so the error names it.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidRequest {
            message: "The request body is empty; send a JSON object.".into(),
            param: None,
            code: None,
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::InvalidRequest {
                message: format!(
                    "We could not parse the JSON body of your request ({inner}). The body must be valid JSON."
                ),
                param: None,
                code: None,
            };
        }
        let message = strip_position(&inner.to_string());
        // Unknown fields are reported at their own path, missing ones at
        // their parent's: name the field either way.
        let param = match (named_field(&message), path.as_str()) {
            (Some(field), ".") => Some(field.to_string()),
            (Some(field), path) if path == field || path.ends_with(&format!(".{field}")) => {
                Some(path.to_string())
            }
            (Some(field), parent) => Some(format!("{parent}.{field}")),
            (None, ".") => None,
            (None, path) => Some(path.to_string()),
        };
        ApiError::InvalidRequest {
            message: match &param {
                Some(path) => format!("Invalid value for `{path}`: {message}"),
                None => format!("Invalid request: {message}"),
            },
            param,
            code: None,
        }
    })?;
    deserializer.end().map_err(|_| ApiError::InvalidRequest {
        message: "Trailing characters after the JSON body.".into(),
        param: None,
        code: None,
    })?;
    Ok(value)
}

/// serde reports unknown and missing fields at their parent's path; the
/// field itself is named in the message.
fn named_field(message: &str) -> Option<&str> {
    ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| {
            let rest = message.strip_prefix(prefix)?;
            rest.split('`').next()
        })
}

/// serde_json appends " at line L column C", which means nothing to a client
/// that sent a one-line body.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(position) => message[..position].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wire::ChatCompletionRequest;

    fn error_of(body: &str) -> crate::error::ErrorBody {
        parse::<ChatCompletionRequest>(body.as_bytes())
            .expect_err("an error")
            .body()
            .error
    }

    #[test]
    fn wrong_type_names_the_nested_field() {
        let error = error_of(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
        );
        assert_eq!(error.param.as_deref(), Some("temperature"));
        assert!(!error.message.contains("line 1"), "{}", error.message);
        let error = error_of(r#"{"model":"m","messages":[{"role":"wizard","content":"hi"}]}"#);
        assert_eq!(error.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn missing_field_and_unknown_field_are_named() {
        let error = error_of(r#"{"model":"m"}"#);
        assert_eq!(error.param.as_deref(), Some("messages"));
        let error = error_of(r#"{"model":"m","messages":[],"temprature":1}"#);
        assert_eq!(error.param.as_deref(), Some("temprature"));
        let error =
            error_of(r#"{"model":"m","messages":[{"role":"user","content":"x","colour":1}]}"#);
        assert_eq!(error.param.as_deref(), Some("messages[0].colour"));
    }

    #[test]
    fn malformed_json_is_a_400_with_no_param() {
        let error = error_of(r#"{"model": "#);
        assert_eq!(error.kind, "invalid_request_error");
        assert!(error.param.is_none());
        assert!(error.message.contains("could not parse"));
    }
}
