//! Which replica serves a request. Requests for one adapter go to the same
//! replica (rendezvous hashing on the adapter's name, so every gateway
//! instance agrees without talking to the others, and removing a replica
//! moves only its own adapters); base-model requests rotate. A replica leaves
//! rotation when its health check fails or after consecutive request
//! failures (ejection, for a fixed time), and comes back by itself.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::config::ReplicaConfig;

pub struct Replica {
    pub name: String,
    pub url: String,
    /// Last active health check passed (optimistic until the first one).
    healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// Adapters registered there with `/v1/load_lora_adapter`; forgotten
    /// whenever the replica drops out, since it may come back restarted.
    pub registered: Mutex<HashSet<String>>,
}

/// What a failure did to the replica's standing.
#[derive(Debug, PartialEq, Eq)]
pub enum Standing {
    InRotation,
    JustEjected,
}

impl Replica {
    fn new(config: &ReplicaConfig) -> Replica {
        Replica {
            name: config.name.clone(),
            url: config.url.clone(),
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            registered: Mutex::new(HashSet::new()),
        }
    }

    pub fn in_rotation(&self, now: Instant) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.ejected_until.lock().is_none_or(|t| now >= t)
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Counts a failed request; the `eject_after`-th in a row ejects.
    pub fn record_failure(&self, eject_after: u32, eject_for: Duration) -> Standing {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        // Exactly one of several concurrent failures ejects.
        if failures != eject_after {
            return Standing::InRotation;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        *self.ejected_until.lock() = Some(Instant::now() + eject_for);
        self.registered.lock().clear();
        Standing::JustEjected
    }

    /// Applies a health check result; returns whether the state changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed && !healthy {
            self.registered.lock().clear();
        }
        changed
    }
}

pub struct ReplicaSet {
    replicas: Vec<Arc<Replica>>,
    next: AtomicUsize,
}

/// The rendezvous weight of `replica` for `key`: stable across processes
/// and versions (SHA-256, not the std hasher), so gateways agree.
fn weight(key: &str, replica: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update([0])
        .chain_update(replica.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

impl ReplicaSet {
    pub fn new(configs: &[ReplicaConfig]) -> ReplicaSet {
        ReplicaSet {
            replicas: configs.iter().map(|c| Arc::new(Replica::new(c))).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn all(&self) -> &[Arc<Replica>] {
        &self.replicas
    }

    /// The replicas to try, in order: those in rotation first, then (as a
    /// last resort, since health state may be stale) the rest. With an
    /// affinity key the order is the key's rendezvous order; without one it
    /// starts at the next replica in turn.
    pub fn candidates(&self, affinity: Option<&str>) -> Vec<Arc<Replica>> {
        let mut ordered: Vec<Arc<Replica>> = match affinity {
            Some(key) => {
                let mut weighted: Vec<(u64, &Arc<Replica>)> = self
                    .replicas
                    .iter()
                    .map(|replica| (weight(key, &replica.name), replica))
                    .collect();
                weighted.sort_by_key(|(weight, _)| std::cmp::Reverse(*weight));
                weighted.into_iter().map(|(_, r)| r.clone()).collect()
            }
            None => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let count = self.replicas.len();
                (0..count)
                    .map(|i| self.replicas[(start + i) % count].clone())
                    .collect()
            }
        };
        let now = Instant::now();
        // Stable: keeps the preference order inside each group.
        ordered.sort_by_key(|replica| !replica.in_rotation(now));
        ordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> ReplicaSet {
        let configs: Vec<ReplicaConfig> = names
            .iter()
            .map(|name| ReplicaConfig {
                name: name.to_string(),
                url: format!("http://{name}"),
            })
            .collect();
        ReplicaSet::new(&configs)
    }

    fn names(replicas: &[Arc<Replica>]) -> Vec<String> {
        replicas.iter().map(|r| r.name.clone()).collect()
    }

    #[test]
    fn one_key_always_prefers_one_replica_and_keys_spread() {
        let replicas = set(&["a", "b", "c"]);
        let first = names(&replicas.candidates(Some("acme/bot")));
        for _ in 0..50 {
            assert_eq!(names(&replicas.candidates(Some("acme/bot"))), first);
        }
        let mut preferred = HashSet::new();
        for i in 0..60 {
            preferred.insert(
                replicas.candidates(Some(&format!("t/a{i}")))[0]
                    .name
                    .clone(),
            );
        }
        assert_eq!(preferred.len(), 3, "60 adapters should use all 3 replicas");
    }

    #[test]
    fn removing_a_replica_moves_only_its_keys() {
        let three = set(&["a", "b", "c"]);
        let two = set(&["a", "b"]);
        for i in 0..100 {
            let key = format!("t/a{i}");
            let before = three.candidates(Some(&key))[0].name.clone();
            let after = two.candidates(Some(&key))[0].name.clone();
            if before != "c" {
                assert_eq!(before, after, "{key} moved although its replica stayed");
            }
        }
    }

    #[test]
    fn ejection_moves_traffic_to_the_next_and_expires() {
        let replicas = set(&["a", "b", "c"]);
        let order = names(&replicas.candidates(Some("k")));
        let first = replicas.candidates(Some("k"))[0].clone();
        assert_eq!(
            first.record_failure(2, Duration::from_millis(50)),
            Standing::InRotation
        );
        assert_eq!(names(&replicas.candidates(Some("k"))), order);
        assert_eq!(
            first.record_failure(2, Duration::from_millis(50)),
            Standing::JustEjected
        );
        let during = names(&replicas.candidates(Some("k")));
        assert_eq!(during[0], order[1]);
        assert_eq!(during[2], order[0], "an ejected replica is the last resort");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(names(&replicas.candidates(Some("k"))), order);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let replicas = set(&["a"]);
        let only = &replicas.all()[0];
        only.record_failure(2, Duration::from_secs(60));
        only.record_success();
        assert_eq!(
            only.record_failure(2, Duration::from_secs(60)),
            Standing::InRotation
        );
    }

    #[test]
    fn failed_health_checks_take_a_replica_out_and_forget_its_adapters() {
        let replicas = set(&["a", "b"]);
        let a = replicas.all()[0].clone();
        a.registered.lock().insert("x".into());
        assert!(a.set_healthy(false));
        assert!(a.registered.lock().is_empty());
        for _ in 0..4 {
            assert_eq!(replicas.candidates(None)[0].name, "b");
        }
        assert!(a.set_healthy(true));
        let firsts: HashSet<String> = (0..4)
            .map(|_| replicas.candidates(None)[0].name.clone())
            .collect();
        assert_eq!(firsts.len(), 2, "base requests rotate over both");
    }
}
