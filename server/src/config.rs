//! Broker configuration: Kafka's defaults, overridden by a TOML file, then by
//! `BROKER_*` environment variables, then by command-line flags.
//!
//! Limits: `max_connections`, `max_connections_per_ip`, `connections_per_core_max`,
//! `socket_request_max_bytes` (and 1 MiB for any request but Produce),
//! `queued_max_request_bytes`, `connections_max_idle_ms`, `connections_send_timeout_ms`.
//! There is no in-flight setting: a connection reads its next request only once the
//! previous response is written (Kafka's behaviour), so one request per connection is
//! in flight, and pipelined requests wait in the kernel's socket buffer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::{FlushPolicy, LogConfig, WritePath};
use serde::Deserialize;

/// Prefix of environment variables that override config keys: `BROKER_MESSAGE_MAX_BYTES`
/// sets `message_max_bytes`.
pub const ENV_PREFIX: &str = "BROKER_";
/// Most partitions `__consumer_offsets` may have (each is a partition every replica opens).
pub const OFFSETS_TOPIC_PARTITIONS_MAX: i32 = 1_000;

/// Longest read pacing window (`read_pacing_us`): 10 ms.
pub const READ_PACING_US_MAX: u64 = 10_000;

/// Largest `fetch_inline_max_bytes`: what one connection may hold in memory for a
/// response's records.
pub const FETCH_INLINE_BYTES_MAX: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Toml {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlushMode {
    /// fdatasync per write group; acks=all answers after it (group commit).
    PerAppend,
    /// fdatasync every `flush_interval_ms`.
    Interval,
    /// Leave it to the OS (Kafka's default); acks=all answers once written.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    IoUring,
    Inline,
    /// Inline for small writes, io_uring for large ones (`engine::WritePath::Adaptive`).
    Adaptive,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Host name given to clients in Metadata; the listen address when unset.
    pub advertised_host: Option<String>,
    /// Port given to clients in Metadata; the listen port when unset (set it when
    /// clients reach the broker through a proxy or NAT).
    pub advertised_port: Option<u16>,
    pub data_dir: PathBuf,
    /// Cores to run on (one pinned runtime each); 0 means all.
    pub cores: usize,
    /// Largest record batch accepted (Kafka `message.max.bytes`).
    pub message_max_bytes: usize,
    /// Largest request frame accepted (Kafka `socket.request.max.bytes`).
    pub socket_request_max_bytes: usize,
    /// Create topics on first Metadata request for them (`auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic (`num.partitions`).
    pub num_partitions: i32,
    pub log_segment_bytes: u64,
    pub log_segment_ms: u64,
    pub log_retention_ms: i64,
    /// -1: no size limit.
    pub log_retention_bytes: i64,
    pub log_retention_check_interval_ms: u64,
    /// Run the log cleaner for topics with `cleanup.policy` `compact`
    /// (`log.cleaner.enable`).
    pub log_cleaner_enable: bool,
    /// How often each core looks for partitions to compact (`log.cleaner.backoff.ms`).
    pub log_cleaner_backoff_ms: u64,
    /// Memory for one clean's key map, per core (`log.cleaner.dedupe.buffer.size`): the
    /// segments past what fits wait for the next clean.
    pub log_cleaner_dedupe_buffer_size: usize,
    pub flush: FlushMode,
    pub flush_interval_ms: u64,
    pub write_path: WriteMode,
    /// Send fetched records by io_uring splice (page cache to socket); false copies them
    /// through user space (for comparison). The polling fallback always copies.
    pub fetch_zero_copy: bool,
    /// A Fetch response whose records come to at most this many bytes is sent in one
    /// write: its ranges are read into memory (an io_uring read, served from the page
    /// cache without a worker thread) and go out with the response's other bytes. Larger
    /// ones are spliced. Two splices cost two hand-offs to io_uring's worker threads,
    /// far more than copying a few KiB; 0 splices everything.
    pub fetch_inline_max_bytes: u64,
    /// Longest a fetch may wait for data, whatever the client asks.
    pub fetch_max_wait_ms_max: u64,
    /// Read pacing: while a core serves only clients that wait on no answer (acks=0
    /// producers, consumers at the end of their partitions) and is woken more often
    /// than this, it sleeps this long and serves what came in one pass, which costs about
    /// this much end-to-end latency and saves wake-ups and responses per message; 0
    /// turns it off (`runtime::pacing`).
    pub read_pacing_us: u64,
    /// Open connections the acceptor deals to one core; more are closed at accept.
    /// Connections that moved to a core for their partitions are not counted
    /// (`max_connections` bounds them with the rest).
    pub connections_per_core_max: usize,
    /// A connection idle (or stuck mid-frame) this long is closed.
    pub connections_max_idle_ms: u64,
    /// Open client connections in all (Kafka `max.connections`); more are closed at
    /// accept. Each needs a file descriptor: the broker raises its soft `nofile` limit
    /// to the hard one at start.
    pub max_connections: usize,
    /// Open connections from one client address (Kafka `max.connections.per.ip`).
    pub max_connections_per_ip: usize,
    /// Bytes of request frames over 64 KiB read and not yet answered, across all
    /// connections (Kafka `queued.max.request.bytes`): a connection waits before reading
    /// such a frame until its bytes fit. Smaller frames never wait (so heartbeats and
    /// metadata are not stuck behind big produces); one per connection is in flight, so
    /// they add at most 64 KiB per connection. At least `socket_request_max_bytes`. A
    /// Produce request holds about twice its frame while its batches are appended (the
    /// frame, and the batch copies handed to the partitions).
    pub queued_max_request_bytes: usize,
    /// A response write that makes no progress for this long (a client that stopped
    /// reading, its socket buffer full) closes the connection with a reset. Each write
    /// step moves at most 1 MiB, and file ranges stay in the page cache while they wait,
    /// so a stalled consumer costs the broker no user-space memory.
    pub connections_send_timeout_ms: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`, OpenMetrics text); off when
    /// unset. Metrics are always counted; this only serves them.
    pub metrics_listen: Option<SocketAddr>,
    /// This broker's id in the cluster (Kafka `node.id`).
    pub node_id: i32,
    /// Where this node's controller listens for the other voters (Kafka's
    /// `CONTROLLER` listener). Required when `controller_quorum_voters` names others.
    pub controller_listen: Option<SocketAddr>,
    /// The controller quorum, Kafka's `controller.quorum.voters` format:
    /// `1@127.0.0.1:19091,2@127.0.0.1:19092,3@127.0.0.1:19093`. Unset: a one-voter quorum
    /// of this broker (the single-node default; nothing listens).
    pub controller_quorum_voters: Option<String>,
    /// Replicas of a topic created with replication factor -1, and of auto-created ones
    /// (`default.replication.factor`).
    pub default_replication_factor: i16,
    /// In-sync replicas an acks=all produce needs (`min.insync.replicas`), capped at a
    /// topic's replication factor: with fewer, acks=all is refused (NOT_ENOUGH_REPLICAS)
    /// and the high watermark does not move (KIP-966's strict min ISR).
    pub min_insync_replicas: i16,
    /// A follower that has not caught up with its leader for this long leaves the ISR
    /// (`replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// A broker that has not heartbeated to the active controller for this long is
    /// fenced: it leads nothing until it heartbeats again (`broker.session.timeout.ms`).
    pub broker_session_timeout_ms: u64,
    /// How often a broker heartbeats to the active controller
    /// (`broker.heartbeat.interval.ms`).
    pub broker_heartbeat_interval_ms: u64,
    /// Whether the active controller moves leadership back to each partition's preferred
    /// replica once it is in sync again (`auto.leader.rebalance.enable`).
    pub auto_leader_rebalance_enable: bool,
    /// How often it checks (`leader.imbalance.check.interval.seconds`).
    pub leader_imbalance_check_interval_seconds: u64,
    /// A broker's preferred partitions led elsewhere, in percent, above which they move
    /// back (`leader.imbalance.per.broker.percentage`).
    pub leader_imbalance_per_broker_percentage: u64,
    /// Partitions of `__consumer_offsets`, the compacted topic that holds committed
    /// offsets; a group belongs to one of them (`offsets.topic.num.partitions`). Read
    /// when the topic is created, on the first FindCoordinator.
    pub offsets_topic_num_partitions: i32,
    /// Its replication factor (`offsets.topic.replication.factor`); -1 means
    /// `default_replication_factor`. Creation waits until that many brokers are live.
    pub offsets_topic_replication_factor: i16,
    /// Committed offsets of a group without members expire this long after their last
    /// commit (`offsets.retention.minutes`, Kafka's 7 days).
    pub offsets_retention_minutes: u64,
    /// How often expired offsets are looked for (`offsets.retention.check.interval.ms`).
    pub offsets_retention_check_interval_ms: u64,
    /// An OffsetCommit waits this long for its write to reach the ISR
    /// (`offsets.commit.timeout.ms`).
    pub offsets_commit_timeout_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_host: None,
            advertised_port: None,
            data_dir: PathBuf::from("./data"),
            cores: 0,
            message_max_bytes: 1_048_588,
            socket_request_max_bytes: 100 * 1024 * 1024,
            auto_create_topics: true,
            num_partitions: 1,
            log_segment_bytes: 1024 * 1024 * 1024,
            log_segment_ms: 7 * 24 * 3600 * 1000,
            log_retention_ms: 7 * 24 * 3600 * 1000,
            log_retention_bytes: -1,
            log_retention_check_interval_ms: 5 * 60 * 1000,
            log_cleaner_enable: true,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_dedupe_buffer_size: 64 * 1024 * 1024,
            offsets_topic_num_partitions: 50,
            offsets_topic_replication_factor: -1,
            offsets_retention_minutes: 7 * 24 * 60,
            offsets_retention_check_interval_ms: 600_000,
            offsets_commit_timeout_ms: 5_000,
            flush: FlushMode::PerAppend,
            flush_interval_ms: 1000,
            write_path: WriteMode::Adaptive,
            fetch_zero_copy: true,
            fetch_inline_max_bytes: 64 * 1024,
            fetch_max_wait_ms_max: 30_000,
            read_pacing_us: 300,
            connections_per_core_max: 10_000,
            connections_max_idle_ms: 10 * 60 * 1000,
            max_connections: 10_000,
            max_connections_per_ip: 10_000,
            queued_max_request_bytes: 512 * 1024 * 1024,
            connections_send_timeout_ms: 30_000,
            metrics_listen: None,
            node_id: 0,
            controller_listen: None,
            controller_quorum_voters: None,
            default_replication_factor: 1,
            min_insync_replicas: 2,
            replica_lag_time_max_ms: 10_000,
            broker_session_timeout_ms: 9000,
            broker_heartbeat_interval_ms: 2000,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_seconds: 300,
            leader_imbalance_per_broker_percentage: 10,
        }
    }
}

