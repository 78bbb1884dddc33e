//! Unit tests of `ratelimit`.

use std::time::Duration;

use super::*;

fn limits(rpm: Option<u64>, tpm: Option<u64>, concurrent: Option<u64>) -> Limits {
    Limits {
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
        max_concurrent: concurrent,
    }
}

fn admitted(decision: &Decision) -> bool {
    matches!(decision, Decision::Admitted(_))
}

#[test]
fn requests_per_minute_admits_exactly_the_limit_in_a_burst() {
    let limiter = LocalLimiter::new(Duration::from_secs(60));
    let limits = limits(Some(5), None, None);
    let results: Vec<bool> = (0..20)
        .map(|i| admitted(&limiter.decide("t", &limits, 0, &i.to_string())))
        .collect();
    assert_eq!(results.iter().filter(|a| **a).count(), 5);
    match limiter.decide("t", &limits, 0, "x") {
        Decision::Refused {
            kind,
            retry_after: Some(wait),
            ..
        } => {
            assert_eq!(kind, LimitKind::Requests);
            assert!(
                wait > Duration::ZERO && wait <= Duration::from_secs(12),
                "{wait:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Another tenant has its own bucket.
    assert!(admitted(&limiter.decide("other", &limits, 0, "y")));
}

#[test]
fn tokens_are_reserved_then_settled_to_real_usage() {
    let limiter = LocalLimiter::new(Duration::from_secs(60));
    let limits = limits(None, Some(1000), None);
    let Decision::Admitted(snapshot) = limiter.decide("t", &limits, 800, "a") else {
        panic!("admitted")
    };
    assert_eq!(snapshot.tokens.map(|w| w.remaining), Some(200));
    assert!(
        !admitted(&limiter.decide("t", &limits, 300, "b")),
        "the reservation holds the tokens"
    );
    // The request used 100 of its 800: 700 come back.
    limiter.settle_now("t", &limits, "a", 700);
    let Decision::Admitted(snapshot) = limiter.decide("t", &limits, 300, "c") else {
        panic!("admitted after settling")
    };
    let remaining = snapshot.tokens.map(|w| w.remaining).unwrap_or(0);
    assert!((599..=601).contains(&remaining), "{remaining}");
}

#[test]
fn a_request_larger_than_the_minute_can_never_fit() {
    let limiter = LocalLimiter::new(Duration::from_secs(60));
    match limiter.decide("t", &limits(None, Some(100), None), 101, "a") {
        Decision::Refused {
            kind: LimitKind::Tokens,
            retry_after: None,
            ..
        } => {}
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
}

#[test]
fn concurrency_leases_are_released_and_expire() {
    let limiter = LocalLimiter::new(Duration::from_millis(50));
    let limits = limits(None, None, Some(1));
    assert!(admitted(&limiter.decide("t", &limits, 0, "a")));
    assert!(!admitted(&limiter.decide("t", &limits, 0, "b")));
    limiter.settle_now("t", &limits, "a", 0);
    assert!(admitted(&limiter.decide("t", &limits, 0, "c")));
    // "c" is never released, as if its gateway crashed: it expires.
    std::thread::sleep(Duration::from_millis(80));
    assert!(admitted(&limiter.decide("t", &limits, 0, "d")));
}

#[test]
fn openai_durations() {
    assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
    assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
    assert_eq!(openai_duration(Duration::from_secs(2)), "2s");
    assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
}
