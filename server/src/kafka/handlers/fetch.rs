//! Fetch (v4-18): for each partition, file ranges from the batch that holds the fetch
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
use crate::kafka::fetch_response::{
    self, FetchResponse, NodeEndpoint, PartitionData, Piece, TopicData,
};
use crate::kafka::protocol::{DecodeError, error_code};
use crate::metrics::PartitionCounters;
use crate::runtime::shard::{Reader, Shard};

/// A topic of the request, with the name it is known by here: named (v4-12) or by id
/// (v13+, `None` when no topic has that id).
struct Target {
    name: Option<String>,
    topic_id: u128,
}

fn targets(shard: &Shard, req: &FetchRequest, version: i16) -> Vec<Target> {
    let table = shard.partition_table();
    req.topics
        .iter()
        .map(|t| {
            if version >= TOPIC_IDS {
                let topic_id = t.topic_id.as_u128();
                Target {
                    name: table.topic_name(topic_id).map(str::to_owned),
                    topic_id,
                }
            } else {
                Target {
                    name: Some(t.topic.0.to_string()),
                    topic_id: 0,
                }
            }
        })
        .collect()
}

/// The first version that names topics by id.
const TOPIC_IDS: i16 = 13;
/// The first version whose errors for a moved partition name its new leader (KIP-951).
const LEADER_HINTS: i16 = 16;

pub async fn handle(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: FetchRequest = request.decode("Fetch request")?;
    let version = request.version;
    let targets = targets(shard, &req, version);
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
            .zip(&targets)
            .filter_map(|(t, target)| Some((t, target.name.as_deref()?)))
            .flat_map(|(t, name)| {
                t.partitions
                    .iter()
                    .filter_map(|p| table.data_event(name, p.partition))
            })
            .map(|event| event.listen())
            .collect();
        drop(table);
        let (topics, bytes, any_error, sent) =
            read_all(shard, &req, &targets, version, request.peer, response_max).await;
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
            let node_endpoints = if version >= LEADER_HINTS {
                leader_endpoints(shard, &topics)
            } else {
                Vec::new()
            };
            let pieces = fetch_response::encode(
                version,
                request.correlation_id,
                FetchResponse {
                    error_code: error_code::NONE,
                    topics,
                    node_endpoints,
                },
            );
            return Ok(Some(pieces));
        }
        drop(topics);
        let woken = futures_util::future::select_all(listeners);
        let stop = std::pin::pin!(shard.shared.stopped());
        let _ = compio::time::timeout_at(deadline, futures_util::future::select(woken, stop)).await;
    }
}

/// The endpoints of the leaders named in the response's partitions (v16+).
fn leader_endpoints(shard: &Shard, topics: &[TopicData]) -> Vec<NodeEndpoint> {
    let leaders: std::collections::BTreeSet<i32> = topics
        .iter()
        .flat_map(|t| &t.partitions)
        .filter_map(|p| p.current_leader.map(|(id, _)| id))
        .collect();
    let table = shard.partition_table();
    leaders
        .into_iter()
        .filter_map(|id| {
            let (host, port) = table.endpoint(id)?;
            Some(NodeEndpoint {
                node_id: id,
                host: host.to_owned(),
                port,
            })
        })
        .collect()
}

/// What a response would send per partition: its counters, bytes, records.
type Sent = Vec<(std::sync::Arc<PartitionCounters>, u64, u64)>;

async fn read_all(
    shard: &Rc<Shard>,
    req: &FetchRequest,
    targets: &[Target],
    version: i16,
    peer: std::net::IpAddr,
    response_max: u64,
) -> (Vec<TopicData>, u64, bool, Sent) {
    let mut sent = Vec::new();
    let mut budget = response_max;
    let mut total = 0u64;
    let mut any_error = false;
    let mut topics = Vec::with_capacity(req.topics.len());
    // v15+ carries the fetching replica in `replica_state` (KIP-903).
    let replica_id = if version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    let me = shard.shared.node_id();
    for (topic, target) in req.topics.iter().zip(targets) {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let Some(name) = target.name.as_deref() else {
                any_error = true;
                partitions.push(failed(p.partition, error_code::UNKNOWN_TOPIC_ID, -1));
                continue;
            };
            let leads = shard.partition_table().check_leader(me, name, p.partition);
            let limit = (p.partition_max_bytes.max(0) as u64).min(budget);
            // -1 when the fetcher does not say (before v12, or no batch fetched yet).
            let last_fetched_epoch = if version >= 12 {
                p.last_fetched_epoch
            } else {
                -1
            };
            let reader = if replica_id >= 0 {
                Reader::Follower {
                    id: replica_id,
                    current_leader_epoch: p.current_leader_epoch,
                    last_fetched_epoch,
                    peer,
                }
            } else {
                Reader::Consumer {
                    current_leader_epoch: p.current_leader_epoch,
                    last_fetched_epoch,
                }
            };
            let result = match (TopicPartition::new(name, p.partition), leads) {
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
                    // A diverged fetcher is answered at once: it must truncate first.
                    any_error |= read.diverging.is_some();
                    total += got;
                    budget = budget.saturating_sub(got);
                    PartitionData {
                        partition: p.partition,
                        error_code: error_code::NONE,
                        high_watermark: read.high_watermark,
                        last_stable_offset: read.high_watermark,
                        log_start_offset: read.offsets.log_start_offset,
                        diverging_epoch: read.diverging,
                        current_leader: None,
                        records,
                    }
                }
                Err(e) => {
                    any_error = true;
                    let code = e.code();
                    // A follower below the log start starts again there.
                    let mut data = failed(p.partition, code, e.log_start_offset().unwrap_or(-1));
                    if version >= LEADER_HINTS
                        && matches!(
                            code,
                            error_code::NOT_LEADER_OR_FOLLOWER | error_code::FENCED_LEADER_EPOCH
                        )
                    {
                        data.current_leader = shard
                            .partition_table()
                            .route(name, p.partition)
                            .filter(|r| r.leader >= 0)
                            .map(|r| (r.leader, r.leader_epoch));
                    }
                    data
                }
            };
            partitions.push(data);
        }
        topics.push(TopicData {
            name: target.name.clone().unwrap_or_default(),
            topic_id: target.topic_id,
            partitions,
        });
    }
    (topics, total, any_error, sent)
}

fn failed(partition: i32, error_code: i16, log_start_offset: i64) -> PartitionData {
    PartitionData {
        partition,
        error_code,
        high_watermark: -1,
        last_stable_offset: -1,
        log_start_offset,
        diverging_epoch: None,
        current_leader: None,
        records: Vec::new(),
    }
}
