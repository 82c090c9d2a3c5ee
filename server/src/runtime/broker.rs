//! Starting and stopping the broker: one pinned thread per core, each with its own compio
//! runtime and its own partitions. One acceptor thread hands connections to the cores in
//! turn.
//!
//! Why not one SO_REUSEPORT listener per core: after a crash, the dead process's io_uring
//! teardown runs asynchronously and keeps its listening sockets in the port's reuseport
//! group for a moment; a broker restarted at once then saw some of its new connections
//! routed to those dying sockets and reset (30% of immediate restarts here).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_channel::mpsc;

use crate::config::BrokerConfig;
use crate::control::topics::Registry;
use crate::metrics::RejectKind;
use crate::runtime::limits::Refusal;
use crate::runtime::pacing::{self, Pacer};
use crate::runtime::shard::{
    BrokerShared, DrainedGuard, SHARD_INBOX_DEPTH_MAX, Shard, ShardCommand,
};

/// Longest a stopping core waits for its connections to finish their current request.
const DRAIN_WAIT_MAX: Duration = Duration::from_secs(10);
const LISTEN_BACKLOG: i32 = 1024;

pub struct RunningBroker {
    pub shared: Arc<BrokerShared>,
    pub addr: SocketAddr,
    pub io_uring: bool,
    /// Where `/metrics` is served, when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    controller: Option<cluster::Controller>,
}

impl RunningBroker {
    /// Stops accepting, lets in-flight requests finish, closes every partition cleanly.
    pub fn shutdown(mut self) {
        // First, in a cluster, a controlled shutdown: this broker stops heartbeating and
        // is fenced, so what it leads moves to in-sync followers while it still serves
        // (requests in flight get NOT_LEADER_OR_FOLLOWER and go to the new leaders). A
        // single broker has nowhere to move leadership.
        let controller = self.controller.take();
        let clustered = self.shared.config.controller_quorum_voters.is_some();
        if clustered && let Some(controller) = &controller {
            retire(controller, &self.shared);
        }
        self.shared.begin_shutdown();
        // Wake the acceptor (and the metrics thread) out of accept() so they see the flag.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(addr) = self.metrics_addr {
            let _ = std::net::TcpStream::connect(addr);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(controller) = controller {
            controller.shutdown(false);
        }
    }
}

/// Longest a controlled shutdown waits for its fence to commit and apply.
const RETIRE_WAIT_MAX: Duration = Duration::from_secs(5);

/// Fences this broker through the controller and waits until the metadata no longer
/// names it leader of anything.
fn retire(controller: &cluster::Controller, shared: &BrokerShared) {
    use event_listener::Listener;
    let me = shared.node_id();
    let deadline = Instant::now() + RETIRE_WAIT_MAX;
    if let Err(e) = futures_executor::block_on(controller.retire()) {
        tracing::warn!(error = %e, "controlled shutdown: could not fence this broker; leadership moves when its session expires");
        return;
    }
    let view = controller.view();
    loop {
        let listener = view.listen();
        let leads = view
            .current()
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.leader == me)
            .count();
        if leads == 0 {
            tracing::info!("controlled shutdown: leadership moved");
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(leads, "controlled shutdown: still leading partitions");
            return;
        }
        listener.wait_timeout(deadline - now);
    }
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

pub fn start(mut config: BrokerConfig) -> anyhow::Result<RunningBroker> {
    let started = Instant::now();
    let cores = config.core_count();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let listener = bind_listener(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    config.listen = addr;
    let metrics_listener = match config.metrics_listen {
        Some(at) => Some(
            crate::metrics_http::bind(at)
                .with_context(|| format!("cannot serve metrics on {at}"))?,
        ),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let registry = Registry::open(&config.data_dir, cores).context("cannot load topics")?;
    let controller = start_controller(&config, &registry)?;
    let (senders, inboxes): (Vec<_>, Vec<_>) = (0..cores)
        .map(|_| mpsc::channel::<ShardCommand>(SHARD_INBOX_DEPTH_MAX))
        .unzip();
    let legacy_offsets = crate::control::groups::offsets::OffsetStore::open_existing(
        &config.data_dir.join(".groups"),
    )
    .context("cannot load the committed offsets kept before __consumer_offsets")?;
    let producer_ids =
        crate::control::producer_ids::ProducerIds::open(&config.data_dir.join(".groups"))
            .context("cannot load producer ids")?;
    let shared = Arc::new(BrokerShared::new(
        config,
        registry,
        legacy_offsets,
        producer_ids,
        senders,
        controller.handle(),
    ));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<bool, String>>();
    let mut threads = Vec::with_capacity(cores);
    for (id, inbox) in inboxes.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("core-{id}"))
            .spawn(move || run_core(id, id % cpus, shared, inbox, ready))
            .context("cannot start core thread")?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut io_uring = true;
    let mut failure = None;
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(uring)) => io_uring &= uring,
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a core thread died during start".to_owned()),
        }
    }
    shared.metrics.set_started(started.elapsed(), io_uring);
    if failure.is_none() {
        let shared = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || accept_connections(listener, shared))
        {
            Ok(t) => threads.push(t),
            Err(e) => failure = Some(format!("cannot start the acceptor: {e}")),
        }
    }
    if let (None, Some(listener)) = (&failure, metrics_listener) {
        let shared = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || crate::metrics_http::serve(listener, shared))
        {
            Ok(t) => threads.push(t),
            Err(e) => failure = Some(format!("cannot start the metrics thread: {e}")),
        }
    }
    let broker = RunningBroker {
        shared,
        addr,
        io_uring,
        metrics_addr,
        threads,
        controller: Some(controller),
    };
    if let Some(e) = failure {
        broker.shutdown();
        bail!(e);
    }
    Ok(broker)
}

