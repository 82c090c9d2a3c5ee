//! The cluster metadata: what the controller quorum commits, and the one function that
//! changes it. Pure: no I/O, no clock, no randomness. Every replica applies the same
//! commands in the same order and reaches the same state, so everything here must be
//! deterministic (placement included: it reads only the state and the command).
//!
//! The model is KRaft's: broker registrations with an incarnation and a fenced flag, topics
//! with their configs, and per partition the replicas, leader, leader epoch, ISR and
//! partition epoch. A partition's leader comes only from its ISR (no unclean election).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::placement;

/// A broker's id, as Kafka numbers them (`node.id`): non-negative.
pub type BrokerId = i32;

/// `leader` of a partition that has none.
pub const NO_LEADER: BrokerId = -1;

/// Most partitions one topic may have (the server checks this before submitting; the
/// state machine checks again, so a hostile peer cannot make every replica allocate).
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

/// Most brokers a cluster may register.
pub const BROKERS_MAX: usize = 1_000;

/// Most topics the metadata holds.
pub const TOPICS_MAX: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub id: BrokerId,
    /// Where clients reach this broker (its advertised listener).
    pub host: String,
    pub port: i32,
    /// Drawn at random by each start of the broker process: a registration with a new
    /// incarnation replaces the old one, and heartbeats of the old one are refused.
    pub incarnation: u64,
    /// The IP address its outgoing connections (follower fetches) come from, when it
    /// listens on one: the leader counts a follower fetch only from there. None: not
    /// checked (a wildcard listener; or a registration from before this field).
    #[serde(default)]
    pub source_ip: Option<std::net::IpAddr>,
    /// A fenced broker leads nothing and is not listed to clients: its session expired
    /// (or it shut down) and it has not heartbeated since.
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Brokers that hold a copy, the preferred leader first.
    pub replicas: Vec<BrokerId>,
    /// The in-sync replicas: every replica at creation; then changed only by the leader's
    /// `AlterPartition` (a follower fell behind or caught up) and by fencing. Never empty:
    /// the last member stays even when fenced, so that no out-of-sync replica can lead.
    pub isr: Vec<BrokerId>,
    pub leader: BrokerId,
    /// Bumped by every change of leader (and by every leaderless transition).
    pub leader_epoch: i32,
    /// Bumped by every change of this record (leader or ISR): fences stale updates.
    pub partition_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    /// Unique per creation (a topic deleted and created again gets a new id).
    pub topic_id: u128,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionRecord>,
}

impl TopicRecord {
    pub fn replication_factor(&self) -> usize {
        self.partitions.first().map_or(0, |p| p.replicas.len())
    }
}

/// The committed state. Cheap to share: the controller publishes it as an `Arc` after each
/// applied batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub brokers: BTreeMap<BrokerId, BrokerRegistration>,
    pub topics: BTreeMap<String, TopicRecord>,
    /// Where the next topic's replica assignment starts, so successive topics put their
    /// first leader on different brokers.
    pub placement_cursor: u64,
    /// The first producer id not yet handed to any broker (ids go out in blocks, so two
    /// brokers never give the same id to two idempotent producers).
    #[serde(default)]
    pub next_producer_id: i64,
}

/// Producer ids per block a broker takes (Kafka's AllocateProducerIds hands out 1000).
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// A change proposed to the controller. Applied in log order by every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A broker (re)starts: a new incarnation replaces the old one and is unfenced.
    RegisterBroker {
        id: BrokerId,
        host: String,
        port: i32,
        incarnation: u64,
        /// See `BrokerRegistration::source_ip`.
        #[serde(default)]
        source_ip: Option<std::net::IpAddr>,
    },
    /// The active controller saw no heartbeat from this incarnation for the session
    /// timeout, or the broker is shutting down: it leads nothing from now on.
    FenceBroker { id: BrokerId, incarnation: u64 },
    /// A fenced incarnation heartbeats again.
    UnfenceBroker { id: BrokerId, incarnation: u64 },
    CreateTopic {
        name: String,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        /// Replicas per partition chosen by the client (`--replica-assignment`), each its
        /// first the leader; then `partitions` and `replication_factor` come from them.
        #[serde(default)]
        assignments: Option<Vec<Vec<BrokerId>>>,
    },
    DeleteTopic {
        name: String,
        /// Named by id (DeleteTopics v6): applied only to that incarnation of the name.
        #[serde(default)]
        topic_id: Option<u128>,
    },
    /// A broker takes the next block of producer ids, starting at `at_least` or later
    /// (ids it handed out before it had a controller stay used).
    AllocateProducerIds { broker: BrokerId, at_least: i64 },
    /// The leader of a partition changes its ISR (Kafka's AlterPartition): a follower fell
    /// behind for `replica_lag_time_max_ms`, or caught up. Applied only when the leader,
    /// leader epoch and partition epoch are those it names (a stale proposal is refused),
    /// and only with members that are replicas and, when added, not fenced.
    AlterPartition {
        topic: String,
        topic_id: u128,
        partition: i32,
        leader: BrokerId,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<BrokerId>,
    },
    /// Leadership goes back to the partition's preferred replica (its first), which is
    /// live and in the ISR (Kafka's preferred leader election, `auto.leader.rebalance`).
    /// Applied only at the leader epoch it names; a new leader epoch.
    ElectPreferredLeader {
        topic: String,
        topic_id: u128,
        partition: i32,
        leader_epoch: i32,
    },
    /// The topic grows to `count` partitions (Kafka's CreatePartitions): the new ones get
    /// replicas on live brokers as a new topic's would, at the topic's replication
    /// factor, or those of `assignments` (one list per new partition, its first the
    /// leader). Applied only to the topic with this id; partitions are never removed.
    CreatePartitions {
        topic: String,
        topic_id: u128,
        count: i32,
        #[serde(default)]
        assignments: Option<Vec<Vec<BrokerId>>>,
    },
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing to change (a no-op entry, a repeated fence, a membership change).
    Nothing,
    BrokerRegistered,
    BrokerFenced {
        leaderless: usize,
    },
    BrokerUnfenced,
    TopicCreated(TopicRecord),
    TopicDeleted,
    /// Producer ids `start..end` are this broker's to hand out.
    ProducerIds {
        start: i64,
        end: i64,
    },
    /// The new ISR is committed with this partition epoch.
    PartitionAltered {
        partition_epoch: i32,
    },
    /// The preferred replica leads from this leader epoch.
    PreferredLeaderElected {
        leader_epoch: i32,
    },
    /// The topic has this many partitions now.
    PartitionsCreated {
        count: i32,
    },
}

