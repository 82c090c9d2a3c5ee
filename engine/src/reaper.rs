//! Frees deleted files off the cores. The last close of an unlinked file frees its page
//! cache and its blocks in the closing thread: for a 1 GiB segment, tens of milliseconds
//! (hundreds on a tmpfs), during which the core that closed it serves nothing. Segments
//! deleted by retention, replaced by a clean or cut by a truncation, and the directories
//! of deleted partitions, are handed to one background thread instead, as Kafka deletes
//! segment files asynchronously. The core keeps a duplicate of nothing: it closes its own
//! descriptor, which is cheap while the reaper's duplicate holds the file open.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc::{SyncSender, TrySendError};

/// Deletions waiting for the reaper; past this, the caller frees inline.
const REAPER_QUEUE_MAX: usize = 4096;

enum Doomed {
    /// Descriptors of unlinked files: closing the last one frees the file.
    Fds(Vec<OwnedFd>),
    /// A directory already renamed out of the log's way.
    Dir(PathBuf),
}

static REAPER: Mutex<Option<SyncSender<Doomed>>> = Mutex::new(None);

fn sender() -> Option<SyncSender<Doomed>> {
    let mut slot = REAPER.lock().ok()?;
    if slot.is_none() {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Doomed>(REAPER_QUEUE_MAX);
        let spawned = std::thread::Builder::new()
            .name("file-reaper".into())
            .spawn(move || {
                for doomed in rx {
                    match doomed {
                        Doomed::Fds(fds) => drop(fds),
                        Doomed::Dir(dir) => {
                            if let Err(e) = std::fs::remove_dir_all(&dir) {
                                tracing::warn!(path = %dir.display(), error = %e, "could not remove deleted partition");
                            }
                        }
                    }
                }
            });
        if spawned.is_err() {
            return None;
        }
        *slot = Some(tx);
    }
    slot.clone()
}

/// Hands duplicates of the descriptors of unlinked files to the reaper, which closes
/// them: the caller then closes its own cheaply.
pub(crate) fn close_later(fds: Vec<OwnedFd>) {
    if fds.is_empty() {
        return;
    }
    // Refused (the queue is full), they close here: freed on this thread after all.
    if let Some(tx) = sender() {
        let _ = tx.try_send(Doomed::Fds(fds));
    }
}

/// Removes a directory that nothing reads any more (already renamed away) on the
/// reaper, or here when it cannot take it.
pub(crate) fn remove_dir_later(dir: PathBuf) -> std::io::Result<()> {
    let Some(tx) = sender() else {
        return std::fs::remove_dir_all(dir);
    };
    match tx.try_send(Doomed::Dir(dir)) {
        Err(TrySendError::Full(doomed) | TrySendError::Disconnected(doomed)) => match doomed {
            Doomed::Dir(dir) => std::fs::remove_dir_all(dir),
            Doomed::Fds(_) => Ok(()),
        },
        Ok(()) => Ok(()),
    }
}
