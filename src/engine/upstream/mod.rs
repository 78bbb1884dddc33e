//! The model served by remote OpenAI-compatible replicas (vLLM, mistral.rs
//! servers, another loragate...). Tenancy, limits, metering and metrics stay
//! in the gateway; the replicas only generate. A request goes to the first
//! replica of its candidate list that accepts it (a refused connection or a
//! busy 429/503 passes it on); once a replica has taken the request,
//! failures are reported, never retried elsewhere, since the generation may
//! already be running there.

mod attempt;
mod health;
mod relay;
pub mod replicas;
mod sse;
mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use reqwest::header::HeaderValue;
use tokio::task::JoinHandle;

use crate::config::{ModelConfig, UpstreamConfig};
use crate::engine::{
    AdapterFiles, Engine, EngineError, InferenceRequest, InferenceStream, ModelCard, PromptMessage,
    PromptTokens, ToolSupport,
};
use crate::metrics::Metrics;
use attempt::{Attempt, SendError};
use relay::{RelayContext, TokenCounter};
use replicas::{Replica, ReplicaSet, Standing};

/// Largest non-streamed answer or error body read from a replica.
const BODY_CAP: usize = 16 * 1024 * 1024;

/// A replica failure as a client may read it: the gateway's own `summary`
/// and a reference. The replica's words and transport errors (`detail`) can
/// carry its file paths, host names and address, so they go only to the
/// log, under that reference.
fn reported(replica: &str, summary: &str, detail: impl std::fmt::Display) -> String {
    let reference = uuid::Uuid::new_v4().simple().to_string();
    tracing::warn!(%reference, %replica, %detail, "{summary}");
    format!("{summary} (reference {reference}).")
}

/// A 502 whose message is safe to show (see [`reported`]).
fn bad_gateway(replica: &str, summary: &str, detail: impl std::fmt::Display) -> EngineError {
    EngineError::BadGateway(reported(replica, summary, detail))
}

/// Request outcomes feed replica standing and metrics in one place.
pub struct ReplicaHealth {
    metrics: Arc<Metrics>,
    eject_after: u32,
    eject_for: Duration,
}

impl ReplicaHealth {
    fn succeeded(&self, replica: &Replica, outcome: &str) {
        replica.record_success();
        self.count(replica, outcome);
    }

    fn failed(&self, replica: &Replica, outcome: &str) {
        self.count(replica, outcome);
        if replica.record_failure(self.eject_after, self.eject_for) == Standing::JustEjected {
            tracing::warn!(replica = %replica.name, seconds = self.eject_for.as_secs_f64(), "upstream replica ejected after consecutive failures");
            self.metrics
                .upstream_ejections
                .with_label_values(&[&replica.name])
                .inc();
            self.metrics
                .upstream_up
                .with_label_values(&[&replica.name])
                .set(0);
        }
    }

    fn count(&self, replica: &Replica, outcome: &str) {
        self.metrics
            .upstream_requests
            .with_label_values(&[&replica.name, outcome])
            .inc();
    }
}

struct AdapterModel {
    card: ModelCard,
    /// Loads not yet matched by an unload: residency may load an id again
    /// before the unload of its previous stay has run.
    loads: usize,
    /// The adapter folder as the replicas see it.
    path_on_replicas: PathBuf,
}

pub struct UpstreamEngine {
    client: reqwest::Client,
    replicas: Arc<ReplicaSet>,
    health: Arc<ReplicaHealth>,
    card: ModelCard,
    upstream_model: String,
    adapters: RwLock<HashMap<String, AdapterModel>>,
    /// (the gateway's adapter store, the same folder as the replicas see it)
    registration: Option<(PathBuf, PathBuf)>,
    counter: Arc<TokenCounter>,
    api_key: Option<HeaderValue>,
    request_timeout: Duration,
    idle_timeout: Duration,
    health_checks: JoinHandle<()>,
}

impl Drop for UpstreamEngine {
    fn drop(&mut self) {
        self.health_checks.abort();
    }
}

/// Requests for every generation of one adapter share a replica, so a
/// replaced adapter stays where its traffic already is.
fn affinity_key(engine_id: &str) -> &str {
    engine_id.rsplit_once('@').map_or(engine_id, |(key, _)| key)
}