/// Why a command was refused. Each maps to one Kafka error code in the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetadataError {
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("replication factor {requested} is larger than the {live} live brokers")]
    InvalidReplicationFactor { requested: i16, live: usize },
    #[error("partition count {0} is out of range 1..={PARTITIONS_PER_TOPIC_MAX}")]
    InvalidPartitions(i32),
    #[error("invalid replica assignment: {0}")]
    InvalidAssignment(String),
    #[error("broker {0} is not registered, or with another incarnation")]
    StaleBroker(BrokerId),
    #[error("invalid broker registration: {0}")]
    InvalidRegistration(String),
    #[error("the cluster metadata is full: {0}")]
    Full(String),
    /// The proposer's view of the partition is out of date (another leader, epoch or ISR
    /// change came first).
    #[error(
        "stale partition change for {topic}-{partition}: leader {leader} at epochs \
         {leader_epoch}/{partition_epoch} is not the current one"
    )]
    StalePartition {
        topic: String,
        partition: i32,
        leader: BrokerId,
        leader_epoch: i32,
        partition_epoch: i32,
    },
    #[error("invalid ISR for {topic}-{partition}: {reason}")]
    InvalidIsr {
        topic: String,
        partition: i32,
        reason: String,
    },
}

pub type ApplyResult = Result<Applied, MetadataError>;

/// Replica lists a client chose: each of `rf` (at least one) distinct live brokers.
fn check_assignment(
    lists: &[Vec<BrokerId>],
    rf: usize,
    live: &[BrokerId],
) -> Result<(), MetadataError> {
    for list in lists {
        let distinct: std::collections::BTreeSet<_> = list.iter().collect();
        if rf == 0
            || list.len() != rf
            || distinct.len() != rf
            || list.iter().any(|id| !live.contains(id))
        {
            // Bounded: the lists come from the client.
            let shown: Vec<_> = list.iter().take(8).collect();
            return Err(MetadataError::InvalidAssignment(format!(
                "replicas {shown:?}{} ({} in all): each partition needs {rf} distinct live \
                 brokers of the {} live",
                if list.len() > 8 { "..." } else { "" },
                list.len(),
                live.len()
            )));
        }
    }
    Ok(())
}

/// A deterministic topic id from where its creation sits in the log.
pub fn topic_id_at(term: u64, index: u64) -> u128 {
    // Never zero (Kafka's null id): the index of a committed entry is at least 1.
    (u128::from(term) << 64) | u128::from(index.max(1))
}

