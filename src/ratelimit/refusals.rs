//! A tenant's last refusal, remembered while it still holds, so that a
//! tenant flooding requests past its limit is refused before its body is
//! read (a 4 MB prompt costs nothing to refuse) and without asking the
//! limiter (Redis) every time. It only repeats what the limiter answered:
//! a requests-per-minute refusal holds until its window has room again; a
//! concurrency refusal (a slot may free at any moment) for a few
//! milliseconds; a tokens refusal never (the next request may be smaller).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Decision, LimitKind, RateSnapshot};

/// The longest a refusal is repeated without asking the limiter again, so
/// a change of limits or a refill elsewhere is seen within it.
const LONGEST: Duration = Duration::from_secs(1);
/// How long a concurrency refusal is repeated: a flood costs a limiter
/// call every this often, a polite client retrying waits no longer.
const CONCURRENCY: Duration = Duration::from_millis(20);

#[derive(Default)]
pub struct RecentRefusals {
    by_tenant: Mutex<HashMap<String, Remembered>>,
}

#[derive(Clone, Copy)]
struct Remembered {
    until: Instant,
    kind: LimitKind,
    /// When the limiter said the tenant may try again.
    retry_at: Instant,
    snapshot: RateSnapshot,
}

impl RecentRefusals {
    /// Takes note of the limiter's decision for `tenant`.
    pub fn note(&self, tenant: &str, decision: &Decision, now: Instant) {
        let Decision::Refused {
            kind,
            retry_after: Some(retry_after),
            snapshot,
        } = *decision
        else {
            return;
        };
        let memory = match kind {
            LimitKind::Requests => retry_after.min(LONGEST),
            LimitKind::Concurrency => retry_after.min(CONCURRENCY),
            LimitKind::Tokens => return,
        };
        self.by_tenant.lock().insert(
            tenant.to_string(),
            Remembered {
                until: now + memory,
                kind,
                retry_at: now + retry_after,
                snapshot,
            },
        );
    }

    /// The refusal `tenant` would get now, if one still holds: the same
    /// kind and limits, with what is left of the wait.
    pub fn recall(&self, tenant: &str, now: Instant) -> Option<Decision> {
        let mut by_tenant = self.by_tenant.lock();
        let remembered = *by_tenant.get(tenant)?;
        if now >= remembered.until {
            by_tenant.remove(tenant);
            return None;
        }
        let left = remembered.retry_at.saturating_duration_since(now);
        let mut snapshot = remembered.snapshot;
        if let Some(requests) = snapshot.requests.as_mut() {
            requests.reset = requests.reset.min(left);
        }
        Some(Decision::Refused {
            kind: remembered.kind,
            retry_after: Some(left),
            snapshot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Window;

    fn refused(kind: LimitKind, retry_after: Option<Duration>) -> Decision {
        Decision::Refused {
            kind,
            retry_after,
            snapshot: RateSnapshot {
                requests: Some(Window {
                    limit: 60,
                    remaining: 0,
                    reset: Duration::from_secs(30),
                }),
                tokens: None,
            },
        }
    }

    #[test]
    fn a_requests_refusal_is_repeated_with_what_is_left_of_the_wait() {
        let refusals = RecentRefusals::default();
        let now = Instant::now();
        refusals.note(
            "t",
            &refused(LimitKind::Requests, Some(Duration::from_secs(30))),
            now,
        );
        let later = now + Duration::from_millis(400);
        let Some(Decision::Refused {
            kind,
            retry_after,
            snapshot,
        }) = refusals.recall("t", later)
        else {
            panic!("the refusal holds");
        };
        assert_eq!(kind, LimitKind::Requests);
        assert_eq!(retry_after, Some(Duration::from_millis(29_600)));
        assert_eq!(snapshot.requests.map(|w| w.remaining), Some(0));
        assert!(refusals.recall("other", later).is_none(), "per tenant");
        assert!(
            refusals.recall("t", now + LONGEST).is_none(),
            "asked again after at most {LONGEST:?}"
        );
    }

    #[test]
    fn concurrency_is_remembered_briefly_and_tokens_not_at_all() {
        let refusals = RecentRefusals::default();
        let now = Instant::now();
        refusals.note(
            "c",
            &refused(LimitKind::Concurrency, Some(Duration::from_secs(1))),
            now,
        );
        assert!(
            refusals
                .recall("c", now + Duration::from_millis(5))
                .is_some()
        );
        assert!(refusals.recall("c", now + CONCURRENCY).is_none());
        refusals.note(
            "k",
            &refused(LimitKind::Tokens, Some(Duration::from_secs(5))),
            now,
        );
        refusals.note("n", &refused(LimitKind::Requests, None), now);
        assert!(refusals.recall("k", now).is_none());
        assert!(refusals.recall("n", now).is_none());
        refusals.note("a", &Decision::Admitted(RateSnapshot::default()), now);
        assert!(refusals.recall("a", now).is_none());
    }

    #[test]
    fn a_refusal_that_has_run_out_is_forgotten() {
        let refusals = RecentRefusals::default();
        let now = Instant::now();
        refusals.note(
            "t",
            &refused(LimitKind::Requests, Some(Duration::from_millis(100))),
            now,
        );
        assert!(
            refusals
                .recall("t", now + Duration::from_millis(99))
                .is_some()
        );
        assert!(
            refusals
                .recall("t", now + Duration::from_millis(100))
                .is_none()
        );
        assert!(refusals.by_tenant.lock().is_empty());
    }
}
