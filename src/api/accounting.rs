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

/// Records TTFT, token counters and how the generation ended.
pub struct Outcome {
    metrics: Arc<Metrics>,
    model: String,
    started: Instant,
    first_text_seen: bool,
    ended: Option<&'static str>,
}

impl Outcome {
    pub fn new(metrics: Arc<Metrics>, model: &str, started: Instant) -> Outcome {
        Outcome {
            metrics,
            model: model.to_string(),
            started,
            first_text_seen: false,
            ended: None,
        }
    }

    pub fn observe(&mut self, event: &Result<GenerationEvent, EngineError>) {
        match event {
            Ok(GenerationEvent::Delta { text }) if !text.is_empty() && !self.first_text_seen => {
                self.first_text_seen = true;
                self.metrics
                    .time_to_first_token
                    .with_label_values(&[&self.model])
                    .observe(self.started.elapsed().as_secs_f64());
            }
            Ok(GenerationEvent::Finished { reason, usage }) => {
                self.ended = Some(reason.as_str());
                let labels = [self.model.as_str()];
                self.metrics
                    .prompt_tokens
                    .with_label_values(&labels)
                    .inc_by(usage.prompt_tokens as u64);
                self.metrics
                    .completion_tokens
                    .with_label_values(&labels)
                    .inc_by(usage.completion_tokens as u64);
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
            .with_label_values(&[&self.model, reason])
            .inc();
    }
}

/// Settles the tenant's reservation to the tokens really used and meters
/// them. Until a generation starts, the reservation is refunded whole.
pub struct Settlement {
    reservation: Option<Reservation>,
    meter: Arc<UsageMeter>,
    tenant: String,
    model: String,
    prompt_tokens: u64,
    /// Completion tokens so far, kept by the engine; `None` until generating.
    progress: Option<Arc<AtomicU64>>,
    /// The engine's final count, when it gave one.
    final_usage: Option<TokenUsage>,
}

impl Settlement {
    pub fn new(
        reservation: Option<Reservation>,
        meter: Arc<UsageMeter>,
        tenant: &str,
        model: &str,
        prompt_tokens: usize,
    ) -> Settlement {
        Settlement {
            reservation,
            meter,
            tenant: tenant.to_string(),
            model: model.to_string(),
            prompt_tokens: prompt_tokens as u64,
            progress: None,
            final_usage: None,
        }
    }

    pub fn generating(&mut self, progress: Arc<AtomicU64>) {
        self.progress = Some(progress);
    }

    pub fn observe(&mut self, event: &Result<GenerationEvent, EngineError>) {
        if let Ok(GenerationEvent::Finished { usage, .. }) = event {
            self.final_usage = Some(*usage);
        }
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
        let (prompt, completion) = match self.final_usage {
            Some(usage) => (usage.prompt_tokens as u64, usage.completion_tokens as u64),
            None => (self.prompt_tokens, progress.load(Ordering::Relaxed)),
        };
        if let Some(reservation) = self.reservation.take() {
            reservation.finish(prompt + completion);
        }
        let (meter, tenant, model) = (self.meter.clone(), self.tenant.clone(), self.model.clone());
        tokio::spawn(async move { meter.record(&tenant, &model, prompt, completion).await });
    }
}
