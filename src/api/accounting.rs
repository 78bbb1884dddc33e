//! What a request leaves behind when it ends, however it ends: metrics, the
//! settlement of its rate-limit reservation, and its metered usage. Both
//! guards act in `Drop`, so a client that disconnects is accounted for too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::engine::{EngineError, GenerationEvent, TokenUsage};
use crate::metering::UsageMeter;
use crate::metrics::Metrics;
use crate::ratelimit::Reservation;

/// Records TTFT, inter-token latency, duration and how the generation ended.
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

    pub fn observe(&mut self, event: &Result<GenerationEvent, EngineError>) {
        let labels = [self.labels[0].as_str(), self.labels[1].as_str()];
        match event {
            Ok(GenerationEvent::Delta { text, .. }) if !text.is_empty() => {
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
            Ok(GenerationEvent::Finished { reason, .. }) => {
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
    /// Completion tokens so far, kept by the engine; `None` until generating.
    progress: Option<Arc<AtomicU64>>,
    /// The engine's final count, when it gave one.
    final_usage: Option<TokenUsage>,
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
            final_usage: None,
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

    pub fn generating(&mut self, prompt_tokens: usize, progress: Arc<AtomicU64>) {
        self.prompt_tokens = prompt_tokens as u64;
        self.progress = Some(progress);
    }

    pub fn observe(&mut self, event: &Result<GenerationEvent, EngineError>) {
        match event {
            Ok(GenerationEvent::Finished { usage, .. }) => self.final_usage = Some(*usage),
            Ok(GenerationEvent::Delta { text, .. }) if !text.is_empty() => {
                self.output_sent |= self.streamed;
            }
            Ok(GenerationEvent::ToolCall(_)) => self.output_sent |= self.streamed,
            Err(_) => self.failed = true,
            Ok(_) => {}
        }
    }

    /// Whether the tenant pays for what the engine did.
    fn charged(&self) -> bool {
        !self.failed || self.output_sent
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let Some(progress) = &self.progress else {
            if let Some(reservation) = self.reservation.take() {
                reservation.finish(0);
            }
            return;
        };
        // A failure that reached the client as an error only is metered as a
        // request of no tokens: counted, not charged.
        let (prompt, completion) = match self.final_usage {
            _ if !self.charged() => (0, 0),
            Some(usage) => (usage.prompt_tokens as u64, usage.completion_tokens as u64),
            None => (self.prompt_tokens, progress.load(Ordering::Relaxed)),
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

    fn settlement(streamed: bool, events: &[Result<GenerationEvent, EngineError>]) -> bool {
        let metrics = Arc::new(Metrics::new());
        let meter = Arc::new(UsageMeter::new(None, metrics.clone()));
        let mut settlement = Settlement::new(None, meter, metrics, "t", "m", streamed);
        settlement.generating(7, Arc::new(AtomicU64::new(3)));
        for event in events {
            settlement.observe(event);
        }
        let charged = settlement.charged();
        // Dropping meters outside a runtime would panic on the spawn.
        settlement.progress = None;
        charged
    }

    fn text(t: &str) -> Result<GenerationEvent, EngineError> {
        Ok(GenerationEvent::Delta {
            text: t.into(),
            logprobs: Vec::new(),
        })
    }

    fn failure() -> Result<GenerationEvent, EngineError> {
        Err(EngineError::Internal("boom".into()))
    }

    #[test]
    fn a_failure_that_delivered_nothing_is_not_charged() {
        let finished = Ok(GenerationEvent::Finished {
            reason: FinishReason::Stop,
            usage: TokenUsage::default(),
        });
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
