//! ListOffsets (v1-10): earliest (-2), latest (-1), the first offset at or after a
//! timestamp through the engine's time index, and Kafka's later specs: the record with
//! the largest timestamp (-3, v7), the earliest local offset (-4, v8: the log start, as
//! nothing is tiered), the latest tiered offset (-5, v9: none, -1, with no remote tier;
//! so is -6, the earliest pending upload of v11). v10's timeout is moot: nothing waits.

use std::rc::Rc;

use engine::TopicPartition;
use kafka_protocol::messages::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};

use super::Request;
use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{DecodeError, error_code};
use crate::runtime::shard::{OffsetQuery, Shard};

pub async fn handle(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: ListOffsetsRequest = request.decode("ListOffsets request")?;
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in &req.topics {
        let name = topic.name.0.to_string();
        let table = shard.partition_table();
        let me = shard.shared.node_id();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let query = match p.timestamp {
                -2 | -4 => OffsetQuery::Earliest,
                -1 => OffsetQuery::Latest,
                -3 => OffsetQuery::MaxTimestamp,
                -5 | -6 => OffsetQuery::NoTieredStorage,
                ts => OffsetQuery::Timestamp(ts),
            };
            let leads = table.check_leader(me, &name, p.partition_index);
            let answer = match (TopicPartition::new(&name, p.partition_index), leads) {
                (Ok(tp), Ok(())) => shard
                    .offsets(tp, query, p.current_leader_epoch)
                    .await
                    .map_err(|e| e.code()),
                (_, Err(code)) => Err(code),
                (Err(_), Ok(())) => Err(error_code::UNKNOWN_TOPIC_OR_PARTITION),
            };
            let response =
                ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            partitions.push(match answer {
                Ok((timestamp, offset)) if request.version >= 4 => response
                    .with_timestamp(timestamp)
                    .with_offset(offset)
                    .with_leader_epoch(
                        table
                            .route(&name, p.partition_index)
                            .map_or(-1, |r| r.leader_epoch),
                    ),
                Ok((timestamp, offset)) => response.with_timestamp(timestamp).with_offset(offset),
                Err(code) => response
                    .with_error_code(code)
                    .with_timestamp(-1)
                    .with_offset(-1),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    request.respond(&ListOffsetsResponse::default().with_topics(topics))
}
