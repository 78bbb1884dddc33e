//! From generated text to OpenAI's answer: plain content, function calls,
//! or both. An in-process model writes a call as text (constrained, or in
//! its chat template's format); this turns that text into the pieces of
//! `tool_calls` as it arrives, holding back only what may still turn out to
//! be part of a call.

use serde_json::Value;

use crate::engine::{ToolCallDelta, ToolCallFormat};

/// How the generated text is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputMode {
    /// Content only.
    Text,
    /// The text is the arguments object of function `name` (constrained).
    Arguments { name: String },
    /// The text is `{"name": ..., "arguments": {...}}` (constrained).
    Call,
    /// The model may write calls in its template's format among text.
    Parse {
        format: ToolCallFormat,
        parallel: bool,
    },
    /// A replica parsed calls itself; they arrive as [`ToolCallDelta`]s.
    Remote,
}

/// One piece of the answer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// Call `index` begins.
    CallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of call `index`'s arguments (a JSON string when joined).
    CallArguments {
        index: usize,
        text: String,
    },
}

pub fn call_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("call_{}", &id[..24])
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

pub struct OutputDecoder {
    mode: OutputMode,
    /// Text not yet given out.
    held: String,
    /// Calls begun so far.
    calls: usize,
    /// `Call` mode: the arguments have begun; `Parse`: a call has begun.
    inside: bool,
    /// `Parse` with Llama's format: the answer is text.
    plain: bool,
}

impl OutputDecoder {
    pub fn new(mode: OutputMode) -> OutputDecoder {
        OutputDecoder {
            mode,
            held: String::new(),
            calls: 0,
            inside: false,
            plain: false,
        }
    }

    /// Whether the answer holds a function call.
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        match self.mode.clone() {
            OutputMode::Text | OutputMode::Remote => text_piece(text.to_string()),
            OutputMode::Arguments { name } => {
                let mut pieces = Vec::new();
                if self.calls == 0 {
                    pieces.push(self.start(name));
                }
                if !text.is_empty() {
                    pieces.push(Piece::CallArguments {
                        index: 0,
                        text: text.to_string(),
                    });
                }
                pieces
            }
            OutputMode::Call => {
                self.held.push_str(text);
                self.push_call()
            }
            OutputMode::Parse { format, .. } => {
                self.held.push_str(text);
                self.push_parsed(format)
            }
        }
    }

    /// A call a replica parsed itself.
    pub fn remote_call(&mut self, delta: ToolCallDelta) -> Vec<Piece> {
        let mut pieces = Vec::new();
        if let (Some(id), Some(name)) = (delta.id, delta.name) {
            self.calls = self.calls.max(delta.index + 1);
            pieces.push(Piece::CallStart {
                index: delta.index,
                id,
                name,
            });
        }
        if !delta.arguments.is_empty() {
            pieces.push(Piece::CallArguments {
                index: delta.index,
                text: delta.arguments,
            });
        }
        pieces
    }

    /// The end of the text: whatever was held back.
    pub fn finish(&mut self) -> Vec<Piece> {
        let held = std::mem::take(&mut self.held);
        match self.mode.clone() {
            OutputMode::Text | OutputMode::Remote => text_piece(held),
            OutputMode::Arguments { name } if self.calls == 0 => vec![self.start(name)],
            OutputMode::Arguments { .. } => Vec::new(),
            OutputMode::Call if self.inside => {
                // The held tail is `}` (closing the arguments) then `}`
                // (closing the call), with whitespace around them.
                let tail = held.trim_end();
                let tail = tail.strip_suffix('}').unwrap_or(tail).trim_end();
                arguments_piece(self.calls - 1, tail)
            }
            // Cut off before the arguments began (`length`): what there is.
            OutputMode::Call => text_piece(held),
            OutputMode::Parse { format, parallel } => self.finish_parsed(format, parallel, held),
        }
    }

    fn start(&mut self, name: String) -> Piece {
        self.calls += 1;
        Piece::CallStart {
            index: self.calls - 1,
            id: call_id(),
            name,
        }
    }

    fn push_call(&mut self) -> Vec<Piece> {
        if !self.inside {
            let Some((name, rest)) = split_call_head(&self.held) else {
                return Vec::new();
            };
            let rest = rest.to_string();
            self.inside = true;
            self.held = rest;
            let mut pieces = vec![self.start(name)];
            pieces.extend(self.release_arguments());
            return pieces;
        }
        self.release_arguments()
    }

    /// Gives out the arguments but for a tail of `}` and whitespace, which
    /// may be the end of the call object.
    fn release_arguments(&mut self) -> Vec<Piece> {
        let keep = self
            .held
            .trim_end_matches(|c: char| c == '}' || c.is_whitespace())
            .len();
        let out: String = self.held.drain(..keep).collect();
        arguments_piece(self.calls - 1, &out)
    }

    fn push_parsed(&mut self, format: ToolCallFormat) -> Vec<Piece> {
        if self.inside {
            return Vec::new();
        }
        match format {
            ToolCallFormat::Hermes => {
                if let Some(at) = self.held.find(HERMES_OPEN) {
                    self.inside = true;
                    let before: String = self.held.drain(..at).collect();
                    return text_piece(before);
                }
                // Hold back what may be the start of the opening tag.
                let keep = partial_suffix(&self.held, HERMES_OPEN);
                let out: String = self.held.drain(..self.held.len() - keep).collect();
                text_piece(out)
            }
            ToolCallFormat::LlamaJson => {
                // A Llama call is the whole answer; once text has been
                // given out, the rest is text too.
                if self.plain {
                    return text_piece(std::mem::take(&mut self.held));
                }
                let start = self.held.trim_start();
                if start.starts_with('{') || start.starts_with(PYTHON_TAG) {
                    self.inside = true;
                    return Vec::new();
                }
                if start.is_empty() || PYTHON_TAG.starts_with(start) {
                    return Vec::new();
                }
                self.plain = true;
                text_piece(std::mem::take(&mut self.held))
            }
        }
    }

    fn finish_parsed(
        &mut self,
        format: ToolCallFormat,
        parallel: bool,
        held: String,
    ) -> Vec<Piece> {
        if !self.inside {
            return text_piece(held);
        }
        let calls = match format {
            ToolCallFormat::Hermes => hermes_calls(&held),
            ToolCallFormat::LlamaJson => llama_calls(&held),
        };
        let Some(calls) = calls.filter(|calls| !calls.is_empty()) else {
            // Not a call after all: the model's text, as it wrote it.
            return text_piece(held);
        };
        let mut pieces = Vec::new();
        let take = if parallel { calls.len() } else { 1 };
        for (name, arguments) in calls.into_iter().take(take) {
            pieces.push(self.start(name));
            pieces.extend(arguments_piece(self.calls - 1, &arguments));
        }
        pieces
    }
}

