//! Server-sent events in OpenAI's shape: a role chunk per choice, content
//! chunks, a finishing chunk per choice, the usage chunk when asked for,
//! then `data: [DONE]`.
//! An error after the stream began is sent as an error event before `[DONE]`.

use actix_web::HttpResponse;
use actix_web::http::header;
use actix_web::web::Bytes;
use serde::Serialize;

use crate::api::completion::{Output, RunningCompletion};
use crate::api::tools::decode::Piece;
use crate::api::tools::wire::{FunctionCallChunk, ToolCallChunk, ToolKind};
use crate::api::wire::ChunkDelta;
use crate::error::ApiError;

pub fn frame<T: Serialize>(payload: &T) -> Bytes {
    match serde_json::to_string(payload) {
        Ok(json) => Bytes::from(format!("data: {json}\n\n")),
        Err(error) => {
            tracing::error!(%error, "could not serialise an SSE frame");
            Bytes::from_static(b"data: {\"error\":{\"message\":\"internal serialisation failure\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n")
        }
    }
}

pub const DONE: &[u8] = b"data: [DONE]\n\n";

pub fn respond(mut running: RunningCompletion) -> HttpResponse {
    let body = async_stream::stream! {
        for choice in 0..running.choices {
            yield Ok::<_, actix_web::Error>(frame(&running.chunk(
                choice,
                ChunkDelta { role: Some("assistant"), content: Some(String::new()), tool_calls: None },
                running.chunk_logprobs(&[]),
                None,
            )));
        }
        loop {
            match running.next_output().await {
                Some(Ok(Output::Pieces { choice, pieces, logprobs })) => {
                    let mut logprobs = Some(logprobs).filter(|l| !l.is_empty());
                    if pieces.is_empty() && let Some(entries) = logprobs.take() {
                        let logprobs = running.chunk_logprobs(&entries);
                        yield Ok(frame(&running.chunk(choice, ChunkDelta { content: Some(String::new()), ..ChunkDelta::default() }, logprobs, None)));
                    }
                    for piece in pieces {
                        let logprobs = running.chunk_logprobs(&logprobs.take().unwrap_or_default());
                        yield Ok(frame(&running.chunk(choice, delta_of(piece), logprobs, None)));
                    }
                }
                Some(Ok(Output::ChoiceFinished { choice, reason })) => {
                    yield Ok(frame(&running.chunk(choice, ChunkDelta::default(), None, Some(reason))));
                }
                Some(Ok(Output::Finished { usage })) => {
                    if running.include_usage {
                        yield Ok(frame(&running.usage_chunk(usage)));
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

/// A chunk's delta for one piece: content, or one call's first frame (id,
/// type, name, empty arguments) or argument text, as the SDKs assemble them.
fn delta_of(piece: Piece) -> ChunkDelta {
    let call = |chunk: ToolCallChunk| ChunkDelta {
        tool_calls: Some(vec![chunk]),
        ..ChunkDelta::default()
    };
    match piece {
        Piece::Text(text) => ChunkDelta {
            content: Some(text),
            ..ChunkDelta::default()
        },
        Piece::CallStart { index, id, name } => call(ToolCallChunk {
            index,
            id: Some(id),
            kind: Some(ToolKind::Function),
            function: FunctionCallChunk {
                name: Some(name),
                arguments: String::new(),
            },
        }),
        Piece::CallArguments { index, text } => call(ToolCallChunk {
            index,
            id: None,
            kind: None,
            function: FunctionCallChunk {
                name: None,
                arguments: text,
            },
        }),
    }
}