/// How long a single broker waits at start for its one-voter quorum to register it.
const REGISTRATION_WAIT_MAX: Duration = Duration::from_secs(30);

/// Starts this node's controller. A single broker (no quorum configured) waits until its
/// registration is committed, so it answers as before from its first request; its first
/// start with a controller imports the topics of a data directory that predates it. In a
/// cluster the broker serves at once and follows the metadata as it commits (the other
/// voters may not be up yet).
fn start_controller(
    config: &BrokerConfig,
    registry: &Registry,
) -> anyhow::Result<cluster::Controller> {
    let controller_config = config.controller_config().context("configuration")?;
    let single = controller_config.is_single();
    let fresh = !controller_config.dir.exists();
    let controller =
        cluster::Controller::start(controller_config).context("cannot start the controller")?;
    if !single {
        return Ok(controller);
    }
    if !controller.wait_registered(REGISTRATION_WAIT_MAX) {
        bail!("the controller did not register this broker within {REGISTRATION_WAIT_MAX:?}");
    }
    if fresh {
        for meta in registry.list() {
            let command = cluster::Command::CreateTopic {
                name: meta.name.clone(),
                partitions: meta.partitions,
                replication_factor: 1,
                configs: meta.configs.clone(),
                assignments: None,
            };
            match futures_executor::block_on(controller.propose(command)) {
                Ok(_)
                | Err(cluster::ControllerError::Refused(
                    cluster::MetadataError::TopicAlreadyExists(_),
                )) => tracing::info!(topic = %meta.name, "topic recorded with the controller"),
                Err(e) => bail!("cannot record topic {} with the controller: {e}", meta.name),
            }
        }
    }
    Ok(controller)
}

/// Ticks of a core's task queue run back to back before the ring is polled again (each
/// tick runs up to compio's 61 tasks), so completions are reaped at least that often
/// under load.
const TICKS_PER_POLL: u32 = 8;

/// Runs a core's main future on its runtime: `Runtime::block_on`'s loop, written out for
/// two costs of compio 0.19's that this core would pay per message at modest rates.
///
/// - `block_on` polls the ring (an `io_uring_enter`) after every tick that leaves tasks
///   queued, and a request goes through several such ticks (its connection task, the
///   partition's writer, the reply): here the queue is run until it is empty, bounded by
///   `TICKS_PER_POLL`, and then the ring is polled once.
/// - The driver wakes itself through an eventfd write unless it knows it is awake, and
///   a poll that ends without a completion (a zero-timeout poll, an expired timer)
///   leaves it thinking it is asleep, so each wake of a task by another task on this
///   same thread cost an eventfd write and a read (compio-driver 0.12.5,
///   `Driver::poll` returns before `set_awake` on a timeout). A zero-timeout poll here
///   is preceded by a wake of the driver's own waker, which marks it notified (no
///   syscall while it is awake), so that poll returns at once and marks it awake.
fn drive<F: std::future::Future>(
    runtime: &compio::runtime::Runtime,
    pacing_window: Duration,
    future: F,
) -> F::Output {
    use std::task::{Context, Poll};
    runtime.enter(|| {
        let waker = runtime.waker();
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        let mut pacer = Pacer::new(pacing_window);
        if pacer.enabled() {
            // The pacing sleep is a window, not a window plus the default 50 µs slack.
            if let Err(e) = rustix::thread::set_current_timer_slack(NonZeroU64::new(1_000)) {
                tracing::debug!(error = %e, "cannot set the core's timer slack");
            }
        }
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                runtime.run();
                return output;
            }
            let mut ticks = 1;
            let mut queued = runtime.run();
            while queued && ticks < TICKS_PER_POLL {
                queued = runtime.run();
                ticks += 1;
            }
            if queued {
                // A burst: fetches waiting for the end of the pass go with it rather than
                // after it (`runtime::pacing`).
                pacing::end_pass();
                waker.wake_by_ref();
                runtime.poll_with(Some(Duration::ZERO));
            } else if pacing::end_pass() {
                // Fetches that waited for the end of this pass run next.
            } else if let Some(window) = pacer.window() {
                // Submit what the tasks queued (their reads must be armed for the
                // kernel to queue their completions), sleep outside the ring, then take
                // everything that came (`runtime::pacing`).
                runtime.poll_with(Some(Duration::ZERO));
                std::thread::sleep(window);
                pacer.slept();
                runtime.poll_with(Some(Duration::ZERO));
            } else if pacer.enabled() {
                let waiting = Instant::now();
                runtime.poll();
                pacer.woke_after(waiting.elapsed());
            } else {
                runtime.poll();
            }
        }
    })
}

