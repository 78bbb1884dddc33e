//! `POST /v1/chat/completions`: validation, then one answer or an SSE
//! stream; the generation itself is `completion`'s.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::api::completion;
use crate::api::disconnect::{PeerSocket, client_gone};
use crate::api::extract::JsonBody;
use crate::api::sse;
use crate::api::validate::ValidatedChat;
use crate::api::wire::{ChatCompletion, ChatCompletionRequest, ChatStreamEvent};
use crate::app::AppState;
use crate::auth::TenantCaller;
use crate::error::{ApiError, ErrorResponse};

/// Creates a chat completion, as one JSON body or as server-sent events.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "chat",
    request_body = ChatCompletionRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The completion; with `stream: true`, `text/event-stream` frames `data: <chunk>` ending `data: [DONE]`.",
            content(
                (ChatCompletion = "application/json"),
                (ChatStreamEvent = "text/event-stream"),
            )),
        crate::api::openapi::TenantAuthErrors,
        (status = 429, description = "A tenant limit is exhausted (`rate_limit_exceeded`); see `Retry-After` and `x-ratelimit-*`.", body = ErrorResponse),
        (status = 400, description = "Invalid parameter, or prompt plus `max_tokens` over the context (`context_length_exceeded`).", body = ErrorResponse),
        (status = 404, description = "Unknown model (`model_not_found`).", body = ErrorResponse),
        (status = 413, description = "Body over the configured size cap.", body = ErrorResponse),
        (status = 415, description = "The body is not declared as JSON (`unsupported_media_type`).", body = ErrorResponse),
        (status = 500, description = "Engine failure; the message carries a reference, never internals.", body = ErrorResponse),
        (status = 502, description = "With `[upstream]`: a replica failed, answered nonsense or could not be reached (`upstream_error`).", body = ErrorResponse),
        (status = 503, description = "At capacity or still loading; see `Retry-After`.", body = ErrorResponse),
        (status = 504, description = "With `[upstream]`: a replica did not answer in time (`upstream_timeout`).", body = ErrorResponse),
    )
)]
pub async fn create_chat_completion(
    request: HttpRequest,
    caller: TenantCaller,
    state: web::Data<AppState>,
    body: JsonBody<ChatCompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    let chat = ValidatedChat::from_request(body.into_inner())?;
    let stream = chat.stream;
    let peer = PeerSocket::of(&request);
    // A stream's client can stop reading; its connection is shut then.
    let connection = peer.filter(|_| stream).and_then(PeerSocket::duplicate);
    let generation = tokio::select! {
        started = completion::start(&state, &caller.0, chat, connection) => started?,
        () = client_gone(peer) => return Err(ApiError::ClientClosed),
    };
    let rate_headers = generation.rate.headers();
    let mut response = if stream {
        // A streaming body notices a departed client on its next write.
        sse::respond(generation)
    } else {
        tokio::select! {
            completion = generation.collect() => HttpResponse::Ok().json(completion?),
            // Dropping the generation here cancels it in the engine.
            () = client_gone(peer) => return Err(ApiError::ClientClosed),
        }
    };
    for (name, value) in rate_headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    Ok(response)
}
