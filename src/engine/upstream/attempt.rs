//! One request to one replica, and what its answer means: go on with it,
//! try the next replica (nothing ran here), or report a failure.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::replicas::Replica;
use super::wire;
use super::{UpstreamEngine, bad_gateway, reported};
use crate::engine::EngineError;

/// Largest error or registration body read from a replica.
const SMALL_BODY_CAP: usize = 64 * 1024;
/// Longest `Retry-After` passed on to clients.
const MAX_RETRY_AFTER_SECS: u64 = 60;

/// Why a request could not be handed to a replica.
pub enum SendError {
    /// Nothing reached the replica: safe to try the next one.
    Refused(String),
    Timeout,
    Broken(String),
    /// The replica turned the adapter down (4xx): the adapter's fault.
    Rejected(String),
}

pub enum Attempt {
    Answered(reqwest::Response),
    /// Nothing ran on this replica; the error is what to report if no
    /// other replica takes the request (`None`: it could not be reached).
    NextReplica(Option<EngineError>),
    Failed(EngineError),
}

/// Reads at most `cap` bytes of a body, giving up after `idle` of silence.
async fn read_capped(response: reqwest::Response, cap: usize, idle: Duration) -> Bytes {
    let mut chunks = response.bytes_stream();
    let mut body = Vec::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(idle, chunks.next()).await {
        let room = cap.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= cap {
            break;
        }
    }
    Bytes::from(body)
}

impl UpstreamEngine {
    pub(super) async fn post(
        &self,
        replica: &Replica,
        path: &str,
        body: Bytes,
    ) -> Result<reqwest::Response, SendError> {
        let mut request = self
            .client
            .post(format!("{}{path}", replica.url))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some(key) = &self.api_key {
            request = request.header(AUTHORIZATION, key.clone());
        }
        match tokio::time::timeout(self.request_timeout, request.send()).await {
            Err(_) => Err(SendError::Timeout),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.is_connect() => Err(SendError::Refused(error.to_string())),
            Ok(Err(error)) if error.is_timeout() => Err(SendError::Timeout),
            Ok(Err(error)) => Err(SendError::Broken(error.to_string())),
        }
    }

    async fn small_body(&self, response: reqwest::Response) -> Bytes {
        read_capped(response, SMALL_BODY_CAP, self.idle_timeout).await
    }

    /// Makes sure `replica` knows adapter `id` before a request names it.
    pub(super) async fn register(
        &self,
        replica: &Replica,
        id: &str,
        path: &Path,
    ) -> Result<(), SendError> {
        if replica.registered.lock().contains(id) {
            return Ok(());
        }
        let body = serde_json::json!({"lora_name": id, "lora_path": path});
        let response = self
            .post(
                replica,
                "/v1/load_lora_adapter",
                Bytes::from(body.to_string()),
            )
            .await?;
        let status = response.status();
        let text = String::from_utf8_lossy(&self.small_body(response).await).into_owned();
        // vLLM answers 400 "already been loaded" to a second registration.
        if status.is_success() || (status == StatusCode::BAD_REQUEST && text.contains("already")) {
            replica.registered.lock().insert(id.to_string());
            tracing::info!(replica = %replica.name, adapter = %id, "adapter registered upstream");
            return Ok(());
        }
        let detail = wire::error_message(text.as_bytes())
            .unwrap_or(text)
            .chars()
            .take(300)
            .collect::<String>();
        if status.is_client_error() {
            Err(SendError::Rejected(reported(
                &replica.name,
                "The upstream engine refused to load the adapter",
                format_args!("HTTP {status}: {detail}"),
            )))
        } else {
            Err(SendError::Broken(format!(
                "registering adapter {id} answered HTTP {status}: {detail}"
            )))
        }
    }

    /// Sends the request to `replica` (registering the adapter first when
    /// needed) and classifies the outcome.
    pub(super) async fn attempt(
        &self,
        replica: &Replica,
        adapter: Option<(&str, &Path)>,
        body: &Bytes,
    ) -> Attempt {
        // A replica restarted between two health checks has forgotten its
        // adapters: on a 404 for one, register it again and resend, once.
        for resend in [false, true] {
            let sent = match adapter {
                Some((id, path)) => match self.register(replica, id, path).await {
                    Ok(()) => {
                        self.post(replica, "/v1/chat/completions", body.clone())
                            .await
                    }
                    Err(error) => Err(error),
                },
                None => {
                    self.post(replica, "/v1/chat/completions", body.clone())
                        .await
                }
            };
            let response = match sent {
                Ok(response) => response,
                Err(error) => return self.unsent(replica, error),
            };
            let status = response.status();
            if status.is_success() {
                self.health.succeeded(replica, "ok");
                return Attempt::Answered(response);
            }
            if status == StatusCode::NOT_FOUND
                && !resend
                && let Some((id, _)) = adapter
            {
                replica.registered.lock().remove(id);
                continue;
            }
            return self.refused(replica, response).await;
        }
        Attempt::Failed(EngineError::BadGateway(
            "The upstream engine does not know the adapter even after registering it.".into(),
        ))
    }

    fn unsent(&self, replica: &Replica, error: SendError) -> Attempt {
        match error {
            SendError::Refused(cause) => {
                tracing::warn!(replica = %replica.name, %cause, "upstream replica refused the connection; trying the next");
                self.health.failed(replica, "refused");
                Attempt::NextReplica(None)
            }
            SendError::Timeout => {
                self.health.failed(replica, "timeout");
                Attempt::Failed(EngineError::GatewayTimeout(format!(
                    "The upstream engine did not answer within {} ms.",
                    self.request_timeout.as_millis()
                )))
            }
            SendError::Broken(cause) => {
                self.health.failed(replica, "error");
                Attempt::Failed(bad_gateway(
                    &replica.name,
                    "The connection to the upstream engine failed",
                    cause,
                ))
            }
            SendError::Rejected(message) => {
                self.health.succeeded(replica, "rejected");
                Attempt::Failed(EngineError::BadGateway(message))
            }
        }
    }

    /// Maps a replica's refusal onto what the client sees. A busy replica
    /// (429/503) ran nothing, so the next one may take the request; it is
    /// not held against the replica, or load would cascade onto the rest.
    async fn refused(&self, replica: &Replica, response: reqwest::Response) -> Attempt {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, MAX_RETRY_AFTER_SECS);
        let body = self.small_body(response).await;
        let message = wire::error_message(&body).map(|m| m.chars().take(500).collect::<String>());
        match status.as_u16() {
            // The replica judged the request itself; its reason is the client's to read.
            400 | 413 | 422 => {
                let detail = message.map(|m| format!(": {m}")).unwrap_or_default();
                self.health.succeeded(replica, "rejected");
                Attempt::Failed(EngineError::Rejected(format!(
                    "The upstream engine refused the request{detail}"
                )))
            }
            429 | 503 => {
                self.health.succeeded(replica, "rejected");
                Attempt::NextReplica(Some(EngineError::Overloaded {
                    retry_after_secs: retry_after,
                }))
            }
            code => {
                self.health.failed(replica, "error");
                let detail = message
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
                Attempt::Failed(bad_gateway(
                    &replica.name,
                    &format!("The upstream engine answered HTTP {code}"),
                    detail,
                ))
            }
        }
    }
}