/// One core's runtime. Its ring has one issuer (this thread) and runs completions' task
/// work only when the core waits for completions (`IORING_SETUP_SINGLE_ISSUER`,
/// `DEFER_TASKRUN`, `COOP_TASKRUN`): a completion never interrupts the core with a
/// signal-like task-work run or an IPI while it works, and is handled in the batch of the
/// next wait. Kernels without these flags (before 6.1) get the plain ring.
fn core_runtime(cpu: usize) -> std::io::Result<compio::runtime::Runtime> {
    let mut proactor = compio::driver::ProactorBuilder::new();
    proactor
        .single_issuer(true)
        .defer_taskrun(true)
        .coop_taskrun(true)
        .taskrun_flag(true);
    let tuned = compio::runtime::RuntimeBuilder::new()
        .with_proactor(proactor)
        .thread_affinity(HashSet::from([cpu]))
        .build();
    match tuned {
        Ok(rt) => Ok(rt),
        Err(e) => {
            tracing::debug!(error = %e, "io_uring setup flags refused; a plain ring");
            compio::runtime::RuntimeBuilder::new()
                .thread_affinity(HashSet::from([cpu]))
                .build()
        }
    }
}

fn run_core(
    id: usize,
    cpu: usize,
    shared: Arc<BrokerShared>,
    inbox: mpsc::Receiver<ShardCommand>,
    ready: std::sync::mpsc::Sender<Result<bool, String>>,
) {
    let mut drained = DrainedGuard::new(Arc::clone(&shared));
    let runtime = match core_runtime(cpu) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("core {id}: cannot start runtime: {e}")));
            return;
        }
    };
    let pacing_window = Duration::from_micros(shared.config.read_pacing_us);
    drive(&runtime, pacing_window, async move {
        let shard = std::rc::Rc::new(Shard::new(id, Arc::clone(&shared)));
        for meta in shared.registry.list() {
            if let Err(e) = shard.open_topic(&meta).await {
                let _ = ready.send(Err(format!(
                    "core {id}: cannot open topic {}: {e}",
                    meta.name
                )));
                return;
            }
        }
        compio::runtime::spawn(std::rc::Rc::clone(&shard).serve_inbox(inbox)).detach();
        compio::runtime::spawn(retention_loop(std::rc::Rc::clone(&shard))).detach();
        if shared.config.log_cleaner_enable {
            compio::runtime::spawn(cleaner_loop(std::rc::Rc::clone(&shard))).detach();
        }
        compio::runtime::spawn(crate::runtime::replication::replication_loop(
            std::rc::Rc::clone(&shard),
        ))
        .detach();
        compio::runtime::spawn(group_timer_loop(std::rc::Rc::clone(&shard))).detach();
        if id == 0 {
            compio::runtime::spawn(crate::control::groups::hosting::host_offsets_partitions(
                std::rc::Rc::clone(&shard),
            ))
            .detach();
            compio::runtime::spawn(crate::control::metadata_follower::follow_metadata(
                std::rc::Rc::clone(&shard),
            ))
            .detach();
        }
        let uring = engine::io_mode::current() == Some(engine::IoMode::IoUring);
        let _ = ready.send(Ok(uring));
        shard.shared.stopped().await;
        let deadline = Instant::now() + DRAIN_WAIT_MAX;
        // acks=0 appends this core took but has not seen written (some perhaps still
        // queued for another core) must reach their cores before any core closes its logs.
        while (shard.connections.get() > 0 || shard.unacknowledged_bytes() > 0)
            && Instant::now() < deadline
        {
            compio::time::sleep(Duration::from_millis(5)).await;
        }
        drained.mark();
        shared.wait_all_drained().await;
        shard.close_all().await;
        tracing::debug!(core = id, "core stopped");
    });
}

/// Sleeps `every`, then true; false at once when the broker stops meanwhile.
async fn tick(shard: &Shard, every: Duration) -> bool {
    let sleep = std::pin::pin!(compio::time::sleep(every));
    let stop = std::pin::pin!(shard.shared.stopped());
    matches!(
        futures_util::future::select(sleep, stop).await,
        futures_util::future::Either::Left(_)
    )
}

