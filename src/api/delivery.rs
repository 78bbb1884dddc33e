//! Between the engine and the client: a task per generation that drains the
//! engine's events as fast as they come, whatever the client does, and keeps
//! them for the client in an unbounded queue (bounded in practice by
//! `max_tokens`). The engine therefore never waits on a socket: one tenant's
//! stalled reader cannot hold a batch, a channel or a slot another tenant
//! needs.
//!
//! The same task does the generation's accounting (metrics, the rate-limit
//! settlement, metering) as events leave the engine, and holds the admission
//! slot and adapter lease only while the engine works. A client that takes
//! nothing for `write_idle_timeout` while output waits is cut off: its
//! generation is cancelled, charged what it used, and its connection shut.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::adapters::AdapterLease;
use crate::api::accounting::{ChoicesLeft, Outcome, Settlement};
use crate::engine::{AdmissionPermit, EngineError, EventStream, InferenceEvent};

pub type Event = Result<InferenceEvent, EngineError>;

/// How far the client is behind the engine, shared by both ends.
#[derive(Debug)]
struct Backlog {
    origin: Instant,
    /// Events sent to the client's queue and not yet taken.
    queued: AtomicUsize,
    /// Milliseconds after `origin` of the last sign of progress: the queue
    /// becoming non-empty, or the client taking an event.
    progress_ms: AtomicU64,
}

impl Backlog {
    fn touch(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.progress_ms.store(now, Ordering::Relaxed);
    }

    fn sent(&self) {
        if self.queued.fetch_add(1, Ordering::AcqRel) == 0 {
            self.touch();
        }
    }

    fn taken(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.touch();
    }

    /// How long output has waited with the client taking none of it.
    fn stalled_for(&self) -> Duration {
        if self.queued.load(Ordering::Acquire) == 0 {
            return Duration::ZERO;
        }
        let since = self.progress_ms.load(Ordering::Relaxed);
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(since))
    }
}

/// What the engine-side task holds until the engine is done.
pub struct EngineSide {
    pub events: EventStream,
    pub outcome: Outcome,
    pub settlement: Settlement,
    pub permit: AdmissionPermit,
    pub lease: Option<AdapterLease>,
    /// Choices the engine answers; it is done after as many `Finished`.
    pub choices: usize,
}

/// The client's end: events in engine order. Dropping it cancels the
/// generation (the task sees the queue closed and drops the engine stream).
pub struct ClientSide {
    events: mpsc::UnboundedReceiver<Event>,
    backlog: Arc<Backlog>,
    task: tokio::task::JoinHandle<()>,
}

impl ClientSide {
    pub async fn next(&mut self) -> Option<Event> {
        let event = self.events.recv().await?;
        self.backlog.taken();
        Some(event)
    }
}

impl Drop for ClientSide {
    fn drop(&mut self) {
        // The task would notice the closed queue by itself; aborting makes
        // the cancellation immediate even while the engine is between events.
        self.task.abort();
    }
}

/// Starts draining `engine`. `peer` is the client's connection, shut if the
/// client stalls so the server frees it too.
pub fn start(
    engine: EngineSide,
    write_idle_timeout: Duration,
    peer: Option<socket2::Socket>,
) -> ClientSide {
    let (sender, events) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog {
        origin: Instant::now(),
        queued: AtomicUsize::new(0),
        progress_ms: AtomicU64::new(0),
    });
    let task = tokio::spawn(drain(
        engine,
        sender,
        backlog.clone(),
        write_idle_timeout,
        peer,
    ));
    ClientSide {
        events,
        backlog,
        task,
    }
}

async fn drain(
    engine: EngineSide,
    sender: mpsc::UnboundedSender<Event>,
    backlog: Arc<Backlog>,
    write_idle_timeout: Duration,
    peer: Option<socket2::Socket>,
) {
    let check_every =
        (write_idle_timeout / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(check_every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let finished = generate(engine, &sender, &backlog, &mut ticks, write_idle_timeout).await;
    if finished {
        // The engine is done and its slot released; the client may still
        // be reading what is queued.
        loop {
            tokio::select! {
                () = sender.closed() => return,
                _ = ticks.tick() => {
                    if backlog.queued.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    if backlog.stalled_for() > write_idle_timeout {
                        break;
                    }
                }
            }
        }
    } else if sender.is_closed() {
        return;
    }
    tracing::info!(
        timeout_ms = write_idle_timeout.as_millis() as u64,
        "cutting off a client that stopped reading its stream"
    );
    if let Some(socket) = peer
        && let Err(error) = socket.shutdown(std::net::Shutdown::Both)
    {
        tracing::debug!(%error, "shutting a stalled connection failed");
    }
}

/// Relays engine events until the engine finishes (`true`), or the client
/// goes or stalls (`false`; dropping the engine side cancels the generation).
async fn generate(
    mut engine: EngineSide,
    sender: &mpsc::UnboundedSender<Event>,
    backlog: &Backlog,
    ticks: &mut tokio::time::Interval,
    write_idle_timeout: Duration,
) -> bool {
    let mut left = ChoicesLeft::new(engine.choices);
    loop {
        tokio::select! {
            event = engine.events.next() => {
                let Some(event) = event else {
                    // The client sees the queue end without a finish.
                    return true;
                };
                let complete = left.ends_with(&event);
                engine.outcome.observe(&event, complete);
                engine.settlement.observe(&event, complete);
                let last = complete || event.is_err();
                backlog.sent();
                if sender.send(event).is_err() {
                    return false;
                }
                if last {
                    return true;
                }
            }
            () = sender.closed() => return false,
            _ = ticks.tick() => {
                if backlog.stalled_for() > write_idle_timeout {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_keeps_up_never_counts_as_stalled() {
        let backlog = Backlog {
            origin: Instant::now(),
            queued: AtomicUsize::new(0),
            progress_ms: AtomicU64::new(0),
        };
        assert_eq!(backlog.stalled_for(), Duration::ZERO);
        backlog.sent();
        backlog.taken();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(backlog.stalled_for(), Duration::ZERO, "nothing is waiting");
        backlog.sent();
        std::thread::sleep(Duration::from_millis(30));
        assert!(backlog.stalled_for() >= Duration::from_millis(30));
        backlog.taken();
        assert_eq!(backlog.stalled_for(), Duration::ZERO);
    }
}
