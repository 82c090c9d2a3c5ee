//! Follower fetchers: per core, one task per leader broker that this core's follower
//! partitions follow. Each pulls the leader's batches with Kafka's own Fetch
//! (`replica_id` set, so the leader serves it from the zero-copy path and counts its
//! fetch offset as this replica's progress), after truncating each partition that
//! changed epoch by OffsetForLeaderEpoch (KIP-101/279: never to the high watermark).
//! Each round asks about every partition that must truncate in one request and fetches
//! the others; a partition whose log ends below the leader's log start (retention there)
//! empties its log and starts again at the leader's log start.
//!
//! A fetcher stops when no partition of its core follows that leader any more.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use cluster::BrokerId;
use engine::{Partition, TopicPartition};
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
/// Partitions asked about in one OffsetForLeaderEpoch request; more wait for the next
/// round.
const TRUNCATIONS_PER_REQUEST_MAX: usize = 1_000;
/// Largest OffsetForLeaderEpoch response read (an answer is a few dozen bytes).
const EPOCH_RESPONSE_BYTES_MAX: usize = 1024 * 1024;

/// Where a partition's truncation search stands (KIP-279): the epoch it asks the leader
/// about next. Kept across rounds while the partition's leader epoch stays the same, so a
/// search through many epochs goes on where it was, one round trip per epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Search {
    leader_epoch: i32,
    asked: i32,
}

