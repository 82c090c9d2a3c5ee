//! The controller's configuration, and the identity its directory remembers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::VOTERS_MAX;
use crate::metadata::BrokerId;

/// One member of the controller quorum: `id@host:port` in Kafka's
/// `controller.quorum.voters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voter {
    pub id: BrokerId,
    pub addr: SocketAddr,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VotersError {
    #[error("voter {0:?}: expected id@host:port")]
    Syntax(String),
    #[error("voter {0:?}: the id must be an integer from 0")]
    Id(String),
    #[error("voter {0:?}: the address must be an IP address and port ({1})")]
    Address(String, String),
    #[error("voter id {0} is named twice")]
    Duplicate(BrokerId),
    #[error("{0} voters: at most {VOTERS_MAX}")]
    TooMany(usize),
    #[error("no voters named")]
    Empty,
}

/// Parses Kafka's voter list: `1@127.0.0.1:19091,2@127.0.0.1:19092,3@127.0.0.1:19093`.
pub fn parse_voters(text: &str) -> Result<Vec<Voter>, VotersError> {
    let mut voters: Vec<Voter> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| VotersError::Syntax(item.to_owned()))?;
        let id: BrokerId = id
            .parse()
            .ok()
            .filter(|id: &BrokerId| *id >= 0)
            .ok_or_else(|| VotersError::Id(item.to_owned()))?;
        let addr: SocketAddr = addr.parse().map_err(|e: std::net::AddrParseError| {
            VotersError::Address(item.to_owned(), e.to_string())
        })?;
        if voters.iter().any(|v| v.id == id) {
            return Err(VotersError::Duplicate(id));
        }
        voters.push(Voter { id, addr });
    }
    if voters.is_empty() {
        return Err(VotersError::Empty);
    }
    if voters.len() > VOTERS_MAX {
        return Err(VotersError::TooMany(voters.len()));
    }
    Ok(voters)
}

/// What a controller needs to run, and what its broker registers.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub node_id: BrokerId,
    /// The quorum. A single voter that is this node needs no network: nothing listens.
    pub voters: Vec<Voter>,
    /// Where this node's controller listens (required when there are other voters).
    pub listen: Option<SocketAddr>,
    /// The controller's own directory (log, vote, snapshot, identity).
    pub dir: PathBuf,
    /// What this node's broker registers: where clients reach it.
    pub advertised_host: String,
    pub advertised_port: i32,
    /// The IP its broker's outgoing connections come from (its listen IP, when not a
    /// wildcard): registered, so leaders count follower fetches only from there.
    pub source_ip: Option<std::net::IpAddr>,
    /// A broker without a heartbeat for this long is fenced (Kafka's
    /// `broker.session.timeout.ms`).
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Raft's election timeout range, and the leader's heartbeat to the other voters.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub raft_heartbeat_interval: Duration,
    /// How often the active controller moves leadership back to preferred replicas
    /// (Kafka's `leader.imbalance.check.interval.seconds`); None: never
    /// (`auto.leader.rebalance.enable = false`).
    pub leader_imbalance_check_interval: Option<Duration>,
    /// A broker's preferred partitions led elsewhere, in percent, above which they move
    /// back (`leader.imbalance.per.broker.percentage`).
    pub leader_imbalance_per_broker_percentage: u64,
}

impl ControllerConfig {
    /// A one-voter quorum of this node: the embedded single-broker default.
    pub fn single(node_id: BrokerId, dir: PathBuf, host: String, port: i32) -> Self {
        Self {
            node_id,
            voters: vec![Voter {
                id: node_id,
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            }],
            listen: None,
            dir,
            advertised_host: host,
            advertised_port: port,
            source_ip: None,
            session_timeout: Duration::from_millis(9000),
            heartbeat_interval: Duration::from_millis(1000),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            raft_heartbeat_interval: Duration::from_millis(250),
            leader_imbalance_check_interval: Some(Duration::from_secs(300)),
            leader_imbalance_per_broker_percentage: 10,
        }
    }

    pub fn is_single(&self) -> bool {
        self.voters.len() == 1 && self.voters[0].id == self.node_id
    }

    pub fn is_voter(&self) -> bool {
        self.voters.iter().any(|v| v.id == self.node_id)
    }
}

/// What a controller directory was created for. A node started with another id or
/// another quorum would join the wrong cluster or split one: it refuses to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: BrokerId,
    /// Voter ids in order; addresses may change between starts.
    pub voters: Vec<BrokerId>,
}

pub const IDENTITY_FILE: &str = "identity";

/// Checks the directory's identity, writing it on first start.
pub fn check_identity(dir: &Path, config: &ControllerConfig) -> Result<(), String> {
    let mut voters: Vec<BrokerId> = config.voters.iter().map(|v| v.id).collect();
    voters.sort_unstable();
    let wanted = Identity {
        node_id: config.node_id,
        voters,
    };
    let found =
        crate::log_store::read_small::<Identity>(dir, IDENTITY_FILE).map_err(|e| e.to_string())?;
    match found {
        Some(found) if found == wanted => Ok(()),
        Some(found) => Err(format!(
            "{} belongs to node {} of the quorum {:?}, but this broker is configured as node {} \
             of {:?}: start it with its own data directory, or with the settings it was \
             created with",
            dir.display(),
            found.node_id,
            found.voters,
            wanted.node_id,
            wanted.voters
        )),
        None => crate::log_store::write_small(dir, IDENTITY_FILE, &wanted, true)
            .map_err(|e| format!("{}: {e}", dir.join(IDENTITY_FILE).display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_kafka_voter_list_should_parse_and_refuse_bad_ones() {
        let v = parse_voters("1@127.0.0.1:19091,2@127.0.0.2:19092, 3@127.0.0.3:19093").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[1].id, 2);
        assert_eq!(v[2].addr, "127.0.0.3:19093".parse().unwrap());
        assert!(matches!(
            parse_voters("1@x:1"),
            Err(VotersError::Address(..))
        ));
        assert!(matches!(
            parse_voters("127.0.0.1:1"),
            Err(VotersError::Syntax(_))
        ));
        assert!(matches!(
            parse_voters("-1@127.0.0.1:1"),
            Err(VotersError::Id(_))
        ));
        assert_eq!(
            parse_voters("1@127.0.0.1:1,1@127.0.0.1:2"),
            Err(VotersError::Duplicate(1))
        );
        assert_eq!(parse_voters(""), Err(VotersError::Empty));
    }

    #[test]
    fn given_directory_of_another_node_should_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            ControllerConfig::single(1, dir.path().to_owned(), "127.0.0.1".into(), 9092);
        check_identity(dir.path(), &config).unwrap();
        check_identity(dir.path(), &config).unwrap();
        config.node_id = 2;
        config.voters[0].id = 2;
        let e = check_identity(dir.path(), &config).unwrap_err();
        assert!(e.contains("node 1"), "{e}");
    }
}
