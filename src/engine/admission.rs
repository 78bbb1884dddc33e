//! Bounded admission in front of the engine: at most `max_in_flight`
//! generations run, at most `max_queued` wait, and none waits longer than the
//! queue timeout. Past that the caller is told to come back later instead of
//! joining an unbounded queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::AdmissionConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("queue full")]
    QueueFull,
    #[error("timed out waiting for a slot")]
    QueueTimeout,
}

pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queued: usize,
    queue_timeout: Duration,
}

/// Held for as long as a generation runs; its drop frees the slot.
#[derive(Debug)]
pub struct AdmissionPermit {
    _slot: OwnedSemaphorePermit,
}

struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    pub fn new(config: &AdmissionConfig) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
            waiting: AtomicUsize::new(0),
            max_queued: config.max_queued,
            queue_timeout: config.queue_timeout,
        }
    }

    pub async fn admit(&self) -> Result<AdmissionPermit, AdmissionError> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(AdmissionPermit { _slot: slot });
        }
        let previously_waiting = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _guard = WaitingGuard(&self.waiting);
        if previously_waiting >= self.max_queued {
            return Err(AdmissionError::QueueFull);
        }
        match tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(AdmissionPermit { _slot: slot }),
            // The semaphore is never closed; treat it like a timeout if it were.
            Ok(Err(_)) | Err(_) => Err(AdmissionError::QueueTimeout),
        }
    }

    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// A hint for `Retry-After`: the queue timeout, at least one second.
    pub fn retry_after_secs(&self) -> u64 {
        self.queue_timeout.as_secs().clamp(1, 30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(in_flight: usize, queued: usize, timeout_ms: u64) -> Arc<Admission> {
        Arc::new(Admission::new(&AdmissionConfig {
            max_in_flight: in_flight,
            max_queued: queued,
            queue_timeout: Duration::from_millis(timeout_ms),
        }))
    }

    #[tokio::test]
    async fn refuses_when_slots_and_queue_are_full() {
        let gate = admission(1, 1, 5_000);
        let held = gate.admit().await.expect("first slot");
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.admit().await })
        };
        while gate.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.admit().await.unwrap_err(), AdmissionError::QueueFull);
        drop(held);
        assert!(
            waiter.await.expect("join").is_ok(),
            "queued request gets the freed slot"
        );
        assert_eq!(gate.queued(), 0);
    }

    #[tokio::test]
    async fn queued_request_times_out() {
        let gate = admission(1, 4, 30);
        let _held = gate.admit().await.expect("slot");
        assert_eq!(
            gate.admit().await.unwrap_err(),
            AdmissionError::QueueTimeout
        );
        assert_eq!(gate.queued(), 0, "a timed-out waiter leaves the queue");
    }

    #[tokio::test]
    async fn zero_queue_means_fail_fast() {
        let gate = admission(1, 0, 5_000);
        let _held = gate.admit().await.expect("slot");
        assert_eq!(gate.admit().await.unwrap_err(), AdmissionError::QueueFull);
    }
}
