//! One node's controller: its openraft instance, the RPC server its peers and their
//! brokers talk to, its own broker's registration and heartbeats, and (while it is the
//! active controller) the broker session checks that fence a silent broker.
//!
//! It runs on its own OS thread with a tokio current-thread runtime. The broker reaches it
//! through `Controller`: proposals go over a bounded channel and come back on a
//! `futures_channel::oneshot` that any runtime can await; the committed metadata is read
//! from the shared `MetadataView`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_listener::Listener;
use futures_channel::oneshot;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tokio::sync::mpsc;

use crate::TypeConfig;
use crate::config::{ControllerConfig, check_identity};
use crate::limits::{
    PROPOSE_DEADLINE, PROPOSE_RETRY_PAUSE, REQUEST_QUEUE_DEPTH_MAX, RPC_CONNECTIONS_MAX,
    RPC_IDLE_TIMEOUT, RPC_PROPOSE_TIMEOUT, SESSION_CHECK_INTERVAL, SNAPSHOT_CHUNK_BYTES_MAX,
};
use crate::log_store::LogStore;
use crate::metadata::{Applied, BrokerId, Command, MetadataError};
use crate::rpc::{
    Network, Peer, ProposeError, QuorumState, Request, Response, VoterState, read_frame,
    write_frame,
};
use crate::state_machine::{MetadataView, StateMachine};

/// Log entries between snapshots; the log keeps this many behind the last one too.
const SNAPSHOT_EVERY_ENTRIES: u64 = 5000;
const SNAPSHOT_KEEP_ENTRIES: u64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Refused(#[from] MetadataError),
    #[error("no active controller answered within {0:?}")]
    Timeout(Duration),
    #[error("the controller has too many requests queued")]
    Busy,
    #[error("the controller has stopped")]
    Stopped,
    #[error("cannot start the controller: {0}")]
    Start(String),
    #[error("the controller failed: {0}")]
    Fatal(String),
}

enum ControlMessage {
    Propose(Command, oneshot::Sender<Result<Applied, ControllerError>>),
    Shutdown {
        fence_self: bool,
    },
    /// A controlled shutdown's first step: stop heartbeating and fence this broker, so
    /// its leadership moves to in-sync followers while it still serves.
    Retire(oneshot::Sender<Result<Applied, ControllerError>>),
    DescribeQuorum(oneshot::Sender<Result<QuorumState, ControllerError>>),
    Crash,
}

/// The broker's handle on its node's controller.
/// Derefs to its `ControllerHandle` (propose, view, ids); stopping stays here.
pub struct Controller {
    handle: ControllerHandle,
    thread: Option<JoinHandle<()>>,
    listen_addr: Option<SocketAddr>,
}

impl std::ops::Deref for Controller {
    type Target = ControllerHandle;

    fn deref(&self) -> &ControllerHandle {
        &self.handle
    }
}