impl UpstreamEngine {
    /// Builds the client and starts the health checks; needs a Tokio runtime.
    pub fn start(
        upstream: &UpstreamConfig,
        model: &ModelConfig,
        model_dir: Option<&Path>,
        adapter_store: &Path,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<UpstreamEngine> {
        let client = reqwest::Client::builder()
            .connect_timeout(upstream.connect_timeout)
            .pool_max_idle_per_host(upstream.max_idle_connections)
            // Under the replicas' own keep-alive (uvicorn's is 5 s), so a
            // request is never sent on a connection the replica is closing.
            .pool_idle_timeout(upstream.keepalive_idle)
            .tcp_nodelay(true)
            .build()?;
        let replicas = Arc::new(ReplicaSet::new(&upstream.replicas));
        let names: Vec<String> = upstream.replicas.iter().map(|r| r.name.clone()).collect();
        metrics.prime_replicas(&names);
        let api_key = upstream
            .api_key
            .as_ref()
            .map(|key| {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}"))?;
                value.set_sensitive(true);
                Ok::<_, anyhow::Error>(value)
            })
            .transpose()
            .map_err(|e| anyhow::anyhow!("config key `upstream.api_key_env`: {e}"))?;
        let health_checks = tokio::spawn(health::run(
            client.clone(),
            replicas.clone(),
            upstream.health_path.clone(),
            upstream.health_interval,
            api_key.clone(),
            metrics.clone(),
        ));
        let created = crate::clock::unix_now_secs();
        let counter = Arc::new(TokenCounter::load(model_dir)?);
        Ok(UpstreamEngine {
            client,
            replicas,
            health: Arc::new(ReplicaHealth {
                metrics,
                eject_after: upstream.eject_after_failures,
                eject_for: upstream.eject_for,
            }),
            card: ModelCard {
                id: model.served_name.clone(),
                created,
                owned_by: model.owned_by.clone(),
                context_length: model.context_length.unwrap_or(usize::MAX),
                vocab_size: upstream.vocab_size.unwrap_or(usize::MAX),
                max_token_bytes: counter.max_token_bytes(),
                logprobs: false,
                tools: ToolSupport::PassThrough,
            },
            upstream_model: upstream.model.clone(),
            adapters: RwLock::new(HashMap::new()),
            registration: upstream
                .adapter_registration
                .clone()
                .map(|on_replicas| (adapter_store.to_path_buf(), on_replicas)),
            counter,
            api_key,
            request_timeout: upstream.request_timeout,
            idle_timeout: upstream.idle_timeout,
            health_checks,
        })
    }

    fn known(&self, model: &str) -> Result<(), EngineError> {
        if model == self.card.id || self.adapters.read().contains_key(model) {
            Ok(())
        } else {
            Err(EngineError::UnknownModel(model.to_string()))
        }
    }
}

#[async_trait]
impl Engine for UpstreamEngine {
    fn models(&self) -> Vec<ModelCard> {
        let mut cards = vec![self.card.clone()];
        cards.extend(self.adapters.read().values().map(|a| a.card.clone()));
        cards
    }

    // Without cloning every adapter's card on each request.
    fn model(&self, id: &str) -> Option<ModelCard> {
        if id == self.card.id {
            return Some(self.card.clone());
        }
        self.adapters.read().get(id).map(|a| a.card.clone())
    }

