//! The adapter store: `<root>/<tenant>/<name>/<generation>/` holding
//! `adapter_config.json`, `adapter_model.safetensors` and `record.json`, plus
//! `<root>/<tenant>/<name>/CURRENT` naming the served generation.
//!
//! Every write goes to `<root>/.staging/`, is fsynced, and is moved into
//! place with one rename; `CURRENT` is replaced the same way. A crash leaves
//! either the old state or the new one, and staging leftovers are swept at
//! start-up. One mutation runs at a time; reads use an in-memory index
//! rebuilt from disk at start.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use super::{AdapterError, AdapterRecord};

#[derive(Debug, Clone, Default)]
struct NameEntry {
    current: u64,
    generations: BTreeMap<u64, AdapterRecord>,
}

pub struct AdapterStore {
    root: PathBuf,
    index: RwLock<HashMap<(String, String), NameEntry>>,
    writer: tokio::sync::Mutex<()>,
}

fn fsync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
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
        for tenant in read_dirs(root)? {
            let tenant_name = file_name(&tenant);
            if tenant_name.starts_with('.') {
                continue;
            }
            for adapter in read_dirs(&tenant)? {
                if let Some(entry) = load_entry(&adapter)? {
                    index.insert((tenant_name.clone(), file_name(&adapter)), entry);
                }
            }
        }
        Ok(AdapterStore {
            root: root.to_path_buf(),
            index: RwLock::new(index),
            writer: tokio::sync::Mutex::new(()),
        })
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
        let entry = index.get(&(tenant.to_string(), name.to_string()))?;
        entry.generations.get(&entry.current).cloned()
    }

    pub fn generations(&self, tenant: &str, name: &str) -> Vec<u64> {
        self.index
            .read()
            .get(&(tenant.to_string(), name.to_string()))
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

    /// Stores a new generation and makes it current, returning it and the
    /// generation it replaced. `expected` is the generation being replaced
    /// (0 or absent for a new name). `before_switch` runs once the files are
    /// in place but before requests can see them (to load the adapter
    /// first); if it fails, the new generation is discarded.
    pub async fn put<F, Fut>(
        &self,
        mut record: AdapterRecord,
        config: &[u8],
        weights: &[u8],
        expected: Option<u64>,
        before_switch: F,
    ) -> Result<(AdapterRecord, Option<AdapterRecord>), AdapterError>
    where
        F: FnOnce(AdapterRecord) -> Fut,
        Fut: std::future::Future<Output = Result<(), AdapterError>>,
    {
        let _writing = self.writer.lock().await;
        self.check_expected(&record.tenant, &record.name, expected)?;
        let replaced = self.current(&record.tenant, &record.name);
        record.generation = self
            .generations(&record.tenant, &record.name)
            .last()
            .copied()
            .unwrap_or(0)
            + 1;
        let staging = self
            .root
            .join(".staging")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&staging)?;
        write_synced(&staging.join("adapter_config.json"), config)?;
        write_synced(&staging.join("adapter_model.safetensors"), weights)?;
        write_synced(
            &staging.join("record.json"),
            &serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?,
        )?;
        fsync_dir(&staging)?;
        let name_dir = self.name_dir(&record.tenant, &record.name);
        std::fs::create_dir_all(&name_dir)?;
        let target = self.generation_dir(&record);
        std::fs::rename(&staging, &target)?;
        fsync_dir(&name_dir)?;
        if let Err(error) = before_switch(record.clone()).await {
            self.discard(&target)?;
            if replaced.is_none() {
                let _ = std::fs::remove_dir(&name_dir);
            }
            return Err(error);
        }
        self.point_current(&name_dir, record.generation)?;
        let mut index = self.index.write();
        let entry = index
            .entry((record.tenant.clone(), record.name.clone()))
            .or_default();
        entry.generations.insert(record.generation, record.clone());
        entry.current = record.generation;
        Ok((record, replaced))
    }

    fn point_current(&self, name_dir: &Path, generation: u64) -> std::io::Result<()> {
        let temporary = name_dir.join(format!(".CURRENT.{}", uuid::Uuid::new_v4().simple()));
        write_synced(&temporary, generation.to_string().as_bytes())?;
        std::fs::rename(&temporary, name_dir.join("CURRENT"))?;
        fsync_dir(name_dir)
    }

    fn discard(&self, path: &Path) -> std::io::Result<()> {
        let trash = self
            .root
            .join(".trash")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::rename(path, &trash)?;
        std::fs::remove_dir_all(&trash)
    }

    /// Makes the previous generation current and discards the newer one.
    pub async fn rollback(
        &self,
        tenant: &str,
        name: &str,
        expected: Option<u64>,
    ) -> Result<(AdapterRecord, AdapterRecord), AdapterError> {
        let _writing = self.writer.lock().await;
        let current = self.current_if(tenant, name, expected)?;
        let previous = self
            .index
            .read()
            .get(&(tenant.to_string(), name.to_string()))
            .and_then(|entry| {
                entry
                    .generations
                    .range(..current.generation)
                    .next_back()
                    .map(|(_, r)| r.clone())
            })
            .ok_or_else(|| AdapterError::NoPreviousGeneration(name.to_string()))?;
        let name_dir = self.name_dir(tenant, name);
        self.point_current(&name_dir, previous.generation)?;
        self.discard(&self.generation_dir(&current))?;
        let mut index = self.index.write();
        if let Some(entry) = index.get_mut(&(tenant.to_string(), name.to_string())) {
            entry.generations.remove(&current.generation);
            entry.current = previous.generation;
        }
        Ok((previous, current))
    }

    /// Deletes every generation of an adapter; returns them.
    pub async fn delete(
        &self,
        tenant: &str,
        name: &str,
        expected: Option<u64>,
    ) -> Result<Vec<AdapterRecord>, AdapterError> {
        let _writing = self.writer.lock().await;
        self.current_if(tenant, name, expected)?;
        self.discard(&self.name_dir(tenant, name))?;
        let removed = self
            .index
            .write()
            .remove(&(tenant.to_string(), name.to_string()));
        Ok(removed
            .map(|entry| entry.generations.into_values().collect())
            .unwrap_or_default())
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_dirs(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Reads one adapter's generations; a folder without a valid CURRENT, or
/// whose CURRENT names a missing generation, is ignored (and logged).
fn load_entry(dir: &Path) -> std::io::Result<Option<NameEntry>> {
    let mut entry = NameEntry::default();
    for generation in read_dirs(dir)? {
        let Ok(number) = file_name(&generation).parse::<u64>() else {
            continue;
        };
        let Ok(bytes) = std::fs::read(generation.join("record.json")) else {
            continue;
        };
        match serde_json::from_slice::<AdapterRecord>(&bytes) {
            Ok(record) if record.generation == number => {
                entry.generations.insert(number, record);
            }
            _ => {
                tracing::warn!(path = %generation.display(), "ignoring an unreadable adapter generation")
            }
        }
    }
    let current = std::fs::read_to_string(dir.join("CURRENT"))
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match current {
        Some(current) if entry.generations.contains_key(&current) => {
            entry.current = current;
            Ok(Some(entry))
        }
        _ => {
            if !entry.generations.is_empty() {
                tracing::warn!(path = %dir.display(), "adapter has no valid CURRENT; ignored");
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests;
