//! Fair admission over real HTTP: a tenant within its limits that floods the
//! engine does not crowd out a tenant sending one request at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::common::{TestServer, authed, chat_body, client, new_key};

struct Tenancy {
    toml: String,
    flood: String,
    single: String,
}

fn tenancy() -> Tenancy {
    let (flood, flood_hash) = new_key();
    let (single, single_hash) = new_key();
    let (_, admin_hash) = new_key();
    Tenancy {
        toml: format!(
            r#"
[auth]
enabled = true
admin_api_keys = ["{admin_hash}"]
[[tenants]]
id = "flood"
api_keys = ["{flood_hash}"]
[[tenants]]
id = "single"
api_keys = ["{single_hash}"]
"#
        ),
        flood,
        single,
    }
}

/// Tenant A keeps 32 requests in flight against 2 slots and 8 queue places
/// while tenant B sends 12 requests one after another. Returns B's statuses.
async fn flood_and_single(policy: &str) -> Vec<u16> {
    let tenancy = tenancy();
    let server = Arc::new(TestServer::with_toml(
        &tenancy.toml,
        &[
            ("admission.max_in_flight", "2"),
            ("admission.max_queued", "8"),
            ("admission.queue_timeout_ms", "60000"),
            ("admission.policy", policy),
        ],
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..32)
        .map(|_| {
            let (server, stop, in_flight, key) = (
                server.clone(),
                stop.clone(),
                in_flight.clone(),
                tenancy.flood.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let _ = authed(client().post(server.url("/v1/chat/completions")), &key)
                        .json(&chat_body("Keep going", 400))
                        .send()
                        .await
                        .map(|r| r.bytes());
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while in_flight.load(Ordering::Relaxed) < 32 {
        tokio::task::yield_now().await;
    }
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let response = authed(
            client().post(server.url("/v1/chat/completions")),
            &tenancy.single,
        )
        .json(&chat_body("hi", 4))
        .send()
        .await
        .unwrap();
        statuses.push(response.status().as_u16());
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.abort();
    }
    statuses
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_tenant_cannot_crowd_out_one_sending_one_at_a_time() {
    let statuses = flood_and_single("fair").await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request of the light tenant is admitted: {statuses:?}"
    );
}

/// The same load first come, first served: the queue is full of the flood,
/// so the light tenant is turned away. (Shows the test above can fail.)
#[tokio::test(flavor = "multi_thread")]
async fn first_come_first_served_lets_the_flood_fill_the_queue() {
    let statuses = flood_and_single("fifo").await;
    assert!(
        statuses.contains(&503),
        "under FIFO the full queue refuses the light tenant: {statuses:?}"
    );
}