impl Controller {
    /// Opens the controller's storage, checks its identity, starts its thread and its
    /// Raft node (initializing the quorum on first start), and begins registering this
    /// node's broker. Returns once Raft runs; `wait_registered` waits for the rest.
    pub fn start(config: ControllerConfig) -> Result<Self, ControllerError> {
        let start_error = |e: String| ControllerError::Start(e);
        if !config.is_voter() {
            return Err(start_error(format!(
                "node {} is not among the controller quorum voters {:?}: every broker is also \
                 a controller for now (combined mode)",
                config.node_id,
                config.voters.iter().map(|v| v.id).collect::<Vec<_>>()
            )));
        }
        if !config.is_single() && config.listen.is_none() {
            return Err(start_error(
                "controller_listen is required when the quorum has other voters".into(),
            ));
        }
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| start_error(format!("{}: {e}", config.dir.display())))?;
        check_identity(&config.dir, &config).map_err(start_error)?;
        let log_store = LogStore::open(&config.dir).map_err(|e| start_error(e.to_string()))?;
        let view = Arc::new(MetadataView::default());
        let state_machine = StateMachine::open(&config.dir, Arc::clone(&view))
            .map_err(|e| start_error(e.to_string()))?;
        let listener = match config.listen.filter(|_| !config.is_single()) {
            Some(at) => Some(
                std::net::TcpListener::bind(at)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|e| start_error(format!("cannot listen on {at}: {e}")))?,
            ),
            None => None,
        };
        let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let incarnation = random_u64();
        let (requests, inbox) = mpsc::channel(REQUEST_QUEUE_DEPTH_MAX);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let node_view = Arc::clone(&view);
        let thread = std::thread::Builder::new()
            .name("controller".into())
            .spawn(move || {
                run(
                    config,
                    incarnation,
                    log_store,
                    state_machine,
                    node_view,
                    listener,
                    inbox,
                    ready_tx,
                )
            })
            .map_err(|e| start_error(format!("cannot start the controller thread: {e}")))?;
        let node_id = match ready_rx.recv() {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(start_error(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(start_error("the controller thread died".into()));
            }
        };
        Ok(Self {
            handle: ControllerHandle {
                view,
                requests,
                node_id,
                incarnation,
            },
            thread: Some(thread),
            listen_addr,
        })
    }

    /// Where the controller listens for its peers, when it does.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }

    /// A cloneable handle for proposing and reading the metadata, for the broker's
    /// cores; stopping stays with the `Controller`.
    pub fn handle(&self) -> ControllerHandle {
        self.handle.clone()
    }

    /// Blocks until this node's broker is registered (with this incarnation) and not
    /// fenced in the committed metadata, or the timeout passes.
    pub fn wait_registered(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let listener = self.view.listen();
            if self.is_registered() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            listener.wait_timeout(deadline - now);
        }
    }

    /// Stops the controller: with `fence_self`, first tells the quorum that this broker
    /// leads nothing any more (a controlled shutdown), so leadership moves at once
    /// instead of after the session timeout.
    pub fn shutdown(mut self, fence_self: bool) {
        let _ = self
            .handle
            .requests
            .try_send(ControlMessage::Shutdown { fence_self });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops the controller thread at once, as a crash would: no last messages, no
    /// orderly Raft shutdown. What is on disk is what a kill -9 would leave (for tests).
    pub fn crash(mut self) {
        let _ = self.handle.requests.try_send(ControlMessage::Crash);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.handle.requests.try_send(ControlMessage::Crash);
            let _ = t.join();
        }
    }
}

/// What the broker's cores hold of the controller: propose, and read the metadata.
#[derive(Clone)]
pub struct ControllerHandle {
    view: Arc<MetadataView>,
    requests: mpsc::Sender<ControlMessage>,
    node_id: BrokerId,
    incarnation: u64,
}

impl ControllerHandle {
    pub fn view(&self) -> &Arc<MetadataView> {
        &self.view
    }

