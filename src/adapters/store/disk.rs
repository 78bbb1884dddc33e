//! The store's file operations. All of them block, so the store calls them
//! through `staging::blocking`, never on an async worker.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::super::AdapterRecord;
use super::NameEntry;

/// Per tenant, the folder of high-water marks: one file per adapter name
/// holding the highest generation ever handed out. It lives beside the
/// adapters' folders, not in them, so deleting an adapter keeps its mark.
/// Adapter names cannot start with '.', so it cannot clash with one.
pub(super) const MARKS: &str = ".generations";

pub(super) fn fsync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Creates `dir` (and its parents) and makes the new entry durable.
pub(super) fn create_dir_synced(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    match dir.parent() {
        Some(parent) => fsync_dir(parent),
        None => Ok(()),
    }
}

/// Replaces `dir/name` with `bytes` atomically: a crash leaves the old
/// content or the new one, never a mix.
pub(super) fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = dir.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
    write_synced(&temporary, bytes)?;
    std::fs::rename(&temporary, dir.join(name))?;
    fsync_dir(dir)
}

/// Hands out the next generation of `name` and records it as the new
/// high-water mark before anything uses it, so no number is given twice
/// for one name: not after a rollback, a delete, a failed load or a crash.
/// `in_index` is the highest generation the store knows in memory.
pub(super) fn allocate_generation(
    tenant_dir: &Path,
    name: &str,
    in_index: u64,
) -> std::io::Result<u64> {
    let marks = tenant_dir.join(MARKS);
    let mark = marks.join(name);
    let recorded = match std::fs::read_to_string(&mark) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            // Guessing could repeat a number an admin still holds.
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is not a generation number; fix or remove it by hand",
                    mark.display()
                ),
            )
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => return Err(error),
    };
    // Stores written before marks existed: the folders are the only record.
    let on_disk = highest_generation_dir(&tenant_dir.join(name))?;
    let next = recorded.max(on_disk).max(in_index) + 1;
    create_dir_synced(&marks)?;
    replace_file(&marks, name, next.to_string().as_bytes())?;
    Ok(next)
}

fn highest_generation_dir(name_dir: &Path) -> std::io::Result<u64> {
    if !name_dir.is_dir() {
        return Ok(0);
    }
    Ok(read_dirs(name_dir)?
        .iter()
        .filter_map(|dir| file_name(dir).parse::<u64>().ok())
        .max()
        .unwrap_or(0))
}

/// Completes a staged upload (config and record beside the streamed
/// weights, all fsynced) and moves it into place as `target` in one rename.
pub(super) fn commit_generation(
    staging: &Path,
    config: &[u8],
    record: &AdapterRecord,
    target: &Path,
) -> std::io::Result<()> {
    write_synced(&staging.join("adapter_config.json"), config)?;
    write_synced(
        &staging.join("record.json"),
        &serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?,
    )?;
    fsync_dir(staging)?;
    let name_dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("a generation folder has no parent"))?;
    create_dir_synced(name_dir)?;
    std::fs::rename(staging, target)?;
    fsync_dir(name_dir)
}

/// Points `CURRENT` at `generation`.
pub(super) fn point_current(name_dir: &Path, generation: u64) -> std::io::Result<()> {
    replace_file(name_dir, "CURRENT", generation.to_string().as_bytes())
}

/// Moves `path` out of sight in one rename, then removes it.
pub(super) fn discard(trash_root: &Path, path: &Path) -> std::io::Result<()> {
    let trash = trash_root.join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::rename(path, &trash)?;
    std::fs::remove_dir_all(&trash)
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(super) fn read_dirs(path: &Path) -> std::io::Result<Vec<PathBuf>> {
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
/// Generations newer than CURRENT were never switched to (a crash between
/// an upload's rename and its switch, or inside a rollback): removed.
pub(super) fn load_entry(dir: &Path) -> std::io::Result<Option<NameEntry>> {
    let mut entry = NameEntry::default();
    let mut folders = Vec::new();
    for generation in read_dirs(dir)? {
        let Ok(number) = file_name(&generation).parse::<u64>() else {
            continue;
        };
        folders.push((number, generation.clone()));
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
            for (number, folder) in folders.iter().filter(|(n, _)| *n > current) {
                tracing::warn!(path = %folder.display(), "removing generation {number}, which never became current");
                std::fs::remove_dir_all(folder)?;
                entry.generations.remove(number);
            }
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
