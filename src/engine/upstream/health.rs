//! Active health checks: every interval, each replica's health path is
//! fetched; a replica answering anything but 2xx in time leaves rotation
//! until it answers again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderValue};

use super::replicas::{Replica, ReplicaSet};
use crate::metrics::Metrics;

pub(super) async fn run(
    client: reqwest::Client,
    replicas: Arc<ReplicaSet>,
    path: String,
    interval: Duration,
    api_key: Option<HeaderValue>,
    metrics: Arc<Metrics>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let probes = replicas
            .all()
            .iter()
            .map(|replica| probe(&client, replica, &path, interval, api_key.as_ref()));
        let results = futures_util::future::join_all(probes).await;
        let now = Instant::now();
        for (replica, healthy) in replicas.all().iter().zip(results) {
            if replica.set_healthy(healthy) {
                if healthy {
                    tracing::info!(replica = %replica.name, "upstream replica passes its health check again");
                } else {
                    tracing::warn!(replica = %replica.name, "upstream replica failed its health check");
                    // Out of rotation, as after failed requests: one count
                    // for operators whichever noticed first.
                    metrics
                        .upstream_ejections
                        .with_label_values(&[&replica.name])
                        .inc();
                }
            }
            metrics
                .upstream_up
                .with_label_values(&[&replica.name])
                .set(i64::from(replica.in_rotation(now)));
        }
    }
}

async fn probe(
    client: &reqwest::Client,
    replica: &Replica,
    path: &str,
    timeout: Duration,
    api_key: Option<&HeaderValue>,
) -> bool {
    let mut request = client
        .get(format!("{}{path}", replica.url))
        .timeout(timeout);
    if let Some(key) = api_key {
        request = request.header(AUTHORIZATION, key.clone());
    }
    matches!(request.send().await, Ok(response) if response.status().is_success())
}
