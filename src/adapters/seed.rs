//! Adapters shipped with the configuration (the demo tenants'): stored once
//! at start-up, through the same validation and store as an upload, when
//! their name has no generation yet. A first run serves them; an admin's
//! later upload or rollback is never overwritten by a restart.

use super::staging::blocking;
use super::validate::{BaseShape, Limits, validate_file};
use super::{AdapterError, AdapterRecord, AdapterStore};
use crate::config::AdapterSeed;

/// What seeding did with one adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum Seeded {
    Stored(AdapterRecord),
    AlreadyPresent(AdapterRecord),
}

/// Stores each seed whose name is new for its tenant.
pub async fn seed_all(
    store: &AdapterStore,
    seeds: &[AdapterSeed],
    base: Option<BaseShape>,
    limits: Limits,
) -> Result<Vec<Seeded>, AdapterError> {
    let mut outcomes = Vec::with_capacity(seeds.len());
    for seed in seeds {
        if let Some(current) = store.current(&seed.tenant, &seed.name) {
            outcomes.push(Seeded::AlreadyPresent(current));
            continue;
        }
        let base = base.ok_or(AdapterError::Unsupported)?;
        outcomes.push(Seeded::Stored(seed_one(store, seed, base, limits).await?));
    }
    Ok(outcomes)
}

async fn seed_one(
    store: &AdapterStore,
    seed: &AdapterSeed,
    base: BaseShape,
    limits: Limits,
) -> Result<AdapterRecord, AdapterError> {
    let dir = seed.dir.clone();
    let (config, weights) = blocking(move || {
        Ok((
            std::fs::read(dir.join("adapter_config.json"))?,
            std::fs::read(dir.join(super::staging::WEIGHTS_FILE))?,
        ))
    })
    .await?;
    let staging = store.stage().await?;
    let mut writer = staging.weights_writer(limits.max_bytes).await?;
    writer.write(&weights).await?;
    let received = writer.finish().await?;
    let (path, checked_config) = (staging.weights_path(), config.clone());
    let validated = tokio::task::spawn_blocking(move || {
        validate_file(&checked_config, &path, &received, &base, &limits)
    })
    .await
    .map_err(|e| AdapterError::Io(std::io::Error::other(e)));
    let validated = match validated.and_then(|checked| checked) {
        Ok(validated) => validated,
        Err(error) => {
            staging.discard().await;
            return Err(error);
        }
    };
    let record =
        AdapterRecord::from_validated(&seed.tenant, seed.name.clone(), validated, seed.shared);
    let (stored, _) = store
        .put(record, staging, config, None, |_| async { Ok(()) })
        .await?;
    Ok(stored)
}
