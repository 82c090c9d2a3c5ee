//! A core's partition table: for each partition of the committed metadata, its leader,
//! leader epoch, this broker's role, the core that owns it here, and the event a long-polling fetch waits on, rebuilt by the core itself
//! when the metadata version (or the version applied locally) moves. The produce, fetch
//! and list-offsets paths ask it whether this broker leads a partition and what to wait
//! on; they read two atomics and this core's own copy, never a shared lock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use event_listener::Event;

use cluster::{BrokerId, Metadata, NO_LEADER};

use crate::kafka::protocol::error_code;

/// This broker's part in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    /// Not a replica here: requests for it go to the leader.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRoute {
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub role: Role,
    /// The core of this broker that owns the partition (where it is open, if it is).
    pub core: usize,
}

/// Which versions a table was built from: the committed metadata's, and the one this
/// broker had applied locally (partitions opened, their events made).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableVersion {
    pub committed: u64,
    pub applied: u64,
}

#[derive(Debug, Default)]
struct TopicRoutes {
    routes: Vec<PartitionRoute>,
    /// Per partition, notified after each append; empty while the topic is not open here.
    data_events: Vec<Arc<Event>>,
}

#[derive(Debug, Default)]
pub struct PartitionTable {
    pub version: TableVersion,
    topics: HashMap<String, TopicRoutes>,
    /// Per registered broker, the IP its listener registered, when that is an IP literal
    /// and not unspecified (what its outgoing connections come from); `None` otherwise.
    broker_ips: HashMap<BrokerId, Option<IpAddr>>,
}

