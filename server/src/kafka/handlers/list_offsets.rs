//! ListOffsets (v1-5): earliest (-2), latest (-1), or the first offset at or after a
//! timestamp, through the engine's time index.

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
                -2 => OffsetQuery::Earliest,
                -1 => OffsetQuery::Latest,
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