async fn retention_loop(shard: std::rc::Rc<Shard>) {
    let every = Duration::from_millis(shard.config().log_retention_check_interval_ms.max(1000));
    while tick(&shard, every).await {
        shard.apply_retention();
    }
}

/// The log cleaner of one core: every `log_cleaner_backoff_ms`, compacts this core's
/// partitions of compacted topics whose dirty share reached the topic's ratio, one
/// partition at a time. It runs on the core beside the appends (the engine's cleaner
/// reads and writes through io_uring and yields between batches' I/O).
async fn cleaner_loop(shard: std::rc::Rc<Shard>) {
    let every = Duration::from_millis(shard.config().log_cleaner_backoff_ms.max(100));
    while tick(&shard, every).await {
        shard.compact_dirty_logs().await;
    }
}

/// How often group session and rebalance deadlines are checked (by each core, for the
/// groups whose `__consumer_offsets` partition it owns).
const GROUP_TICK: Duration = Duration::from_millis(100);

async fn group_timer_loop(shard: std::rc::Rc<Shard>) {
    loop {
        let sleep = std::pin::pin!(compio::time::sleep(GROUP_TICK));
        let stop = std::pin::pin!(shard.shared.stopped());
        if let futures_util::future::Either::Right(_) =
            futures_util::future::select(sleep, stop).await
        {
            return;
        }
        // This core's groups: those whose __consumer_offsets partition it owns (core 0
        // takes them all while the topic does not exist).
        let partitions = shard.shared.offsets().partitions();
        let mine = |group: &str| {
            if partitions <= 0 {
                return shard.id == 0;
            }
            let p = crate::control::groups::offsets_topic::partition_for(group, partitions);
            shard
                .shared
                .registry
                .owner(crate::control::groups::offsets_topic::OFFSETS_TOPIC, p)
                == shard.id
        };
        let emptied = shard.shared.groups().tick_where(Instant::now(), mine);
        // Groups whose last member expired: their kept state says so.
        for (group, state) in emptied {
            let shard = std::rc::Rc::clone(&shard);
            compio::runtime::spawn(async move {
                let fallback = Some(state);
                let _ = crate::control::groups::hosting::persist_group(
                    &shard,
                    group,
                    crate::control::groups::hosting::GroupRecord::Current { fallback },
                )
                .await;
            })
            .detach();
        }
    }
}

/// Accepts connections and hands them to the cores in turn, until shutdown. A
/// connection over `max_connections` or `max_connections_per_ip` is closed at once with
/// a reset, as is one for a core whose inbox is full (backpressure at the door); the
/// connections already open are not disturbed.
fn accept_connections(listener: std::net::TcpListener, shared: Arc<BrokerShared>) {
    // One long-lived sender per core: a fresh clone per message would get a slot of its
    // own every time and never see the inbox full.
    let mut senders: Vec<_> = shared.shards.clone();
    let cores = senders.len().max(1);
    let mut next = 0usize;
    let mut refusals = RefusalLog::default();
    for conn in listener.incoming() {
        if shared.stopping() {
            return;
        }
        let stream = match conn {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let slot = match shared.connection_limits.try_acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                let kind = match refusal {
                    Refusal::Total => RejectKind::MaxConnections,
                    Refusal::PerIp => RejectKind::MaxConnectionsPerIp,
                };
                shared.metrics.connection_rejected(kind);
                // A reset frees the socket at once: no TIME_WAIT left behind per refusal.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                refusals.note(peer, refusal, &shared.config);
                continue;
            }
        };
        let core = next % cores;
        next = next.wrapping_add(1);
        if let Err(e) = senders[core].try_send(ShardCommand::Connection(Box::new(
            crate::runtime::shard::Incoming {
                stream,
                peer,
                slot,
                moved: None,
            },
        ))) {
            shared.metrics.connection_rejected(RejectKind::CoreBusy);
            tracing::warn!(%peer, core, error = %e, "core cannot take the connection; closing it");
        }
    }
}

/// Warns about refused connections at most once a second, so that a flood of them
/// cannot flood the log too.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    quiet: u64,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(1);

    fn note(&mut self, peer: SocketAddr, refusal: Refusal, config: &BrokerConfig) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < Self::EVERY)
        {
            self.quiet += 1;
            return;
        }
        let (limit, max) = match refusal {
            Refusal::Total => ("max_connections", config.max_connections),
            Refusal::PerIp => ("max_connections_per_ip", config.max_connections_per_ip),
        };
        tracing::warn!(
            %peer,
            limit,
            max,
            also_refused_since_last_warning = self.quiet,
            "refusing a connection: limit reached"
        );
        self.last = Some(now);
        self.quiet = 0;
    }
}