impl BrokerConfig {
    /// Defaults, then the TOML file if given, then `BROKER_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|source| ConfigError::Toml {
                        path: path.to_owned(),
                        source: Box::new(source),
                    })?
            }
            None => toml::Table::new(),
        };
        for (key, value) in env {
            let Some(name) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            table.insert(name.to_ascii_lowercase(), env_value(&value));
        }
        let config: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.num_partitions < 1 {
            return bad(format!(
                "num_partitions = {} must be at least 1",
                self.num_partitions
            ));
        }
        if self.message_max_bytes > self.socket_request_max_bytes {
            return bad("message_max_bytes exceeds socket_request_max_bytes".into());
        }
        if self.read_pacing_us > READ_PACING_US_MAX {
            return bad(format!(
                "read_pacing_us = {} is above {READ_PACING_US_MAX} (it is added to end-to-end latency)",
                self.read_pacing_us
            ));
        }
        if self.fetch_inline_max_bytes > FETCH_INLINE_BYTES_MAX {
            return bad(format!(
                "fetch_inline_max_bytes = {} is above {FETCH_INLINE_BYTES_MAX} (memory per connection)",
                self.fetch_inline_max_bytes
            ));
        }
        if self.listen.ip().is_unspecified() && self.advertised_host.is_none() {
            return bad(format!(
                "listening on {} needs advertised_host (BROKER_ADVERTISED_HOST): clients cannot connect to a wildcard address",
                self.listen
            ));
        }
        if self.connections_max_idle_ms == 0 {
            return bad("connections_max_idle_ms must be positive".into());
        }
        if self.connections_send_timeout_ms == 0 {
            return bad("connections_send_timeout_ms must be positive".into());
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return bad("max_connections and max_connections_per_ip must be positive".into());
        }
        if self.queued_max_request_bytes < self.socket_request_max_bytes {
            return bad(format!(
                "queued_max_request_bytes = {} is below socket_request_max_bytes = {}: the largest request could never be read",
                self.queued_max_request_bytes, self.socket_request_max_bytes
            ));
        }
        if self.node_id < 0 {
            return bad(format!("node_id = {} must be at least 0", self.node_id));
        }
        if !(1..=OFFSETS_TOPIC_PARTITIONS_MAX).contains(&self.offsets_topic_num_partitions) {
            return bad(format!(
                "offsets_topic_num_partitions = {} must be 1 to {OFFSETS_TOPIC_PARTITIONS_MAX}",
                self.offsets_topic_num_partitions
            ));
        }
        if self.offsets_topic_replication_factor == 0 || self.offsets_topic_replication_factor < -1
        {
            return bad(
                "offsets_topic_replication_factor must be at least 1 (or -1 for the default)"
                    .into(),
            );
        }
        if self.offsets_commit_timeout_ms == 0 || self.offsets_retention_check_interval_ms == 0 {
            return bad(
                "offsets_commit_timeout_ms and offsets_retention_check_interval_ms must be positive"
                    .into(),
            );
        }
        if self.default_replication_factor < 1 || self.min_insync_replicas < 1 {
            return bad(
                "default_replication_factor and min_insync_replicas must be at least 1".into(),
            );
        }
        if self.leader_imbalance_check_interval_seconds == 0 {
            return bad("leader_imbalance_check_interval_seconds must be positive".into());
        }
        if self.leader_imbalance_per_broker_percentage > 100 {
            return bad(format!(
                "leader_imbalance_per_broker_percentage = {} must be at most 100",
                self.leader_imbalance_per_broker_percentage
            ));
        }
        if self.replica_lag_time_max_ms == 0 {
            return bad("replica_lag_time_max_ms must be positive".into());
        }
        if self.broker_heartbeat_interval_ms == 0
            || self.broker_session_timeout_ms <= self.broker_heartbeat_interval_ms
        {
            return bad(format!(
                "broker_session_timeout_ms = {} must be longer than broker_heartbeat_interval_ms = {} (and that positive)",
                self.broker_session_timeout_ms, self.broker_heartbeat_interval_ms
            ));
        }
        if let Some(voters) = &self.controller_quorum_voters {
            let voters = cluster::parse_voters(voters)
                .map_err(|e| ConfigError::Invalid(format!("controller_quorum_voters: {e}")))?;
            if !voters.iter().any(|v| v.id == self.node_id) {
                return bad(format!(
                    "node_id = {} is not among controller_quorum_voters: every broker is also a controller (combined mode)",
                    self.node_id
                ));
            }
            if voters.len() > 1 && self.controller_listen.is_none() {
                return bad(
                    "controller_listen is required when controller_quorum_voters names other nodes"
                        .into(),
                );
            }
        }
        if self.socket_request_max_bytes > i32::MAX as usize {
            return bad("socket_request_max_bytes exceeds 2 GiB".into());
        }
        self.log_config()
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Cores to run on.
    pub fn core_count(&self) -> usize {
        if self.cores == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.cores
        }
    }

    /// The engine configuration every partition starts from.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.log_segment_bytes,
            segment_age_max: Some(Duration::from_millis(self.log_segment_ms)),
            batch_bytes_max: self.message_max_bytes,
            flush_policy: match self.flush {
                FlushMode::PerAppend => FlushPolicy::EveryAppend,
                FlushMode::Interval => {
                    FlushPolicy::Interval(Duration::from_millis(self.flush_interval_ms.max(1)))
                }
                FlushMode::None => FlushPolicy::Never,
            },
            write_path: match self.write_path {
                WriteMode::IoUring => WritePath::IoUring,
                WriteMode::Inline => WritePath::Inline,
                WriteMode::Adaptive => WritePath::Adaptive,
            },
            retention_bytes: u64::try_from(self.log_retention_bytes).ok(),
            retention_age: u64::try_from(self.log_retention_ms)
                .ok()
                .map(Duration::from_millis),
            ..LogConfig::default()
        }
    }

    /// The controller's configuration: a one-voter quorum of this broker unless
    /// `controller_quorum_voters` says otherwise. Call after `validate`.
    pub fn controller_config(&self) -> Result<cluster::ControllerConfig, ConfigError> {
        let mut c = cluster::ControllerConfig::single(
            self.node_id,
            self.data_dir.join(".cluster"),
            self.advertised_host(),
            self.advertised_port(),
        );
        if let Some(voters) = &self.controller_quorum_voters {
            c.voters = cluster::parse_voters(voters)
                .map_err(|e| ConfigError::Invalid(format!("controller_quorum_voters: {e}")))?;
            c.listen = self.controller_listen;
        }
        // Follower fetches leave from the listen IP (`kafka/client.rs` binds to it).
        c.source_ip = Some(self.listen.ip()).filter(|ip| !ip.is_unspecified());
        c.session_timeout = Duration::from_millis(self.broker_session_timeout_ms);
        c.heartbeat_interval = Duration::from_millis(self.broker_heartbeat_interval_ms);
        c.leader_imbalance_check_interval = self
            .auto_leader_rebalance_enable
            .then(|| Duration::from_secs(self.leader_imbalance_check_interval_seconds));
        c.leader_imbalance_per_broker_percentage = self.leader_imbalance_per_broker_percentage;
        Ok(c)
    }

    pub fn advertised_port(&self) -> i32 {
        i32::from(self.advertised_port.unwrap_or(self.listen.port()))
    }

    /// The replication factor `__consumer_offsets` is created with.
    pub fn offsets_topic_replication_factor(&self) -> i16 {
        if self.offsets_topic_replication_factor == -1 {
            self.default_replication_factor
        } else {
            self.offsets_topic_replication_factor
        }
    }

    pub fn advertised_host(&self) -> String {
        self.advertised_host
            .clone()
            .unwrap_or_else(|| self.listen.ip().to_string())
    }
}

