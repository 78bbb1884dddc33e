//! Bounded admission in front of every engine: at most `max_in_flight`
//! generations run, at most `max_queued` wait, none waits longer than the
//! queue timeout, and past that the caller is told to come back later
//! instead of joining an unbounded queue. Who gets the next free slot, and
//! who keeps a place in a full queue, is decided by [`queues`]: fairly
//! across tenants by weight (the default) or first come, first served.

pub mod queues;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use queues::{Arrival, Queues, WaiterId};
pub use queues::{Claim, Policy};

use crate::config::AdmissionConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("queue full")]
    QueueFull,
    #[error("timed out waiting for a slot")]
    QueueTimeout,
}

struct Shared {
    queues: Queues,
    /// Waiters by id: told through their channel when admitted (`true`) or
    /// pushed out of a full queue (`false`).
    waiters: HashMap<WaiterId, oneshot::Sender<bool>>,
    next_id: WaiterId,
}

pub struct Admission {
    shared: Arc<Mutex<Shared>>,
    queue_timeout: Duration,
}

/// Held for as long as a generation runs; its drop frees the slot.
pub struct AdmissionPermit {
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for AdmissionPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdmissionPermit")
    }
}

impl Drop for AdmissionPermit {
    fn drop(&mut self) {
        let mut shared = self.shared.lock();
        if let Some(id) = shared.queues.release()
            && let Some(waiter) = shared.waiters.remove(&id)
        {
            // If its receiver is already gone, the waiter is ending right
            // now and finds itself admitted (`cancel` fails): it returns or
            // keeps the slot then.
            let _ = waiter.send(true);
        }
    }
}

impl Admission {
    pub fn new(config: &AdmissionConfig) -> Self {
        Admission {
            shared: Arc::new(Mutex::new(Shared {
                queues: Queues::new(config.policy, config.max_in_flight, config.max_queued),
                waiters: HashMap::new(),
                next_id: 0,
            })),
            queue_timeout: config.queue_timeout,
        }
    }

    fn permit(&self) -> AdmissionPermit {
        AdmissionPermit {
            shared: self.shared.clone(),
        }
    }

    pub async fn admit(&self, claim: &Claim) -> Result<AdmissionPermit, AdmissionError> {
        let (id, granted) = {
            let mut shared = self.shared.lock();
            let id = shared.next_id;
            shared.next_id += 1;
            match shared.queues.arrive(claim, id) {
                Arrival::Admitted => return Ok(self.permit()),
                Arrival::Refused => return Err(AdmissionError::QueueFull),
                Arrival::Queued => {}
                Arrival::QueuedDisplacing(victim) => {
                    if let Some(waiter) = shared.waiters.remove(&victim) {
                        let _ = waiter.send(false);
                    }
                }
            }
            let (sender, receiver) = oneshot::channel();
            shared.waiters.insert(id, sender);
            (id, receiver)
        };
        // Leaving the queue however this ends (timeout, the caller dropped
        // this future) keeps the count of waiters true.
        let mut guard = Leave {
            admission: self,
            tenant: &claim.tenant,
            id,
            armed: true,
        };
        let outcome = tokio::time::timeout(self.queue_timeout, granted).await;
        match outcome {
            Ok(Ok(true)) => {
                guard.armed = false;
                Ok(self.permit())
            }
            Ok(Ok(false)) | Ok(Err(_)) => {
                guard.armed = false;
                Err(AdmissionError::QueueFull)
            }
            Err(_) => {
                guard.armed = false;
                let mut shared = self.shared.lock();
                shared.waiters.remove(&id);
                if shared.queues.cancel(&claim.tenant, id) {
                    Err(AdmissionError::QueueTimeout)
                } else {
                    // Admitted in the same instant: the slot is ours.
                    Ok(self.permit())
                }
            }
        }
    }

    pub fn queued(&self) -> usize {
        self.shared.lock().queues.waiting()
    }

    pub fn queued_for(&self, tenant: &str) -> usize {
        self.shared.lock().queues.waiting_for(tenant)
    }

    /// How long a request may wait for its turn.
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }

    /// A hint for `Retry-After`: the queue timeout, at least one second.
    pub fn retry_after_secs(&self) -> u64 {
        self.queue_timeout.as_secs().clamp(1, 30)
    }
}

/// Takes a waiter out of the queue if its wait ends early; if it was
/// admitted in that instant, the slot is handed back.
struct Leave<'a> {
    admission: &'a Admission,
    tenant: &'a str,
    id: WaiterId,
    armed: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let admitted_meanwhile = {
            let mut shared = self.admission.shared.lock();
            shared.waiters.remove(&self.id);
            !shared.queues.cancel(self.tenant, self.id)
        };
        if admitted_meanwhile {
            drop(self.admission.permit());
        }
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
            policy: Policy::Fair,
        }))
    }

    fn anyone() -> Claim {
        Claim {
            tenant: "t".into(),
            weight: 1,
            priority: 0,
        }
    }

    #[tokio::test]
    async fn refuses_when_slots_and_queue_are_full() {
        let gate = admission(1, 1, 5_000);
        let held = gate.admit(&anyone()).await.expect("first slot");
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.admit(&anyone()).await })
        };
        while gate.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            gate.admit(&anyone()).await.unwrap_err(),
            AdmissionError::QueueFull
        );
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
        let _held = gate.admit(&anyone()).await.expect("slot");
        assert_eq!(
            gate.admit(&anyone()).await.unwrap_err(),
            AdmissionError::QueueTimeout
        );
        assert_eq!(gate.queued(), 0, "a timed-out waiter leaves the queue");
    }

    #[tokio::test]
    async fn zero_queue_means_fail_fast() {
        let gate = admission(1, 0, 5_000);
        let _held = gate.admit(&anyone()).await.expect("slot");
        assert_eq!(
            gate.admit(&anyone()).await.unwrap_err(),
            AdmissionError::QueueFull
        );
    }

    #[tokio::test]
    async fn an_abandoned_wait_leaves_the_queue_and_loses_no_slot() {
        let gate = admission(1, 4, 60_000);
        let held = gate.admit(&anyone()).await.expect("slot");
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.admit(&anyone()).await })
        };
        while gate.queued() == 0 {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(gate.queued(), 0);
        drop(held);
        let again = gate.admit(&anyone()).await.expect("the slot came back");
        drop(again);
    }

    #[tokio::test]
    async fn a_displaced_waiter_is_told_at_once() {
        let gate = admission(1, 1, 60_000);
        let _held = gate
            .admit(&Claim {
                tenant: "a".into(),
                weight: 1,
                priority: 0,
            })
            .await
            .expect("slot");
        let flooder = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.admit(&Claim {
                    tenant: "a".into(),
                    weight: 1,
                    priority: 0,
                })
                .await
            })
        };
        while gate.queued() == 0 {
            tokio::task::yield_now().await;
        }
        let newcomer = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.admit(&Claim {
                    tenant: "b".into(),
                    weight: 1,
                    priority: 0,
                })
                .await
            })
        };
        assert_eq!(
            flooder.await.expect("join").unwrap_err(),
            AdmissionError::QueueFull,
            "a's waiter gave its place to b"
        );
        assert_eq!(gate.queued_for("b"), 1);
        newcomer.abort();
    }
}
