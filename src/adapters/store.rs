//! The adapter store: `<root>/<tenant>/<name>/<generation>/` holding
//! `adapter_config.json`, `adapter_model.safetensors` and `record.json`, plus
//! `<root>/<tenant>/<name>/CURRENT` naming the served generation and
//! `<root>/<tenant>/.generations/<name>`, the highest generation ever handed
//! out for that name (generations are never reused, so an `ETag` names one
//! upload for good).
//!
//! Every write goes to `<root>/.staging/`, is fsynced, and is moved into
//! place with one rename; `CURRENT` and the high-water mark are replaced the
//! same way. A crash leaves either the old state or the new one, and staging
//! leftovers are swept at start-up. Mutations of one adapter name run one at
//! a time; different names (and tenants) never wait for each other. Reads
//! use an in-memory index rebuilt from disk at start. File I/O runs on the
//! blocking pool.

mod disk;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::staging::{Staging, blocking};
use super::{AdapterError, AdapterRecord};

#[derive(Debug, Clone, Default)]
struct NameEntry {
    current: u64,
    generations: BTreeMap<u64, AdapterRecord>,
}

type NameKey = (String, String);

pub struct AdapterStore {
    root: PathBuf,
    index: RwLock<HashMap<NameKey, NameEntry>>,
    /// One lock per (tenant, name) while someone holds or waits for it.
    locks: Mutex<HashMap<NameKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one adapter name's lock; forgets the lock when nobody waits for it.
struct NameGuard<'a> {
    store: &'a AdapterStore,
    key: NameKey,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        // Waiters clone the lock under the map's mutex, so a count of one
        // (the map's own) seen under it means nobody else can be waiting.
        let mut locks = self.store.locks.lock();
        self.guard.take();
        if locks
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

fn key(tenant: &str, name: &str) -> NameKey {
    (tenant.to_string(), name.to_string())
}

impl AdapterStore {
    /// Opens (creating) the store and reloads its index from disk.
    pub fn open(root: &Path) -> std::io::Result<AdapterStore> {
        std::fs::create_dir_all(root)?;
        for scratch in [".staging", ".trash"] {
            let path = root.join(scratch);
            if path.exists() {
                std::fs::remove_dir_all(&path)?;
            }
            std::fs::create_dir_all(&path)?;
        }
        let mut index = HashMap::new();
        for tenant in disk::read_dirs(root)? {
            let tenant_name = disk::file_name(&tenant);
            if tenant_name.starts_with('.') {
                continue;
            }
            for adapter in disk::read_dirs(&tenant)? {
                let name = disk::file_name(&adapter);
                if name.starts_with('.') {
                    continue;
                }
                if let Some(entry) = disk::load_entry(&adapter)? {
                    index.insert((tenant_name.clone(), name), entry);
                }
            }
        }
        Ok(AdapterStore {
            root: root.to_path_buf(),
            index: RwLock::new(index),
            locks: Mutex::new(HashMap::new()),
        })
    }

    async fn lock_name(&self, tenant: &str, name: &str) -> NameGuard<'_> {
        let key = key(tenant, name);
        let lock = self.locks.lock().entry(key.clone()).or_default().clone();
        NameGuard {
            store: self,
            key,
            guard: Some(lock.lock_owned().await),
        }
    }

    /// A fresh folder for an upload to be streamed into.
    pub async fn stage(&self) -> Result<Staging, AdapterError> {
        Staging::create(&self.root.join(".staging")).await
    }

    fn name_dir(&self, tenant: &str, name: &str) -> PathBuf {
        self.root.join(tenant).join(name)
    }

    pub fn generation_dir(&self, record: &AdapterRecord) -> PathBuf {
        self.name_dir(&record.tenant, &record.name)
            .join(record.generation.to_string())
    }

    /// The served generation of an adapter.
    pub fn current(&self, tenant: &str, name: &str) -> Option<AdapterRecord> {
        let index = self.index.read();
        let entry = index.get(&key(tenant, name))?;
        entry.generations.get(&entry.current).cloned()
    }

    pub fn generations(&self, tenant: &str, name: &str) -> Vec<u64> {
        self.index
            .read()
            .get(&key(tenant, name))
            .map(|entry| entry.generations.keys().copied().collect())
            .unwrap_or_default()
    }

    pub fn list(&self, tenant: &str) -> Vec<AdapterRecord> {
        let index = self.index.read();
        let mut records: Vec<AdapterRecord> = index
            .iter()
            .filter(|((owner, _), _)| owner == tenant)
            .filter_map(|(_, entry)| entry.generations.get(&entry.current).cloned())
            .collect();
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records
    }

    /// Current generations of every tenant's shared adapters.
    pub fn list_shared(&self) -> Vec<AdapterRecord> {
        let index = self.index.read();
        let mut records: Vec<AdapterRecord> = index
            .values()
            .filter_map(|entry| entry.generations.get(&entry.current))
            .filter(|record| record.shared)
            .cloned()
            .collect();
        records.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        records
    }

    /// The current generation, if `expected` (when given) names it.
    fn current_if(
        &self,
        tenant: &str,
        name: &str,
        expected: Option<u64>,
    ) -> Result<AdapterRecord, AdapterError> {
        let current = self
            .current(tenant, name)
            .ok_or_else(|| AdapterError::NotFound(name.to_string()))?;
        match expected {
            Some(expected) if expected != current.generation => Err(AdapterError::Conflict {
                expected,
                current: current.generation,
            }),
            _ => Ok(current),
        }
    }