/// Runs until no partition on this core follows `leader`, or shutdown. Each round sends
/// one OffsetForLeaderEpoch request for the partitions that must truncate first, and one
/// Fetch for the others: a partition waiting for its truncation never holds up the rest.
pub async fn run(shard: Rc<Shard>, leader: BrokerId) {
    let me = shard.shared.node_id();
    let client_id = format!("replica-{me}-core-{}", shard.id);
    let mut client: Option<(String, KafkaClient)> = None;
    let mut searches: HashMap<TopicPartition, Search> = HashMap::new();
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
        // Replication is hurried work (acks=all producers wait on it): a core that
        // follows a leader is never paced (`runtime::pacing`).
        crate::runtime::pacing::note_request(false);
        let (truncating, fetching) = plan_round(&partitions, &mut searches);
        let mut result = Ok(false);
        if !truncating.is_empty() {
            result = truncate(&shard, connection, me, &truncating, &mut searches).await;
        }
        if !fetching.is_empty()
            && let Ok(progressed) = result
        {
            // While some partitions search, the fetch does not long-poll: the search goes
            // on at the pace of round trips.
            let wait = if truncating.is_empty() {
                FETCH_WAIT
            } else {
                Duration::ZERO
            };
            result = fetch(&shard, connection, me, &fetching, wait)
                .await
                .map(|fetched| fetched || progressed);
        }
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

/// A round's work: the partitions that must truncate first (asked about together, never
/// fetched) and the ones to fetch. Forgets the searches of partitions that no longer wait
/// for truncation at the leader epoch their search began in: a new epoch starts over
/// from this replica's latest epoch.
fn plan_round<'a>(
    partitions: &'a [FollowerView],
    searches: &mut HashMap<TopicPartition, Search>,
) -> (Vec<&'a FollowerView>, Vec<&'a FollowerView>) {
    let waiting: HashMap<&TopicPartition, i32> = partitions
        .iter()
        .filter(|p| p.needs_truncation)
        .map(|p| (&p.tp, p.leader_epoch))
        .collect();
    searches.retain(|tp, s| waiting.get(tp) == Some(&s.leader_epoch));
    partitions.iter().partition(|p| p.needs_truncation)
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// One Fetch round. Ok(false) when nothing could be done (errors): the caller backs off.
async fn fetch(
    shard: &Rc<Shard>,
    client: &mut KafkaClient,
    me: BrokerId,
    partitions: &[&FollowerView],
    wait: Duration,
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
        .with_max_wait_ms(i32::try_from(wait.as_millis()).unwrap_or(i32::MAX))
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
            wait,
            RESPONSE_BYTES_MAX as usize + 1024 * 1024,
        )
        .await?;
    if response.error_code != error_code::NONE {
        return Ok(false);
    }
    let mut progressed = false;
    let asked: HashMap<(&str, i32), &FollowerView> = partitions
        .iter()
        .map(|p| ((p.tp.topic(), p.tp.partition()), *p))
        .collect();
    // The partitions' appends (each with its own sync under `flush = per-append`) run
    // side by side: each partition has its own writer.
    let mut appends = Vec::new();
    let mut starts = Vec::new();
    for topic in response.responses {
        for data in topic.partitions {
            let Some(&view) = asked.get(&(topic.topic.0.as_str(), data.partition_index)) else {
                continue;
            };
            match data.error_code {
                error_code::NONE => {
                    let records = data.records.unwrap_or_default();
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

/// One round of truncation (KIP-279) for the partitions that wait for it: asks the
/// leader in one OffsetForLeaderEpoch request, for each, about the epoch its search is at
/// (this replica's latest at first), then truncates those whose logs agree somewhere and
/// moves the others' searches down to the next epoch to ask about. A partition the
/// leader cannot answer for yet stays marked and is asked again next round (never cut to
/// the high watermark). Ok(true) when some partition moved on.
async fn truncate(
    shard: &Rc<Shard>,
    client: &mut KafkaClient,
    me: BrokerId,
    partitions: &[&FollowerView],
    searches: &mut HashMap<TopicPartition, Search>,
) -> Result<bool, ClientError> {
    let mut progressed = false;
    let mut asking: Vec<(&FollowerView, Partition, i32)> = Vec::new();
    for &view in partitions {
        if asking.len() == TRUNCATIONS_PER_REQUEST_MAX {
            break;
        }
        let Ok((log, _)) = shard.local(&view.tp) else {
            continue;
        };
        if let Some(search) = searches.get(&view.tp) {
            asking.push((view, log, search.asked));
            continue;
        }
        let Some(latest) = log.latest_epoch() else {
            let offsets = log.offsets();
            if offsets.log_end_offset == offsets.log_start_offset {
                // Empty: nothing to agree on.
                progressed |= shard.follower_truncate(view, view.log_end).await.is_ok();
            } else {
                // Batches without epochs (written before replication existed) are never
                // followed: refuse to guess where to cut.
                tracing::warn!(partition = %view.tp.dir_name(), "follower log has no leader epochs: cannot find where it agrees with the leader");
            }
            continue;
        };
        asking.push((view, log, latest));
    }
    if asking.is_empty() {
        return Ok(progressed);
    }
    let mut by_topic: BTreeMap<&str, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
    for (view, _, asked) in &asking {
        by_topic.entry(view.tp.topic()).or_default().push(
            OffsetForLeaderPartition::default()
                .with_partition(view.tp.partition())
                .with_current_leader_epoch(view.leader_epoch)
                .with_leader_epoch(*asked),
        );
    }
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(me))
        .with_topics(
            by_topic
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetForLeaderTopic::default()
                        .with_topic(topic_name(name))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let response: OffsetForLeaderEpochResponse = client
        .call(
            ApiKey::OffsetForLeaderEpoch,
            OFFSET_FOR_LEADER_EPOCH_VERSION,
            &request,
            Duration::ZERO,
            EPOCH_RESPONSE_BYTES_MAX,
        )
        .await?;
    // The response's arrays were bounded by the client before decoding.
    let answers: HashMap<(&str, i32), (i16, i32, i64)> = response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    (t.topic.0.as_str(), p.partition),
                    (p.error_code, p.leader_epoch, p.end_offset),
                )
            })
        })
        .collect();
    for (view, log, asked) in asking {
        let Some(&(code, leader_epoch, end_offset)) =
            answers.get(&(view.tp.topic(), view.tp.partition()))
        else {
            tracing::debug!(partition = %view.tp.dir_name(), "leader left the partition out of its OffsetForLeaderEpoch answer");
            continue;
        };
        if code != error_code::NONE {
            tracing::debug!(partition = %view.tp.dir_name(), code, "leader refused OffsetForLeaderEpoch");
            continue;
        }
        let entries = log.epoch_entries();
        let end = log.offsets().log_end_offset;
        match divergence(&entries, end, asked, (leader_epoch, end_offset)) {
            Divergence::TruncateTo(offset) => match shard.follower_truncate(view, offset).await {
                Ok(()) => {
                    searches.remove(&view.tp);
                    progressed = true;
                }
                Err(e) => {
                    tracing::error!(partition = %view.tp.dir_name(), error = %e, "truncation failed")
                }
            },
            Divergence::Ask(epoch) => {
                searches.insert(
                    view.tp.clone(),
                    Search {
                        leader_epoch: view.leader_epoch,
                        asked: epoch,
                    },
                );
                progressed = true;
            }
            Divergence::Unknown => {
                // The leader knows no epoch at or below ours (it has not recorded its
                // own yet): ask again later rather than guess where to cut.
                tracing::debug!(partition = %view.tp.dir_name(), asked, "leader knows no epoch at or below ours yet");
            }
        }
    }
    Ok(progressed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(partition: i32, leader_epoch: i32, needs_truncation: bool) -> FollowerView {
        FollowerView {
            tp: TopicPartition::new("t", partition).unwrap(),
            leader_epoch,
            needs_truncation,
            log_end: 100,
            log_start: 0,
        }
    }

    fn names(views: &[&FollowerView]) -> Vec<i32> {
        views.iter().map(|v| v.tp.partition()).collect()
    }

    #[test]
    fn given_a_partition_waiting_for_truncation_should_fetch_the_others_in_the_same_round() {
        let partitions = [view(0, 5, true), view(1, 5, false), view(2, 5, false)];
        let mut searches = HashMap::new();
        // Replication is hurried work (acks=all producers wait on it): a core that
        // follows a leader is never paced (`runtime::pacing`).
        crate::runtime::pacing::note_request(false);
        let (truncating, fetching) = plan_round(&partitions, &mut searches);
        assert_eq!(names(&truncating), vec![0]);
        assert_eq!(names(&fetching), vec![1, 2], "never the truncating one");
    }

    #[test]
    fn given_a_search_in_progress_should_keep_it_across_rounds_until_the_epoch_moves() {
        let tp = TopicPartition::new("t", 0).unwrap();
        let mut searches = HashMap::from([(
            tp.clone(),
            Search {
                leader_epoch: 5,
                asked: 3,
            },
        )]);
        // However many rounds it takes (the search is one epoch per round trip).
        for _ in 0..100 {
            let partitions = [view(0, 5, true)];
            plan_round(&partitions, &mut searches);
            assert_eq!(searches.get(&tp).map(|s| s.asked), Some(3));
        }
        // A new leader epoch: the search starts over.
        plan_round(&[view(0, 6, true)], &mut searches);
        assert!(searches.is_empty());
        // Truncated (no longer waiting), or no longer followed here: forgotten.
        searches.insert(
            tp.clone(),
            Search {
                leader_epoch: 6,
                asked: 2,
            },
        );
        plan_round(&[view(0, 6, false)], &mut searches);
        assert!(searches.is_empty());
        searches.insert(
            tp,
            Search {
                leader_epoch: 6,
                asked: 2,
            },
        );
        plan_round(&[view(1, 6, true)], &mut searches);
        assert!(searches.is_empty());
    }
}
