//! What chat completions and responses share once a request is valid:
//! start the completion while watching the client, render it as a stream
//! or as a whole answer, and put the tenant's rate-limit headers on it.

use std::future::Future;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};

use crate::api::completion::{self, RunningCompletion};
use crate::api::disconnect::{PeerSocket, client_gone};
use crate::api::validate::ValidatedChat;
use crate::app::AppState;
use crate::auth::Tenant;
use crate::error::ApiError;

/// What a route makes of a started completion.
pub enum Rendering<F> {
    /// A streaming response, at once.
    Stream(HttpResponse),
    /// The whole answer, once this future has it.
    Whole(F),
}

/// Starts `chat` for `tenant` and answers with `render`'s rendering of it.
/// A client that leaves before the answer is complete cancels the work.
pub async fn serve<F>(
    request: &HttpRequest,
    state: &AppState,
    tenant: &Tenant,
    chat: ValidatedChat,
    render: impl FnOnce(RunningCompletion) -> Rendering<F>,
) -> Result<HttpResponse, ApiError>
where
    F: Future<Output = Result<HttpResponse, ApiError>>,
{
    let stream = chat.stream;
    let peer = PeerSocket::of(request);
    // A stream's client can stop reading; its connection is shut then.
    let connection = peer.filter(|_| stream).and_then(PeerSocket::duplicate);
    let running = tokio::select! {
        started = completion::start(state, tenant, chat, connection) => started?,
        () = client_gone(peer) => return Err(ApiError::ClientClosed),
    };
    let rate_headers = running.rate.headers();
    let mut response = match render(running) {
        // A streaming body notices a departed client on its next write.
        Rendering::Stream(response) => response,
        Rendering::Whole(answer) => tokio::select! {
            answer = answer => answer?,
            // Dropping the completion here cancels it in the engine.
            () = client_gone(peer) => return Err(ApiError::ClientClosed),
        },
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
