//! ElectLeaders (v0-1): Kafka's `kafka-leader-election.sh` and the admin clients'
//! `electLeaders`. A preferred election moves a partition's leadership to its first
//! replica when that replica is live and in the ISR (`ElectPreferredLeader` through the
//! controller, at the leader epoch this broker knows). Unclean elections are never run:
//! a partition with a leader needs none (ELECTION_NOT_NEEDED); one without gets
//! ELIGIBLE_LEADERS_NOT_AVAILABLE, as Kafka with `unclean.leader.election.enable=false`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use cluster::{Applied, Command, ControllerError, Metadata, MetadataError};
use kafka_protocol::messages::ElectLeadersRequest;
use kafka_protocol::messages::elect_leaders_response::{
    ElectLeadersResponse, PartitionResult, ReplicaElectionResult,
};
use kafka_protocol::protocol::StrBytes;

use super::Request;
use crate::control::metadata_follower::controller_error;
use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{DecodeError, error_code};
use crate::runtime::shard::Shard;

const PREFERRED: i8 = 0;

/// The longest a request may ask us to spend proposing elections.
const TIMEOUT_MAX: Duration = Duration::from_secs(60);

pub async fn handle(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: ElectLeadersRequest = request.decode("ElectLeaders request")?;
    let metadata = shard.shared.controller.view().current();
    // Null: every partition of every topic (bounded by the metadata's own limits).
    let wanted: Vec<(String, Vec<i32>)> = match &req.topic_partitions {
        Some(topics) => topics
            .iter()
            .map(|t| (t.topic.0.to_string(), t.partitions.clone()))
            .collect(),
        None => metadata
            .topics
            .iter()
            .map(|(name, t)| (name.clone(), (0..t.partitions.len() as i32).collect()))
            .collect(),
    };
    let timeout = Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0))
        .clamp(Duration::from_millis(1), TIMEOUT_MAX);
    let deadline = Instant::now() + timeout;
    let mut results = Vec::with_capacity(wanted.len());
    for (topic, partitions) in wanted {
        let mut answers = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let (code, message) = if Instant::now() >= deadline {
                (
                    error_code::REQUEST_TIMED_OUT,
                    Some("the request's timeout passed".to_owned()),
                )
            } else if req.election_type == PREFERRED {
                elect_preferred(shard, &topic, partition).await
            } else {
                unclean(&metadata, &topic, partition)
            };
            answers.push(
                PartitionResult::default()
                    .with_partition_id(partition)
                    .with_error_code(code)
                    .with_error_message(message.map(StrBytes::from_string)),
            );
        }
        results.push(
            ReplicaElectionResult::default()
                .with_topic(kafka_protocol::messages::TopicName(StrBytes::from_string(
                    topic,
                )))
                .with_partition_result(answers),
        );
    }
    request.respond(
        &ElectLeadersResponse::default()
            .with_error_code(error_code::NONE)
            .with_replica_election_results(results),
    )
}

/// Attempts at one partition when another change to it commits first.
const ATTEMPTS: usize = 3;

async fn elect_preferred(shard: &Rc<Shard>, topic: &str, partition: i32) -> (i16, Option<String>) {
    let not_available = |preferred: i32| {
        (
            error_code::PREFERRED_LEADER_NOT_AVAILABLE,
            Some(format!(
                "the preferred replica {preferred} is not live and in sync"
            )),
        )
    };
    for _ in 0..ATTEMPTS {
        let metadata = shard.shared.controller.view().current();
        let Some((topic_id, record)) = metadata.topics.get(topic).and_then(|t| {
            Some((
                t.topic_id,
                t.partitions.get(usize::try_from(partition).ok()?)?,
            ))
        }) else {
            return (error_code::UNKNOWN_TOPIC_OR_PARTITION, None);
        };
        let Some(&preferred) = record.replicas.first() else {
            return (error_code::UNKNOWN_TOPIC_OR_PARTITION, None);
        };
        if record.leader == preferred {
            return (error_code::ELECTION_NOT_NEEDED, None);
        }
        let live = metadata.brokers.get(&preferred).is_some_and(|b| !b.fenced);
        if !live || !record.isr.contains(&preferred) {
            return not_available(preferred);
        }
        let proposed = shard
            .shared
            .controller
            .propose(Command::ElectPreferredLeader {
                topic: topic.to_owned(),
                topic_id,
                partition,
                leader_epoch: record.leader_epoch,
            })
            .await;
        match proposed {
            Ok(Applied::PreferredLeaderElected { .. }) => return (error_code::NONE, None),
            Ok(_) => return not_available(preferred),
            // Another change came first: look again once this broker has seen it.
            Err(ControllerError::Refused(MetadataError::StalePartition { .. })) => {
                compio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                let (code, message) = controller_error(&e);
                return (code, Some(message));
            }
        }
    }
    (
        error_code::REQUEST_TIMED_OUT,
        Some("the partition kept changing; try again".to_owned()),
    )
}

fn unclean(metadata: &Metadata, topic: &str, partition: i32) -> (i16, Option<String>) {
    match metadata.partition(topic, partition) {
        None => (error_code::UNKNOWN_TOPIC_OR_PARTITION, None),
        Some(p) if p.leader >= 0 => (error_code::ELECTION_NOT_NEEDED, None),
        Some(_) => (
            error_code::ELIGIBLE_LEADERS_NOT_AVAILABLE,
            Some("unclean leader election is disabled: no out-of-sync replica may lead".to_owned()),
        ),
    }
}