    pub fn node_id(&self) -> BrokerId {
        self.node_id
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// True while the committed metadata holds this start's registration, unfenced.
    pub fn is_registered(&self) -> bool {
        self.view
            .current()
            .brokers
            .get(&self.node_id)
            .is_some_and(|b| b.incarnation == self.incarnation && !b.fenced)
    }

    /// This start's incarnation (random), as registered.
    /// True once the committed metadata holds this start's registration: everything
    /// committed before this broker started has been applied here.
    pub fn caught_up(&self) -> bool {
        self.view
            .current()
            .brokers
            .get(&self.node_id)
            .is_some_and(|b| b.incarnation == self.incarnation)
    }

    /// A controlled shutdown's first step: this broker stops heartbeating and is fenced,
    /// so the partitions it leads move to in-sync followers while it still answers.
    pub fn retire(
        &self,
    ) -> impl std::future::Future<Output = Result<Applied, ControllerError>> + use<> {
        let (tx, rx) = oneshot::channel();
        let queued = self.requests.try_send(ControlMessage::Retire(tx));
        async move {
            match queued {
                Ok(()) => rx.await.unwrap_or(Err(ControllerError::Stopped)),
                Err(mpsc::error::TrySendError::Full(_)) => Err(ControllerError::Busy),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(ControllerError::Stopped),
            }
        }
    }

    /// The quorum's state from the active controller (Kafka's DescribeQuorum).
    pub fn describe_quorum(
        &self,
    ) -> impl std::future::Future<Output = Result<QuorumState, ControllerError>> + use<> {
        let (tx, rx) = oneshot::channel();
        let queued = self.requests.try_send(ControlMessage::DescribeQuorum(tx));
        async move {
            match queued {
                Ok(()) => rx.await.unwrap_or(Err(ControllerError::Stopped)),
                Err(mpsc::error::TrySendError::Full(_)) => Err(ControllerError::Busy),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(ControllerError::Stopped),
            }
        }
    }

    /// See `Controller::propose`.
    pub fn propose(
        &self,
        command: Command,
    ) -> impl std::future::Future<Output = Result<Applied, ControllerError>> + use<> {
        let (tx, rx) = oneshot::channel();
        let queued = self.requests.try_send(ControlMessage::Propose(command, tx));
        async move {
            match queued {
                Ok(()) => rx.await.unwrap_or(Err(ControllerError::Stopped)),
                Err(mpsc::error::TrySendError::Full(_)) => Err(ControllerError::Busy),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(ControllerError::Stopped),
            }
        }
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(_) => break,
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // The clock only matters if getrandom failed.
    u64::from_le_bytes(bytes) ^ if filled < 8 { nanos } else { 0 }
}

/// A broker session as the active controller sees it.
#[derive(Clone, Copy)]
struct Session {
    incarnation: u64,
    last_heartbeat: Instant,
}

struct Node {
    id: BrokerId,
    incarnation: u64,
    config: ControllerConfig,
    raft: Raft<TypeConfig>,
    view: Arc<MetadataView>,
    sessions: Mutex<HashMap<BrokerId, Session>>,
    /// Connections to the other controllers, for forwarding proposals and heartbeats.
    /// One connection per other voter, each behind its own lock: a slow peer delays only
    /// what is sent to it.
    peers: HashMap<u64, tokio::sync::Mutex<Peer>>,
    /// Set by a controlled shutdown: no more heartbeats or registrations from this broker.
    retiring: std::sync::atomic::AtomicBool,
    /// While active: per other voter, the replicated index last seen, when it moved, and
    /// when the voter last held the whole log (for DescribeQuorum).
    replication_seen: Mutex<HashMap<u64, Seen>>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    matched: Option<u64>,
    moved_ms: i64,
    caught_up_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[allow(clippy::too_many_arguments)]
fn run(
    config: ControllerConfig,
    incarnation: u64,
    log_store: LogStore,
    state_machine: StateMachine,
    view: Arc<MetadataView>,
    listener: Option<std::net::TcpListener>,
    mut inbox: mpsc::Receiver<ControlMessage>,
    ready: std::sync::mpsc::Sender<Result<BrokerId, String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start its runtime: {e}")));
            return;
        }
    };
    runtime.block_on(async move {
        let node = match start_node(config, incarnation, log_store, state_machine, view).await {
            Ok(node) => Arc::new(node),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if let Some(listener) = listener {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    tokio::spawn(serve_rpc(Arc::clone(&node), listener));
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("controller listener: {e}")));
                    return;
                }
            }
        }
        tokio::spawn(follow_controller(Arc::clone(&node)));
        tokio::spawn(broker_lifecycle(Arc::clone(&node)));
        tokio::spawn(check_sessions(Arc::clone(&node)));
        if let Some(interval) = node.config.leader_imbalance_check_interval {
            tokio::spawn(balance_leaders(Arc::clone(&node), interval));
        }
        let _ = ready.send(Ok(node.id));
        while let Some(message) = inbox.recv().await {
            match message {
                ControlMessage::Propose(command, reply) => {
                    let node = Arc::clone(&node);
                    tokio::spawn(async move {
                        let deadline = Instant::now() + PROPOSE_DEADLINE;
                        let _ = reply.send(propose(&node, command, deadline).await);
                    });
                }
                ControlMessage::Shutdown { fence_self } => {
                    if fence_self {
                        let fence = Command::FenceBroker {
                            id: node.id,
                            incarnation: node.incarnation,
                        };
                        let deadline = Instant::now() + Duration::from_secs(3);
                        if let Err(e) = propose(&node, fence, deadline).await {
                            tracing::warn!(error = %e, "controlled shutdown: could not fence this broker");
                        }
                    }
                    if let Err(e) = node.raft.shutdown().await {
                        tracing::warn!(error = %e, "controller shutdown");
                    }
                    return;
                }
                ControlMessage::Retire(reply) => {
                    node.retiring
                        .store(true, std::sync::atomic::Ordering::Release);
                    let fence = Command::FenceBroker {
                        id: node.id,
                        incarnation: node.incarnation,
                    };
                    let node = Arc::clone(&node);
                    tokio::spawn(async move {
                        let deadline = Instant::now() + Duration::from_secs(5);
                        let _ = reply.send(propose(&node, fence, deadline).await);
                    });
                }
                ControlMessage::DescribeQuorum(reply) => {
                    let node = Arc::clone(&node);
                    tokio::spawn(async move {
                        let _ = reply.send(describe_quorum(&node).await);
                    });
                }
                ControlMessage::Crash => return,
            }
        }
    });
}

