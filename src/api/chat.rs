use actix_web::{HttpRequest, HttpResponse, web};

use crate::api::completion;
use crate::api::disconnect::{PeerSocket, client_gone};
use crate::api::extract::JsonBody;
use crate::api::sse;
use crate::api::validate::ValidatedChat;
use crate::api::wire::{ChatCompletion, ChatCompletionRequest, ChatStreamEvent};
use crate::app::AppState;
use crate::error::{ApiError, ErrorResponse};

/// Creates a chat completion, as one JSON body or as server-sent events.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "chat",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion; with `stream: true`, `text/event-stream` frames `data: <chunk>` ending `data: [DONE]`.",
            content(
                (ChatCompletion = "application/json"),
                (ChatStreamEvent = "text/event-stream"),
            )),
        (status = 400, description = "Invalid parameter, or prompt plus `max_tokens` over the context (`context_length_exceeded`).", body = ErrorResponse),
        (status = 404, description = "Unknown model (`model_not_found`).", body = ErrorResponse),
        (status = 413, description = "Body over the configured size cap.", body = ErrorResponse),
        (status = 500, description = "Engine failure; the message carries a reference, never internals.", body = ErrorResponse),
        (status = 503, description = "At capacity or still loading; see `Retry-After`.", body = ErrorResponse),
    )
)]
pub async fn create_chat_completion(
    request: HttpRequest,
    state: web::Data<AppState>,
    body: JsonBody<ChatCompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    let chat = ValidatedChat::from_request(body.into_inner())?;
    let stream = chat.stream;
    let peer = PeerSocket::of(&request);
    let generation = tokio::select! {
        started = completion::start(&state, chat) => started?,
        () = client_gone(peer) => return Err(ApiError::ClientClosed),
    };
    if stream {
        // A streaming body notices a departed client on its next write.
        return Ok(sse::respond(generation));
    }
    tokio::select! {
        completion = generation.collect() => Ok(HttpResponse::Ok().json(completion?)),
        // Dropping the generation here cancels it in the engine.
        () = client_gone(peer) => Err(ApiError::ClientClosed),
    }
}
