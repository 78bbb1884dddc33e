//! What a request leaves behind when it ends, however it ends: metrics, the
//! settlement of its rate-limit reservation, and its metered usage. Both
//! guards act in `Drop`, so a client that disconnects is accounted for too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::engine::{EngineError, InferenceEvent, TokenUsage};
use crate::metering::UsageMeter;
use crate::metrics::Metrics;
use crate::ratelimit::Reservation;

/// Counts a generation's choices down to its end: the one place that
/// decides when a generation of `n` choices is over.
pub struct ChoicesLeft(usize);

impl ChoicesLeft {
    pub fn new(choices: usize) -> ChoicesLeft {
        ChoicesLeft(choices)
    }

    /// Takes `event` into account; true when it finished the last choice.
    pub fn ends_with(&mut self, event: &Result<InferenceEvent, EngineError>) -> bool {
        if matches!(event, Ok(InferenceEvent::Finished { .. })) && self.0 > 0 {
            self.0 -= 1;
            return self.0 == 0;
        }
        false
    }
}

/// Records TTFT, inter-token latency, duration and how the generation ended
/// (with several choices: when the last one ended, and why).
pub struct Outcome {
    metrics: Arc<Metrics>,
    labels: [String; 2],
    started: Instant,
    last_text: Option<Instant>,
    ended: Option<&'static str>,
}

impl Outcome {
    pub fn new(metrics: Arc<Metrics>, tenant: &str, model: &str, started: Instant) -> Outcome {
        Outcome {
            metrics,
            labels: [tenant.to_string(), model.to_string()],
            started,
            last_text: None,
            ended: None,
        }
    }

    /// `complete`: the event finished the generation's last choice.
    pub fn observe(&mut self, event: &Result<InferenceEvent, EngineError>, complete: bool) {
        let labels = [self.labels[0].as_str(), self.labels[1].as_str()];
        match event {
            Ok(InferenceEvent::Delta { text, .. }) if !text.is_empty() => {
                let now = Instant::now();
                match self.last_text {
                    None => self
                        .metrics
                        .time_to_first_token
                        .with_label_values(&labels)
                        .observe((now - self.started).as_secs_f64()),
                    Some(previous) => self
                        .metrics
                        .inter_token_latency
                        .with_label_values(&labels)
                        .observe((now - previous).as_secs_f64()),
                }
                self.last_text = Some(now);
            }
            Ok(InferenceEvent::Finished { reason, .. }) if complete => {
                self.ended = Some(reason.as_str());
                self.metrics
                    .generation_duration
                    .with_label_values(&labels)
                    .observe(self.started.elapsed().as_secs_f64());
            }
            Err(_) => self.ended = Some("error"),
            Ok(_) => {}
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let reason = self.ended.unwrap_or("cancelled");
        self.metrics
            .finished
            .with_label_values(&[&self.labels[0], &self.labels[1], reason])
            .inc();
    }
}

/// Settles the tenant's reservation to the tokens really used and meters
/// them. Until a generation starts, the reservation is refunded whole; so it
/// is, and no tokens are metered, when the request fails before any output
/// reached the client (a non-streamed answer that ends in an error
/// delivers nothing).
pub struct Settlement {
    reservation: Option<Reservation>,
    meter: Arc<UsageMeter>,
    metrics: Arc<Metrics>,
    tenant: String,
    model: String,
    prompt_tokens: u64,
    /// Completion tokens so far, kept by the engine (one counter per
    /// generation); `None` until generating.
    progress: Option<Vec<Arc<AtomicU64>>>,
    /// Every choice finished: `finished_usage` is the whole count.
    complete: bool,
    /// The engine's final counts of the finished choices.
    finished_usage: TokenUsage,
    /// Output goes to the client as it comes (a stream), not at the end.
    streamed: bool,
    output_sent: bool,
    failed: bool,
}

impl Settlement {
    pub fn new(
        reservation: Option<Reservation>,
        meter: Arc<UsageMeter>,
        metrics: Arc<Metrics>,
        tenant: &str,
        model: &str,
        streamed: bool,
    ) -> Settlement {
        Settlement {
            reservation,
            meter,
            metrics,
            tenant: tenant.to_string(),
            model: model.to_string(),
            prompt_tokens: 0,
            progress: None,
            complete: false,
            finished_usage: TokenUsage::default(),
            streamed,
            output_sent: false,
            failed: false,
        }
    }

    /// The reservation, while the request is still being admitted (its
    /// prompt is measured after the first decision).
    pub fn reservation(&mut self) -> Option<&mut Reservation> {
        self.reservation.as_mut()
    }

    /// The engine started, counting its tokens in `progress` (one counter
    /// per generation behind the request's choices).
    pub fn generating(&mut self, prompt_tokens: usize, progress: Vec<Arc<AtomicU64>>) {
        self.prompt_tokens = prompt_tokens as u64;
        self.progress = Some(progress);
    }

