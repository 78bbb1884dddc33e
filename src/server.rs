//! Running the gateway: serve HTTP at once, load the engine beside it, and
//! report a load failure as the process's failure.

use std::sync::Arc;
use std::time::Instant;

use crate::app;
use crate::config::Config;
use crate::engine::mistral::MistralEngine;

/// Serves until the server stops (Ctrl-C / SIGTERM drain in-flight requests).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let running = app::bind(&config)?;
    for address in &running.addresses {
        tracing::info!(%address, "listening");
    }
    let handle = running.server.handle();
    let state = running.state.clone();
    let sampled = running
        .metrics
        .sampled_tokens
        .with_label_values(&[&config.model.served_name]);
    let model = config.model.clone();
    let loader = tokio::spawn(async move {
        let started = Instant::now();
        tracing::info!(path = %model.path.display(), format = ?model.format, "loading model");
        match MistralEngine::load(&model, sampled).await {
            Ok(engine) => {
                tracing::info!(model = %model.served_name, seconds = started.elapsed().as_secs_f64(), "model ready");
                state.install_engine(Arc::new(engine));
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "model failed to load; stopping");
                handle.stop(false).await;
                Err(error)
            }
        }
    });
    running.server.await?;
    if loader.is_finished() {
        loader.await??;
    } else {
        loader.abort();
    }
    Ok(())
}
