//! Small durable files of a partition directory: the recovery checkpoint, the producer
//! snapshot, the leader-epoch checkpoint and the clean-shutdown marker. All are written
//! atomically (temp file, fsync, rename, fsync dir).

use std::path::Path;

use compio::fs::File;

use crate::error::{LogError, Result};

/// Offset below which every batch is known to be on disk.
pub(crate) const CHECKPOINT_FILE: &str = "recovery-checkpoint";
/// Producer state as of an offset (see `producer_state.rs`).
pub(crate) const PRODUCER_SNAPSHOT_FILE: &str = "producer-snapshot";
/// Largest producer snapshot read back (10k producers x 5 batches).
const PRODUCER_SNAPSHOT_BYTES_MAX: usize = 2 * 1024 * 1024;
/// The leader-epoch cache (see `leader_epoch.rs`).
pub(crate) const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";
/// Present only between a clean close and the next open.
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
/// Present only while the log is being emptied to start again at an offset
/// (`Partition::truncate_fully_and_start_at`): recovery finishes the job when it finds it.
pub(crate) const START_AT_FILE: &str = "start-at";
const TEMP_SUFFIX: &str = ".tmp";
const CHECKPOINT_BYTES: usize = 12;

pub(crate) fn is_temp_file(name: &str) -> bool {
    name.ends_with(TEMP_SUFFIX)
}

/// fsyncs a directory so that entries created, renamed or removed in it persist.
pub(crate) async fn sync_dir(dir: &Path) -> Result<()> {
    let file = File::open(dir).await.map_err(|e| LogError::io(dir, e))?;
    file.sync_all().await.map_err(|e| LogError::io(dir, e))
}

async fn write_atomically(dir: &Path, name: &str, bytes: Vec<u8>) -> Result<()> {
    let final_path = dir.join(name);
    let temp_path = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let file = File::create(&temp_path)
        .await
        .map_err(|e| LogError::io(&temp_path, e))?;
    {
        use compio::io::AsyncWriteAtExt;
        let mut f = &file;
        f.write_all_at(bytes, 0)
            .await
            .0
            .map_err(|e| LogError::io(&temp_path, e))?;
    }
    file.sync_all()
        .await
        .map_err(|e| LogError::io(&temp_path, e))?;
    compio::fs::rename(&temp_path, &final_path)
        .await
        .map_err(|e| LogError::io(&final_path, e))?;
    sync_dir(dir).await
}

/// An offset and the CRC-32C of its 8 bytes (the checkpoint and start-at files).
fn encode_offset(offset: i64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(CHECKPOINT_BYTES);
    bytes.extend_from_slice(&offset.to_be_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&offset.to_be_bytes()).to_be_bytes());
    bytes
}

/// The offset of `encode_offset`'s bytes; `None` for the wrong size or a failed CRC.
fn decode_offset(bytes: &[u8]) -> Option<i64> {
    if bytes.len() != CHECKPOINT_BYTES {
        return None;
    }
    let offset: [u8; 8] = bytes[..8].try_into().ok()?;
    let crc = u32::from_be_bytes(bytes[8..12].try_into().ok()?);
    (crc32c::crc32c(&offset) == crc).then(|| i64::from_be_bytes(offset))
}

pub(crate) async fn write_checkpoint(dir: &Path, offset: i64) -> Result<()> {
    write_atomically(dir, CHECKPOINT_FILE, encode_offset(offset)).await
}

/// Records, durably, that the log is to be emptied and start again at `offset`.
pub(crate) async fn write_start_at(dir: &Path, offset: i64) -> Result<()> {
    write_atomically(dir, START_AT_FILE, encode_offset(offset)).await
}

/// What the start-at file says: `None` when there is none, `Some(None)` when it is
/// damaged (it is written atomically, so only the disk can have damaged it).
pub(crate) async fn read_start_at(dir: &Path) -> Result<Option<Option<i64>>> {
    let path = dir.join(START_AT_FILE);
    match compio::fs::read(&path).await {
        Ok(bytes) => Ok(Some(decode_offset(&bytes).filter(|o| *o >= 0))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io(path, e)),
    }
}

