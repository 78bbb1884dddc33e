//! Turning a replica's answer into generation events as it arrives: a
//! streamed answer frame by frame (nothing is buffered), a non-streamed one
//! as one delta. Usage comes from the replica; when it reports none, the
//! gateway counts, so limits and metering never go unsettled.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use super::replicas::Replica;
use super::sse::SseDecoder;
use super::wire::{self, UpstreamUsage};
use super::{ReplicaHealth, bad_gateway};
use crate::engine::{
    EngineError, EventStream, FinishReason, GenerationEvent, PromptMessage, TokenUsage,
};

/// Counts tokens the replicas do not report: exactly with the model's
/// `tokenizer.json` when `model.path` has one, else about four bytes a token.
pub struct TokenCounter {
    tokenizer: Option<tokenizers::Tokenizer>,
}

impl TokenCounter {
    pub fn load(model_dir: Option<&Path>) -> anyhow::Result<TokenCounter> {
        let file = model_dir
            .map(|dir| dir.join("tokenizer.json"))
            .filter(|file| file.is_file());
        let tokenizer = match file {
            Some(file) => Some(tokenizers::Tokenizer::from_file(&file).map_err(|e| {
                anyhow::anyhow!("config key `model.path`: {}: {e}", file.display())
            })?),
            None => None,
        };
        Ok(TokenCounter { tokenizer })
    }

    /// Bytes per token at most, for refusing oversized prompts unread: the
    /// vocabulary's longest entry, or the four bytes a token is estimated
    /// at without a tokenizer (so the estimate itself would exceed the context).
    pub fn max_token_bytes(&self) -> usize {
        self.tokenizer
            .as_ref()
            .map_or(4, crate::prompt::max_token_bytes)
    }

    /// A running count of a streamed completion, kept without its text.
    pub fn tally(&self) -> Tally<'_> {
        Tally {
            counter: self,
            bytes: 0,
            tokens: 0,
        }
    }

    pub fn count(&self, text: &str) -> usize {
        if text.is_empty() {
            return 0;
        }
        self.tokenizer
            .as_ref()
            .and_then(|t| t.encode(text, false).ok())
            .map_or(text.len().div_ceil(4), |encoding| encoding.len())
    }

    /// The prompt's size before the chat template, plus a few tokens per
    /// message for it: an estimate for admission and limits, settled later
    /// against the replica's own count.
    pub fn prompt(&self, messages: &[PromptMessage], tools: &[serde_json::Value]) -> usize {
        let calls = |m: &PromptMessage| -> usize {
            m.tool_calls
                .iter()
                .map(|c| self.count(&c.name) + self.count(&c.arguments) + 4)
                .sum()
        };
        let tools: usize = tools.iter().map(|t| self.count(&t.to_string())).sum();
        messages
            .iter()
            .map(|m| self.count(&m.content) + calls(m) + 4)
            .sum::<usize>()
            + tools
            + 3
    }
}

pub struct Tally<'a> {
    counter: &'a TokenCounter,
    bytes: usize,
    tokens: usize,
}

impl Tally<'_> {
    fn add(&mut self, text: &str) {
        self.bytes += text.len();
        if self.counter.tokenizer.is_some() {
            self.tokens += self.counter.count(text);
        }
    }

    fn total(&self) -> usize {
        match self.counter.tokenizer {
            Some(_) => self.tokens,
            None => self.bytes.div_ceil(4),
        }
    }
}

/// Everything a relay needs besides the answer itself.
pub struct RelayContext {
    pub replica: Arc<Replica>,
    pub health: Arc<ReplicaHealth>,
    pub counter: Arc<TokenCounter>,
    pub progress: Arc<AtomicU64>,
    pub prompt_tokens: usize,
    pub idle_timeout: Duration,
    /// Largest non-streamed body accepted.
    pub body_cap: usize,
}

impl RelayContext {
    fn usage(&self, reported: Option<UpstreamUsage>, counted: usize) -> TokenUsage {
        match reported {
            Some(usage) => TokenUsage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            },
            None => TokenUsage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: counted,
            },
        }
    }

    /// `summary` is shown to the client; `detail` (the replica's bytes or a
    /// transport error naming its address) is only logged.
    fn broken(&self, summary: &str, detail: impl std::fmt::Display) -> EngineError {
        self.health.failed(&self.replica, "error");
        bad_gateway(&self.replica.name, summary, detail)
    }

    fn stalled(&self) -> EngineError {
        self.health.failed(&self.replica, "timeout");
        EngineError::GatewayTimeout(format!(
            "The upstream engine sent nothing for {} ms.",
            self.idle_timeout.as_millis()
        ))
    }
}

