//! A shard: one core's runtime state. It owns a set of partitions exclusively and
//! serves requests for them, whether they come from its own connections (direct calls)
//! or from other cores (messages on its inbox). Nothing here is shared across threads
//! but the inbox senders, the topic registry and the shutdown signal.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use engine::{AppendInfo, AppendWait, LogError, LogOffsets, Partition, TopicPartition};
use event_listener::Event;
use futures_channel::{mpsc, oneshot};
use futures_util::{SinkExt, StreamExt};

use crate::config::BrokerConfig;
use crate::control::topics::{Registry, TopicMeta, log_config_for};
use crate::kafka::fetch_response::{Piece, SendFile};
use crate::kafka::protocol::error_code;
use crate::metrics::{CloseKind, Metrics, PartitionCounters, RejectKind};
use crate::runtime::limits::{ConnectionLimits, ConnectionSlot, RequestMemory};
use crate::runtime::partition_table::{PartitionTable, TableVersion};
use crate::runtime::replica::Replica;
use crate::runtime::storage_health::StorageHealth;

/// Messages queued to another core before senders wait.
pub const SHARD_INBOX_DEPTH_MAX: usize = 4096;

/// State every core shares.
pub struct BrokerShared {
    pub config: BrokerConfig,
    pub registry: Registry,
    groups: std::sync::Mutex<crate::control::groups::coordinator::Coordinator>,
    offsets: std::sync::Mutex<crate::control::groups::offsets_topic::CommittedOffsets>,
    /// The committed offsets file of a broker from before `__consumer_offsets`, while
    /// some of its groups have not moved into the topic yet (`hosting::load`).
    pub legacy_offsets: std::sync::Mutex<Option<crate::control::groups::offsets::OffsetStore>>,
    /// Taken (asynchronously) around each write of a group's state to
    /// `__consumer_offsets`, so the log holds them in the order the states were taken.
    pub group_state_writes: futures_util::lock::Mutex<()>,
    producer_ids: std::sync::Mutex<crate::control::producer_ids::ProducerIds>,
    pub shards: Vec<mpsc::Sender<ShardCommand>>,
    /// This node's controller: proposals, and the committed cluster metadata.
    pub controller: cluster::ControllerHandle,
    /// The metadata version this broker has applied locally (partitions opened and
    /// deleted): `metadata_follower` sets it, admin requests wait for it.
    pub metadata_applied: std::sync::atomic::AtomicU64,
    pub cluster_id: String,
    pub connection_limits: Arc<ConnectionLimits>,
    pub request_memory: Arc<RequestMemory>,
    pub metrics: Arc<Metrics>,
    /// Partitions whose storage failed (until restart).
    pub storage: Arc<StorageHealth>,
    stopping: AtomicBool,
    shutdown: Event,
    drained: AtomicUsize,
    drained_event: Event,
}

impl BrokerShared {
    pub fn new(
        config: BrokerConfig,
        registry: Registry,
        legacy_offsets: Option<crate::control::groups::offsets::OffsetStore>,
        producer_ids: crate::control::producer_ids::ProducerIds,
        shards: Vec<mpsc::Sender<ShardCommand>>,
        controller: cluster::ControllerHandle,
    ) -> Self {
        let connection_limits = Arc::new(ConnectionLimits::new(
            config.max_connections,
            config.max_connections_per_ip,
        ));
        let request_memory = Arc::new(RequestMemory::new(config.queued_max_request_bytes));
        let storage = Arc::new(StorageHealth::default());
        let metrics = Arc::new(Metrics::new(
            shards.len(),
            Arc::clone(&connection_limits),
            Arc::clone(&request_memory),
            Arc::clone(&storage),
            config.write_path,
            config.fetch_zero_copy,
        ));
        Self {
            connection_limits,
            request_memory,
            metrics,
            storage,
            config,
            registry,
            groups: std::sync::Mutex::new(Default::default()),
            offsets: std::sync::Mutex::new(Default::default()),
            legacy_offsets: std::sync::Mutex::new(legacy_offsets),
            group_state_writes: futures_util::lock::Mutex::new(()),
            producer_ids: std::sync::Mutex::new(producer_ids),
            shards,
            controller,
            metadata_applied: std::sync::atomic::AtomicU64::new(0),
            cluster_id: "rust-log-broker".to_owned(),
            stopping: AtomicBool::new(false),
            shutdown: Event::new(),
            drained: AtomicUsize::new(0),
            drained_event: Event::new(),
        }
    }