impl Metadata {
    /// Brokers that may lead and host new replicas, in id order.
    pub fn live_brokers(&self) -> Vec<BrokerId> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.id)
            .collect()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionRecord> {
        self.topics
            .get(topic)?
            .partitions
            .get(usize::try_from(partition).ok()?)
    }

    /// Applies one committed command. `topic_id` is the id a created topic gets (from
    /// the entry's log id, the same on every replica).
    pub fn apply(&mut self, command: &Command, topic_id: u128) -> ApplyResult {
        match command {
            Command::RegisterBroker {
                id,
                host,
                port,
                incarnation,
                source_ip,
            } => self.register(*id, host, *port, *incarnation, *source_ip),
            Command::FenceBroker { id, incarnation } => self.fence(*id, *incarnation),
            Command::UnfenceBroker { id, incarnation } => self.unfence(*id, *incarnation),
            Command::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                assignments,
            } => self.create_topic(
                name,
                *partitions,
                *replication_factor,
                configs,
                assignments.as_deref(),
                topic_id,
            ),
            Command::DeleteTopic { name, topic_id } => match self.topics.get(name) {
                Some(t) if topic_id.is_some_and(|id| id != t.topic_id) => {
                    Err(MetadataError::UnknownTopic(name.clone()))
                }
                Some(_) => {
                    self.topics.remove(name);
                    Ok(Applied::TopicDeleted)
                }
                None => Err(MetadataError::UnknownTopic(name.clone())),
            },
            Command::AllocateProducerIds { broker, at_least } => {
                if *broker < 0 || *at_least < 0 {
                    return Err(MetadataError::InvalidRegistration(format!(
                        "producer id block for broker {broker} at {at_least}"
                    )));
                }
                let start = self.next_producer_id.max(*at_least);
                let Some(end) = start.checked_add(PRODUCER_ID_BLOCK) else {
                    return Err(MetadataError::Full("producer ids".into()));
                };
                self.next_producer_id = end;
                Ok(Applied::ProducerIds { start, end })
            }
            Command::AlterPartition {
                topic,
                topic_id,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => self.alter_partition(
                topic,
                *topic_id,
                *partition,
                (*leader, *leader_epoch, *partition_epoch),
                isr,
            ),
            Command::ElectPreferredLeader {
                topic,
                topic_id,
                partition,
                leader_epoch,
            } => self.elect_preferred(topic, *topic_id, *partition, *leader_epoch),
            Command::CreatePartitions {
                topic,
                topic_id,
                count,
                assignments,
            } => self.create_partitions(topic, *topic_id, *count, assignments.as_deref()),
        }
    }

    /// The replica lists of the partitions a CreatePartitions adds, checked against the
    /// committed state; nothing changes.
    fn plan_partitions(
        &self,
        name: &str,
        topic_id: u128,
        count: i32,
        assignments: Option<&[Vec<BrokerId>]>,
    ) -> Result<Vec<Vec<BrokerId>>, MetadataError> {
        let live = self.live_brokers();
        let topic = self
            .topics
            .get(name)
            .filter(|t| t.topic_id == topic_id)
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_owned()))?;
        let have = topic.partitions.len();
        let wanted = usize::try_from(count).unwrap_or(0);
        if wanted <= have || !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&count) {
            return Err(MetadataError::InvalidPartitions(count));
        }
        let rf = topic.replication_factor();
        if rf == 0 || rf > live.len() {
            return Err(MetadataError::InvalidReplicationFactor {
                requested: i16::try_from(rf).unwrap_or(i16::MAX),
                live: live.len(),
            });
        }
        Ok(match assignments {
            // Each new partition on `rf` distinct live brokers.
            Some(lists) => {
                if lists.len() != wanted - have {
                    return Err(MetadataError::InvalidAssignment(format!(
                        "{} assignments for {} new partitions",
                        lists.len(),
                        wanted - have
                    )));
                }
                check_assignment(lists, rf, &live)?;
                lists.to_vec()
            }
            // Placed as if the topic were created with `count` partitions; the new ones
            // take the tail.
            None => placement::assign(&live, count, rf, self.placement_cursor)
                .into_iter()
                .skip(have)
                .collect(),
        })
    }

    fn create_partitions(
        &mut self,
        name: &str,
        topic_id: u128,
        count: i32,
        assignments: Option<&[Vec<BrokerId>]>,
    ) -> ApplyResult {
        let new = self.plan_partitions(name, topic_id, count, assignments)?;
        let topic = self
            .topics
            .get_mut(name)
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_owned()))?;
        topic
            .partitions
            .extend(new.into_iter().map(|replicas| PartitionRecord {
                leader: replicas[0],
                // New replicas are empty, so every one is in sync.
                isr: replicas.clone(),
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
            }));
        self.placement_cursor = self.placement_cursor.wrapping_add(1);
        Ok(Applied::PartitionsCreated { count })
    }

    fn elect_preferred(
        &mut self,
        topic: &str,
        topic_id: u128,
        partition: i32,
        leader_epoch: i32,
    ) -> ApplyResult {
        let live = self.live_brokers();
        let p = self
            .topics
            .get_mut(topic)
            .filter(|t| t.topic_id == topic_id)
            .and_then(|t| {
                usize::try_from(partition)
                    .ok()
                    .and_then(|i| t.partitions.get_mut(i))
            })
            .ok_or_else(|| MetadataError::UnknownTopic(topic.to_owned()))?;
        if p.leader_epoch != leader_epoch {
            return Err(MetadataError::StalePartition {
                topic: topic.to_owned(),
                partition,
                leader: p.leader,
                leader_epoch,
                partition_epoch: p.partition_epoch,
            });
        }
        let Some(&preferred) = p.replicas.first() else {
            return Ok(Applied::Nothing);
        };
        // Only an in-sync, live replica may lead: it holds everything acknowledged.
        if p.leader == preferred || !p.isr.contains(&preferred) || !live.contains(&preferred) {
            return Ok(Applied::Nothing);
        }
        p.leader = preferred;
        p.leader_epoch += 1;
        p.partition_epoch += 1;
        Ok(Applied::PreferredLeaderElected {
            leader_epoch: p.leader_epoch,
        })
    }

    /// The partitions whose leadership should go back to their preferred replica, as
    /// Kafka's controller decides it: per live broker, when more than `percentage` % of
    /// the partitions that prefer it are led by another broker, every one of those where
    /// it is in the ISR. Bounded by the partitions.
    pub fn preferred_elections(&self, percentage: u64) -> Vec<Command> {
        let live = self.live_brokers();
        // Per preferred broker: partitions preferring it, those led by another, and the
        // elections that can run now.
        let mut preferred: BTreeMap<BrokerId, (u64, u64, Vec<Command>)> = BTreeMap::new();
        for (name, topic) in &self.topics {
            for (i, p) in topic.partitions.iter().enumerate() {
                let Some(&first) = p.replicas.first() else {
                    continue;
                };
                if !live.contains(&first) {
                    continue;
                }
                let entry = preferred.entry(first).or_default();
                entry.0 += 1;
                if p.leader == first {
                    continue;
                }
                entry.1 += 1;
                if p.isr.contains(&first)
                    && let Ok(partition) = i32::try_from(i)
                {
                    entry.2.push(Command::ElectPreferredLeader {
                        topic: name.clone(),
                        topic_id: topic.topic_id,
                        partition,
                        leader_epoch: p.leader_epoch,
                    });
                }
            }
        }
        preferred
            .into_values()
            .filter(|(count, not_led, _)| not_led * 100 > percentage * count)
            .flat_map(|(_, _, moves)| moves)
            .collect()
    }

    fn alter_partition(
        &mut self,
        topic: &str,
        topic_id: u128,
        partition: i32,
        (leader, leader_epoch, partition_epoch): (BrokerId, i32, i32),
        isr: &[BrokerId],
    ) -> ApplyResult {
        let stale = || MetadataError::StalePartition {
            topic: topic.to_owned(),
            partition,
            leader,
            leader_epoch,
            partition_epoch,
        };
        let invalid = |reason: &str| MetadataError::InvalidIsr {
            topic: topic.to_owned(),
            partition,
            reason: reason.to_owned(),
        };
        let live = self.live_brokers();
        let Some(record) = self.topics.get_mut(topic) else {
            return Err(MetadataError::UnknownTopic(topic.to_owned()));
        };
        if record.topic_id != topic_id {
            return Err(MetadataError::UnknownTopic(topic.to_owned()));
        }
        let Some(p) = usize::try_from(partition)
            .ok()
            .and_then(|i| record.partitions.get_mut(i))
        else {
            return Err(MetadataError::UnknownTopic(topic.to_owned()));
        };
        if p.leader != leader
            || p.leader_epoch != leader_epoch
            || p.partition_epoch != partition_epoch
        {
            return Err(stale());
        }
        if !isr.contains(&leader) {
            return Err(invalid("the leader must stay in the ISR"));
        }
        if isr.len() > p.replicas.len() || isr.iter().any(|b| !p.replicas.contains(b)) {
            return Err(invalid("every member must be a replica"));
        }
        let mut sorted = isr.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != isr.len() {
            return Err(invalid("a member is named twice"));
        }
        if isr.iter().any(|b| !p.isr.contains(b) && !live.contains(b)) {
            return Err(invalid("a fenced broker cannot join the ISR"));
        }
        p.isr = isr.to_vec();
        p.partition_epoch += 1;
        Ok(Applied::PartitionAltered {
            partition_epoch: p.partition_epoch,
        })
    }

    fn register(
        &mut self,
        id: BrokerId,
        host: &str,
        port: i32,
        incarnation: u64,
        source_ip: Option<std::net::IpAddr>,
    ) -> ApplyResult {
        if id < 0 {
            return Err(MetadataError::InvalidRegistration(format!(
                "broker id {id} is negative"
            )));
        }
        if !(1..=65535).contains(&port) || host.is_empty() {
            return Err(MetadataError::InvalidRegistration(format!(
                "advertised address {host}:{port}"
            )));
        }
        if !self.brokers.contains_key(&id) && self.brokers.len() >= BROKERS_MAX {
            return Err(MetadataError::Full("brokers".into()));
        }
        if let Some(old) = self.brokers.get(&id)
            && old.incarnation != incarnation
            && !old.fenced
        {
            // The old process is gone (it restarted faster than its session expired):
            // fence it first, so what it led moves to another in-sync replica (or changes
            // epoch) and it leaves the ISRs it followed in, exactly as if its session had
            // expired. The new incarnation rejoins ISRs by catching up.
            let old = old.incarnation;
            self.fence(id, old)?;
        }
        self.brokers.insert(
            id,
            BrokerRegistration {
                id,
                host: host.to_owned(),
                port,
                incarnation,
                source_ip,
                fenced: false,
            },
        );
        self.elect_where_leaderless(id);
        Ok(Applied::BrokerRegistered)
    }

    fn fence(&mut self, id: BrokerId, incarnation: u64) -> ApplyResult {
        let Some(broker) = self.brokers.get_mut(&id) else {
            return Err(MetadataError::StaleBroker(id));
        };
        if broker.incarnation != incarnation {
            return Err(MetadataError::StaleBroker(id));
        }
        if broker.fenced {
            return Ok(Applied::Nothing);
        }
        broker.fenced = true;
        let mut leaderless = 0;
        let live = self.live_brokers();
        for topic in self.topics.values_mut() {
            for p in &mut topic.partitions {
                if p.leader != id {
                    // A fenced follower leaves the ISR (it cannot be fetching), unless it
                    // is the last member: the leader then acknowledges without it.
                    if p.isr.len() > 1 && p.isr.contains(&id) {
                        p.isr.retain(|b| *b != id);
                        p.partition_epoch += 1;
                    }
                    continue;
                }
                // A new leader only from the ISR, never an out-of-sync replica.
                p.leader = p
                    .isr
                    .iter()
                    .copied()
                    .find(|b| *b != id && live.contains(b))
                    .unwrap_or(NO_LEADER);
                if p.leader == NO_LEADER {
                    leaderless += 1;
                } else {
                    p.isr.retain(|b| *b != id);
                }
                p.leader_epoch += 1;
                p.partition_epoch += 1;
            }
        }
        Ok(Applied::BrokerFenced { leaderless })
    }

    fn unfence(&mut self, id: BrokerId, incarnation: u64) -> ApplyResult {
        let Some(broker) = self.brokers.get_mut(&id) else {
            return Err(MetadataError::StaleBroker(id));
        };
        if broker.incarnation != incarnation {
            return Err(MetadataError::StaleBroker(id));
        }
        if !broker.fenced {
            return Ok(Applied::Nothing);
        }
        broker.fenced = false;
        self.elect_where_leaderless(id);
        Ok(Applied::BrokerUnfenced)
    }

    /// A broker back in service leads the leaderless partitions whose ISR names it.
    fn elect_where_leaderless(&mut self, id: BrokerId) {
        for topic in self.topics.values_mut() {
            for p in &mut topic.partitions {
                if p.leader == NO_LEADER && p.isr.contains(&id) {
                    p.leader = id;
                    p.leader_epoch += 1;
                    p.partition_epoch += 1;
                }
            }
        }
    }

    /// The replica lists of a new topic, checked against the committed state; nothing
    /// changes.
    fn plan_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        assignments: Option<&[Vec<BrokerId>]>,
    ) -> Result<Vec<Vec<BrokerId>>, MetadataError> {
        if self.topics.contains_key(name) {
            return Err(MetadataError::TopicAlreadyExists(name.to_owned()));
        }
        if self.topics.len() >= TOPICS_MAX {
            return Err(MetadataError::Full("topics".into()));
        }
        let live = self.live_brokers();
        Ok(match assignments {
            Some(lists) => {
                let count = i32::try_from(lists.len()).unwrap_or(i32::MAX);
                if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&count) {
                    return Err(MetadataError::InvalidPartitions(count));
                }
                let rf = lists.first().map_or(0, Vec::len);
                check_assignment(lists, rf, &live)?;
                lists.to_vec()
            }
            None => {
                if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
                    return Err(MetadataError::InvalidPartitions(partitions));
                }
                let rf = usize::try_from(replication_factor).unwrap_or(0);
                if rf == 0 || rf > live.len() {
                    return Err(MetadataError::InvalidReplicationFactor {
                        requested: replication_factor,
                        live: live.len(),
                    });
                }
                placement::assign(&live, partitions, rf, self.placement_cursor)
            }
        })
    }

    /// Whether a CreateTopic or CreatePartitions would be applied to the committed
    /// state as it is (a validate-only request), without changing or copying it.
    pub fn check(&self, command: &Command) -> Result<(), MetadataError> {
        match command {
            Command::CreateTopic {
                name,
                partitions,
                replication_factor,
                assignments,
                ..
            } => self
                .plan_topic(
                    name,
                    *partitions,
                    *replication_factor,
                    assignments.as_deref(),
                )
                .map(|_| ()),
            Command::CreatePartitions {
                topic,
                topic_id,
                count,
                assignments,
            } => self
                .plan_partitions(topic, *topic_id, *count, assignments.as_deref())
                .map(|_| ()),
            _ => Ok(()),
        }
    }

    fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
        assignments: Option<&[Vec<BrokerId>]>,
        topic_id: u128,
    ) -> ApplyResult {
        let assignment = self.plan_topic(name, partitions, replication_factor, assignments)?;
        self.placement_cursor = self.placement_cursor.wrapping_add(1);
        let record = TopicRecord {
            name: name.to_owned(),
            topic_id,
            configs: configs.clone(),
            partitions: assignment
                .into_iter()
                .map(|replicas| PartitionRecord {
                    leader: replicas[0],
                    // Every replica is empty, so every replica is in sync.
                    isr: replicas.clone(),
                    replicas,
                    leader_epoch: 0,
                    partition_epoch: 0,
                })
                .collect(),
        };
        self.topics.insert(name.to_owned(), record.clone());
        Ok(Applied::TopicCreated(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(m: &mut Metadata, id: BrokerId, incarnation: u64) -> ApplyResult {
        m.apply(
            &Command::RegisterBroker {
                id,
                host: format!("127.0.0.{}", id + 1),
                port: 9092,
                incarnation,
                source_ip: None,
            },
            0,
        )
    }

    fn create(m: &mut Metadata, name: &str, partitions: i32, rf: i16) -> ApplyResult {
        m.apply(
            &Command::CreateTopic {
                name: name.into(),
                partitions,
                replication_factor: rf,
                configs: BTreeMap::new(),
                assignments: None,
            },
            topic_id_at(1, m.topics.len() as u64 + 1),
        )
    }

    fn three_brokers() -> Metadata {
        let mut m = Metadata::default();
        for id in 0..3 {
            register(&mut m, id, 100 + id as u64).unwrap();
        }
        m
    }

    #[test]
    fn given_three_brokers_when_creating_rf3_topic_should_place_three_replicas_with_leaders_spread()
    {
        let mut m = three_brokers();
        let Applied::TopicCreated(t) = create(&mut m, "multiple", 6, 3).unwrap() else {
            panic!("not created");
        };
        let mut leaders = BTreeMap::new();
        for p in &t.partitions {
            let mut sorted = p.replicas.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2]);
            assert_eq!(p.leader, p.replicas[0]);
            assert_eq!(p.isr, p.replicas, "empty replicas are all in sync");
            *leaders.entry(p.leader).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    #[test]
    fn given_a_topic_when_growing_it_should_add_placed_partitions_and_keep_the_old_ones() {
        let mut m = three_brokers();
        create(&mut m, "grow", 2, 2).unwrap();
        let before = m.topics["grow"].clone();
        let id = before.topic_id;
        let grow = |m: &mut Metadata, topic_id, count| {
            m.apply(
                &Command::CreatePartitions {
                    topic: "grow".into(),
                    topic_id,
                    count,
                    assignments: None,
                },
                0,
            )
        };
        assert_eq!(
            grow(&mut m, id, 5),
            Ok(Applied::PartitionsCreated { count: 5 })
        );
        let t = &m.topics["grow"];
        assert_eq!(t.partitions.len(), 5);
        assert_eq!(t.partitions[..2], before.partitions[..]);
        for p in &t.partitions[2..] {
            assert_eq!(p.replicas.len(), 2, "the topic's replication factor");
            assert_eq!((p.leader, p.leader_epoch), (p.replicas[0], 0));
            assert_eq!(p.isr, p.replicas);
        }
        // Never fewer or as many; never another topic of the same name.
        assert_eq!(
            grow(&mut m, id, 5),
            Err(MetadataError::InvalidPartitions(5))
        );
        assert_eq!(
            grow(&mut m, id, 3),
            Err(MetadataError::InvalidPartitions(3))
        );
        assert!(matches!(
            grow(&mut m, id + 1, 9),
            Err(MetadataError::UnknownTopic(_))
        ));
        assert_eq!(m.topics["grow"].partitions.len(), 5);
        // Assigned by hand: one list per new partition, rf distinct live brokers each.
        let assigned = |m: &mut Metadata, lists: Vec<Vec<BrokerId>>| {
            m.apply(
                &Command::CreatePartitions {
                    topic: "grow".into(),
                    topic_id: id,
                    count: 5 + lists.len().max(1) as i32,
                    assignments: Some(lists),
                },
                0,
            )
        };
        for bad in [vec![vec![0]], vec![vec![1, 1]], vec![vec![0, 7]]] {
            assert!(
                matches!(
                    assigned(&mut m, bad.clone()),
                    Err(MetadataError::InvalidAssignment(_))
                ),
                "{bad:?}"
            );
        }
        assert!(assigned(&mut m, vec![vec![2, 0], vec![1, 2]]).is_ok());
        let t = &m.topics["grow"];
        assert_eq!(t.partitions.len(), 7);
        assert_eq!(
            (t.partitions[5].leader, &t.partitions[5].replicas),
            (2, &vec![2, 0])
        );
        assert_eq!(t.partitions[6].replicas, vec![1, 2]);
    }

    #[test]
    fn given_a_manual_assignment_should_place_replicas_as_assigned_or_refuse_it() {
        let mut m = three_brokers();
        let create = |m: &mut Metadata, name: &str, lists: Vec<Vec<BrokerId>>| {
            m.apply(
                &Command::CreateTopic {
                    name: name.into(),
                    partitions: -1,
                    replication_factor: -1,
                    configs: BTreeMap::new(),
                    assignments: Some(lists),
                },
                topic_id_at(1, 9),
            )
        };
        for bad in [
            vec![vec![0, 1], vec![2]],
            vec![vec![1, 1]],
            vec![vec![0, 9]],
            vec![vec![]],
            vec![],
        ] {
            assert!(
                matches!(
                    create(&mut m, "bad", bad.clone()),
                    Err(MetadataError::InvalidAssignment(_) | MetadataError::InvalidPartitions(_))
                ),
                "{bad:?}"
            );
        }
        assert!(!m.topics.contains_key("bad"));
        let Applied::TopicCreated(t) =
            create(&mut m, "hand", vec![vec![2, 0], vec![1, 2]]).unwrap()
        else {
            panic!("not created");
        };
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(
            (t.partitions[0].leader, &t.partitions[0].replicas),
            (2, &vec![2, 0])
        );
        assert_eq!(t.partitions[1].isr, vec![1, 2]);
    }

    #[test]
    fn given_two_live_brokers_when_asking_rf3_should_refuse() {
        let mut m = three_brokers();
        m.apply(
            &Command::FenceBroker {
                id: 2,
                incarnation: 102,
            },
            0,
        )
        .unwrap();
        assert_eq!(
            create(&mut m, "t", 1, 3),
            Err(MetadataError::InvalidReplicationFactor {
                requested: 3,
                live: 2
            })
        );
        assert!(create(&mut m, "t", 1, 2).is_ok());
        assert_eq!(
            create(&mut m, "t", 1, 2),
            Err(MetadataError::TopicAlreadyExists("t".into()))
        );
        assert_eq!(
            create(&mut m, "u", 0, 1),
            Err(MetadataError::InvalidPartitions(0))
        );
    }

    #[test]
    fn given_leader_fenced_when_isr_is_leader_alone_should_leave_partition_leaderless_until_it_returns()
     {
        let mut m = three_brokers();
        create(&mut m, "t", 3, 3).unwrap();
        for p in &mut m.topics.get_mut("t").unwrap().partitions {
            p.isr = vec![p.leader];
        }
        let led_by_1: Vec<usize> = m.topics["t"]
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.leader == 1)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(led_by_1.len(), 1);
        let i = led_by_1[0];
        let applied = m
            .apply(
                &Command::FenceBroker {
                    id: 1,
                    incarnation: 101,
                },
                0,
            )
            .unwrap();
        assert_eq!(applied, Applied::BrokerFenced { leaderless: 1 });
        let p = &m.topics["t"].partitions[i];
        assert_eq!(p.leader, NO_LEADER);
        assert_eq!((p.leader_epoch, p.partition_epoch), (1, 1));
        assert_eq!(
            p.isr,
            vec![1],
            "the last ISR member stays: no unclean election"
        );
        assert_eq!(m.live_brokers(), vec![0, 2]);
        // A stale incarnation cannot unfence it.
        assert_eq!(
            m.apply(
                &Command::UnfenceBroker {
                    id: 1,
                    incarnation: 7
                },
                0
            ),
            Err(MetadataError::StaleBroker(1))
        );
        m.apply(
            &Command::UnfenceBroker {
                id: 1,
                incarnation: 101,
            },
            0,
        )
        .unwrap();
        let p = &m.topics["t"].partitions[i];
        assert_eq!(p.leader, 1);
        assert_eq!((p.leader_epoch, p.partition_epoch), (2, 2));
    }

    #[test]
    fn given_leader_with_in_sync_follower_when_fenced_should_elect_from_isr_and_bump_epoch() {
        let mut m = three_brokers();
        create(&mut m, "t", 1, 3).unwrap();
        let p = &mut m.topics.get_mut("t").unwrap().partitions[0];
        let leader = p.leader;
        let follower = p.replicas[1];
        p.isr = vec![leader, follower];
        let incarnation = m.brokers[&leader].incarnation;
        m.apply(
            &Command::FenceBroker {
                id: leader,
                incarnation,
            },
            0,
        )
        .unwrap();
        let p = &m.topics["t"].partitions[0];
        assert_eq!(p.leader, follower);
        assert_eq!(p.isr, vec![follower]);
        assert_eq!(p.leader_epoch, 1);
    }

    #[test]
    fn given_broker_restarted_before_fencing_when_it_registers_should_bump_epochs_of_what_it_led() {
        let mut m = three_brokers();
        create(&mut m, "t", 3, 1).unwrap();
        let led: Vec<i32> = m.topics["t"]
            .partitions
            .iter()
            .filter(|p| p.leader == 0)
            .map(|p| p.leader_epoch)
            .collect();
        assert_eq!(led, vec![0]);
        register(&mut m, 0, 999).unwrap();
        let after: Vec<i32> = m.topics["t"]
            .partitions
            .iter()
            .filter(|p| p.leader == 0)
            .map(|p| p.leader_epoch)
            .collect();
        // Fenced (leaderless, epoch 1), then led again by the new incarnation (epoch 2).
        assert_eq!(after, vec![2]);
        // The old incarnation can no longer fence or unfence anything.
        assert_eq!(
            m.apply(
                &Command::FenceBroker {
                    id: 0,
                    incarnation: 100
                },
                0
            ),
            Err(MetadataError::StaleBroker(0))
        );
    }

    #[test]
    fn given_deleted_topic_when_created_again_should_get_a_new_id() {
        let mut m = three_brokers();
        let Applied::TopicCreated(a) = create(&mut m, "t", 1, 1).unwrap() else {
            panic!()
        };
        let delete = |topic_id| Command::DeleteTopic {
            name: "t".into(),
            topic_id,
        };
        // By id: another incarnation's id deletes nothing.
        assert_eq!(
            m.apply(&delete(Some(a.topic_id + 1)), 0),
            Err(MetadataError::UnknownTopic("t".into()))
        );
        m.apply(&delete(Some(a.topic_id)), 0).unwrap();
        assert_eq!(
            m.apply(&delete(None), 0),
            Err(MetadataError::UnknownTopic("t".into()))
        );
        let Applied::TopicCreated(b) = m
            .apply(
                &Command::CreateTopic {
                    name: "t".into(),
                    partitions: 1,
                    replication_factor: 1,
                    configs: BTreeMap::new(),
                    assignments: None,
                },
                topic_id_at(3, 40),
            )
            .unwrap()
        else {
            panic!()
        };
        assert_ne!(a.topic_id, b.topic_id);
    }

    fn alter(m: &mut Metadata, topic: &str, isr: Vec<BrokerId>) -> ApplyResult {
        let t = &m.topics[topic];
        let p = &t.partitions[0];
        let command = Command::AlterPartition {
            topic: topic.into(),
            topic_id: t.topic_id,
            partition: 0,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr,
        };
        m.apply(&command, 0)
    }

    #[test]
    fn given_current_epochs_when_leader_alters_isr_should_commit_and_bump_partition_epoch() {
        let mut m = three_brokers();
        create(&mut m, "t", 1, 3).unwrap();
        let leader = m.topics["t"].partitions[0].leader;
        assert_eq!(
            alter(&mut m, "t", vec![leader]),
            Ok(Applied::PartitionAltered { partition_epoch: 1 })
        );
        assert_eq!(m.topics["t"].partitions[0].isr, vec![leader]);
        let all = m.topics["t"].partitions[0].replicas.clone();
        alter(&mut m, "t", all.clone()).unwrap();
        assert_eq!(m.topics["t"].partitions[0].isr, all);
        assert_eq!(m.topics["t"].partitions[0].leader_epoch, 0);
    }

    #[test]
    fn given_stale_or_invalid_isr_change_should_refuse_and_change_nothing() {
        let mut m = three_brokers();
        create(&mut m, "t", 1, 3).unwrap();
        let before = m.clone();
        let topic_id = m.topics["t"].topic_id;
        let p = m.topics["t"].partitions[0].clone();
        let stale = Command::AlterPartition {
            topic: "t".into(),
            topic_id,
            partition: 0,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch + 1,
            isr: vec![p.leader],
        };
        assert!(matches!(
            m.apply(&stale, 0),
            Err(MetadataError::StalePartition { .. })
        ));
        let not_leader = p.replicas[1];
        let usurper = Command::AlterPartition {
            topic: "t".into(),
            topic_id,
            partition: 0,
            leader: not_leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: vec![not_leader],
        };
        assert!(matches!(
            m.apply(&usurper, 0),
            Err(MetadataError::StalePartition { .. })
        ));
        for isr in [
            vec![p.replicas[1]],
            vec![p.leader, 7],
            vec![p.leader, p.leader],
        ] {
            assert!(
                matches!(
                    alter(&mut m, "t", isr.clone()),
                    Err(MetadataError::InvalidIsr { .. })
                ),
                "{isr:?}"
            );
        }
        assert_eq!(m, before);
    }

    #[test]
    fn given_fenced_follower_should_leave_isr_and_not_rejoin_while_fenced() {
        let mut m = three_brokers();
        create(&mut m, "t", 1, 3).unwrap();
        let p = m.topics["t"].partitions[0].clone();
        let follower = p.replicas[1];
        let incarnation = m.brokers[&follower].incarnation;
        m.apply(
            &Command::FenceBroker {
                id: follower,
                incarnation,
            },
            0,
        )
        .unwrap();
        let now = &m.topics["t"].partitions[0];
        assert!(!now.isr.contains(&follower));
        assert_eq!(now.leader, p.leader, "a follower's fence moves no leader");
        assert_eq!(now.partition_epoch, p.partition_epoch + 1);
        assert!(matches!(
            alter(&mut m, "t", p.replicas.clone()),
            Err(MetadataError::InvalidIsr { .. })
        ));
    }

    #[test]
    fn given_brokers_taking_producer_id_blocks_should_never_overlap() {
        let mut m = three_brokers();
        let mut take = |broker, at_least| match m
            .apply(&Command::AllocateProducerIds { broker, at_least }, 0)
            .unwrap()
        {
            Applied::ProducerIds { start, end } => (start, end),
            other => panic!("{other:?}"),
        };
        assert_eq!(take(0, 0), (0, 1000));
        assert_eq!(take(1, 0), (1000, 2000));
        // A broker that handed out ids before it had a controller.
        assert_eq!(take(2, 5000), (5000, 6000));
        assert_eq!(take(0, 0), (6000, 7000));
    }

    #[test]
    fn given_bad_registration_should_refuse() {
        let mut m = Metadata::default();
        assert!(register(&mut m, -1, 1).is_err());
        assert!(
            m.apply(
                &Command::RegisterBroker {
                    id: 1,
                    host: "h".into(),
                    port: 0,
                    incarnation: 1,
                    source_ip: None,
                },
                0
            )
            .is_err()
        );
    }

    #[test]
    fn given_a_leader_moved_off_its_preferred_replica_when_that_replica_is_back_in_sync_should_elect_it_again()
     {
        let mut m = three_brokers();
        create(&mut m, "t", 3, 3).unwrap();
        // Broker 0 fails: what it led moves to the next in-sync replica.
        m.apply(
            &Command::FenceBroker {
                id: 0,
                incarnation: 100,
            },
            0,
        )
        .unwrap();
        let moved: Vec<usize> = m.topics["t"]
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.replicas[0] == 0)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(moved.len(), 1);
        let i = moved[0];
        assert_ne!(m.topics["t"].partitions[i].leader, 0);
        // Fenced, and then back but not yet in sync: nothing to elect.
        assert!(m.preferred_elections(10).is_empty());
        m.apply(
            &Command::UnfenceBroker {
                id: 0,
                incarnation: 100,
            },
            0,
        )
        .unwrap();
        assert!(m.preferred_elections(10).is_empty(), "not in the ISR yet");
        let p = m.topics["t"].partitions[i].clone();
        let mut isr = p.isr.clone();
        isr.push(0);
        m.apply(
            &Command::AlterPartition {
                topic: "t".into(),
                topic_id: m.topics["t"].topic_id,
                partition: i as i32,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr,
            },
            0,
        )
        .unwrap();
        // One partition of one preferring broker 0 is led elsewhere: 100% > 10%.
        let elections = m.preferred_elections(10);
        assert_eq!(elections.len(), 1);
        // At 100%, an imbalance of one in one is not over the threshold.
        assert!(m.preferred_elections(100).is_empty());
        let before = m.topics["t"].partitions[i].clone();
        let applied = m.apply(&elections[0], 0).unwrap();
        let after = &m.topics["t"].partitions[i];
        assert_eq!(after.leader, 0);
        assert_eq!(after.leader_epoch, before.leader_epoch + 1);
        assert_eq!(after.partition_epoch, before.partition_epoch + 1);
        assert_eq!(
            applied,
            Applied::PreferredLeaderElected {
                leader_epoch: after.leader_epoch
            }
        );
        assert!(m.preferred_elections(10).is_empty());
        // The same election again is at a stale epoch: refused.
        assert!(matches!(
            m.apply(&elections[0], 0),
            Err(MetadataError::StalePartition { .. })
        ));
    }
}
