//! `POST /v1/chat/completions`: validation, then one answer or an SSE
//! stream; the generation itself is `completion`'s.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::api::extract::{InferenceCaller, JsonBody};
use crate::api::serve::{Rendering, serve};
use crate::api::sse;
use crate::api::validate::ValidatedChat;
use crate::api::wire::{ChatCompletion, ChatCompletionRequest, ChatStreamEvent};
use crate::app::AppState;
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
    caller: InferenceCaller,
    state: web::Data<AppState>,
    body: JsonBody<ChatCompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    let chat = ValidatedChat::from_request(body.into_inner())?;
    serve(&request, &state, &caller.0, chat, |running| {
        if running.stream {
            Rendering::Stream(sse::respond(running))
        } else {
            Rendering::Whole(async move { Ok(HttpResponse::Ok().json(running.collect().await?)) })
        }
    })
    .await
}