    /// `complete`: the event finished the generation's last choice.
    pub fn observe(&mut self, event: &Result<InferenceEvent, EngineError>, complete: bool) {
        self.complete |= complete;
        match event {
            Ok(InferenceEvent::Finished { usage, .. }) => {
                // The prompt is paid once, whatever the number of choices.
                self.finished_usage.prompt_tokens = usage.prompt_tokens;
                self.finished_usage.completion_tokens += usage.completion_tokens;
            }
            Ok(InferenceEvent::Delta { text, .. }) if !text.is_empty() => {
                self.output_sent |= self.streamed;
            }
            Ok(InferenceEvent::ToolCall(_)) => self.output_sent |= self.streamed,
            Err(_) => self.failed = true,
            Ok(_) => {}
        }
    }

    /// Whether the tenant pays for what the engine did.
    fn charged(&self) -> bool {
        !self.failed || self.output_sent
    }

    /// Prompt and completion tokens to charge, once generating: the
    /// engine's counts when every choice finished, else the prompt and the
    /// tokens sampled so far. A failure that reached the client as an
    /// error only is a request of no tokens: counted, not charged.
    fn used(&self) -> Option<(u64, u64)> {
        let progress = self.progress.as_ref()?;
        let usage = self.finished_usage;
        Some(if !self.charged() {
            (0, 0)
        } else if self.complete {
            (usage.prompt_tokens as u64, usage.completion_tokens as u64)
        } else {
            let sampled = progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
            (self.prompt_tokens, sampled)
        })
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let Some((prompt, completion)) = self.used() else {
            if let Some(reservation) = self.reservation.take() {
                reservation.finish(0);
            }
            return;
        };
        if let Some(reservation) = self.reservation.take() {
            reservation.finish(prompt + completion);
        }
        let labels = [self.tenant.as_str(), self.model.as_str()];
        self.metrics
            .prompt_tokens
            .with_label_values(&labels)
            .inc_by(prompt);
        self.metrics
            .completion_tokens
            .with_label_values(&labels)
            .inc_by(completion);
        let (meter, tenant, model) = (self.meter.clone(), self.tenant.clone(), self.model.clone());
        tokio::spawn(async move { meter.record(&tenant, &model, prompt, completion).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FinishReason;

    /// What a settlement of `choices` charges after `events`, with `sampled`
    /// tokens counted by each generation.
    fn charge(
        streamed: bool,
        choices: usize,
        sampled: &[u64],
        events: &[Result<InferenceEvent, EngineError>],
    ) -> (bool, (u64, u64)) {
        let metrics = Arc::new(Metrics::new());
        let meter = Arc::new(UsageMeter::new(None, metrics.clone()));
        let mut settlement = Settlement::new(None, meter, metrics, "t", "m", streamed);
        let progress = sampled.iter().map(|&n| Arc::new(AtomicU64::new(n)));
        settlement.generating(7, progress.collect());
        let mut left = ChoicesLeft::new(choices);
        for event in events {
            settlement.observe(event, left.ends_with(event));
        }
        let outcome = (settlement.charged(), settlement.used().expect("generating"));
        // Dropping meters outside a runtime would panic on the spawn.
        settlement.progress = None;
        outcome
    }

    fn settlement(streamed: bool, events: &[Result<InferenceEvent, EngineError>]) -> bool {
        charge(streamed, 1, &[3], events).0
    }

    fn finished(choice: usize, completion_tokens: usize) -> Result<InferenceEvent, EngineError> {
        let usage = TokenUsage {
            prompt_tokens: 7,
            completion_tokens,
        };
        Ok(InferenceEvent::finished(FinishReason::Stop, usage).for_choice(choice))
    }

    #[test]
    fn choices_pay_the_prompt_once_and_each_their_tokens() {
        let both = [text("a"), finished(1, 4), finished(0, 5)];
        assert_eq!(charge(false, 2, &[5, 4], &both).1, (7, 9));
        // One choice still running when the client left: what was sampled.
        assert_eq!(charge(true, 2, &[6, 4], &both[..2]).1, (7, 10));
    }

    fn text(t: &str) -> Result<InferenceEvent, EngineError> {
        Ok(InferenceEvent::text(t.into(), Vec::new()))
    }

    fn failure() -> Result<InferenceEvent, EngineError> {
        Err(EngineError::Internal("boom".into()))
    }

    #[test]
    fn a_failure_that_delivered_nothing_is_not_charged() {
        let finished = Ok(InferenceEvent::finished(
            FinishReason::Stop,
            TokenUsage::default(),
        ));
        assert!(settlement(false, &[text("a"), finished]));
        assert!(!settlement(false, &[failure()]));
        // A non-streamed answer that fails is a 500: its text never left.
        assert!(!settlement(false, &[text("a"), failure()]));
        assert!(!settlement(true, &[failure()]));
        assert!(!settlement(true, &[text(""), failure()]));
        // A stream's client kept what it received before the error.
        assert!(settlement(true, &[text("a"), failure()]));
    }
}
