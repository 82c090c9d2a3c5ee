//! A core's partition table: for each partition of the committed metadata, its leader and
//! leader epoch, rebuilt by the core itself when the metadata version moves. The produce,
//! fetch and list-offsets paths ask it whether this broker leads a partition; they read
//! one atomic (the metadata version) and this core's own copy, never a shared lock.

use std::collections::HashMap;

use cluster::{BrokerId, Metadata, NO_LEADER};

use crate::kafka::protocol::error_code;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRoute {
    pub leader: BrokerId,
    pub leader_epoch: i32,
}

#[derive(Debug, Default)]
pub struct PartitionTable {
    /// The metadata version this table was built from.
    pub version: u64,
    topics: HashMap<String, Vec<PartitionRoute>>,
}

impl PartitionTable {
    pub fn build(version: u64, metadata: &Metadata) -> Self {
        let topics = metadata
            .topics
            .values()
            .map(|t| {
                let routes = t
                    .partitions
                    .iter()
                    .map(|p| PartitionRoute {
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                    })
                    .collect();
                (t.name.clone(), routes)
            })
            .collect();
        Self { version, topics }
    }

    pub fn route(&self, topic: &str, partition: i32) -> Option<PartitionRoute> {
        self.topics
            .get(topic)?
            .get(usize::try_from(partition).ok()?)
            .copied()
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
        let table = PartitionTable::build(7, &md);
        let l0 = table.route("t", 0).unwrap().leader;
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
        let table = PartitionTable::build(8, &md);
        assert_eq!(
            table.check_leader(l0, "t", 1),
            Err(error_code::LEADER_NOT_AVAILABLE)
        );
    }
}
