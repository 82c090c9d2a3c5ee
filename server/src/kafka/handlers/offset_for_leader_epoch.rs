//! OffsetForLeaderEpoch (v2-3): where a leader epoch ends in the leader's log, from its
//! leader-epoch cache. Followers ask it before fetching after a leader change, and
//! truncate to where their log and the leader's agree (KIP-101/279); clients ask it to
//! detect truncation after an unclean leader change (KIP-320).

use std::rc::Rc;

use engine::TopicPartition;
use kafka_protocol::messages::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};

use super::Request;
use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{DecodeError, error_code};
use crate::runtime::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: OffsetForLeaderEpochRequest = request.decode("OffsetForLeaderEpoch request")?;
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in &req.topics {
        let name = topic.topic.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let answer = match TopicPartition::new(&name, p.partition) {
                Ok(tp) => shard
                    .epoch_end(tp, p.current_leader_epoch, p.leader_epoch)
                    .await
                    .map_err(|e| e.code()),
                Err(_) => Err(error_code::UNKNOWN_TOPIC_OR_PARTITION),
            };
            let (code, epoch, end) = match answer {
                Ok((epoch, end)) => (error_code::NONE, epoch, end),
                Err(code) => (code, -1, -1),
            };
            partitions.push(
                EpochEndOffset::default()
                    .with_error_code(code)
                    .with_partition(p.partition)
                    .with_leader_epoch(epoch)
                    .with_end_offset(end),
            );
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    request.respond(&OffsetForLeaderEpochResponse::default().with_topics(topics))
}