async fn start_node(
    config: ControllerConfig,
    incarnation: u64,
    log_store: LogStore,
    state_machine: StateMachine,
    view: Arc<MetadataView>,
) -> Result<Node, String> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let raft_config = Config {
        cluster_name: "controllers".into(),
        election_timeout_min: ms(config.election_timeout_min),
        election_timeout_max: ms(config.election_timeout_max),
        heartbeat_interval: ms(config.raft_heartbeat_interval),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES_MAX,
        max_in_snapshot_log_to_keep: SNAPSHOT_KEEP_ENTRIES,
        ..Default::default()
    }
    .validate()
    .map_err(|e| format!("raft configuration: {e}"))?;
    let id = u64::try_from(config.node_id).map_err(|_| "negative node id".to_owned())?;
    // Outgoing connections leave from this controller's own address (not the kernel's
    // pick), so a network partition of one node can be made by address.
    let source = config
        .listen
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    let network = Network { source };
    let raft = Raft::new(id, Arc::new(raft_config), network, log_store, state_machine)
        .await
        .map_err(|e| format!("raft: {e}"))?;
    let voters: BTreeMap<u64, BasicNode> = config
        .voters
        .iter()
        .filter_map(|v| Some((u64::try_from(v.id).ok()?, BasicNode::new(v.addr))))
        .collect();
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| format!("raft: {e}"))?;
    if !initialized {
        // Every voter initializes with the same membership on first start; openraft's vote
        // settles who leads. A node that already has a log or a vote is refused: harmless.
        match raft.initialize(voters.clone()).await {
            Ok(()) => {
                tracing::info!(voters = ?voters.keys().collect::<Vec<_>>(), "controller quorum initialized")
            }
            Err(RaftError::APIError(e)) => {
                tracing::debug!(error = %e, "quorum already initialized")
            }
            Err(RaftError::Fatal(e)) => return Err(format!("raft: {e}")),
        }
    } else if config.is_single() {
        // A one-voter quorum: no one else can win, so do not wait an election timeout.
        let _ = raft.trigger().elect().await;
    }
    Ok(Node {
        id: config.node_id,
        incarnation,
        config,
        raft,
        view,
        sessions: Mutex::new(HashMap::new()),
        peers: voters
            .iter()
            .map(|(id, node)| {
                let peer = Peer::new(node.addr.clone(), source);
                (*id, tokio::sync::Mutex::new(peer))
            })
            .collect(),
        retiring: std::sync::atomic::AtomicBool::new(false),
        replication_seen: Mutex::new(HashMap::new()),
    })
}

impl Node {
    fn is_active(&self) -> bool {
        self.view.controller() == Some(self.id)
    }

    /// Sends a request to another controller over the connection kept for it, and
    /// waits at most `timeout` for the answer (the wait for the connection included).
    async fn forward(&self, to: u64, request: &Request, timeout: Duration) -> Option<Response> {
        let started = Instant::now();
        // Only the wait for the lock is cancelled here: `Peer::call` bounds its own
        // exchange and drops the connection when it times out, so no answer is left
        // unread on it for the next request.
        let lock = tokio::time::timeout(timeout, self.peers.get(&to)?.lock()).await;
        let Ok(mut peer) = lock else {
            tracing::debug!(to, "forwarding to the active controller: connection busy");
            return None;
        };
        let left = timeout.saturating_sub(started.elapsed());
        match peer.call(request, left).await {
            Ok(response) => Some(response),
            Err(e) => {
                tracing::debug!(to, error = %e, "forwarding to the active controller failed");
                None
            }
        }
    }

    /// How long a broker waits for the active controller to take one heartbeat. A
    /// controller that froze or was cut off keeps its connections silent rather than
    /// closing them, and a heartbeat stuck there must give up in time to reach the next
    /// controller within the session that one grants every broker when it takes over:
    /// so half a session, never longer than a proposal may take.
    fn heartbeat_timeout(&self) -> Duration {
        (self.config.session_timeout / 2).min(RPC_PROPOSE_TIMEOUT)
    }

