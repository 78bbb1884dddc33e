//! Unit tests of `queues`.

use super::*;

fn claim(tenant: &str, weight: u32, priority: u8) -> Claim {
    Claim {
        tenant: tenant.into(),
        weight,
        priority,
    }
}

/// Fills the queue behind one running request with `count` waiters of
/// `tenant`, ids from `first`.
fn enqueue(queues: &mut Queues, who: &Claim, first: WaiterId, count: u64) {
    for id in first..first + count {
        assert_eq!(queues.arrive(who, id), Arrival::Queued, "waiter {id}");
    }
}

fn owner(id: WaiterId) -> &'static str {
    if id < 1_000_000 { "a" } else { "b" }
}

#[test]
fn contended_slots_are_shared_in_proportion_to_weight() {
    let (a, b) = (claim("a", 1, 0), claim("b", 3, 0));
    let mut queues = Queues::new(Policy::Fair, 1, 10_000);
    assert_eq!(queues.arrive(&a, 0), Arrival::Admitted);
    enqueue(&mut queues, &a, 1, 2000);
    enqueue(&mut queues, &b, 1_000_000, 2000);
    let mut served = HashMap::new();
    for _ in 0..400 {
        let next = queues.release().expect("someone waits");
        *served.entry(owner(next)).or_insert(0) += 1;
    }
    // The first request of a was admitted before the queue formed.
    assert!((99..=100).contains(&served["a"]), "{served:?}");
    assert!((300..=301).contains(&served["b"]), "{served:?}");
}

#[test]
fn a_light_tenant_is_never_starved_beside_a_heavy_one() {
    let (heavy, light) = (claim("a", 100, 0), claim("b", 1, 0));
    let mut queues = Queues::new(Policy::Fair, 1, 100_000);
    assert_eq!(queues.arrive(&heavy, 0), Arrival::Admitted);
    enqueue(&mut queues, &heavy, 1, 5000);
    enqueue(&mut queues, &light, 1_000_000, 50);
    let mut since_light = 0;
    let mut light_served = 0;
    for _ in 0..1010 {
        let next = queues.release().expect("someone waits");
        if owner(next) == "b" {
            light_served += 1;
            since_light = 0;
        } else {
            since_light += 1;
            assert!(
                since_light <= 101,
                "the light tenant waits at most one round"
            );
        }
    }
    assert_eq!(light_served, 10);
}

#[test]
fn a_higher_priority_class_is_served_first() {
    let mut queues = Queues::new(Policy::Fair, 1, 100);
    assert_eq!(queues.arrive(&claim("a", 1, 0), 0), Arrival::Admitted);
    enqueue(&mut queues, &claim("a", 1, 0), 1, 5);
    enqueue(&mut queues, &claim("vip", 1, 1), 1_000_000, 2);
    assert_eq!(queues.release(), Some(1_000_000));
    assert_eq!(queues.release(), Some(1_000_001));
    assert_eq!(queues.release(), Some(1));
}

#[test]
fn a_burst_cannot_keep_a_newcomer_out_of_a_full_queue() {
    let (a, b) = (claim("a", 1, 0), claim("b", 1, 0));
    let mut queues = Queues::new(Policy::Fair, 1, 4);
    assert_eq!(queues.arrive(&a, 0), Arrival::Admitted);
    enqueue(&mut queues, &a, 1, 4);
    assert_eq!(
        queues.arrive(&a, 5),
        Arrival::Refused,
        "a is over its share"
    );
    // The newcomer takes the place of a's newest request, twice.
    assert_eq!(queues.arrive(&b, 100), Arrival::QueuedDisplacing(4));
    assert_eq!(queues.arrive(&b, 101), Arrival::QueuedDisplacing(3));
    // Now each holds its share (2 of 4): the next one of b is refused.
    assert_eq!(queues.arrive(&b, 102), Arrival::Refused);
    assert_eq!(queues.waiting_for("a"), 2);
    assert_eq!(queues.waiting_for("b"), 2);
}

#[test]
fn fifo_keeps_arrival_order_and_refuses_when_full() {
    let mut queues = Queues::new(Policy::Fifo, 1, 3);
    assert_eq!(queues.arrive(&claim("a", 1, 0), 0), Arrival::Admitted);
    assert_eq!(queues.arrive(&claim("a", 1, 0), 1), Arrival::Queued);
    assert_eq!(queues.arrive(&claim("b", 9, 1), 2), Arrival::Queued);
    assert_eq!(queues.arrive(&claim("a", 1, 0), 3), Arrival::Queued);
    assert_eq!(queues.arrive(&claim("b", 9, 1), 4), Arrival::Refused);
    assert_eq!(queues.release(), Some(1));
    assert_eq!(queues.release(), Some(2));
    assert_eq!(queues.release(), Some(3));
    assert_eq!(queues.release(), None);
    assert_eq!(queues.in_flight(), 0);
}

#[test]
fn a_cancelled_waiter_leaves_and_frees_its_place() {
    let mut queues = Queues::new(Policy::Fair, 1, 1);
    assert_eq!(queues.arrive(&claim("a", 1, 0), 0), Arrival::Admitted);
    assert_eq!(queues.arrive(&claim("a", 1, 0), 1), Arrival::Queued);
    assert!(queues.cancel("a", 1));
    assert!(!queues.cancel("a", 1), "only once");
    assert_eq!(queues.waiting(), 0);
    assert_eq!(queues.arrive(&claim("b", 1, 0), 2), Arrival::Queued);
    assert_eq!(queues.release(), Some(2));
}

#[test]
fn an_idle_tenant_cannot_bank_credit() {
    let (a, b) = (claim("a", 1, 0), claim("b", 1, 0));
    let mut queues = Queues::new(Policy::Fair, 1, 10_000);
    assert_eq!(queues.arrive(&a, 0), Arrival::Admitted);
    enqueue(&mut queues, &a, 1, 1000);
    for _ in 0..500 {
        queues.release();
    }
    // b arrives late with a burst: it alternates with a, it does not get
    // 500 requests in a row for having been away.
    enqueue(&mut queues, &b, 1_000_000, 100);
    let next: Vec<&str> = (0..10).map(|_| owner(queues.release().unwrap())).collect();
    let from_b = next.iter().filter(|o| **o == "b").count();
    assert!((4..=6).contains(&from_b), "{next:?}");
}
