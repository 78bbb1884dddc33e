//! Server-sent events in OpenAI's shape: a role chunk, content chunks, a
//! finishing chunk, the usage chunk when asked for, then `data: [DONE]`.
//! An error after the stream began is sent as an error event before `[DONE]`.

use actix_web::HttpResponse;
use actix_web::http::header;
use actix_web::web::Bytes;
use serde::Serialize;

use crate::api::completion::Generation;
use crate::api::wire::ChunkDelta;
use crate::engine::GenerationEvent;
use crate::error::ApiError;

fn frame<T: Serialize>(payload: &T) -> Bytes {
    match serde_json::to_string(payload) {
        Ok(json) => Bytes::from(format!("data: {json}\n\n")),
        Err(error) => {
            tracing::error!(%error, "could not serialise an SSE frame");
            Bytes::from_static(b"data: {\"error\":{\"message\":\"internal serialisation failure\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n")
        }
    }
}

const DONE: &[u8] = b"data: [DONE]\n\n";

pub fn respond(mut generation: Generation) -> HttpResponse {
    let body = async_stream::stream! {
        yield Ok::<_, actix_web::Error>(frame(&generation.chunk(
            ChunkDelta { role: Some("assistant"), content: Some(String::new()) },
            generation.chunk_logprobs(&[]),
            None,
        )));
        loop {
            match generation.next_event().await {
                Some(Ok(GenerationEvent::Delta { text, logprobs })) => {
                    if !text.is_empty() || !logprobs.is_empty() {
                        let logprobs = generation.chunk_logprobs(&logprobs);
                        yield Ok(frame(&generation.chunk(ChunkDelta { role: None, content: Some(text) }, logprobs, None)));
                    }
                }
                Some(Ok(GenerationEvent::Finished { reason, usage })) => {
                    yield Ok(frame(&generation.chunk(ChunkDelta::default(), None, Some(reason))));
                    if generation.include_usage {
                        yield Ok(frame(&generation.usage_chunk(usage)));
                    }
                    break;
                }
                Some(Err(error)) => {
                    yield Ok(frame(&ApiError::from(error).body()));
                    break;
                }
                None => {
                    yield Ok(frame(&ApiError::engine("engine stream ended without finishing").body()));
                    break;
                }
            }
        }
        yield Ok(Bytes::from_static(DONE));
    };
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}
