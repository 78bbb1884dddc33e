//! Running the gateway: serve HTTP at once, load the engine beside it, and
//! report a load failure as the process's failure.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::adapters::seed::{Seeded, seed_all};
use crate::app;
use crate::config::{Config, EngineKind, ModelConfig};
use crate::engine::mistral::MistralEngine;
use crate::engine::shared_base::SharedBaseEngine;
use crate::engine::upstream::UpstreamEngine;
use crate::engine::{Engine, EngineMetrics};

/// Loads the in-process engine the configuration names.
pub async fn load_engine(
    model: &ModelConfig,
    metrics: EngineMetrics,
) -> anyhow::Result<Arc<dyn Engine>> {
    Ok(match model.engine {
        EngineKind::Mistralrs => {
            Arc::new(MistralEngine::load(model, metrics.sampled_tokens).await?)
        }
        EngineKind::SharedBase | EngineKind::Auto => {
            Arc::new(SharedBaseEngine::load(model, metrics).await?)
        }
    })
}

/// Stores the configuration's seed adapters that are not in the store yet.
async fn seed_adapters(state: &app::AppState, config: &Config) -> anyhow::Result<()> {
    let seeds = &config.adapters.seeds;
    if seeds.is_empty() {
        return Ok(());
    }
    let outcomes = seed_all(&state.store, seeds, state.base_shape, state.adapter_limits)
        .await
        .map_err(|e| anyhow::anyhow!("config key `adapters.seed`: {e}"))?;
    for outcome in outcomes {
        match outcome {
            Seeded::Stored(record) => {
                tracing::info!(tenant = %record.tenant, adapter = %record.name, generation = record.generation, "seeded adapter stored")
            }
            Seeded::AlreadyPresent(record) => {
                tracing::debug!(tenant = %record.tenant, adapter = %record.name, generation = record.generation, "seeded adapter already in the store")
            }
        }
    }
    Ok(())
}

/// Serves until the server stops (Ctrl-C / SIGTERM drain in-flight requests).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let running = app::bind(&config)?;
    for address in &running.addresses {
        tracing::info!(%address, "listening");
    }
    seed_adapters(&running.state, &config).await?;
    if let Some(upstream) = &config.upstream {
        let engine = UpstreamEngine::start(
            upstream,
            &config.model,
            config.base_model_dir(),
            &config.adapters.dir,
            running.metrics.clone(),
        )?;
        tracing::info!(model = %config.model.served_name, replicas = upstream.replicas.len(), "serving through upstream replicas");
        running.state.install_engine(Arc::new(engine));
        running.server.await?;
        return Ok(());
    }
    let handle = running.server.handle();
    let state = running.state.clone();
    let engine_metrics = EngineMetrics::exported(&running.metrics, &config.model.served_name);
    let model = config.model.clone();
    // Set before the server is told to stop, so the outcome is known however
    // the shutdown and the loader task interleave.
    let failure: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let failed = failure.clone();
    let loader = tokio::spawn(async move {
        let started = Instant::now();
        tracing::info!(path = %model.path.display(), format = ?model.format, engine = ?model.engine, "loading model");
        match load_engine(&model, engine_metrics).await {
            Ok(engine) => {
                tracing::info!(model = %model.served_name, seconds = started.elapsed().as_secs_f64(), "model ready");
                state.install_engine(engine);
            }
            Err(error) => {
                tracing::error!(%error, "model failed to load; stopping");
                let _ = failed.set(format!("{error:#}"));
                handle.stop(false).await;
            }
        }
    });
    running.server.await?;
    loader.abort();
    match failure.get() {
        Some(error) => anyhow::bail!("the model failed to load: {error}"),
        None => Ok(()),
    }
}