/// Environment values are typed the way TOML would read them: integers, booleans,
/// otherwise strings.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = raw.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(raw.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn defaults_are_kafkas() {
        let c = BrokerConfig::load(None, env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(c.message_max_bytes, 1_048_588);
        assert_eq!(c.socket_request_max_bytes, 100 * 1024 * 1024);
        assert!(c.auto_create_topics);
        assert_eq!(c.num_partitions, 1);
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            "num_partitions = 3\nflush = \"none\"\nlisten = \"127.0.0.1:1234\"\n",
        )
        .unwrap();
        let c = BrokerConfig::load(
            Some(&path),
            env(&[
                ("BROKER_NUM_PARTITIONS", "6"),
                ("OTHER", "x"),
                ("BROKER_AUTO_CREATE_TOPICS", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(c.num_partitions, 6);
        assert_eq!(c.flush, FlushMode::None);
        assert!(!c.auto_create_topics);
        assert_eq!(c.listen.port(), 1234);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(BrokerConfig::load(None, env(&[("BROKER_NO_SUCH_KEY", "1")])).is_err());
        assert!(BrokerConfig::load(None, env(&[("BROKER_NUM_PARTITIONS", "0")])).is_err());
        assert!(BrokerConfig::load(None, env(&[("BROKER_FLUSH", "sometimes")])).is_err());
        assert!(
            BrokerConfig::load(None, env(&[("BROKER_QUEUED_MAX_REQUEST_BYTES", "1048576")]))
                .is_err(),
            "a budget below the largest frame"
        );
        assert!(BrokerConfig::load(None, env(&[("BROKER_MAX_CONNECTIONS", "0")])).is_err());
    }

    #[test]
    fn given_cluster_keys_should_parse_voters_and_refuse_inconsistent_ones() {
        let voters = "1@127.0.0.1:19091,2@127.0.0.1:19092,3@127.0.0.1:19093";
        let c = BrokerConfig::load(
            None,
            env(&[
                ("BROKER_NODE_ID", "2"),
                ("BROKER_CONTROLLER_LISTEN", "127.0.0.1:19092"),
                ("BROKER_CONTROLLER_QUORUM_VOTERS", voters),
                ("BROKER_DEFAULT_REPLICATION_FACTOR", "3"),
            ]),
        )
        .unwrap();
        let cc = c.controller_config().unwrap();
        assert_eq!(cc.voters.len(), 3);
        assert!(!cc.is_single());
        assert_eq!(c.default_replication_factor, 3);
        // Not a voter; no controller listener; a bad list.
        assert!(
            BrokerConfig::load(
                None,
                env(&[
                    ("BROKER_NODE_ID", "4"),
                    ("BROKER_CONTROLLER_LISTEN", "127.0.0.1:19092"),
                    ("BROKER_CONTROLLER_QUORUM_VOTERS", voters)
                ])
            )
            .is_err()
        );
        assert!(
            BrokerConfig::load(
                None,
                env(&[
                    ("BROKER_NODE_ID", "1"),
                    ("BROKER_CONTROLLER_QUORUM_VOTERS", voters)
                ])
            )
            .is_err()
        );
        assert!(
            BrokerConfig::load(
                None,
                env(&[("BROKER_CONTROLLER_QUORUM_VOTERS", "1@nowhere")])
            )
            .is_err()
        );
        let single = BrokerConfig::default().controller_config().unwrap();
        assert!(single.is_single());
    }

    #[test]
    fn limits_and_metrics_address_from_env() {
        let c = BrokerConfig::load(
            None,
            env(&[
                ("BROKER_MAX_CONNECTIONS", "100"),
                ("BROKER_MAX_CONNECTIONS_PER_IP", "10"),
                ("BROKER_CONNECTIONS_SEND_TIMEOUT_MS", "500"),
                ("BROKER_METRICS_LISTEN", "127.0.0.1:9100"),
            ]),
        )
        .unwrap();
        assert_eq!((c.max_connections, c.max_connections_per_ip), (100, 10));
        assert_eq!(c.connections_send_timeout_ms, 500);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(BrokerConfig::default().metrics_listen, None);
    }
}