impl PartitionTable {
    /// `me` is this broker; `core_of` places a partition on a core; `data_events` gives a
    /// topic's per-partition append events, where it is open here.
    pub fn build(
        version: TableVersion,
        metadata: &Metadata,
        me: BrokerId,
        core_of: impl Fn(&str, i32) -> usize,
        data_events: impl Fn(&str) -> Vec<Arc<Event>>,
    ) -> Self {
        let topics = metadata
            .topics
            .values()
            .map(|t| {
                let routes = t
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(index, p)| PartitionRoute {
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                        role: if p.leader == me {
                            Role::Leader
                        } else if p.replicas.contains(&me) {
                            Role::Follower
                        } else {
                            Role::None
                        },
                        core: core_of(&t.name, i32::try_from(index).unwrap_or(i32::MAX)),
                    })
                    .collect();
                let data_events = data_events(&t.name);
                (
                    t.name.clone(),
                    TopicRoutes {
                        routes,
                        data_events,
                    },
                )
            })
            .collect();
        let broker_ips = metadata
            .brokers
            .values()
            .map(|b| {
                let ip = b
                    .host
                    .parse::<IpAddr>()
                    .ok()
                    .filter(|ip| !ip.is_unspecified())
                    .map(|ip| ip.to_canonical());
                (b.id, ip)
            })
            .collect();
        Self {
            version,
            topics,
            broker_ips,
        }
    }

    /// Whether a follower fetch in the name of broker `id` may come from `peer`: yes when
    /// `peer` is the IP that broker registered, and when nothing can be told (a host
    /// name, an unspecified address, a broker this table does not know yet); no when
    /// the broker registered another IP.
    pub fn replica_peer_allowed(&self, id: BrokerId, peer: IpAddr) -> bool {
        match self.broker_ips.get(&id) {
            Some(Some(ip)) => *ip == peer.to_canonical(),
            Some(None) | None => true,
        }
    }

    pub fn route(&self, topic: &str, partition: i32) -> Option<PartitionRoute> {
        self.topics
            .get(topic)?
            .routes
            .get(usize::try_from(partition).ok()?)
            .copied()
    }

    /// The event notified after each append to the partition, when it is open here.
    pub fn data_event(&self, topic: &str, partition: i32) -> Option<&Arc<Event>> {
        self.topics
            .get(topic)?
            .data_events
            .get(usize::try_from(partition).ok()?)
    }

    /// Whether `me` may serve the partition as its leader, as a Kafka error code:
    /// UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE (no leader now), or
    /// NOT_LEADER_OR_FOLLOWER (another broker leads; the client refreshes its metadata).
    pub fn check_leader(&self, me: BrokerId, topic: &str, partition: i32) -> Result<(), i16> {
        match self.route(topic, partition) {
            None => Err(error_code::UNKNOWN_TOPIC_OR_PARTITION),
            Some(r) if r.leader == me => Ok(()),
            Some(r) if r.leader == NO_LEADER => Err(error_code::LEADER_NOT_AVAILABLE),
            Some(_) => Err(error_code::NOT_LEADER_OR_FOLLOWER),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster::Command;

    #[test]
    fn given_registered_listener_ips_should_allow_replica_fetches_only_from_them() {
        let mut md = Metadata::default();
        for (id, host) in [
            (0, "127.0.0.2"),
            (1, "0.0.0.0"),
            (2, "broker-2.example"),
            (3, "::1"),
        ] {
            md.apply(
                &Command::RegisterBroker {
                    id,
                    host: host.into(),
                    port: 9092,
                    incarnation: 1,
                },
                0,
            )
            .unwrap();
        }
        let table =
            PartitionTable::build(TableVersion::default(), &md, 0, |_, _| 0, |_| Vec::new());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(table.replica_peer_allowed(0, ip("127.0.0.2")));
        // A dual-stack listener sees IPv4 peers as mapped IPv6 addresses.
        assert!(table.replica_peer_allowed(0, ip("::ffff:127.0.0.2")));
        assert!(!table.replica_peer_allowed(0, ip("127.0.0.1")));
        assert!(!table.replica_peer_allowed(0, ip("10.1.2.3")));
        assert!(table.replica_peer_allowed(3, ip("::1")));
        assert!(!table.replica_peer_allowed(3, ip("127.0.0.1")));
        // Nothing to check against: an unspecified address, a host name, no registration.
        assert!(table.replica_peer_allowed(1, ip("10.1.2.3")));
        assert!(table.replica_peer_allowed(2, ip("10.1.2.3")));
        assert!(table.replica_peer_allowed(7, ip("10.1.2.3")));
    }

    #[test]
    fn given_metadata_should_answer_leadership_per_partition() {
        let mut md = Metadata::default();
        for id in 0..2 {
            md.apply(
                &Command::RegisterBroker {
                    id,
                    host: "127.0.0.1".into(),
                    port: 9092,
                    incarnation: 1,
                },
                0,
            )
            .unwrap();
        }
        md.apply(
            &Command::CreateTopic {
                name: "t".into(),
                partitions: 2,
                replication_factor: 1,
                configs: Default::default(),
            },
            1,
        )
        .unwrap();
        let table = PartitionTable::build(
            TableVersion::default(),
            &md,
            0,
            |_, p| p as usize,
            |_| Vec::new(),
        );
        let l0 = table.route("t", 0).unwrap().leader;
        assert_eq!(table.route("t", 1).unwrap().core, 1);
        assert_eq!(
            table.route("t", 0).unwrap().role,
            if l0 == 0 { Role::Leader } else { Role::None }
        );
        let l1 = table.route("t", 1).unwrap().leader;
        assert_ne!(l0, l1);
        assert_eq!(table.check_leader(l0, "t", 0), Ok(()));
        assert_eq!(
            table.check_leader(l0, "t", 1),
            Err(error_code::NOT_LEADER_OR_FOLLOWER)
        );
        assert_eq!(
            table.check_leader(l0, "t", 2),
            Err(error_code::UNKNOWN_TOPIC_OR_PARTITION)
        );
        assert_eq!(
            table.check_leader(l0, "u", 0),
            Err(error_code::UNKNOWN_TOPIC_OR_PARTITION)
        );
        md.apply(
            &Command::FenceBroker {
                id: l1,
                incarnation: 1,
            },
            0,
        )
        .unwrap();
        let table = PartitionTable::build(
            TableVersion::default(),
            &md,
            0,
            |_, p| p as usize,
            |_| Vec::new(),
        );
        assert_eq!(
            table.check_leader(l0, "t", 1),
            Err(error_code::LEADER_NOT_AVAILABLE)
        );
    }
}
