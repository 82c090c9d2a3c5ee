//! Fetch (v4-11): for each partition, file ranges from the batch that holds the fetch
//! offset, sent by zero-copy. Long-polls until `min_bytes` arrive or `max_wait_ms`
//! passes, woken by the partitions' append events rather than by polling.
//!
//! Consumers read below the high watermark; a follower (`replica_id` set) reads to the
//! log end, and its fetch offset is its progress (see `runtime/replica.rs`).

use std::rc::Rc;
use std::time::{Duration, Instant};

use engine::TopicPartition;
use kafka_protocol::messages::FetchRequest;

use super::Request;
use crate::kafka::fetch_response::{self, PartitionData, Piece, TopicData};
use crate::kafka::protocol::{DecodeError, error_code};
use crate::metrics::PartitionCounters;
use crate::runtime::shard::{Reader, Shard};

pub async fn handle(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: FetchRequest = request.decode("Fetch request")?;
    let wait_cap = Duration::from_millis(shard.config().fetch_max_wait_ms_max);
    let max_wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(wait_cap);
    let deadline = Instant::now() + max_wait;
    let min_bytes = req.min_bytes.max(0) as u64;
    let response_max = if req.max_bytes > 0 {
        req.max_bytes as u64
    } else {
        u64::MAX
    };
    loop {
        // Listen before reading, so an append between the read and the wait is not missed.
        let table = shard.partition_table();
        let listeners: Vec<_> = req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter_map(|p| table.data_event(t.topic.0.as_str(), p.partition))
            })
            .map(|event| event.listen())
            .collect();
        let (topics, bytes, any_error, sent) =
            read_all(shard, &req, request.peer, response_max).await;
        let now = Instant::now();
        if bytes >= min_bytes
            || any_error
            || now >= deadline
            || listeners.is_empty()
            || shard.shared.stopping()
        {
            // Counted once, for the response that goes out (not for re-reads while
            // long-polling).
            for (counters, bytes, records) in sent {
                counters.record_out(bytes, records);
            }
            let pieces = fetch_response::encode(
                request.version,
                request.correlation_id,
                error_code::NONE,
                topics,
            );
            return Ok(Some(pieces));
        }
        drop(topics);
        let woken = futures_util::future::select_all(listeners);
        let stop = std::pin::pin!(shard.shared.stopped());
        let _ = compio::time::timeout_at(deadline, futures_util::future::select(woken, stop)).await;
    }
}

/// What a response would send per partition: its counters, bytes, records.
type Sent = Vec<(std::sync::Arc<PartitionCounters>, u64, u64)>;

async fn read_all(
    shard: &Rc<Shard>,
    req: &FetchRequest,
    peer: std::net::IpAddr,
    response_max: u64,
) -> (Vec<TopicData>, u64, bool, Sent) {
    let mut sent = Vec::new();
    let mut budget = response_max;
    let mut total = 0u64;
    let mut any_error = false;
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in &req.topics {
        let name = topic.topic.0.to_string();
        let table = shard.partition_table();
        let me = shard.shared.node_id();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let leads = table.check_leader(me, &name, p.partition);
            let limit = (p.partition_max_bytes.max(0) as u64).min(budget);
            let reader = if req.replica_id.0 >= 0 {
                Reader::Follower {
                    id: req.replica_id.0,
                    current_leader_epoch: p.current_leader_epoch,
                    peer,
                }
            } else {
                Reader::Consumer {
                    current_leader_epoch: p.current_leader_epoch,
                }
            };
            let result = match (TopicPartition::new(&name, p.partition), leads) {
                (Ok(tp), Ok(())) => shard.read(tp, p.fetch_offset, limit, reader).await,
                (_, Err(code)) => Err(crate::runtime::shard::PartitionError::NotServedHere(code)),
                (Err(_), Ok(())) => {
                    Err(crate::runtime::shard::PartitionError::UnknownTopicOrPartition)
                }
            };
            let data = match result {
                Ok(read) => {
                    let got: u64 = read.records.iter().map(Piece::len).sum();
                    // The first batch is whole even past the limit (KIP-74); only later
                    // partitions are cut by the response budget.
                    let records = if limit == 0 && total > 0 {
                        Vec::new()
                    } else {
                        read.records
                    };
                    let got = if records.is_empty() { 0 } else { got };
                    if got > 0 {
                        let count = (read.end_offset - p.fetch_offset).max(0) as u64;
                        sent.push((read.counters, got, count));
                    }
                    total += got;
                    budget = budget.saturating_sub(got);
                    PartitionData {
                        partition: p.partition,
                        error_code: error_code::NONE,
                        high_watermark: read.high_watermark,
                        last_stable_offset: read.high_watermark,
                        log_start_offset: read.offsets.log_start_offset,
                        records,
                    }
                }
                Err(e) => {
                    any_error = true;
                    PartitionData {
                        partition: p.partition,
                        error_code: e.code(),
                        high_watermark: -1,
                        last_stable_offset: -1,
                        // A follower below the log start starts again there.
                        log_start_offset: e.log_start_offset().unwrap_or(-1),
                        records: Vec::new(),
                    }
                }
            };
            partitions.push(data);
        }
        topics.push(TopicData { name, partitions });
    }
    (topics, total, any_error, sent)
}
