//! The Responses event stream, as the SDKs read it: `event: <type>` and a
//! JSON `data:` carrying the same `type` and a `sequence_number`. Output
//! items open and close around their content: text goes out as
//! `response.output_text.delta` inside a message item, calls as
//! `response.function_call_arguments.delta` inside a `function_call` item.
//! An error after the stream began is an `error` event, and the stream ends.

use actix_web::HttpResponse;
use actix_web::http::header;
use actix_web::web::Bytes;
use serde_json::{Value, json};

use super::wire::{OutputItem, OutputText, ResponseObject};
use super::{complete, item_id};
use crate::api::completion::{Output, RunningCompletion};
use crate::api::tools::decode::Piece;
use crate::error::ApiError;

/// The item being written.
enum Open {
    None,
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Numbers events and remembers the finished items.
struct Events {
    sequence: u64,
    shell: ResponseObject,
    open: Open,
}

impl Events {
    fn event(&mut self, kind: &str, mut data: Value) -> Bytes {
        data["type"] = kind.into();
        data["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
    }

    fn output_index(&self) -> usize {
        self.shell.output.len()
    }

    fn with_response(&mut self, kind: &str) -> Bytes {
        let response = serde_json::to_value(&self.shell).unwrap_or_default();
        self.event(kind, json!({"response": response}))
    }

    /// Closes the open item, if any.
    fn close(&mut self, out: &mut Vec<Bytes>) {
        let index = self.output_index();
        let item = match std::mem::replace(&mut self.open, Open::None) {
            Open::None => return,
            Open::Message { id, text } => {
                let part = serde_json::to_value(OutputText::new(text.clone())).unwrap_or_default();
                let at = json!({"item_id": id, "output_index": index, "content_index": 0});
                let mut done = at.clone();
                done["text"] = text.clone().into();
                done["logprobs"] = json!([]);
                out.push(self.event("response.output_text.done", done));
                let mut part_done = at;
                part_done["part"] = part;
                out.push(self.event("response.content_part.done", part_done));
                OutputItem::Message {
                    id,
                    status: "completed",
                    role: "assistant",
                    content: vec![OutputText::new(text)],
                }
            }
            Open::Call {
                id,
                call_id,
                name,
                arguments,
            } => {
                out.push(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments}),
                ));
                OutputItem::FunctionCall {
                    id,
                    call_id,
                    name,
                    arguments,
                    status: "completed",
                }
            }
        };
        let value = serde_json::to_value(&item).unwrap_or_default();
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": value}),
        ));
        self.shell.output.push(item);
    }

    fn piece(&mut self, piece: Piece, out: &mut Vec<Bytes>) {
        let index = self.output_index();
        match piece {
            Piece::Text(delta) => {
                if !matches!(self.open, Open::Message { .. }) {
                    self.close(out);
                    let id = item_id("msg");
                    let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
                    out.push(self.event(
                        "response.output_item.added",
                        json!({"output_index": index, "item": item}),
                    ));
                    let part =
                        serde_json::to_value(OutputText::new(String::new())).unwrap_or_default();
                    out.push(self.event(
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                    ));
                    self.open = Open::Message {
                        id,
                        text: String::new(),
                    };
                }
                if let Open::Message { id, text } = &mut self.open {
                    text.push_str(&delta);
                    let data = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []});
                    out.push(self.event("response.output_text.delta", data));
                }
            }
            Piece::CallStart {
                id: call_id, name, ..
            } => {
                self.close(out);
                let index = self.output_index();
                let id = item_id("fc");
                let item = json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": "", "status": "in_progress"});
                out.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                ));
                self.open = Open::Call {
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                };
            }
            Piece::CallArguments { text: delta, .. } => {
                if let Open::Call { id, arguments, .. } = &mut self.open {
                    arguments.push_str(&delta);
                    let data = json!({"item_id": id, "output_index": index, "delta": delta});
                    out.push(self.event("response.function_call_arguments.delta", data));
                }
            }
        }
    }
}

pub fn respond(mut running: RunningCompletion, shell: ResponseObject) -> HttpResponse {
    let body = async_stream::stream! {
        let mut events = Events { sequence: 0, shell, open: Open::None };
        yield Ok::<_, actix_web::Error>(events.with_response("response.created"));
        yield Ok(events.with_response("response.in_progress"));
        // The Responses API has no `n`: there is one choice.
        let mut reason = crate::engine::FinishReason::Stop;
        loop {
            let mut out = Vec::new();
            let last = match running.next_output().await {
                Some(Ok(Output::Pieces { pieces, .. })) => {
                    for piece in pieces {
                        events.piece(piece, &mut out);
                    }
                    false
                }
                Some(Ok(Output::ChoiceFinished { reason: ended, .. })) => {
                    reason = ended;
                    false
                }
                Some(Ok(Output::Finished { usage })) => {
                    events.close(&mut out);
                    events.shell = complete(events.shell.clone(), reason.as_str(), usage);
                    let kind = if events.shell.status == "incomplete" { "response.incomplete" } else { "response.completed" };
                    out.push(events.with_response(kind));
                    true
                }
                Some(Err(error)) => {
                    out.push(error_event(&mut events, ApiError::from(error)));
                    true
                }
                None => {
                    out.push(error_event(&mut events, ApiError::engine("engine stream ended without finishing")));
                    true
                }
            };
            for bytes in out {
                yield Ok(bytes);
            }
            if last {
                break;
            }
        }
    };
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

fn error_event(events: &mut Events, error: ApiError) -> Bytes {
    let body = error.body().error;
    let data = json!({"code": body.code, "message": body.message, "param": body.param});
    events.event("error", data)
}