    fn check_expected(
        &self,
        tenant: &str,
        name: &str,
        expected: Option<u64>,
    ) -> Result<Option<u64>, AdapterError> {
        let current = self.current(tenant, name).map(|record| record.generation);
        match (expected, current) {
            (Some(expected), current) if expected != current.unwrap_or(0) => {
                Err(AdapterError::Conflict {
                    expected,
                    current: current.unwrap_or(0),
                })
            }
            // Replacing needs the generation being replaced: no blind overwrite.
            (None, Some(current)) => Err(AdapterError::Conflict {
                expected: 0,
                current,
            }),
            _ => Ok(current),
        }
    }

    /// Stores a staged upload as a new generation and makes it current,
    /// returning it and the generation it replaced. `expected` is the
    /// generation being replaced (0 or absent for a new name).
    /// `before_switch` runs once the files are in place but before requests
    /// can see them (to load the adapter first); if it fails, the new
    /// generation is discarded. Whatever fails, the staged folder is removed.
    ///
    /// Callers that must not be cut short by a client going away run this
    /// on its own task.
    pub async fn put<F, Fut>(
        &self,
        mut record: AdapterRecord,
        mut staging: Staging,
        config: Vec<u8>,
        expected: Option<u64>,
        before_switch: F,
    ) -> Result<(AdapterRecord, Option<AdapterRecord>), AdapterError>
    where
        F: FnOnce(AdapterRecord) -> Fut,
        Fut: std::future::Future<Output = Result<(), AdapterError>>,
    {
        let _name = self.lock_name(&record.tenant, &record.name).await;
        let replaced = match self.check_expected(&record.tenant, &record.name, expected) {
            Ok(_) => self.current(&record.tenant, &record.name),
            Err(error) => {
                staging.discard().await;
                return Err(error);
            }
        };
        let in_index = self
            .generations(&record.tenant, &record.name)
            .last()
            .copied()
            .unwrap_or(0);
        let (tenant_dir, name) = (self.root.join(&record.tenant), record.name.clone());
        record.generation =
            match blocking(move || disk::allocate_generation(&tenant_dir, &name, in_index)).await {
                Ok(generation) => generation,
                Err(error) => {
                    staging.discard().await;
                    return Err(error);
                }
            };
        let target = self.generation_dir(&record);
        let (from, to, written) = (staging.dir().to_path_buf(), target.clone(), record.clone());
        if let Err(error) =
            blocking(move || disk::commit_generation(&from, &config, &written, &to)).await
        {
            staging.discard().await;
            return Err(error);
        }
        staging.keep();
        let name_dir = self.name_dir(&record.tenant, &record.name);
        if let Err(error) = before_switch(record.clone()).await {
            self.discard_generation(target, name_dir, replaced.is_none())
                .await?;
            return Err(error);
        }
        let dir = name_dir.clone();
        let generation = record.generation;
        blocking(move || disk::point_current(&dir, generation)).await?;
        let mut index = self.index.write();
        let entry = index.entry(key(&record.tenant, &record.name)).or_default();
        entry.generations.insert(record.generation, record.clone());
        entry.current = record.generation;
        Ok((record, replaced))
    }

    /// Removes a generation that never became current (and the name's
    /// folder when it was the name's first).
    async fn discard_generation(
        &self,
        target: PathBuf,
        name_dir: PathBuf,
        first: bool,
    ) -> Result<(), AdapterError> {
        let trash = self.root.join(".trash");
        blocking(move || {
            disk::discard(&trash, &target)?;
            if first {
                let _ = std::fs::remove_dir(&name_dir);
            }
            Ok(())
        })
        .await
    }

    /// Makes the previous generation current and discards the newer one.
    pub async fn rollback(
        &self,
        tenant: &str,
        name: &str,
        expected: Option<u64>,
    ) -> Result<(AdapterRecord, AdapterRecord), AdapterError> {
        let _name = self.lock_name(tenant, name).await;
        let current = self.current_if(tenant, name, expected)?;
        let previous = self
            .index
            .read()
            .get(&key(tenant, name))
            .and_then(|entry| {
                entry
                    .generations
                    .range(..current.generation)
                    .next_back()
                    .map(|(_, r)| r.clone())
            })
            .ok_or_else(|| AdapterError::NoPreviousGeneration(name.to_string()))?;
        let (name_dir, undone) = (self.name_dir(tenant, name), self.generation_dir(&current));
        let (trash, generation) = (self.root.join(".trash"), previous.generation);
        blocking(move || {
            disk::point_current(&name_dir, generation)?;
            disk::discard(&trash, &undone)
        })
        .await?;
        let mut index = self.index.write();
        if let Some(entry) = index.get_mut(&key(tenant, name)) {
            entry.generations.remove(&current.generation);
            entry.current = previous.generation;
        }
        Ok((previous, current))
    }

    /// Deletes every generation of an adapter; returns them. The name's
    /// high-water mark stays, so a later upload under the same name
    /// continues its numbering.
    pub async fn delete(
        &self,
        tenant: &str,
        name: &str,
        expected: Option<u64>,
    ) -> Result<Vec<AdapterRecord>, AdapterError> {
        let _name = self.lock_name(tenant, name).await;
        self.current_if(tenant, name, expected)?;
        let (trash, name_dir) = (self.root.join(".trash"), self.name_dir(tenant, name));
        blocking(move || disk::discard(&trash, &name_dir)).await?;
        let removed = self.index.write().remove(&key(tenant, name));
        Ok(removed
            .map(|entry| entry.generations.into_values().collect())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests;