    /// Commits a command here if this node is the active controller.
    async fn propose_here(
        &self,
        command: Command,
    ) -> Result<Result<Applied, MetadataError>, ProposeError> {
        // openraft stops its core on an entry its log store cannot write: a command too
        // large for a log record is refused here instead.
        let size = serde_json::to_vec(&command).map_or(usize::MAX, |b| b.len());
        if size > crate::limits::COMMAND_BYTES_MAX {
            return Ok(Err(MetadataError::Full(format!(
                "a command of {size} bytes is over {}",
                crate::limits::COMMAND_BYTES_MAX
            ))));
        }
        let write =
            tokio::time::timeout(RPC_PROPOSE_TIMEOUT, self.raft.client_write(command)).await;
        match write {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(
                ProposeError::NotController(f.leader_id.and_then(|l| BrokerId::try_from(l).ok())),
            ),
            Ok(Err(e)) => Err(ProposeError::Unavailable(e.to_string())),
            Err(_) => Err(ProposeError::Unavailable(format!(
                "not committed within {RPC_PROPOSE_TIMEOUT:?}"
            ))),
        }
    }

    /// DescribeQuorum's answer, from this node if it is the active controller.
    fn describe_quorum_here(&self) -> Result<QuorumState, ProposeError> {
        if !self.is_active() {
            return Err(ProposeError::NotController(self.view.controller()));
        }
        let metrics = self.raft.metrics().borrow().clone();
        let next =
            |index: Option<u64>| index.map_or(0, |i| i64::try_from(i + 1).unwrap_or(i64::MAX));
        let now = now_ms();
        let seen = self
            .replication_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let last = metrics.last_log_index;
        let voters = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter_map(|id| {
                let broker = BrokerId::try_from(id).ok()?;
                if id == metrics.id {
                    return Some(VoterState {
                        id: broker,
                        log_end_offset: next(last),
                        last_fetch_ms: now,
                        last_caught_up_ms: now,
                    });
                }
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|l| l.index);
                let s = seen.get(&id);
                // Caught up now when it holds the whole log; otherwise when last seen so.
                let caught_up_now = matched.is_some() && matched >= last;
                Some(VoterState {
                    id: broker,
                    log_end_offset: next(matched),
                    last_fetch_ms: if caught_up_now {
                        now
                    } else {
                        s.map_or(-1, |s| s.moved_ms)
                    },
                    last_caught_up_ms: if caught_up_now {
                        now
                    } else {
                        s.map_or(-1, |s| s.caught_up_ms)
                    },
                })
            })
            .collect();
        Ok(QuorumState {
            leader_id: self.id,
            leader_epoch: i32::try_from(metrics.current_term).unwrap_or(i32::MAX),
            high_watermark: next(metrics.last_applied.map(|l| l.index)),
            voters,
        })
    }

    fn heartbeat_here(&self, id: BrokerId, incarnation: u64) -> Result<(), ProposeError> {
        if !self.is_active() {
            return Err(ProposeError::NotController(self.view.controller()));
        }
        let registered = self
            .view
            .current()
            .brokers
            .get(&id)
            .is_some_and(|b| b.incarnation == incarnation);
        if !registered {
            return Err(ProposeError::StaleBroker(id));
        }
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(
                id,
                Session {
                    incarnation,
                    last_heartbeat: Instant::now(),
                },
            );
        Ok(())
    }
}

/// Proposes until committed, refused, or the deadline: here when this node is active,
/// else forwarded to the active controller, waiting out elections in between.
async fn propose(
    node: &Node,
    command: Command,
    deadline: Instant,
) -> Result<Applied, ControllerError> {
    loop {
        let outcome = match node.view.controller() {
            Some(id) if id == node.id => node.propose_here(command.clone()).await,
            Some(id) => match node
                .forward(
                    id as u64,
                    &Request::Propose(command.clone()),
                    RPC_PROPOSE_TIMEOUT,
                )
                .await
            {
                Some(Response::Propose(outcome)) => outcome,
                _ => Err(ProposeError::Unavailable("no answer".into())),
            },
            None => Err(ProposeError::NotController(None)),
        };
        match outcome {
            Ok(result) => return result.map_err(ControllerError::Refused),
            Err(e) => tracing::debug!(error = %e, "proposal not taken yet"),
        }
        if Instant::now() >= deadline {
            return Err(ControllerError::Timeout(PROPOSE_DEADLINE));
        }
        tokio::time::sleep(PROPOSE_RETRY_PAUSE).await;
    }
}

