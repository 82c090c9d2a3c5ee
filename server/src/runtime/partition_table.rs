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
    topic_id: u128,
    routes: Vec<PartitionRoute>,
    /// Per partition, notified after each append; empty while the topic is not open here.
    data_events: Vec<Arc<Event>>,
}

#[derive(Debug, Default)]
pub struct PartitionTable {
    pub version: TableVersion,
    topics: HashMap<String, TopicRoutes>,
    /// Topic names by id (Fetch v13+ and Metadata v12+ name topics by id).
    names: HashMap<u128, String>,
    /// Per live broker, its advertised host and port (Fetch v16+ tells clients where a
    /// partition's new leader is, KIP-951).
    endpoints: HashMap<BrokerId, (String, i32)>,
    /// Per registered broker, the IP its outgoing connections come from (its listen IP,
    /// registered with it when not a wildcard); `None` when it registered none.
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
                        topic_id: t.topic_id,
                        routes,
                        data_events,
                    },
                )
            })
            .collect();
        let broker_ips = metadata
            .brokers
            .values()
            .map(|b| (b.id, b.source_ip.map(|ip| ip.to_canonical())))
            .collect();
        let names = metadata
            .topics
            .values()
            .map(|t| (t.topic_id, t.name.clone()))
            .collect();
        let endpoints = metadata
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| (b.id, (b.host.clone(), b.port)))
            .collect();
        Self {
            version,
            topics,
            names,
            endpoints,
            broker_ips,
        }
    }

    /// The name of the topic with id `topic_id`, if it exists.
    pub fn topic_name(&self, topic_id: u128) -> Option<&str> {
        self.names.get(&topic_id).map(String::as_str)
    }

    /// The id of topic `name`, if it exists.
    pub fn topic_id(&self, name: &str) -> Option<u128> {
        self.topics.get(name).map(|t| t.topic_id)
    }

    /// The advertised host and port of live broker `id`.
    pub fn endpoint(&self, id: BrokerId) -> Option<(&str, i32)> {
        self.endpoints
            .get(&id)
            .map(|(host, port)| (host.as_str(), *port))
    }

    /// Whether a follower fetch in the name of broker `id` may come from `peer`: yes when
    /// `peer` is the source IP that broker registered, and when nothing can be told (it
    /// listens on a wildcard, or this table does not know it yet); no when it registered
    /// another IP. Its advertised host says nothing here: behind NAT or in a container
    /// it is not where its connections come from.
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
        // Broker 1 listens on a wildcard (registers no source); its advertised host is
        // an address it does not send from (NAT, a container).
        for (id, host, source) in [
            (0, "127.0.0.2", Some("127.0.0.2")),
            (1, "203.0.113.7", None),
            (3, "::1", Some("::1")),
        ] {
            md.apply(
                &Command::RegisterBroker {
                    id,
                    host: host.into(),
                    port: 9092,
                    incarnation: 1,
                    source_ip: source.map(|s| s.parse().unwrap()),
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
        // Nothing to check against: no source registered (whatever the advertised host),
        // no registration.
        assert!(table.replica_peer_allowed(1, ip("10.1.2.3")));
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
                    source_ip: None,
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
                assignments: None,
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
