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
    EngineError, EventStream, FinishReason, InferenceEvent, PromptMessage, TokenUsage,
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
    /// The choices asked for (`n`).
    pub choices: usize,
}

impl RelayContext {
    /// The `Finished` event of every choice, once the answer is whole.
    /// The replica reports usage for all choices together; each choice is
    /// given its own counted tokens and the last the rest, so the choices
    /// add up to the replica's total.
    fn finish(
        &self,
        reported: Option<UpstreamUsage>,
        reasons: &[Option<FinishReason>],
        counted: &[usize],
    ) -> Result<Vec<InferenceEvent>, EngineError> {
        let Some(reasons) = reasons.iter().copied().collect::<Option<Vec<_>>>() else {
            return Err(self.broken(
                "The upstream stream ended before the answer finished",
                "no finish_reason for every choice before the end",
            ));
        };
        let (prompt_tokens, total) = match reported {
            Some(usage) => (usage.prompt_tokens, usage.completion_tokens),
            None => (self.prompt_tokens, counted.iter().sum()),
        };
        self.progress.store(total as u64, Ordering::Relaxed);
        let mut left = total;
        let last = reasons.len().saturating_sub(1);
        Ok(reasons
            .into_iter()
            .enumerate()
            .map(|(choice, reason)| {
                let completion_tokens = if choice == last {
                    left
                } else {
                    counted[choice].min(left)
                };
                left -= completion_tokens;
                InferenceEvent::Finished {
                    choice,
                    reason,
                    usage: TokenUsage {
                        prompt_tokens,
                        completion_tokens,
                    },
                }
            })
            .collect())
    }

    /// A choice the client asked for, or a broken answer.
    fn choice(&self, index: usize) -> Result<usize, EngineError> {
        if index < self.choices {
            Ok(index)
        } else {
            Err(self.broken(
                "The upstream engine answered more choices than were asked for",
                format!("choice {index} of {}", self.choices),
            ))
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
        let mut tallies: Vec<Tally> = (0..context.choices).map(|_| counter.tally()).collect();
        let mut reasons: Vec<Option<FinishReason>> = vec![None; context.choices];
        let mut relayed = 0usize;
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
                for part in frame.choices {
                    let choice = match context.choice(part.index) {
                        Ok(choice) => choice,
                        Err(error) => {
                            yield Err(error);
                            return;
                        }
                    };
                    reasons[choice] = part.finish.or(reasons[choice]);
                    let arguments: usize = part.tool_calls.iter().map(|c| c.arguments.len()).sum();
                    relayed += part.text.len() + arguments;
                    if relayed > context.body_cap {
                        yield Err(context.broken(&format!("The upstream answer is over {} bytes", context.body_cap), "stream"));
                        return;
                    }
                    if !part.text.is_empty() || !part.logprobs.is_empty() {
                        context.progress.fetch_add(1, Ordering::Relaxed);
                        tallies[choice].add(&part.text);
                        yield Ok(InferenceEvent::Delta { choice, text: part.text, logprobs: part.logprobs });
                    }
                    for call in part.tool_calls {
                        context.progress.fetch_add(1, Ordering::Relaxed);
                        tallies[choice].add(&call.arguments);
                        yield Ok(InferenceEvent::ToolCall(call));
                    }
                }
            }
            if ended {
                break;
            }
        }
        let counted: Vec<usize> = tallies.iter().map(Tally::total).collect();
        match context.finish(usage, &reasons, &counted) {
            Ok(finished) => {
                for event in finished {
                    yield Ok(event);
                }
            }
            Err(error) => yield Err(error),
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
        let answer = match wire::parse_completion(&body) {
            Ok(answer) => answer,
            Err(problem) => {
                yield Err(context.broken("The upstream engine sent a bad answer", problem));
                return;
            }
        };
        let mut reasons: Vec<Option<FinishReason>> = vec![None; context.choices];
        let mut counted = vec![0; context.choices];
        let mut events = Vec::new();
        for part in answer.choices {
            let choice = match context.choice(part.index) {
                Ok(choice) => choice,
                Err(error) => {
                    yield Err(error);
                    return;
                }
            };
            let arguments: String = part.tool_calls.iter().map(|c| c.arguments.as_str()).collect();
            counted[choice] = context.counter.count(&part.text) + context.counter.count(&arguments);
            reasons[choice] = Some(part.finish);
            if !part.text.is_empty() || !part.logprobs.is_empty() {
                events.push(InferenceEvent::Delta { choice, text: part.text, logprobs: part.logprobs });
            }
            events.extend(part.tool_calls.into_iter().map(InferenceEvent::ToolCall));
        }
        match context.finish(answer.usage, &reasons, &counted) {
            Ok(finished) => {
                for event in events.into_iter().chain(finished) {
                    yield Ok(event);
                }
            }
            Err(error) => yield Err(error),
        }
    })
}