/// DescribeQuorum: answered here when this node is the active controller, else by it.
async fn describe_quorum(node: &Node) -> Result<QuorumState, ControllerError> {
    let outcome = match node.view.controller() {
        Some(id) if id == node.id => node.describe_quorum_here(),
        Some(id) => match node
            .forward(id as u64, &Request::DescribeQuorum, RPC_PROPOSE_TIMEOUT)
            .await
        {
            Some(Response::DescribeQuorum(outcome)) => outcome,
            _ => Err(ProposeError::Unavailable("no answer".into())),
        },
        None => Err(ProposeError::NotController(None)),
    };
    outcome.map_err(|e| {
        tracing::debug!(error = %e, "describe quorum");
        ControllerError::Timeout(RPC_PROPOSE_TIMEOUT)
    })
}

/// Keeps `MetadataView::controller` at the leader openraft knows, and (while this node
/// leads) when each voter's replication moved and was last caught up.
async fn follow_controller(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    loop {
        let (leader, progress) = {
            let m = metrics.borrow();
            let progress = m.replication.as_ref().map(|r| {
                let matched: Vec<(u64, Option<u64>)> = r
                    .iter()
                    .map(|(id, log)| (*id, log.map(|l| l.index)))
                    .collect();
                (matched, m.last_log_index)
            });
            (m.current_leader, progress)
        };
        node.view
            .set_controller(leader.and_then(|l| BrokerId::try_from(l).ok()));
        {
            let mut seen = node
                .replication_seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match progress {
                None => seen.clear(),
                Some((matched, last)) => {
                    let now = now_ms();
                    for (id, index) in matched {
                        let entry = seen.entry(id).or_insert(Seen {
                            matched: None,
                            moved_ms: -1,
                            caught_up_ms: -1,
                        });
                        if index != entry.matched {
                            entry.matched = index;
                            entry.moved_ms = now;
                        }
                        if index.is_some() && index >= last {
                            entry.caught_up_ms = now;
                        }
                    }
                }
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Registers this node's broker, then heartbeats to the active controller; registers
/// again whenever the controller no longer knows this incarnation.
async fn broker_lifecycle(node: Arc<Node>) {
    let register = Command::RegisterBroker {
        id: node.id,
        host: node.config.advertised_host.clone(),
        port: node.config.advertised_port,
        incarnation: node.incarnation,
        source_ip: node.config.source_ip,
    };
    let mut registered = false;
    loop {
        if node.retiring.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if !registered {
            let deadline = Instant::now() + PROPOSE_DEADLINE;
            match propose(&node, register.clone(), deadline).await {
                Ok(_) => {
                    tracing::info!(
                        node = node.id,
                        "broker registered with the controller quorum"
                    );
                    registered = true;
                }
                Err(e) => {
                    tracing::warn!(node = node.id, error = %e, "broker registration failed; retrying");
                    tokio::time::sleep(PROPOSE_RETRY_PAUSE).await;
                    continue;
                }
            }
        }
        let result = match node.view.controller() {
            Some(id) if id == node.id => node.heartbeat_here(node.id, node.incarnation),
            Some(id) => match node
                .forward(
                    id as u64,
                    &Request::Heartbeat {
                        id: node.id,
                        incarnation: node.incarnation,
                    },
                    node.heartbeat_timeout(),
                )
                .await
            {
                Some(Response::Heartbeat(result)) => result,
                _ => Err(ProposeError::Unavailable("no answer".into())),
            },
            None => Err(ProposeError::NotController(None)),
        };
        match result {
            Ok(()) => {}
            Err(ProposeError::StaleBroker(_)) => registered = false,
            Err(e) => tracing::debug!(error = %e, "heartbeat not delivered"),
        }
        if registered {
            tokio::time::sleep(node.config.heartbeat_interval).await;
        }
    }
}

/// While this node is the active controller: fences brokers whose session expired and
/// unfences fenced ones that heartbeat again. A controller that just took over gives
/// every broker a full session from that moment.
async fn check_sessions(node: Arc<Node>) {
    let mut active_since: Option<Instant> = None;
    // When each registration was first seen by this active controller.
    let mut first_seen: HashMap<(BrokerId, u64), Instant> = HashMap::new();
    // When this active controller first saw each registration fenced: only a heartbeat
    // after that unfences it (a broker that fenced itself to shut down stays fenced).
    let mut fenced_seen: HashMap<(BrokerId, u64), Instant> = HashMap::new();
    loop {
        tokio::time::sleep(SESSION_CHECK_INTERVAL).await;
        if !node.is_active() {
            active_since = None;
            first_seen.clear();
            fenced_seen.clear();
            continue;
        }
        let now = Instant::now();
        let since = *active_since.get_or_insert(now);
        let sessions = node
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let metadata = node.view.current();
        // Only current registrations: bounded by the registered brokers.
        first_seen.retain(|(id, incarnation), _| {
            metadata
                .brokers
                .get(id)
                .is_some_and(|b| b.incarnation == *incarnation)
        });
        fenced_seen.retain(|(id, incarnation), _| {
            metadata
                .brokers
                .get(id)
                .is_some_and(|b| b.incarnation == *incarnation && b.fenced)
        });
        for broker in metadata.brokers.values().filter(|b| b.fenced) {
            fenced_seen
                .entry((broker.id, broker.incarnation))
                .or_insert(now);
        }
        let mut changes = Vec::new();
        for broker in metadata.brokers.values() {
            let seen = (*first_seen
                .entry((broker.id, broker.incarnation))
                .or_insert(now))
            .max(since);
            let heartbeat = sessions
                .get(&broker.id)
                .filter(|s| s.incarnation == broker.incarnation)
                .map(|s| s.last_heartbeat);
            let last = heartbeat.map_or(seen, |h| h.max(seen));
            let expired = now.duration_since(last) > node.config.session_timeout;
            if !broker.fenced && expired {
                tracing::warn!(
                    broker = broker.id,
                    silent_ms = now.duration_since(last).as_millis() as u64,
                    "broker session expired: fencing it"
                );
                changes.push(Command::FenceBroker {
                    id: broker.id,
                    incarnation: broker.incarnation,
                });
            } else if broker.fenced
                && !expired
                && heartbeat.is_some_and(|h| {
                    h > fenced_seen
                        .get(&(broker.id, broker.incarnation))
                        .copied()
                        .unwrap_or(now)
                })
            {
                tracing::info!(
                    broker = broker.id,
                    "fenced broker heartbeats again: unfencing it"
                );
                changes.push(Command::UnfenceBroker {
                    id: broker.id,
                    incarnation: broker.incarnation,
                });
            }
        }
        for command in changes {
            if let Err(e) = node.propose_here(command).await {
                tracing::debug!(error = %e, "session change not committed");
            }
        }
    }
}

/// The active controller moves leadership back to preferred replicas every `interval`
/// (Kafka's automatic preferred leader election): after a failure, leadership gathers on
/// the survivors and would stay there, one broker serving what three should.
async fn balance_leaders(node: Arc<Node>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if !node.is_active() {
            continue;
        }
        let elections = node
            .view
            .current()
            .preferred_elections(node.config.leader_imbalance_per_broker_percentage);
        for command in elections {
            if let Command::ElectPreferredLeader {
                topic, partition, ..
            } = &command
            {
                tracing::info!(%topic, partition, "moving leadership back to the preferred replica");
            }
            if let Err(e) = node.propose_here(command).await {
                tracing::debug!(error = %e, "preferred leader election not committed");
            }
        }
    }
}

/// Serves the other controllers and their brokers until the runtime stops.
async fn serve_rpc(node: Arc<Node>, listener: tokio::net::TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(RPC_CONNECTIONS_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "controller accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, "too many controller connections: closing one");
            continue;
        };
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve_connection(&node, stream).await {
                tracing::debug!(%peer, error = %e, "controller connection closed");
            }
        });
    }
}

async fn serve_connection(node: &Node, mut stream: tokio::net::TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let Ok(next) =
            tokio::time::timeout(RPC_IDLE_TIMEOUT, read_frame::<Request>(&mut stream)).await
        else {
            return Ok(());
        };
        let Some(request) = next? else {
            return Ok(());
        };
        let response = match request {
            Request::AppendEntries(rpc) => {
                Response::AppendEntries(node.raft.append_entries(rpc).await)
            }
            Request::Vote(rpc) => Response::Vote(node.raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => {
                Response::InstallSnapshot(node.raft.install_snapshot(rpc).await)
            }
            Request::Propose(command) => Response::Propose(node.propose_here(command).await),
            Request::Heartbeat { id, incarnation } => {
                Response::Heartbeat(node.heartbeat_here(id, incarnation))
            }
            Request::DescribeQuorum => Response::DescribeQuorum(node.describe_quorum_here()),
        };
        write_frame(&mut stream, &response).await?;
    }
}