pub fn stream(response: reqwest::Response, context: RelayContext) -> EventStream {
    Box::pin(async_stream::stream! {
        let mut chunks = response.bytes_stream();
        let mut decoder = SseDecoder::default();
        let counter = context.counter.clone();
        let mut tally = counter.tally();
        let mut relayed = 0usize;
        let mut finish: Option<FinishReason> = None;
        let mut usage = None;
        'read: loop {
            let (events, ended) = match tokio::time::timeout(context.idle_timeout, chunks.next()).await {
                Err(_) => {
                    yield Err(context.stalled());
                    return;
                }
                Ok(None) => (decoder.finish().into_iter().collect(), true),
                Ok(Some(Err(error))) => {
                    yield Err(context.broken("The upstream stream broke", error));
                    return;
                }
                Ok(Some(Ok(bytes))) => match decoder.push(&bytes) {
                    Ok(events) => (events, false),
                    Err(problem) => {
                        yield Err(context.broken("The upstream stream is unreadable", problem));
                        return;
                    }
                },
            };
            for data in events {
                if data == "[DONE]" {
                    break 'read;
                }
                let frame = match wire::parse_frame(&data) {
                    Ok(frame) => frame,
                    Err(problem) => {
                        yield Err(context.broken("The upstream engine sent a bad stream frame", problem));
                        return;
                    }
                };
                usage = frame.usage.or(usage);
                finish = frame.finish.or(finish);
                let arguments: usize = frame.tool_calls.iter().map(|c| c.arguments.len()).sum();
                relayed += frame.text.len() + arguments;
                if relayed > context.body_cap {
                    yield Err(context.broken(&format!("The upstream answer is over {} bytes", context.body_cap), "stream"));
                    return;
                }
                if !frame.text.is_empty() || !frame.logprobs.is_empty() {
                    context.progress.fetch_add(1, Ordering::Relaxed);
                    tally.add(&frame.text);
                    yield Ok(GenerationEvent::Delta { text: frame.text, logprobs: frame.logprobs });
                }
                for call in frame.tool_calls {
                    context.progress.fetch_add(1, Ordering::Relaxed);
                    tally.add(&call.arguments);
                    yield Ok(GenerationEvent::ToolCall(call));
                }
            }
            if ended {
                break;
            }
        }
        match finish {
            Some(reason) => {
                let usage = context.usage(usage, tally.total());
                context.progress.store(usage.completion_tokens as u64, Ordering::Relaxed);
                yield Ok(GenerationEvent::Finished { reason, usage });
            }
            None => yield Err(context.broken("The upstream stream ended before the answer finished", "no finish_reason before the end")),
        }
    })
}

pub fn whole(response: reqwest::Response, context: RelayContext) -> EventStream {
    Box::pin(async_stream::stream! {
        let mut chunks = response.bytes_stream();
        let mut body = Vec::new();
        loop {
            match tokio::time::timeout(context.idle_timeout, chunks.next()).await {
                Err(_) => {
                    yield Err(context.stalled());
                    return;
                }
                Ok(None) => break,
                Ok(Some(Err(error))) => {
                    yield Err(context.broken("The upstream answer broke off", error));
                    return;
                }
                Ok(Some(Ok(chunk))) => {
                    if body.len() + chunk.len() > context.body_cap {
                        yield Err(context.broken(&format!("The upstream answer is over {} bytes", context.body_cap), "whole answer"));
                        return;
                    }
                    body.extend_from_slice(&chunk);
                }
            }
        }
        match wire::parse_completion(&body) {
            Ok(answer) => {
                let arguments: String = answer.tool_calls.iter().map(|c| c.arguments.as_str()).collect();
                let counted = context.counter.count(&answer.text) + context.counter.count(&arguments);
                let usage = context.usage(answer.usage, counted);
                context.progress.store(usage.completion_tokens as u64, Ordering::Relaxed);
                if !answer.text.is_empty() || !answer.logprobs.is_empty() {
                    yield Ok(GenerationEvent::Delta { text: answer.text, logprobs: answer.logprobs });
                }
                for call in answer.tool_calls {
                    yield Ok(GenerationEvent::ToolCall(call));
                }
                yield Ok(GenerationEvent::Finished { reason: answer.finish, usage });
            }
            Err(problem) => yield Err(context.broken("The upstream engine sent a bad answer", problem)),
        }
    })
}
