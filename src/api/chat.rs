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
    path = crate::api::routes::CHAT_COMPLETIONS,
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
        crate::api::openapi::InferenceErrors,
        (status = 400, description = "Invalid parameter, or prompt plus `max_tokens` over the context (`context_length_exceeded`).", body = ErrorResponse),
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
    let running = tokio::select! {
        started = completion::start(&state, &caller.0, chat, connection) => started?,
        () = client_gone(peer) => return Err(ApiError::ClientClosed),
    };
    let rate_headers = running.rate.headers();
    let mut response = if stream {
        // A streaming body notices a departed client on its next write.
        sse::respond(running)
    } else {
        tokio::select! {
            completion = running.collect() => HttpResponse::Ok().json(completion?),
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
