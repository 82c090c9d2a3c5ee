//! Follower fetchers: per core, one task per leader broker that this core's follower
//! partitions follow. Each pulls the leader's batches with Kafka's own Fetch
//! (`replica_id` set, so the leader serves it from the zero-copy path and counts its
//! fetch offset as this replica's progress), after truncating each partition that
//! changed epoch by OffsetForLeaderEpoch (KIP-101/279: never to the high watermark).
//! A partition whose log ends below the leader's log start (retention there) empties
//! its log and starts again at the leader's log start.
//!
//! A fetcher stops when no partition of its core follows that leader any more.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use cluster::BrokerId;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::client::{ClientError, KafkaClient};
use crate::kafka::protocol::error_code;
use crate::runtime::replication::{Divergence, FollowerView, OutOfRange, divergence, out_of_range};
use crate::runtime::shard::Shard;

const FETCH_VERSION: i16 = 11;
const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 3;
/// How long the leader may hold a fetch with nothing new.
const FETCH_WAIT: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after an error (no connection, leader not ready, metadata behind).
const BACKOFF: Duration = Duration::from_millis(100);
/// Per partition and per response (Kafka's replica.fetch.max.bytes and
/// replica.fetch.response.max.bytes, larger: with 1 MiB per partition a follower of a
/// partition taking 1 MB produce requests moved one request per round trip, and acks=all
/// throughput was bounded by that, not by the disk). A response is read into memory
/// whole: 32 MiB per fetcher (one per core and leader broker).
const PARTITION_BYTES_MAX: i32 = 8 * 1024 * 1024;
const RESPONSE_BYTES_MAX: i32 = 32 * 1024 * 1024;
/// OffsetForLeaderEpoch rounds before giving up on a partition for now.
const DIVERGENCE_ROUNDS_MAX: usize = 16;