    async fn count_prompt_tokens(
        &self,
        model: &str,
        messages: &[PromptMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<PromptTokens, EngineError> {
        self.known(model)?;
        let (counter, messages) = (self.counter.clone(), messages.to_vec());
        let tools = tools.map(<[serde_json::Value]>::to_vec).unwrap_or_default();
        crate::prompt::run_blocking(move || {
            PromptTokens::counted(counter.prompt(&messages, &tools))
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))
    }

    async fn generate(&self, request: InferenceRequest) -> Result<InferenceStream, EngineError> {
        let (upstream_model, adapter) = if request.model == self.card.id {
            (self.upstream_model.clone(), None)
        } else {
            let adapters = self.adapters.read();
            let adapter = adapters
                .get(&request.model)
                .ok_or_else(|| EngineError::UnknownModel(request.model.clone()))?;
            (
                request.model.clone(),
                Some((request.model.clone(), adapter.path_on_replicas.clone())),
            )
        };
        let body = Bytes::from(wire::request_body(&request, &upstream_model));
        let affinity = adapter.as_ref().map(|(id, _)| affinity_key(id));
        let adapter = adapter
            .as_ref()
            .map(|(id, path)| (id.as_str(), path.as_path()));
        let mut tried = 0;
        let mut passed_on = None;
        for replica in self.replicas.candidates(affinity) {
            tried += 1;
            let response = match self.attempt(&replica, adapter, &body).await {
                Attempt::Answered(response) => response,
                Attempt::NextReplica(error) => {
                    passed_on = error.or(passed_on);
                    continue;
                }
                Attempt::Failed(error) => return Err(error),
            };
            let progress = Arc::new(AtomicU64::new(0));
            let context = RelayContext {
                replica,
                health: self.health.clone(),
                counter: self.counter.clone(),
                progress: progress.clone(),
                prompt_tokens: request.prompt_tokens,
                idle_timeout: self.idle_timeout,
                body_cap: BODY_CAP,
                choices: request.choices.max(1),
            };
            let events = if request.stream {
                relay::stream(response, context)
            } else {
                relay::whole(response, context)
            };
            return Ok(InferenceStream { events, progress });
        }
        Err(passed_on.unwrap_or_else(|| {
            EngineError::BadGateway(format!(
                "No upstream replica could be reached ({tried} tried)."
            ))
        }))
    }

    async fn load_adapter(&self, id: &str, adapter: &AdapterFiles) -> Result<u64, EngineError> {
        if let Some(loaded) = self.adapters.write().get_mut(id) {
            loaded.loads += 1;
            return Ok(0);
        }
        let path_on_replicas = match &self.registration {
            None => {
                return Err(EngineError::Rejected(
                    "Adapters need the upstream replicas to load them: set upstream.register_adapters = true.".into(),
                ));
            }
            Some((store, on_replicas)) => {
                let folder = adapter.weights.parent().unwrap_or(&adapter.weights);
                let relative = folder.strip_prefix(store).map_err(|_| {
                    EngineError::Internal(format!("{} is outside the store", folder.display()))
                })?;
                on_replicas.join(relative)
            }
        };
        // Registered now on the replica its traffic will use (or the next
        // that answers), so the first request does not pay for it; other
        // replicas register on demand.
        let mut failure = None;
        for replica in self.replicas.candidates(Some(affinity_key(id))) {
            match self.register(&replica, id, &path_on_replicas).await {
                Ok(()) => {
                    failure = None;
                    break;
                }
                Err(SendError::Refused(cause)) => failure = Some(EngineError::Unavailable(cause)),
                Err(SendError::Rejected(message)) => return Err(EngineError::Rejected(message)),
                Err(SendError::Broken(cause)) => return Err(EngineError::Unavailable(cause)),
                Err(SendError::Timeout) => {
                    return Err(EngineError::Unavailable(
                        "adapter registration timed out".into(),
                    ));
                }
            }
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        let card = ModelCard {
            id: id.to_string(),
            ..self.card.clone()
        };
        self.adapters.write().insert(
            id.to_string(),
            AdapterModel {
                card,
                loads: 1,
                path_on_replicas,
            },
        );
        // The weights live on the replicas; this process holds nothing.
        Ok(0)
    }

    async fn unload_adapter(&self, id: &str) -> Result<(), EngineError> {
        {
            let mut adapters = self.adapters.write();
            let loaded = adapters
                .get_mut(id)
                .ok_or_else(|| EngineError::UnknownModel(id.to_string()))?;
            loaded.loads -= 1;
            if loaded.loads > 0 {
                return Ok(());
            }
            adapters.remove(id);
        }
        // Every replica, not only those known to hold it: one that was
        // ejected meanwhile (and so forgotten here) may still hold it.
        let body = Bytes::from(serde_json::json!({ "lora_name": id }).to_string());
        for replica in self.replicas.all() {
            let was_registered = replica.registered.lock().remove(id);
            match self
                .post(replica, "/v1/unload_lora_adapter", body.clone())
                .await
            {
                Ok(response) if response.status().is_success() || response.status() == 404 => {}
                Ok(response) if was_registered => {
                    tracing::warn!(replica = %replica.name, adapter = %id, status = %response.status(), "upstream kept an adapter it was asked to unload")
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::debug!(replica = %replica.name, adapter = %id, "could not reach a replica to unload an adapter")
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::affinity_key;

    #[test]
    fn generations_of_one_adapter_share_an_affinity_key() {
        assert_eq!(affinity_key("adapter:acme/bot@3"), "adapter:acme/bot");
        assert_eq!(
            affinity_key("adapter:acme/bot@4"),
            affinity_key("adapter:acme/bot@3")
        );
        assert_eq!(affinity_key("plain"), "plain");
    }
}