/// Removes the start-at file durably, once the log it describes is in place.
pub(crate) async fn remove_start_at(dir: &Path) -> Result<()> {
    let path = dir.join(START_AT_FILE);
    match compio::fs::remove_file(&path).await {
        Ok(()) => sync_dir(dir).await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io(path, e)),
    }
}

/// The recovery checkpoint, or 0 (recover everything) when it is missing or damaged.
pub(crate) async fn read_checkpoint(dir: &Path) -> i64 {
    let path = dir.join(CHECKPOINT_FILE);
    let Ok(bytes) = compio::fs::read(&path).await else {
        return 0;
    };
    match decode_offset(&bytes) {
        Some(offset) => offset.max(0),
        None => {
            tracing::warn!(path = %path.display(), "recovery checkpoint has the wrong size or fails its CRC; recovering everything");
            0
        }
    }
}

pub(crate) async fn write_clean_marker(dir: &Path) -> Result<()> {
    write_atomically(dir, CLEAN_SHUTDOWN_FILE, Vec::new()).await
}

pub(crate) fn clean_marker_exists(dir: &Path) -> bool {
    dir.join(CLEAN_SHUTDOWN_FILE).exists()
}

/// Removes the marker durably: a crash after `open` must not look like a clean shutdown.
pub(crate) async fn remove_clean_marker(dir: &Path) -> Result<()> {
    let path = dir.join(CLEAN_SHUTDOWN_FILE);
    match compio::fs::remove_file(&path).await {
        Ok(()) => sync_dir(dir).await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io(path, e)),
    }
}

/// Writes the producer state that holds for every batch below `offset`.
pub(crate) async fn write_producer_snapshot(dir: &Path, offset: i64, body: Vec<u8>) -> Result<()> {
    let mut bytes = Vec::with_capacity(12 + body.len());
    bytes.extend_from_slice(&offset.to_be_bytes());
    // The CRC covers the offset too: a damaged offset must not pass.
    let crc = crc32c::crc32c_append(crc32c::crc32c(&offset.to_be_bytes()), &body);
    bytes.extend_from_slice(&crc.to_be_bytes());
    bytes.extend_from_slice(&body);
    write_atomically(dir, PRODUCER_SNAPSHOT_FILE, bytes).await
}

/// The producer snapshot (offset, body), or `None` when missing or damaged.
pub(crate) async fn read_producer_snapshot(dir: &Path) -> Option<(i64, Vec<u8>)> {
    let bytes = compio::fs::read(dir.join(PRODUCER_SNAPSHOT_FILE))
        .await
        .ok()?;
    if bytes.len() < 12 || bytes.len() > PRODUCER_SNAPSHOT_BYTES_MAX {
        return None;
    }
    let offset = i64::from_be_bytes(bytes[..8].try_into().ok()?);
    let crc = u32::from_be_bytes(bytes[8..12].try_into().ok()?);
    let body = bytes[12..].to_vec();
    let computed = crc32c::crc32c_append(crc32c::crc32c(&bytes[..8]), &body);
    (computed == crc && offset >= 0).then_some((offset, body))
}

/// Writes the leader-epoch cache's file (the bytes of `LeaderEpochCache::encode`).
pub(crate) async fn write_leader_epochs(dir: &Path, bytes: Vec<u8>) -> Result<()> {
    write_atomically(dir, LEADER_EPOCH_FILE, bytes).await
}

/// The leader-epoch file's bytes, or `None` when it is missing, unreadable or larger than
/// any cache (the caller then rebuilds the cache from the log).
pub(crate) async fn read_leader_epochs(dir: &Path) -> Option<Vec<u8>> {
    let path = dir.join(LEADER_EPOCH_FILE);
    let len = std::fs::metadata(&path).ok()?.len();
    if len > crate::limits::LEADER_EPOCH_FILE_BYTES_MAX as u64 {
        tracing::warn!(path = %path.display(), len, "leader-epoch checkpoint is too large; rebuilding it");
        return None;
    }
    compio::fs::read(&path).await.ok()
}
