//! An upload while it is being received: a private folder under the store's
//! `.staging/`, into which `adapter_model.safetensors` is streamed chunk by
//! chunk (hashed and size-capped as it arrives) so an upload never sits in
//! memory whole. The folder becomes a generation only through
//! [`AdapterStore::put`](super::AdapterStore::put); every other ending
//! removes it: [`Staging::discard`] on the error paths, `Drop` when the
//! request's future is dropped half-way.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::AdapterError;

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Bytes gathered before one write to the file: each write is a trip to the
/// blocking pool, so a multipart stream's small chunks are batched.
const WRITE_BUFFER: usize = 1024 * 1024;

/// Runs blocking file I/O off the async workers.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, AdapterError>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
        .map_err(AdapterError::Io)
}

pub struct Staging {
    dir: PathBuf,
    /// Set once the folder has been moved into place as a generation.
    kept: bool,
}

impl Staging {
    /// Creates a fresh folder under `staging_root`.
    pub(crate) async fn create(staging_root: &Path) -> Result<Staging, AdapterError> {
        let dir = staging_root.join(uuid::Uuid::new_v4().simple().to_string());
        let create = dir.clone();
        blocking(move || std::fs::create_dir_all(&create)).await?;
        Ok(Staging { dir, kept: false })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// Opens the weights file for streaming; at most `limit` bytes are taken.
    pub async fn weights_writer(&self, limit: u64) -> Result<WeightsWriter, AdapterError> {
        let file = tokio::fs::File::create(self.weights_path()).await?;
        Ok(WeightsWriter {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// The folder now belongs to the store as a generation.
    pub(crate) fn keep(&mut self) {
        self.kept = true;
    }

    /// Removes the folder and waits until it is gone.
    pub async fn discard(mut self) {
        self.kept = true;
        let dir = self.dir.clone();
        if let Err(error) = blocking(move || remove_all(&dir)).await {
            tracing::warn!(%error, path = %self.dir.display(), "could not remove a staged upload");
        }
    }
}

fn remove_all(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let dir = std::mem::take(&mut self.dir);
        let remove = move || {
            if let Err(error) = remove_all(&dir) {
                tracing::warn!(%error, path = %dir.display(), "could not remove a staged upload");
            }
        };
        // Dropped on an async worker when a request is cancelled: the
        // removal (possibly of a large file) goes to the blocking pool.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// What was received of the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub sha256: String,
    pub size: u64,
}

pub struct WeightsWriter {
    file: BufWriter<tokio::fs::File>,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl WeightsWriter {
    /// Appends a chunk; refuses, before writing it, the one that passes the cap.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), AdapterError> {
        let size = self.size.saturating_add(chunk.len() as u64);
        if size > self.limit {
            return Err(AdapterError::TooLarge { limit: self.limit });
        }
        self.size = size;
        self.hasher.update(chunk);
        self.file.write_all(chunk).await?;
        Ok(())
    }

    /// Flushes and fsyncs the file.
    pub async fn finish(mut self) -> Result<Received, AdapterError> {
        self.file.flush().await?;
        self.file.into_inner().sync_all().await?;
        Ok(Received {
            sha256: hex::encode(self.hasher.finalize()),
            size: self.size,
        })
    }
}
