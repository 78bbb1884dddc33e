//! Server-sent events in OpenAI's shape: a role chunk, content chunks, a
//! finishing chunk, the usage chunk when asked for, then `data: [DONE]`.
//! An error after the stream began is sent as an error event before `[DONE]`.

use actix_web::HttpResponse;
use actix_web::http::header;
use actix_web::web::Bytes;
use serde::Serialize;

use crate::api::completion::{Generation, engine_error};
use crate::api::wire::ChunkDelta;
use crate::engine::GenerationEvent;

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
            None,
        )));
        loop {
            match generation.next_event().await {
                Some(Ok(GenerationEvent::Delta { text })) => {
                    if !text.is_empty() {
                        yield Ok(frame(&generation.chunk(ChunkDelta { role: None, content: Some(text) }, None)));
                    }
                }
                Some(Ok(GenerationEvent::Finished { reason, usage })) => {
                    yield Ok(frame(&generation.chunk(ChunkDelta::default(), Some(reason))));
                    if generation.include_usage {
                        yield Ok(frame(&generation.usage_chunk(usage)));
                    }
                    break;
                }
                Some(Err(error)) => {
                    yield Ok(frame(&engine_error(error).body()));
                    break;
                }
                None => {
                    yield Ok(frame(&engine_error(crate::engine::EngineError::Internal(
                        "engine stream ended without finishing".into(),
                    )).body()));
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