    /// The group coordinator (control plane; never locked on the produce/fetch path).
    pub fn groups(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::control::groups::coordinator::Coordinator> {
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Committed offsets of the `__consumer_offsets` partitions this broker leads
    /// (control plane; no I/O under this lock).
    pub fn offsets(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::control::groups::offsets_topic::CommittedOffsets> {
        self.offsets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Producer id allocation (control plane).
    pub fn producer_ids(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::control::producer_ids::ProducerIds> {
        self.producer_ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This broker's id in the cluster.
    pub fn node_id(&self) -> i32 {
        self.controller.node_id()
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Asks every core to stop accepting and finish in-flight work.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.shutdown.notify(usize::MAX);
    }

    /// Resolves once shutdown has begun.
    pub async fn stopped(&self) {
        loop {
            if self.stopping() {
                return;
            }
            let listener = self.shutdown.listen();
            if self.stopping() {
                return;
            }
            listener.await;
        }
    }

    /// Marks one core as done serving connections (called once per core, on every exit
    /// path, by `DrainedGuard`).
    fn mark_drained(&self) {
        self.drained.fetch_add(1, Ordering::AcqRel);
        self.drained_event.notify(usize::MAX);
    }

    /// Waits until every core has drained its connections, so that no core closes its
    /// partitions while another still forwards requests to them.
    pub async fn wait_all_drained(&self) {
        loop {
            if self.drained.load(Ordering::Acquire) >= self.shards.len() {
                return;
            }
            let listener = self.drained_event.listen();
            if self.drained.load(Ordering::Acquire) >= self.shards.len() {
                return;
            }
            listener.await;
        }
    }
}

/// Marks its core drained when dropped, so a core that stops early (or panics) never
/// leaves the others waiting for it.
pub struct DrainedGuard {
    shared: Arc<BrokerShared>,
    marked: bool,
}

impl DrainedGuard {
    pub fn new(shared: Arc<BrokerShared>) -> Self {
        Self {
            shared,
            marked: false,
        }
    }

    pub fn mark(&mut self) {
        if !self.marked {
            self.marked = true;
            self.shared.mark_drained();
        }
    }
}

impl Drop for DrainedGuard {
    fn drop(&mut self) {
        self.mark();
    }
}

/// Why an operation on a partition failed, as Kafka error codes see it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PartitionError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    /// With the log start, which a follower below it starts again at (Fetch v5+ carries
    /// it in the partition's answer).
    #[error("offset out of range (log start {log_start})")]
    OffsetOutOfRange { log_start: i64 },
    #[error("{0}")]
    MessageTooLarge(String),
    #[error("{0}")]
    CorruptMessage(String),
    #[error("{0}")]
    InvalidRecord(String),
    #[error("{0}")]
    UnsupportedMessageFormat(String),
    #[error("{0}")]
    OutOfOrderSequence(String),
    #[error("{0}")]
    InvalidProducerEpoch(String),
    #[error("storage error: {0}")]
    Storage(String),
    /// Another broker leads it, or none does now: the Kafka code says which.
    #[error("this broker does not lead the partition (error {0})")]
    NotServedHere(i16),
    /// Replication refused or did not finish the request (min ISR, epochs, timeout).
    #[error("replication: {reason} (error {code})")]
    Replication { code: i16, reason: &'static str },
}

impl PartitionError {
    pub fn code(&self) -> i16 {
        match self {
            PartitionError::UnknownTopicOrPartition => error_code::UNKNOWN_TOPIC_OR_PARTITION,
            PartitionError::OffsetOutOfRange { .. } => error_code::OFFSET_OUT_OF_RANGE,
            PartitionError::MessageTooLarge(_) => error_code::MESSAGE_TOO_LARGE,
            PartitionError::CorruptMessage(_) => error_code::CORRUPT_MESSAGE,
            PartitionError::InvalidRecord(_) => error_code::INVALID_RECORD,
            PartitionError::UnsupportedMessageFormat(_) => {
                error_code::UNSUPPORTED_FOR_MESSAGE_FORMAT
            }
            PartitionError::OutOfOrderSequence(_) => error_code::OUT_OF_ORDER_SEQUENCE_NUMBER,
            PartitionError::InvalidProducerEpoch(_) => error_code::INVALID_PRODUCER_EPOCH,
            PartitionError::Storage(_) => error_code::KAFKA_STORAGE_ERROR,
            PartitionError::NotServedHere(code) => *code,
            PartitionError::Replication { code, .. } => *code,
        }
    }

    /// The partition's log start, where the error knows it (Fetch answers it).
    pub fn log_start_offset(&self) -> Option<i64> {
        match self {
            PartitionError::OffsetOutOfRange { log_start } => Some(*log_start),
            _ => None,
        }
    }
}

impl From<LogError> for PartitionError {
    fn from(e: LogError) -> Self {
        use engine::BatchError as B;
        match e {
            LogError::InvalidBatch(b) => match b {
                B::TooLarge { .. } => PartitionError::MessageTooLarge(b.to_string()),
                B::CrcMismatch { .. } => PartitionError::CorruptMessage(b.to_string()),
                B::UnsupportedMagic { .. } => {
                    PartitionError::UnsupportedMessageFormat(b.to_string())
                }
                other => PartitionError::InvalidRecord(other.to_string()),
            },
            LogError::OffsetOutOfRange { log_start, .. } => {
                PartitionError::OffsetOutOfRange { log_start }
            }
            e @ LogError::OutOfOrderSequence { .. } => {
                PartitionError::OutOfOrderSequence(e.to_string())
            }
            e @ LogError::InvalidProducerEpoch { .. } => {
                PartitionError::InvalidProducerEpoch(e.to_string())
            }
            other => PartitionError::Storage(other.to_string()),
        }
    }
}

/// What ListOffsets asks for.
#[derive(Debug, Clone, Copy)]
pub enum OffsetQuery {
    Earliest,
    Latest,
    Timestamp(i64),
    /// The first record with the largest timestamp (v7+).
    MaxTimestamp,
    /// Tiered-storage lookups (v9+, v11+): there is no remote tier, so no offset.
    NoTieredStorage,
}

/// Records of one partition read on the core that owns it.
pub struct ReadResult {
    pub offsets: LogOffsets,
    /// What the reader may see up to: the high watermark (consumers read below it).
    pub high_watermark: i64,
    pub records: Vec<Piece>,
    /// Offset after the last whole batch in `records` (see `engine::ReadSlice`).
    pub end_offset: i64,
    /// The partition's counters, for the fetch to count what it sends.
    pub counters: Arc<PartitionCounters>,
    /// Where the reader's log diverged from this one (see `Shard::check_read`).
    pub diverging: Option<(i32, i64)>,
}

/// A read answered by another core: duplicated descriptors, since files are core-local.
pub struct RemoteRead {
    offsets: LogOffsets,
    high_watermark: i64,
    ranges: Vec<(OwnedFd, u64, u64)>,
    end_offset: i64,
    counters: Arc<PartitionCounters>,
    diverging: Option<(i32, i64)>,
}

/// Requests one core sends another.
pub enum ShardCommand {
    Append {
        tp: TopicPartition,
        batch: Bytes,
        wait: AppendWait,
        reply: oneshot::Sender<Result<AppendInfo, PartitionError>>,
    },
    Read {
        tp: TopicPartition,
        offset: i64,
        max_bytes: u64,
        reader: Reader,
        reply: oneshot::Sender<Result<RemoteRead, PartitionError>>,
    },
    Offsets {
        tp: TopicPartition,
        query: OffsetQuery,
        current_leader_epoch: i32,
        reply: oneshot::Sender<Result<(i64, i64), PartitionError>>,
    },
    /// OffsetForLeaderEpoch: where `leader_epoch` ends in the leader's log.
    EpochEnd {
        tp: TopicPartition,
        current_leader_epoch: i32,
        leader_epoch: i32,
        reply: oneshot::Sender<Result<(i32, i64), PartitionError>>,
    },
    /// A copy of the leader's log from `offset`, for the group coordinator's load.
    ReadLeaderLog {
        tp: TopicPartition,
        offset: i64,
        max_bytes: u64,
        leader_epoch: i32,
        reply: oneshot::Sender<Result<LeaderLogChunk, PartitionError>>,
    },
    OpenTopic {
        meta: TopicMeta,
        reply: oneshot::Sender<Result<(), String>>,
    },
    DeleteTopic {
        name: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Appends for this core's partitions in the order the sending core took them:
    /// acks=0 batches, and acknowledged ones that were queued behind them. The reply comes
    /// when all are written (or refused); acknowledged ones also answer on their own.
    AppendBulk {
        appends: Vec<Forwarded>,
        reply: oneshot::Sender<()>,
    },
    /// A client connection for this core to serve: a new one from the acceptor, or one
    /// another core hands over.
    Connection(Box<Incoming>),
}

/// A connection on its way to a core, with its place in the limits.
pub struct Incoming {
    pub stream: std::net::TcpStream,
    pub peer: std::net::SocketAddr,
    pub slot: ConnectionSlot,
    /// What a connection moved from another core brings; `None` from the acceptor.
    pub moved: Option<crate::kafka::connection::Moved>,
}

/// What `Shard::read_leader_log` returns.
pub struct LeaderLogChunk {
    pub batches: Vec<u8>,
    pub log_start: i64,
    pub log_end: i64,
}

pub(crate) struct OwnedPartition {
    pub(crate) log: Partition,
    /// Notified after each append and each move of the high watermark.
    pub(crate) data_event: Arc<Event>,
    pub(crate) counters: Arc<PartitionCounters>,
    /// Leader, epoch, ISR, high watermark (see `replica.rs`).
    pub(crate) replica: Rc<RefCell<Replica>>,
    /// The topic is compacted: every record needs a key.
    pub(crate) compacted: bool,
}

/// Who reads a partition: a consumer (below the high watermark) or a follower replica
/// (to the log end; its fetch offset is its progress), with the address its connection
/// comes from (checked against the replica's registered address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Consumer {
        current_leader_epoch: i32,
        /// The epoch of the last batch the reader fetched (Fetch v12+), -1 if not given.
        last_fetched_epoch: i32,
    },
    Follower {
        id: i32,
        current_leader_epoch: i32,
        last_fetched_epoch: i32,
        peer: std::net::IpAddr,
    },
}

pub struct Shard {
    pub id: usize,
    pub shared: Arc<BrokerShared>,
    pub(crate) partitions: RefCell<HashMap<TopicPartition, OwnedPartition>>,
    pub connections: Cell<usize>,
    /// Of those, the ones that moved here from another core for their partitions: not
    /// counted against `connections_per_core_max`, which is for what the acceptor deals.
    pub moved_in: Cell<usize>,
    /// Bytes of acks=0 produce data this core has taken and not yet seen written.
    unacked_bytes: Cell<usize>,
    unacked_freed: Event,
    /// acks=0 batches bound for partitions other cores own, one queue per owning core.
    forwards: RefCell<Vec<Forward>>,
    /// Who leads each partition, from the committed metadata (see `partition_table`).
    partition_table: RefCell<Rc<PartitionTable>>,
    /// Leaders this core runs a follower fetcher for (see `fetcher.rs`).
    pub(crate) fetchers: RefCell<std::collections::HashSet<i32>>,
    /// Wakes this core's replication loop (a partition was opened here).
    pub(crate) replication_kick: Event,
}

/// acks=0 batches waiting to go to one other core. One task at a time sends them, many
/// per command: a fast acks=0 producer whose partition lives on another core would
/// otherwise cost two cross-core wake-ups per batch (measured: 4-5x the broker CPU of
/// the same run with the partition on the connection's own core).
#[derive(Default)]
struct Forward {
    queue: VecDeque<Forwarded>,
    sending: bool,
}

/// Where the first refused acks=0 append of a connection is noted, by whichever core
/// tried it. Nobody answers an acks=0 request, so Kafka closes the connection instead: the
/// client sees the connection drop, refreshes its metadata and finds the partition's
/// leader, where a silent refusal would lose everything it sends until its next periodic
/// metadata refresh. The connection closes as soon as a refusal is noted (`noted`).
#[derive(Debug, Default)]
pub struct UnackedRefusals {
    first: std::sync::OnceLock<String>,
    noted: Event,
}

impl UnackedRefusals {
    /// Notes an append the partition's core refused (the first refusal is kept).
    pub fn note(&self, tp: &TopicPartition, error: &PartitionError) {
        self.note_code(tp.topic(), tp.partition(), error.code(), error);
    }

    /// Notes an append refused with a Kafka error code (the first refusal is kept).
    pub fn note_code(&self, topic: &str, partition: i32, code: i16, why: &dyn std::fmt::Display) {
        if self.first.get().is_none() {
            // `set`, not `get_or_init`: a second core noting at the same moment neither
            // waits nor overwrites.
            let _ = self
                .first
                .set(format!("{topic}-{partition} (error {code}): {why}"));
            self.noted.notify(usize::MAX);
        }
    }

    /// The first refused append and why, if any was.
    pub fn first(&self) -> Option<&str> {
        self.first.get().map(String::as_str)
    }

    /// Waits until a refusal is noted; the first one.
    pub async fn noted(&self) -> &str {
        loop {
            if let Some(first) = self.first() {
                return first;
            }
            let listener = self.noted.listen();
            if let Some(first) = self.first() {
                return first;
            }
            listener.await;
        }
    }
}

/// One append on its way to the owning core in an `AppendBulk`.
pub enum Forwarded {
    /// acks=0: its bytes count in the sending core's `unacked_bytes` until it is written;
    /// a refusal is noted in the connection's `UnackedRefusals`.
    Unacknowledged(TopicPartition, Bytes, Arc<UnackedRefusals>),
    /// An acknowledged append that arrived while acks=0 ones for the same core were still
    /// queued here: it waits its turn, so a connection's appends keep their order.
    Acknowledged {
        tp: TopicPartition,
        batch: Bytes,
        wait: AppendWait,
        reply: oneshot::Sender<Result<AppendInfo, PartitionError>>,
    },
}

/// Most acks=0 batches sent to another core in one command (each becomes a task there).
const FORWARD_BATCHES_MAX: usize = 4096;

/// How many bytes of acks=0 produce data one core may hold unwritten. Producers that do not
/// wait for answers wait here instead, so they cannot make the broker queue without bound.
pub const UNACKED_PRODUCE_BYTES_MAX: usize = 64 * 1024 * 1024;

impl Shard {
    pub fn new(id: usize, shared: Arc<BrokerShared>) -> Self {
        let cores = shared.shards.len();
        Self {
            id,
            shared,
            partitions: RefCell::new(HashMap::new()),
            connections: Cell::new(0),
            moved_in: Cell::new(0),
            unacked_bytes: Cell::new(0),
            unacked_freed: Event::new(),
            forwards: RefCell::new((0..cores).map(|_| Forward::default()).collect()),
            partition_table: RefCell::new(Rc::new(PartitionTable::default())),
            fetchers: RefCell::new(std::collections::HashSet::new()),
            replication_kick: Event::new(),
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    /// This core's partition table, rebuilt from the committed metadata when its version
    /// moved (one atomic load otherwise).
    pub fn partition_table(&self) -> Rc<PartitionTable> {
        let view = self.shared.controller.view();
        let applied = || self.shared.metadata_applied.load(Ordering::Acquire);
        let current = Rc::clone(&self.partition_table.borrow());
        if current.version.committed == view.version() && current.version.applied == applied() {
            return current;
        }
        // The applied version first: the registry then holds at least what it covers.
        let applied = applied();
        let (committed, metadata) = view.versioned();
        let version = TableVersion { committed, applied };
        let registry = &self.shared.registry;
        let table = Rc::new(PartitionTable::build(
            version,
            &metadata,
            self.shared.node_id(),
            |topic, partition| registry.owner(topic, partition),
            |topic| registry.data_events(topic),
        ));
        *self.partition_table.borrow_mut() = Rc::clone(&table);
        table
    }

    /// The log and counters of a partition this core owns.
    pub(crate) fn local(
        &self,
        tp: &TopicPartition,
    ) -> Result<(Partition, Arc<PartitionCounters>), PartitionError> {
        self.partitions
            .borrow()
            .get(tp)
            .map(|p| (p.log.clone(), Arc::clone(&p.counters)))
            .ok_or(PartitionError::UnknownTopicOrPartition)
    }

    /// The core that owns a partition, from this core's partition table (a partition the
    /// metadata does not know is placed the same way, and refused by its owner).
    fn owner(&self, tp: &TopicPartition) -> usize {
        match self.partition_table().route(tp.topic(), tp.partition()) {
            Some(route) => route.core,
            None => self.shared.registry.owner(tp.topic(), tp.partition()),
        }
    }

    /// Hands a connection to core `core`'s inbox; gives it back when that core cannot
    /// take it (no such core, stopped, or its inbox full).
    pub fn hand_over(&self, core: usize, incoming: Incoming) -> Result<(), Box<Incoming>> {
        let Some(sender) = self.shared.shards.get(core) else {
            return Err(Box::new(incoming));
        };
        let command = ShardCommand::Connection(Box::new(incoming));
        match sender.clone().try_send(command) {
            Ok(()) => Ok(()),
            Err(e) => match e.into_inner() {
                ShardCommand::Connection(back) => Err(back),
                // Not reached: the channel gives back what was sent. Dropping it closes
                // the duplicate and frees the slot; the caller's copy closes too.
                _ => Ok(()),
            },
        }
    }

    async fn send(&self, owner: usize, command: ShardCommand) -> Result<(), PartitionError> {
        let Some(sender) = self.shared.shards.get(owner) else {
            return Err(PartitionError::Storage(format!("no core {owner}")));
        };
        sender
            .clone()
            .send(command)
            .await
            .map_err(|_| PartitionError::Storage(format!("core {owner} is gone")))
    }

    // ---- operations routed to the owning core ----

    /// Appends and waits as `wait` says. It never overtakes acks=0 appends this core took
    /// earlier (Kafka keeps a connection's order whatever the acks).
    pub async fn append(
        self: &Rc<Self>,
        tp: TopicPartition,
        batch: Bytes,
        wait: AppendWait,
    ) -> Result<AppendInfo, PartitionError> {
        let owner = self.owner(&tp);
        let (reply, answer) = oneshot::channel();
        if owner == self.id {
            if self.unacked_bytes.get() == 0 {
                return self.local_append(&tp, batch, wait).await;
            }
            // Queued acks=0 appends are tasks not yet run; one more task runs after them.
            let shard = Rc::clone(self);
            compio::runtime::spawn(async move {
                let _ = reply.send(shard.local_append(&tp, batch, wait).await);
            })
            .detach();
            return answer.await.map_err(|_| gone(owner))?;
        }
        // acks=0 appends still queued here for that core go first: queue behind them.
        let direct = {
            let mut forwards = self.forwards.borrow_mut();
            match forwards.get_mut(owner) {
                Some(f) if !f.queue.is_empty() => {
                    f.queue.push_back(Forwarded::Acknowledged {
                        tp,
                        batch,
                        wait,
                        reply,
                    });
                    None
                }
                _ => Some((tp, batch, reply)),
            }
        };
        if let Some((tp, batch, reply)) = direct {
            // Nothing queued: whatever went earlier is in the owner's inbox, ahead of this.
            self.send(
                owner,
                ShardCommand::Append {
                    tp,
                    batch,
                    wait,
                    reply,
                },
            )
            .await?;
        }
        answer.await.map_err(|_| gone(owner))?
    }

    /// Appends a batch nobody waits for (acks=0): the append is queued in order behind the
    /// connection's earlier ones and this returns without waiting for the write, so one
    /// connection can keep many small batches in flight, as Kafka's acks=0 producers expect.
    /// What is queued and unwritten is bounded by `UNACKED_PRODUCE_BYTES_MAX` per core.
    pub async fn append_unacknowledged(
        self: &Rc<Self>,
        tp: TopicPartition,
        batch: Bytes,
        refusals: &Arc<UnackedRefusals>,
    ) {
        let n = batch.len();
        while self.unacked_bytes.get() != 0
            && self.unacked_bytes.get() + n > UNACKED_PRODUCE_BYTES_MAX
        {
            // One thread per core: nothing frees bytes between the check and the listen.
            self.unacked_freed.listen().await;
        }
        self.unacked_bytes.set(self.unacked_bytes.get() + n);
        let owner = self.owner(&tp);
        if owner != self.id {
            let start = {
                let mut forwards = self.forwards.borrow_mut();
                match forwards.get_mut(owner) {
                    Some(f) => {
                        f.queue.push_back(Forwarded::Unacknowledged(
                            tp,
                            batch,
                            Arc::clone(refusals),
                        ));
                        !std::mem::replace(&mut f.sending, true)
                    }
                    None => {
                        drop(forwards);
                        tracing::debug!(owner, "acks=0 produce refused: no such core");
                        refusals.note(&tp, &gone(owner));
                        self.release_unacknowledged(n);
                        return;
                    }
                }
            };
            if start {
                compio::runtime::spawn(Rc::clone(self).forward_unacknowledged(owner)).detach();
            }
            return;
        }
        let shard = Rc::clone(self);
        let refusals = Arc::clone(refusals);
        // Tasks first run in the order they were spawned, so appends keep request order.
        compio::runtime::spawn(async move {
            if let Err(e) = shard.local_append(&tp, batch, AppendWait::Written).await {
                tracing::debug!(error = %e, "acks=0 produce refused");
                refusals.note(&tp, &e);
            }
            shard.release_unacknowledged(n);
        })
        .detach();
    }

    /// Bytes of acks=0 appends this core took and has not yet seen written.
    pub fn unacknowledged_bytes(&self) -> usize {
        self.unacked_bytes.get()
    }

    /// Waits until every acks=0 append this core took is written, at most `limit`; true
    /// when they are.
    pub async fn unacknowledged_drained(&self, limit: std::time::Duration) -> bool {
        let drained = async {
            // One thread per core: nothing frees bytes between the check and the listen.
            while self.unacked_bytes.get() != 0 {
                self.unacked_freed.listen().await;
            }
        };
        compio::time::timeout(limit, drained).await.is_ok()
    }

    fn release_unacknowledged(&self, n: usize) {
        self.unacked_bytes
            .set(self.unacked_bytes.get().saturating_sub(n));
        self.unacked_freed.notify(usize::MAX);
    }

    /// Sends the appends queued for `owner`, in order, many per command, until the queue
    /// is empty. The next command goes once the previous one is written, so what arrives
    /// meanwhile rides along in it.
    async fn forward_unacknowledged(self: Rc<Self>, owner: usize) {
        loop {
            let appends: Vec<Forwarded> = {
                let mut forwards = self.forwards.borrow_mut();
                let Some(f) = forwards.get_mut(owner) else {
                    return;
                };
                if f.queue.is_empty() {
                    f.sending = false;
                    return;
                }
                let take = f.queue.len().min(FORWARD_BATCHES_MAX);
                f.queue.drain(..take).collect()
            };
            let bytes = appends
                .iter()
                .map(|a| match a {
                    Forwarded::Unacknowledged(_, batch, _) => batch.len(),
                    Forwarded::Acknowledged { .. } => 0,
                })
                .sum();
            // The owning core notes its refusals itself. It is gone only while the broker
            // stops, and then every connection closes anyway.
            let (reply, answer) = oneshot::channel();
            let command = ShardCommand::AppendBulk { appends, reply };
            match self.send(owner, command).await {
                Ok(()) => {
                    let _ = answer.await;
                }
                Err(e) => tracing::debug!(error = %e, "acks=0 produce refused"),
            }
            self.release_unacknowledged(bytes);
        }
    }

    pub async fn read(
        &self,
        tp: TopicPartition,
        offset: i64,
        max_bytes: u64,
        reader: Reader,
    ) -> Result<ReadResult, PartitionError> {
        let owner = self.owner(&tp);
        if owner == self.id {
            return self.local_read(&tp, offset, max_bytes, reader).await;
        }
        let (reply, answer) = oneshot::channel();
        self.send(
            owner,
            ShardCommand::Read {
                tp,
                offset,
                max_bytes,
                reader,
                reply,
            },
        )
        .await?;
        let remote = answer.await.map_err(|_| gone(owner))??;
        let mut records = Vec::with_capacity(remote.ranges.len());
        for (fd, position, len) in remote.ranges {
            // SAFETY: `fd` is a descriptor we own (duplicated for us by the owning core);
            // the compio File takes over closing it.
            let file = unsafe { compio::fs::File::from_raw_fd(fd.into_raw_fd()) };
            records.push(Piece::File {
                file: SendFile::Owned(Rc::new(file)),
                position,
                len,
            });
        }
        Ok(ReadResult {
            offsets: remote.offsets,
            high_watermark: remote.high_watermark,
            records,
            end_offset: remote.end_offset,
            counters: remote.counters,
            diverging: remote.diverging,
        })
    }

    pub async fn offsets(
        &self,
        tp: TopicPartition,
        query: OffsetQuery,
        current_leader_epoch: i32,
    ) -> Result<(i64, i64), PartitionError> {
        let owner = self.owner(&tp);
        if owner == self.id {
            return self.local_offsets(&tp, query, current_leader_epoch).await;
        }
        let (reply, answer) = oneshot::channel();
        self.send(
            owner,
            ShardCommand::Offsets {
                tp,
                query,
                current_leader_epoch,
                reply,
            },
        )
        .await?;
        answer.await.map_err(|_| gone(owner))?
    }

    /// OffsetForLeaderEpoch for one partition, on its owning core.
    pub async fn epoch_end(
        &self,
        tp: TopicPartition,
        current_leader_epoch: i32,
        leader_epoch: i32,
    ) -> Result<(i32, i64), PartitionError> {
        let owner = self.owner(&tp);
        if owner == self.id {
            return self.local_epoch_end(&tp, current_leader_epoch, leader_epoch);
        }
        let (reply, answer) = oneshot::channel();
        self.send(
            owner,
            ShardCommand::EpochEnd {
                tp,
                current_leader_epoch,
                leader_epoch,
                reply,
            },
        )
        .await?;
        answer.await.map_err(|_| gone(owner))?
    }

    /// Whole batches of a partition this broker leads at `leader_epoch`, copied, from
    /// `offset` (or the log start, if later) up to `max_bytes` (at least one batch),
    /// with the log's start and end: what the group coordinator loads. Reads to the log
    /// end, not the high watermark: what a new leader holds stays in its log.
    pub async fn read_leader_log(
        &self,
        tp: TopicPartition,
        offset: i64,
        max_bytes: u64,
        leader_epoch: i32,
    ) -> Result<LeaderLogChunk, PartitionError> {
        let owner = self.owner(&tp);
        if owner == self.id {
            return self
                .local_read_leader_log(&tp, offset, max_bytes, leader_epoch)
                .await;
        }
        let (reply, answer) = oneshot::channel();
        self.send(
            owner,
            ShardCommand::ReadLeaderLog {
                tp,
                offset,
                max_bytes,
                leader_epoch,
                reply,
            },
        )
        .await?;
        answer.await.map_err(|_| gone(owner))?
    }

    async fn local_read_leader_log(
        &self,
        tp: &TopicPartition,
        offset: i64,
        max_bytes: u64,
        leader_epoch: i32,
    ) -> Result<LeaderLogChunk, PartitionError> {
        let (log, _) = self.local(tp)?;
        self.replica(tp)?
            .borrow()
            .check_leader(leader_epoch)
            .map_err(PartitionError::NotServedHere)?;
        let offsets = log.offsets();
        let batches = log
            .read(offset.max(offsets.log_start_offset), max_bytes)
            .await?;
        Ok(LeaderLogChunk {
            batches,
            log_start: offsets.log_start_offset,
            log_end: offsets.log_end_offset,
        })
    }

    /// Opens a new topic's partitions on every core that owns some.
    pub async fn open_topic_everywhere(&self, meta: &TopicMeta) -> Result<(), String> {
        self.on_every_core(self.open_topic(meta), |reply| ShardCommand::OpenTopic {
            meta: meta.clone(),
            reply,
        })
        .await
    }

    pub async fn delete_topic_everywhere(&self, name: &str) -> Result<(), String> {
        self.on_every_core(self.delete_topic(name), |reply| ShardCommand::DeleteTopic {
            name: name.to_owned(),
            reply,
        })
        .await
    }

    /// Runs `local` here and `command` on every other core, and waits for all of them.
    async fn on_every_core(
        &self,
        local: impl std::future::Future<Output = Result<(), String>>,
        command: impl Fn(oneshot::Sender<Result<(), String>>) -> ShardCommand,
    ) -> Result<(), String> {
        let mut waits = Vec::new();
        for core in (0..self.shared.shards.len()).filter(|c| *c != self.id) {
            let (reply, answer) = oneshot::channel();
            self.send(core, command(reply))
                .await
                .map_err(|e| e.to_string())?;
            waits.push(answer);
        }
        local.await?;
        for w in waits {
            w.await.map_err(|_| "a core went away".to_owned())??;
        }
        Ok(())
    }

    // ---- local operations: only ever on the owning core ----

    async fn local_append(
        &self,
        tp: &TopicPartition,
        batch: Bytes,
        wait: AppendWait,
    ) -> Result<AppendInfo, PartitionError> {
        let (log, event, counters, replica, compacted) = {
            let partitions = self.partitions.borrow();
            let p = partitions
                .get(tp)
                .ok_or(PartitionError::UnknownTopicOrPartition)?;
            (
                p.log.clone(),
                Arc::clone(&p.data_event),
                Arc::clone(&p.counters),
                Rc::clone(&p.replica),
                p.compacted,
            )
        };
        // Kafka's rule and message; a compressed batch is decompressed for it.
        if compacted && engine::batch::has_keyless_record(&batch) {
            return Err(PartitionError::InvalidRecord(format!(
                "Compacted topic cannot accept message without key in topic partition {}.",
                tp.dir_name()
            )));
        }
        let epoch = {
            let r = replica.borrow();
            r.check_leader(-1).map_err(PartitionError::NotServedHere)?;
            if wait == AppendWait::Durable {
                r.check_enough_replicas()
                    .map_err(|code| PartitionError::Replication {
                        code,
                        reason: "the ISR is smaller than min_insync_replicas",
                    })?;
            }
            r.leader_epoch
        };
        let bytes = batch.len() as u64;
        let info = log
            .append_with_epoch(batch, wait, epoch)
            .await
            .inspect_err(|e| {
                if matches!(e, LogError::StorageFailed(_)) {
                    counters.record_storage_error();
                }
            })?;
        if !info.duplicate {
            counters.record_in(
                bytes,
                (info.last_offset - info.base_offset + 1).max(0) as u64,
            );
        }
        let log_end = log.offsets().log_end_offset;
        replica.borrow_mut().advance_high_watermark(log_end);
        event.notify(usize::MAX);
        if wait == AppendWait::Durable {
            // acks=all: answered once every in-sync replica has the batch.
            let answer = replica.borrow_mut().wait_for(info.last_offset, epoch);
            match answer.await {
                Ok(Ok(())) => {}
                Ok(Err(code)) => {
                    return Err(PartitionError::Replication {
                        code,
                        reason: "not replicated to the ISR",
                    });
                }
                Err(_) => {
                    return Err(PartitionError::NotServedHere(
                        error_code::NOT_LEADER_OR_FOLLOWER,
                    ));
                }
            }
        }
        Ok(info)
    }

    async fn local_read(
        &self,
        tp: &TopicPartition,
        offset: i64,
        max_bytes: u64,
        reader: Reader,
    ) -> Result<ReadResult, PartitionError> {
        let (log, counters) = self.local(tp)?;
        let limit = self.check_read(tp, &log, offset, reader)?;
        if limit.diverging.is_some() {
            return Ok(ReadResult {
                offsets: log.offsets(),
                high_watermark: limit.high_watermark,
                records: Vec::new(),
                end_offset: offset,
                counters,
                diverging: limit.diverging,
            });
        }
        let high_watermark = limit.high_watermark;
        let slice = log.read_ranges_upto(offset, max_bytes, limit.upto).await?;
        let end_offset = slice.end_offset;
        let records = slice
            .ranges
            .into_iter()
            .map(|r| Piece::File {
                file: SendFile::Local(r.files),
                position: r.position,
                len: r.len,
            })
            .collect();
        Ok(ReadResult {
            offsets: slice.offsets,
            high_watermark,
            records,
            end_offset,
            counters,
            diverging: None,
        })
    }

    async fn local_read_for_remote(
        &self,
        tp: &TopicPartition,
        offset: i64,
        max_bytes: u64,
        reader: Reader,
    ) -> Result<RemoteRead, PartitionError> {
        let (log, counters) = self.local(tp)?;
        let limit = self.check_read(tp, &log, offset, reader)?;
        if limit.diverging.is_some() {
            return Ok(RemoteRead {
                offsets: log.offsets(),
                high_watermark: limit.high_watermark,
                ranges: Vec::new(),
                end_offset: offset,
                counters,
                diverging: limit.diverging,
            });
        }
        let high_watermark = limit.high_watermark;
        let slice = log.read_ranges_upto(offset, max_bytes, limit.upto).await?;
        let mut ranges = Vec::with_capacity(slice.ranges.len());
        for r in slice.ranges {
            let fd = r
                .files
                .log_file()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| PartitionError::Storage(format!("dup segment fd: {e}")))?;
            ranges.push((fd, r.position, r.len));
        }
        Ok(RemoteRead {
            offsets: slice.offsets,
            high_watermark,
            ranges,
            end_offset: slice.end_offset,
            counters,
            diverging: None,
        })
    }

    async fn local_offsets(
        &self,
        tp: &TopicPartition,
        query: OffsetQuery,
        current_leader_epoch: i32,
    ) -> Result<(i64, i64), PartitionError> {
        let (log, _) = self.local(tp)?;
        let high_watermark = {
            let replica = self.replica(tp)?;
            let r = replica.borrow();
            r.check_leader(current_leader_epoch)
                .map_err(PartitionError::NotServedHere)?;
            r.high_watermark
        };
        let offsets = log.offsets();
        // Consumers see the log below the high watermark only.
        Ok(match query {
            OffsetQuery::Earliest => (-1, offsets.log_start_offset),
            OffsetQuery::Latest => (-1, high_watermark),
            OffsetQuery::Timestamp(ts) => match log.offset_for_timestamp(ts).await? {
                Some(found) if found.offset < high_watermark => (found.timestamp, found.offset),
                _ => (-1, -1),
            },
            OffsetQuery::MaxTimestamp => match log.max_timestamp_offset().await? {
                Some(found) if found.offset < high_watermark => (found.timestamp, found.offset),
                _ => (-1, -1),
            },
            OffsetQuery::NoTieredStorage => (-1, -1),
        })
    }

    /// Opens the partitions of `meta` that this core owns.
    pub async fn open_topic(&self, meta: &TopicMeta) -> Result<(), String> {
        let base = self.shared.config.log_config();
        let config = log_config_for(meta, &base);
        for partition in 0..meta.partitions {
            if self.shared.registry.owner(&meta.name, partition) != self.id {
                continue;
            }
            let tp = TopicPartition::new(&meta.name, partition).map_err(|e| e.to_string())?;
            if self.partitions.borrow().contains_key(&tp) {
                continue;
            }
            let dir = tp.dir_in(&self.shared.config.data_dir);
            let (log, report) = Partition::open(&dir, config.clone())
                .await
                .map_err(|e| e.to_string())?;
            let metrics = &self.shared.metrics;
            metrics.record_recovery(&report);
            let (core_metrics, id) = (Arc::clone(metrics), self.id);
            log.set_sync_observer(Rc::new(move |took| {
                core_metrics.core(id).observe_flush(took)
            }));
            // The engine has logged the failure (partition, step, file, cause); from now
            // on Metadata reports the partition offline and the metrics show it.
            let (storage, topic) = (Arc::clone(&self.shared.storage), meta.name.clone());
            log.set_failure_observer(Rc::new(move |failure| {
                storage.mark_failed(&topic, partition, failure)
            }));
            let data_event = self
                .shared
                .registry
                .data_event(&meta.name, partition)
                .unwrap_or_else(|| Arc::new(Event::new()));
            // Followers' fetches wake when a batch is written, not once it is synced: they
            // copy it while the leader's own fdatasync of it runs (acks=all waits for both).
            let written = Arc::clone(&data_event);
            log.set_write_observer(Rc::new(move || {
                written.notify(usize::MAX);
            }));
            let counters = metrics.partition(&meta.name, partition);
            let replica = Rc::new(RefCell::new(Replica::new(
                self.shared.node_id(),
                usize::try_from(self.shared.config.min_insync_replicas).unwrap_or(1),
                0,
            )));
            self.partitions.borrow_mut().insert(
                tp,
                OwnedPartition {
                    log,
                    data_event,
                    counters,
                    replica,
                    compacted: meta.cleanup().compact,
                },
            );
        }
        // Its replication state follows the committed metadata from now on.
        self.replication_kick.notify(usize::MAX);
        Ok(())
    }

    async fn delete_topic(&self, name: &str) -> Result<(), String> {
        let doomed: Vec<(TopicPartition, OwnedPartition)> = {
            let mut partitions = self.partitions.borrow_mut();
            let keys: Vec<TopicPartition> = partitions
                .keys()
                .filter(|tp| tp.topic() == name)
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| partitions.remove(&k).map(|p| (k, p)))
                .collect()
        };
        for (tp, p) in doomed {
            p.log
                .delete()
                .await
                .map_err(|e| format!("{}: {e}", tp.dir_name()))?;
            p.data_event.notify(usize::MAX);
        }
        self.shared.metrics.remove_topic(name);
        self.shared.storage.forget_topic(name);
        Ok(())
    }

    /// Runs retention over this core's partitions.
    pub fn apply_retention(&self) {
        let now = engine::now_ms();
        for (tp, p) in self.partitions.borrow().iter() {
            let report = p.log.apply_retention(now);
            if report.segments_deleted > 0 {
                tracing::info!(partition = %tp.dir_name(), ?report, "retention");
            }
        }
    }

    /// Compacts this core's partitions of compacted topics whose share of bytes not yet
    /// cleaned has reached the topic's `min.cleanable.dirty.ratio`. Only below the high
    /// watermark: what a new leader could still truncate is never cleaned.
    pub async fn compact_dirty_logs(&self) {
        let candidates: Vec<TopicPartition> = self
            .partitions
            .borrow()
            .iter()
            .filter(|(_, p)| p.compacted)
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in candidates {
            let Some(meta) = self.shared.registry.get(tp.topic()) else {
                continue;
            };
            // Read now, not at the start of the round: the high watermark of a partition
            // cleaned late in it may have moved back meanwhile (a new leader's).
            let Some((log, high_watermark)) = self
                .partitions
                .borrow()
                .get(&tp)
                .map(|p| (p.log.clone(), p.replica.borrow().high_watermark))
            else {
                continue;
            };
            let (dirty, total) = log.dirty_bytes(high_watermark);
            if total == 0 || (dirty as f64) < meta.min_cleanable_dirty_ratio() * total as f64 {
                continue;
            }
            let options = engine::CompactOptions {
                below: high_watermark,
                now_ms: engine::now_ms(),
                delete_retention_ms: meta.delete_retention_ms(),
                map_bytes_max: self.shared.config.log_cleaner_dedupe_buffer_size,
            };
            match log.compact(options).await {
                Ok(report) if report.segments_cleaned > 0 => {
                    tracing::info!(partition = %tp.dir_name(), ?report, "compacted");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(partition = %tp.dir_name(), error = %e, "compaction failed");
                }
            }
        }
    }

    /// Closes every partition cleanly (sync, checkpoint, clean marker).
    pub async fn close_all(&self) {
        let logs: Vec<(TopicPartition, Partition)> = self
            .partitions
            .borrow()
            .iter()
            .map(|(tp, p)| (tp.clone(), p.log.clone()))
            .collect();
        for (tp, log) in logs {
            if let Err(e) = log.close().await {
                tracing::error!(partition = %tp.dir_name(), error = %e, "close failed");
            }
        }
    }

    /// Serves requests from other cores until every sender is gone.
    pub async fn serve_inbox(self: Rc<Self>, mut inbox: mpsc::Receiver<ShardCommand>) {
        while let Some(command) = inbox.next().await {
            if let ShardCommand::Connection(incoming) = command {
                self.accept(*incoming);
                continue;
            }
            // Another core's request waits on this command, except for forwarded acks=0
            // batches: the read pacer must see it (`runtime::pacing`).
            crate::runtime::pacing::note_request(matches!(
                command,
                ShardCommand::AppendBulk { .. }
            ));
            let shard = Rc::clone(&self);
            compio::runtime::spawn(async move { shard.handle_command(command).await }).detach();
        }
    }

    fn accept(self: &Rc<Self>, incoming: Incoming) {
        let Incoming {
            stream,
            peer,
            slot,
            moved,
        } = incoming;
        if moved.is_some() && self.shared.stopping() {
            // It was served to the end of a response on its old core: a plain close lets
            // the client read what is still in flight to it (a reset would drop it).
            self.shared.metrics.connection_closed(CloseKind::Client);
            drop(stream);
            return;
        }
        let max = self.config().connections_per_core_max;
        // A moved connection is already counted in the broker's limits; the per-core cap
        // is for the ones the acceptor deals.
        let dealt = self.connections.get().saturating_sub(self.moved_in.get());
        let over = moved.is_none() && dealt >= max;
        if self.shared.stopping() || over {
            tracing::warn!(%peer, max, "not taking a connection (stopping or at the per-core limit)");
            self.shared
                .metrics
                .connection_rejected(RejectKind::CoreBusy);
            let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
            return;
        }
        let _ = stream.set_nodelay(true);
        match compio::net::TcpStream::from_std(stream) {
            Ok(stream) => {
                // Counted here, not when the task first runs, so a burst cannot overshoot.
                self.connections.set(self.connections.get() + 1);
                if moved.is_some() {
                    self.moved_in.set(self.moved_in.get() + 1);
                    self.shared.metrics.connection_moved();
                } else {
                    self.shared.metrics.connection_accepted();
                }
                compio::runtime::spawn(crate::kafka::connection::serve(
                    Rc::clone(self),
                    stream,
                    peer,
                    slot,
                    moved,
                ))
                .detach();
            }
            Err(e) => tracing::warn!(%peer, error = %e, "cannot adopt connection"),
        }
    }

    async fn handle_command(self: Rc<Self>, command: ShardCommand) {
        match command {
            ShardCommand::Append {
                tp,
                batch,
                wait,
                reply,
            } => {
                let _ = reply.send(self.local_append(&tp, batch, wait).await);
            }
            ShardCommand::Read {
                tp,
                offset,
                max_bytes,
                reader,
                reply,
            } => {
                let _ = reply.send(
                    self.local_read_for_remote(&tp, offset, max_bytes, reader)
                        .await,
                );
            }
            ShardCommand::Offsets {
                tp,
                query,
                current_leader_epoch,
                reply,
            } => {
                let _ = reply.send(self.local_offsets(&tp, query, current_leader_epoch).await);
            }
            ShardCommand::EpochEnd {
                tp,
                current_leader_epoch,
                leader_epoch,
                reply,
            } => {
                let _ = reply.send(self.local_epoch_end(&tp, current_leader_epoch, leader_epoch));
            }
            ShardCommand::ReadLeaderLog {
                tp,
                offset,
                max_bytes,
                leader_epoch,
                reply,
            } => {
                let _ = reply.send(
                    self.local_read_leader_log(&tp, offset, max_bytes, leader_epoch)
                        .await,
                );
            }
            ShardCommand::OpenTopic { meta, reply } => {
                let _ = reply.send(self.open_topic(&meta).await);
            }
            ShardCommand::DeleteTopic { name, reply } => {
                let _ = reply.send(self.delete_topic(&name).await);
            }
            ShardCommand::AppendBulk { appends, reply } => {
                // Spawned in order, so they reach each partition's writer in the order
                // the sending core took them, as its own acks=0 appends do.
                let tasks: Vec<_> = appends
                    .into_iter()
                    .map(|append| {
                        let shard = Rc::clone(&self);
                        compio::runtime::spawn(async move {
                            match append {
                                Forwarded::Unacknowledged(tp, batch, refusals) => {
                                    if let Err(e) =
                                        shard.local_append(&tp, batch, AppendWait::Written).await
                                    {
                                        tracing::debug!(error = %e, "acks=0 produce refused");
                                        refusals.note(&tp, &e);
                                    }
                                }
                                Forwarded::Acknowledged {
                                    tp,
                                    batch,
                                    wait,
                                    reply,
                                } => {
                                    let _ = reply.send(shard.local_append(&tp, batch, wait).await);
                                }
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    let _ = task.await;
                }
                let _ = reply.send(());
            }
            ShardCommand::Connection(_) => {}
        }
    }
}

fn gone(owner: usize) -> PartitionError {
    PartitionError::Storage(format!("core {owner} dropped the request"))
}