fn text_piece(text: String) -> Vec<Piece> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![Piece::Text(text)]
    }
}

fn arguments_piece(index: usize, text: &str) -> Vec<Piece> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![Piece::CallArguments {
            index,
            text: text.to_string(),
        }]
    }
}

/// The length of the longest suffix of `text` that begins `tag`.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// `{"name": "f", "arguments": ` → (`f`, what follows the colon).
fn split_call_head(text: &str) -> Option<(String, &str)> {
    const KEY: &str = "\"arguments\"";
    let mut from = 0;
    while let Some(found) = text[from..].find(KEY) {
        let at = from + found;
        from = at + KEY.len();
        // Inside the name's value (a function named `arguments`).
        let Some(head) = text[..at].trim_end().strip_suffix(',') else {
            continue;
        };
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&format!("{head}}}")) else {
            continue;
        };
        let Some(Value::String(name)) = object.get("name") else {
            continue;
        };
        let rest = text[from..].trim_start().strip_prefix(':')?;
        return Some((name.clone(), rest.trim_start()));
    }
    None
}

/// `(name, arguments JSON)` of a call object, accepting OpenAI's
/// `arguments` and Llama's `parameters`.
fn call_of(value: Value) -> Option<(String, String)> {
    let Value::Object(mut object) = value else {
        return None;
    };
    let name = object.remove("name")?.as_str()?.to_string();
    let arguments = object
        .remove("arguments")
        .or_else(|| object.remove("parameters"))
        .unwrap_or_else(|| Value::Object(Default::default()));
    let arguments = match arguments {
        // Some models write the arguments already encoded.
        Value::String(encoded) => encoded,
        other => other.to_string(),
    };
    Some((name, arguments))
}

fn hermes_calls(text: &str) -> Option<Vec<(String, String)>> {
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(HERMES_OPEN) {
        let body = &rest[open + HERMES_OPEN.len()..];
        let (inner, after) = match body.find(HERMES_CLOSE) {
            Some(close) => (&body[..close], &body[close + HERMES_CLOSE.len()..]),
            None => (body, ""),
        };
        calls.push(call_of(serde_json::from_str(inner.trim()).ok()?)?);
        rest = after;
    }
    Some(calls)
}

fn llama_calls(text: &str) -> Option<Vec<(String, String)>> {
    let text = text.trim();
    let text = text.strip_prefix(PYTHON_TAG).unwrap_or(text).trim();
    // Several calls come as a JSON array, or separated by `;`.
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return match value {
            Value::Array(items) => items.into_iter().map(call_of).collect(),
            other => call_of(other).map(|call| vec![call]),
        };
    }
    text.split(';')
        .filter(|part| !part.trim().is_empty())
        .map(|part| call_of(serde_json::from_str(part.trim()).ok()?))
        .collect()
}

#[cfg(test)]
mod tests;