/// Runs until no partition on this core follows `leader`, or shutdown.
pub async fn run(shard: Rc<Shard>, leader: BrokerId) {
    let me = shard.shared.node_id();
    let client_id = format!("replica-{me}-core-{}", shard.id);
    let mut client: Option<(String, KafkaClient)> = None;
    loop {
        if shard.shared.stopping() {
            break;
        }
        let partitions = shard.follower_partitions(leader);
        if partitions.is_empty() {
            break;
        }
        let addr = {
            let metadata = shard.shared.controller.view().current();
            metadata
                .brokers
                .get(&leader)
                .map(|b| format!("{}:{}", b.host, b.port))
        };
        let Some(addr) = addr else {
            compio::time::sleep(BACKOFF).await;
            continue;
        };
        if client.as_ref().is_none_or(|(at, _)| *at != addr) {
            let listen = shard.shared.config.listen.ip();
            let source = (!listen.is_unspecified()).then_some(listen);
            match KafkaClient::connect(&addr, source, &client_id, CONNECT_TIMEOUT).await {
                Ok(c) => client = Some((addr.clone(), c)),
                Err(e) => {
                    tracing::debug!(leader, error = %e, "cannot reach the leader");
                    client = None;
                    compio::time::sleep(BACKOFF).await;
                    continue;
                }
            }
        }
        let Some((_, connection)) = client.as_mut() else {
            continue;
        };
        let truncating: Vec<&FollowerView> =
            partitions.iter().filter(|p| p.needs_truncation).collect();
        let result = if truncating.is_empty() {
            fetch(&shard, connection, me, &partitions).await
        } else {
            truncate(&shard, connection, me, &truncating).await
        };
        match result {
            Ok(true) => {}
            Ok(false) => compio::time::sleep(BACKOFF).await,
            Err(e) => {
                tracing::debug!(leader, error = %e, "fetch from the leader failed");
                client = None;
                compio::time::sleep(BACKOFF).await;
            }
        }
    }
    // No await between the last check and this: reconcile sees it gone and starts anew.
    shard.fetchers.borrow_mut().remove(&leader);
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// One Fetch round. Ok(false) when nothing could be done (errors): the caller backs off.
async fn fetch(
    shard: &Rc<Shard>,
    client: &mut KafkaClient,
    me: BrokerId,
    partitions: &[FollowerView],
) -> Result<bool, ClientError> {
    let mut by_topic: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for p in partitions {
        by_topic.entry(p.tp.topic()).or_default().push(
            FetchPartition::default()
                .with_partition(p.tp.partition())
                .with_current_leader_epoch(p.leader_epoch)
                .with_fetch_offset(p.log_end)
                .with_log_start_offset(p.log_start)
                .with_partition_max_bytes(PARTITION_BYTES_MAX),
        );
    }
    let request = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(me))
        .with_max_wait_ms(FETCH_WAIT.as_millis() as i32)
        .with_min_bytes(1)
        .with_max_bytes(RESPONSE_BYTES_MAX)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(name, partitions)| {
                    FetchTopic::default()
                        .with_topic(topic_name(name))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let response: FetchResponse = client
        .call(
            ApiKey::Fetch,
            FETCH_VERSION,
            &request,
            FETCH_WAIT,
            RESPONSE_BYTES_MAX as usize + 1024 * 1024,
        )
        .await?;
    if response.error_code != error_code::NONE {
        return Ok(false);
    }
    let mut progressed = false;
    // The partitions' appends (each with its own sync under `flush = per-append`) run
    // side by side: each partition has its own writer.
    let mut appends = Vec::new();
    let mut starts = Vec::new();
    for topic in response.responses {
        for data in topic.partitions {
            let Some(view) = partitions.iter().find(|p| {
                p.tp.topic() == topic.topic.0.as_str() && p.tp.partition() == data.partition_index
            }) else {
                continue;
            };
            match data.error_code {
                error_code::NONE => {
                    let records = data.records.map(|r| r.to_vec()).unwrap_or_default();
                    appends.push(async move {
                        let result = shard
                            .follower_append(view, records, data.high_watermark)
                            .await;
                        if let Err(e) = &result {
                            tracing::warn!(partition = %view.tp.dir_name(), error = %e, "follower append failed");
                        }
                        result.is_ok()
                    });
                }
                error_code::OFFSET_OUT_OF_RANGE => {
                    match out_of_range(view.log_end, data.log_start_offset) {
                        OutOfRange::StartAt(log_start) => starts.push((view, log_start)),
                        OutOfRange::TruncateByEpoch => {
                            tracing::info!(partition = %view.tp.dir_name(), offset = view.log_end, leader_log_start = data.log_start_offset, "fetch offset past the leader's log end: truncating by epoch");
                            shard.follower_needs_truncation(&view.tp);
                        }
                    }
                    progressed = true;
                }
                code => {
                    tracing::debug!(partition = %view.tp.dir_name(), code, "leader refused the fetch");
                }
            }
        }
    }
    for ok in futures_util::future::join_all(appends).await {
        progressed |= ok;
    }
    // Rare (a replica away for longer than the leader's retention): one at a time.
    for (view, log_start) in starts {
        if let Err(e) = shard.follower_start_at(view, log_start).await {
            tracing::error!(partition = %view.tp.dir_name(), log_start, error = %e, "cannot start the log again at the leader's log start");
        }
    }
    Ok(progressed)
}

/// Truncates each partition to where its log agrees with the leader's, asking the
/// leader (OffsetForLeaderEpoch) about this replica's latest epoch, then lower ones
/// until they agree (KIP-279). Ok(false) when some partition could not be settled yet
/// (the caller backs off; it stays marked and is asked about again).
async fn truncate(
    shard: &Rc<Shard>,
    client: &mut KafkaClient,
    me: BrokerId,
    partitions: &[&FollowerView],
) -> Result<bool, ClientError> {
    let mut done = true;
    for view in partitions {
        let Ok((log, _)) = shard.local(&view.tp) else {
            continue;
        };
        let Some(mut asked) = log.latest_epoch() else {
            let offsets = log.offsets();
            if offsets.log_end_offset == offsets.log_start_offset {
                // Empty: nothing to agree on.
                done &= shard.follower_truncate(view, view.log_end).await.is_ok();
            } else {
                // Batches without epochs (written before replication existed) are never
                // followed: refuse to guess where to cut.
                tracing::warn!(partition = %view.tp.dir_name(), "follower log has no leader epochs: cannot find where it agrees with the leader");
                done = false;
            }
            continue;
        };
        let mut settled = false;
        for _ in 0..DIVERGENCE_ROUNDS_MAX {
            let request = OffsetForLeaderEpochRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(me))
                .with_topics(vec![
                    OffsetForLeaderTopic::default()
                        .with_topic(topic_name(view.tp.topic()))
                        .with_partitions(vec![
                            OffsetForLeaderPartition::default()
                                .with_partition(view.tp.partition())
                                .with_current_leader_epoch(view.leader_epoch)
                                .with_leader_epoch(asked),
                        ]),
                ]);
            let response: OffsetForLeaderEpochResponse = client
                .call(
                    ApiKey::OffsetForLeaderEpoch,
                    OFFSET_FOR_LEADER_EPOCH_VERSION,
                    &request,
                    Duration::ZERO,
                    1024 * 1024,
                )
                .await?;
            let Some(answer) = response
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .find(|p| p.partition == view.tp.partition())
            else {
                break;
            };
            if answer.error_code != error_code::NONE {
                tracing::debug!(partition = %view.tp.dir_name(), code = answer.error_code, "leader refused OffsetForLeaderEpoch");
                break;
            }
            let entries = log.epoch_entries();
            let end = log.offsets().log_end_offset;
            match divergence(
                &entries,
                end,
                asked,
                (answer.leader_epoch, answer.end_offset),
            ) {
                Divergence::TruncateTo(offset) => {
                    match shard.follower_truncate(view, offset).await {
                        Ok(()) => settled = true,
                        Err(e) => {
                            tracing::error!(partition = %view.tp.dir_name(), error = %e, "truncation failed")
                        }
                    }
                    break;
                }
                Divergence::Ask(epoch) => asked = epoch,
                Divergence::Unknown => {
                    // The leader knows no epoch at or below ours (it has not recorded its
                    // own yet): ask again later rather than guess where to cut.
                    tracing::debug!(partition = %view.tp.dir_name(), asked, "leader knows no epoch at or below ours yet");
                    break;
                }
            }
        }
        done &= settled;
    }
    Ok(done)
}
