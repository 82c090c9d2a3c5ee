//! The controller's state machine: applies committed commands to `Metadata` and publishes
//! each new state to the broker through `MetadataView`. Snapshots are the serialized
//! metadata, written durably before openraft may purge the log entries they cover.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use event_listener::Event;
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::TypeConfig;
use crate::log_store::{LogStoreError, read_small, write_small};
use crate::metadata::{ApplyResult, BrokerId, Metadata, NO_LEADER, topic_id_at};

const SNAPSHOT_FILE: &str = "snapshot";

type NodeId = u64;

/// The committed metadata as the broker sees it: swapped whole after every applied
/// batch, with a version that only grows and an event for waiters. Read by the broker's
/// cores on metadata paths and when they refresh their partition tables; never on the
/// produce or fetch path.
pub struct MetadataView {
    current: RwLock<Arc<Metadata>>,
    version: AtomicU64,
    /// The active controller's id, or -1 while none is known.
    controller: AtomicI64,
    changed: Event,
}

impl Default for MetadataView {
    fn default() -> Self {
        Self {
            current: RwLock::new(Arc::new(Metadata::default())),
            version: AtomicU64::new(0),
            controller: AtomicI64::new(i64::from(NO_LEADER)),
            changed: Event::new(),
        }
    }
}

impl MetadataView {
    pub fn current(&self) -> Arc<Metadata> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Grows by one with every published state.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The active controller, as this node last saw it.
    pub fn controller(&self) -> Option<BrokerId> {
        BrokerId::try_from(self.controller.load(Ordering::Acquire))
            .ok()
            .filter(|id| *id >= 0)
    }

    pub(crate) fn set_controller(&self, id: Option<BrokerId>) {
        let value = id.map_or(i64::from(NO_LEADER), i64::from);
        if self.controller.swap(value, Ordering::AcqRel) != value {
            self.changed.notify(usize::MAX);
        }
    }

    /// The metadata and the version it was published as, read together.
    pub fn versioned(&self) -> (u64, Arc<Metadata>) {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (self.version(), Arc::clone(&current))
    }

    fn publish(&self, metadata: Metadata) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = Arc::new(metadata);
        // Under the write lock, so that `versioned` never pairs a state with another
        // state's version.
        self.version.fetch_add(1, Ordering::AcqRel);
        drop(current);
        self.changed.notify(usize::MAX);
    }

    /// Resolves once the version is past `seen` (or the controller changed).
    pub async fn changed_since(&self, seen: u64) {
        loop {
            if self.version() > seen {
                return;
            }
            let listener = self.changed.listen();
            if self.version() > seen {
                return;
            }
            listener.await;
        }
    }

    /// A listener for the next change, for waits with a deadline.
    pub fn listen(&self) -> event_listener::EventListener {
        self.changed.listen()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

struct State {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    metadata: Metadata,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// Cloned handles share one state (the snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachine {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    view: Arc<MetadataView>,
}

impl StateMachine {
    /// Loads the last snapshot, if any, and publishes it.
    pub fn open(dir: &Path, view: Arc<MetadataView>) -> Result<Self, LogStoreError> {
        let snapshot = read_small::<StoredSnapshot>(dir, SNAPSHOT_FILE)?;
        let mut state = State {
            last_applied: None,
            membership: StoredMembership::default(),
            metadata: Metadata::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        if let Some(s) = snapshot {
            state.metadata =
                serde_json::from_slice(&s.data).map_err(|e| LogStoreError::Corrupt {
                    path: dir.join(SNAPSHOT_FILE),
                    reason: e.to_string(),
                })?;
            state.last_applied = s.meta.last_log_id;
            state.membership = s.meta.last_membership.clone();
            state.snapshot = Some(s);
        }
        view.publish(state.metadata.clone());
        Ok(Self {
            dir: dir.to_owned(),
            state: Arc::new(Mutex::new(state)),
            view,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut state = self.lock();
        let data = serde_json::to_vec(&state.metadata)
            .map_err(|e| StorageError::from(StorageIOError::read_state_machine(&e)))?;
        state.snapshots_built += 1;
        let snapshot_id = match state.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, state.snapshots_built),
            None => format!("none-{}", state.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        // Durable before openraft purges the entries it covers.
        write_small(&self.dir, SNAPSHOT_FILE, &stored, true)
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, &e)))?;
        state.snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let state = self.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.lock();
        let mut results = Vec::new();
        let mut changed = false;
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => Ok(crate::metadata::Applied::Nothing),
                EntryPayload::Normal(command) => {
                    let id = topic_id_at(entry.log_id.leader_id.term, entry.log_id.index);
                    let result = state.metadata.apply(&command, id);
                    if let Err(e) = &result {
                        tracing::debug!(index = entry.log_id.index, error = %e, "command refused");
                    }
                    changed |= result.is_ok();
                    result
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(crate::metadata::Applied::Nothing)
                }
            };
            results.push(result);
        }
        if changed {
            self.view.publish(state.metadata.clone());
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let metadata: Metadata = serde_json::from_slice(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        write_small(&self.dir, SNAPSHOT_FILE, &stored, true).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), &e))
        })?;
        let mut state = self.lock();
        state.metadata = metadata;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some(stored);
        self.view.publish(state.metadata.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let state = self.lock();
        Ok(state.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
