//! The group coordinator's side of `__consumer_offsets`: creating the topic on the first
//! FindCoordinator, following which of its partitions this broker leads (loading each
//! from its log when leadership arrives, dropping its groups when it leaves), writing
//! commits and tombstones through the partition's replicated log (acknowledged as an
//! acks=all produce is), and expiring the offsets of groups without members.
//!
//! The loop runs on core 0; loads, writes and the log reads go to the core that owns the
//! partition through `Shard`. Nothing here holds a lock across an await.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::{AppendWait, TopicPartition};

use super::coordinator::GroupSnapshot;
use super::offsets::Committed;
use super::offsets_topic::{self, Entry, Key, OFFSETS_TOPIC};
use crate::control::topics::TopicMeta;
use crate::kafka::protocol::error_code;
use crate::runtime::shard::{PartitionError, Shard};

/// How often the hosted partitions are checked against the metadata when it does not
/// move (it wakes the loop on every change too).
const HOSTING_TICK: Duration = Duration::from_millis(250);
/// Bytes of the log read per step of a load.
const LOAD_CHUNK_BYTES: u64 = 1 << 20;
/// A load that cannot read yet (the partition's core has not taken the leadership yet)
/// tries again after this long.
const LOAD_RETRY: Duration = Duration::from_millis(50);
/// Records per batch the coordinator writes itself (tombstones, moved offsets): with
/// names of at most 255 + 249 bytes, a batch stays far below `message_max_bytes`.
const RECORDS_PER_BATCH: usize = 500;
/// A load whose old offsets could not be moved in tries again after this long.
const MIGRATION_RETRY: Duration = Duration::from_secs(1);

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn offsets_tp(partition: i32) -> Result<TopicPartition, i16> {
    TopicPartition::new(OFFSETS_TOPIC, partition).map_err(|_| error_code::UNKNOWN_SERVER_ERROR)
}

/// The number of partitions of `__consumer_offsets`, creating the topic if it does not
/// exist yet (as Kafka does on the first FindCoordinator). COORDINATOR_NOT_AVAILABLE
/// while it cannot be created (fewer live brokers than its replication factor).
pub async fn ensure_topic(shard: &Rc<Shard>) -> Result<i32, i16> {
    let existing = |shard: &Shard| {
        let metadata = shard.shared.controller.view().current();
        metadata
            .topics
            .get(OFFSETS_TOPIC)
            .map(|t| i32::try_from(t.partitions.len()).unwrap_or(i32::MAX))
    };
    if let Some(n) = existing(shard) {
        return Ok(n);
    }
    let config = shard.config();
    let meta = TopicMeta {
        name: OFFSETS_TOPIC.to_owned(),
        partitions: config.offsets_topic_num_partitions,
        configs: BTreeMap::from([
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            (
                "segment.bytes".to_owned(),
                offsets_topic::OFFSETS_SEGMENT_BYTES.to_string(),
            ),
        ]),
        topic_id: 0,
    };
    let rf = config.offsets_topic_replication_factor();
    match crate::kafka::handlers::admin::create_committed(shard, meta, rf, None, false).await {
        Ok(_) => {}
        Err((code, _)) if code == error_code::TOPIC_ALREADY_EXISTS => {}
        Err((code, reason)) => {
            tracing::info!(code, %reason, replication_factor = rf, "cannot create __consumer_offsets yet");
            return Err(error_code::COORDINATOR_NOT_AVAILABLE);
        }
    }
    existing(shard).ok_or(error_code::COORDINATOR_NOT_AVAILABLE)
}

/// Runs on core 0 until shutdown: hosts the `__consumer_offsets` partitions this broker
/// leads, and expires offsets.
pub async fn host_offsets_partitions(shard: Rc<Shard>) {
    let controller = shard.shared.controller.clone();
    let mut seen = 0;
    let mut last_expiry = Instant::now();
    let expiring = Rc::new(std::cell::Cell::new(false));
    // Topic name -> id, to see deletions (and creations again under the same name).
    let mut topics: Option<HashMap<String, u128>> = None;
    loop {
        let changed = std::pin::pin!(controller.view().changed_since(seen));
        let tick = std::pin::pin!(compio::time::sleep(HOSTING_TICK));
        let woken = futures_util::future::select(changed, tick);
        let stop = std::pin::pin!(shard.shared.stopped());
        if let futures_util::future::Either::Right(_) =
            futures_util::future::select(woken, stop).await
        {
            return;
        }
        let (version, metadata) = controller.view().versioned();
        seen = version;
        let me = shard.shared.node_id();
        let wanted: Vec<(i32, i32)> = match metadata.topics.get(OFFSETS_TOPIC) {
            // Leads only what it holds open here (the follower opens it on every core).
            Some(topic) if shard.shared.registry.get(OFFSETS_TOPIC).is_some() => topic
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.leader == me)
                .map(|(i, p)| (i as i32, p.leader_epoch))
                .collect(),
            _ => Vec::new(),
        };
        let partitions = metadata
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(0, |t| i32::try_from(t.partitions.len()).unwrap_or(i32::MAX));
        let (to_load, dropped) = {
            let mut cache = shard.shared.offsets();
            cache.set_partitions(partitions);
            let wanted_set: HashSet<(i32, i32)> = wanted.iter().copied().collect();
            let mut dropped = Vec::new();
            for (p, epoch) in cache.hosted() {
                if !wanted_set.contains(&(p, epoch)) {
                    cache.unhost(p);
                    dropped.push(p);
                }
            }
            let to_load: Vec<(i32, i32)> = wanted
                .into_iter()
                .filter(|&(p, epoch)| cache.host(p, epoch))
                .collect();
            (to_load, dropped)
        };
        if !dropped.is_empty() || !to_load.is_empty() {
            let moved: HashSet<i32> = dropped
                .iter()
                .chain(to_load.iter().map(|(p, _)| p))
                .copied()
                .collect();
            let forgotten = shard
                .shared
                .groups()
                .forget_where(|g| moved.contains(&offsets_topic::partition_for(g, partitions)));
            if !dropped.is_empty() {
                tracing::info!(partitions = ?dropped, groups = forgotten, "no longer coordinating these __consumer_offsets partitions");
            }
        }
        for (p, epoch) in to_load {
            compio::runtime::spawn(load(Rc::clone(&shard), p, epoch)).detach();
        }
        // Committed offsets of deleted topics go (a topic created again under the name
        // must not inherit them), on every broker for the partitions it leads.
        let now_topics: HashMap<String, u128> = metadata
            .topics
            .iter()
            .map(|(name, t)| (name.clone(), t.topic_id))
            .collect();
        if let Some(before) = topics.replace(now_topics.clone()) {
            for (name, id) in before {
                if now_topics.get(&name) != Some(&id) {
                    let shard = Rc::clone(&shard);
                    compio::runtime::spawn(async move { forget_topic(&shard, &name).await })
                        .detach();
                }
            }
        }
        let every = Duration::from_millis(shard.config().offsets_retention_check_interval_ms);
        if last_expiry.elapsed() >= every && !expiring.get() {
            last_expiry = Instant::now();
            expiring.set(true);
            let (shard, expiring) = (Rc::clone(&shard), Rc::clone(&expiring));
            compio::runtime::spawn(async move {
                expire_offsets(&shard).await;
                expiring.set(false);
            })
            .detach();
        }
    }
}

/// Reads partition `p` from its log start to its end into the cache, while this broker
/// still leads it at `epoch`; then moves in the groups of the old offsets file that
/// belong to it, and serves it.
async fn load(shard: Rc<Shard>, p: i32, epoch: i32) {
    let started = Instant::now();
    let Ok(tp) = offsets_tp(p) else { return };
    let mut offset = 0i64;
    let mut records = 0u64;
    loop {
        if !shard.shared.offsets().is_hosting(p, epoch) || shard.shared.stopping() {
            return;
        }
        let chunk = match shard
            .read_leader_log(tp.clone(), offset, LOAD_CHUNK_BYTES, epoch)
            .await
        {
            Ok(chunk) => chunk,
            Err(e) => {
                // Most often: the partition's core has not taken the leadership yet.
                tracing::debug!(partition = p, epoch, error = %e, "cannot load yet");
                compio::time::sleep(LOAD_RETRY).await;
                continue;
            }
        };
        offset = offset.max(chunk.log_start);
        if chunk.batches.is_empty() {
            if offset >= chunk.log_end {
                break;
            }
            // Never expected (a read below the end returns a batch): do not spin.
            tracing::warn!(
                partition = p,
                offset,
                end = chunk.log_end,
                "empty read while loading"
            );
            compio::time::sleep(LOAD_RETRY).await;
            continue;
        }
        let read_from = offset;
        let mut buf = Bytes::from(chunk.batches);
        let decoded: Vec<(i64, Entry)> = {
            let mut out = Vec::new();
            while !buf.is_empty() {
                let next = engine::BatchHeader::parse(&buf)
                    .ok()
                    .map(|h| h.last_offset() + 1);
                match kafka_protocol::records::RecordBatchDecoder::decode(&mut buf) {
                    Ok(set) => {
                        for r in set.records {
                            if r.control {
                                continue;
                            }
                            let Some(key) = r.key.as_deref() else {
                                continue;
                            };
                            match offsets_topic::decode(key, r.value.as_deref()) {
                                Some(entry) => out.push((r.offset, entry)),
                                None => tracing::warn!(
                                    partition = p,
                                    offset = r.offset,
                                    "skipping a __consumer_offsets record of an unknown kind"
                                ),
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(partition = p, offset, error = %e, "skipping a __consumer_offsets batch that does not decode");
                        // The decoder may have read none of it: step over it by its
                        // header (the engine validated its length), or stop this chunk.
                        let whole = engine::BatchHeader::parse(&buf)
                            .ok()
                            .and_then(|h| usize::try_from(h.declared_total_bytes()).ok())
                            .filter(|n| *n > 0 && *n <= buf.len());
                        match whole {
                            Some(n) => {
                                let _ = buf.split_to(n);
                            }
                            None => buf.clear(),
                        }
                    }
                }
                match next {
                    Some(next) => offset = offset.max(next),
                    None => break,
                }
            }
            out
        };
        records += decoded.len() as u64;
        {
            let mut cache = shard.shared.offsets();
            for (at, entry) in decoded {
                cache.apply(p, at, entry);
            }
        }
        if offset == read_from {
            // A batch whose header does not parse (damage the engine let through):
            // never spin on it; the partition stays loading, and says why.
            tracing::error!(
                partition = p,
                offset,
                "a __consumer_offsets batch does not parse; the load cannot pass it"
            );
            compio::time::sleep(MIGRATION_RETRY).await;
        }
    }
    // Served only once the old file's groups are in the topic: a coordinator answering
    // without them would let consumers start over and commit past them.
    while let Err(code) = migrate_legacy(&shard, p, epoch).await {
        if !shard.shared.offsets().is_hosting(p, epoch) || shard.shared.stopping() {
            return;
        }
        tracing::warn!(
            partition = p,
            code,
            "cannot move old committed offsets into __consumer_offsets yet; trying again"
        );
        compio::time::sleep(MIGRATION_RETRY).await;
    }
    // The groups' last stable states come back with the partition, so their members
    // carry on without a rebalance; in the same step as the load's end (both locks, the
    // coordinator's first), so nothing joins in between.
    let served = {
        let mut groups = shard.shared.groups();
        let mut cache = shard.shared.offsets();
        let restored = cache.stable_groups(p);
        let served = cache.finish_load(p, epoch, now_ms());
        if served {
            let now = Instant::now();
            for (group, state) in restored {
                groups.restore(&group, state, now);
            }
        }
        served
    };
    if served {
        // Offsets of topics deleted while nobody led this partition go now.
        let gone: Vec<String> = {
            let metadata = shard.shared.controller.view().current();
            shard
                .shared
                .offsets()
                .topics_in(p)
                .into_iter()
                .filter(|t| !metadata.topics.contains_key(t))
                .collect()
        };
        for topic in gone {
            let keys: Vec<Key> = shard
                .shared
                .offsets()
                .keys_of_topic(&topic)
                .into_iter()
                .filter(|(q, _)| *q == p)
                .flat_map(|(_, keys)| keys)
                .collect();
            if let Err(code) = delete_keys(&shard, p, keys).await {
                tracing::warn!(partition = p, %topic, code, "cannot delete a deleted topic's committed offsets");
            }
        }
        tracing::debug!(
            partition = p,
            epoch,
            records,
            ms = started.elapsed().as_millis() as u64,
            "loaded __consumer_offsets partition; coordinating its groups"
        );
    }
}

/// Moves the groups of partition `p` from the old offsets file into the topic (groups
/// the topic has no record of at all: one it has any record of, even a deletion, is
/// newer there), in bounded batches, then forgets them in the file.
async fn migrate_legacy(shard: &Rc<Shard>, p: i32, epoch: i32) -> Result<(), i16> {
    type GroupOffsets = (String, Vec<(String, i32, Committed)>);
    let moving: Vec<GroupOffsets> = {
        let legacy = shard
            .shared
            .legacy_offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(store) = legacy.as_ref() else {
            return Ok(());
        };
        let cache = shard.shared.offsets();
        store
            .groups()
            .into_iter()
            .filter(|g| cache.partition_of(g) == Some(p))
            .map(|g| {
                let entries = store.group_partitions(&g);
                (g, entries)
            })
            .collect()
    };
    if moving.is_empty() {
        return Ok(());
    }
    let ts = now_ms();
    let records: Vec<Written> = {
        let cache = shard.shared.offsets();
        moving
            .iter()
            .filter(|(g, _)| !cache.has_group_record(p, g))
            .flat_map(|(g, entries)| {
                entries
                    .iter()
                    .map(move |(t, part, c)| ((g.clone(), t.clone(), *part), Some((c.clone(), ts))))
            })
            .collect()
    };
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let chunk: Vec<_> = records.by_ref().take(RECORDS_PER_BATCH).collect();
        write(shard, p, epoch, chunk).await?;
    }
    let mut legacy = shard
        .shared
        .legacy_offsets
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let Some(store) = legacy.as_mut() else {
        return Ok(());
    };
    for (g, _) in &moving {
        if let Err(e) = store.forget_group(g) {
            tracing::warn!(group = %g, error = %e, "cannot forget a moved group in the old offsets file");
        }
    }
    tracing::info!(
        partition = p,
        groups = moving.len(),
        "moved committed offsets from the old offsets file into __consumer_offsets"
    );
    if store.groups().is_empty() {
        match store.retire() {
            Ok(()) => *legacy = None,
            Err(e) => tracing::warn!(error = %e, "cannot retire the old offsets file"),
        }
    }
    Ok(())
}

/// A record the coordinator writes: a commit (with its commit time), or a tombstone.
pub type Written = (Key, Option<(Committed, i64)>);

/// Writes records (a commit, or a tombstone for `None`) to partition `p` as one batch,
/// acknowledged once the ISR has it (as acks=all), and applies them to the cache. The
/// error is what an OffsetCommit answers, as Kafka maps a failed append.
pub async fn write(
    shard: &Rc<Shard>,
    p: i32,
    epoch: i32,
    records: Vec<Written>,
) -> Result<(), i16> {
    let entries = records
        .into_iter()
        .map(|(key, value)| Entry::Commit { key, value })
        .collect();
    append_entries(shard, p, epoch, entries).await
}

/// What `persist_group` writes.
pub enum GroupRecord {
    /// The group's state as it is when the write's turn comes (stable or empty); the
    /// fallback when the coordinator no longer holds it then (an emptied group it
    /// forgot). Nothing when it is in a rebalance: its next stable state is written.
    Current { fallback: Option<GroupSnapshot> },
    /// A tombstone (DeleteGroups).
    Delete,
}

/// Keeps a group's state (or deletes it) in its `__consumer_offsets` partition, if this
/// broker coordinates the group. One write at a time on this broker, each taking the
/// state when its turn comes: the last record is the last state. A failure leaves the
/// previous record, so the next coordinator may rebalance the group (or, after a
/// failed delete, know it again).
pub async fn persist_group(shard: &Rc<Shard>, group: String, what: GroupRecord) -> Result<(), i16> {
    let _turn = shard.shared.group_state_writes.lock().await;
    let (p, epoch) = crate::kafka::handlers::groups::coordinating(shard, &group)?;
    let value = match what {
        GroupRecord::Delete => None,
        GroupRecord::Current { fallback } => {
            let current = shard.shared.groups().snapshot(&group);
            let Some(state) = current.or(fallback) else {
                return Ok(());
            };
            if !offsets_topic::encodable(&state) {
                tracing::warn!(%group, "group state has a name too long for the record format; not kept");
                return Ok(());
            }
            Some(state)
        }
    };
    let generation = value.as_ref().map(|s| s.generation);
    let entry = Entry::Group {
        group: group.clone(),
        value,
    };
    append_entries(shard, p, epoch, vec![entry])
        .await
        .inspect_err(|code| tracing::debug!(%group, ?generation, code, "group state not written"))
}

fn encode(entry: &Entry) -> (Bytes, Option<Bytes>) {
    match entry {
        Entry::Commit {
            key: (g, t, part),
            value,
        } => (
            offsets_topic::commit_key(g, t, *part),
            value
                .as_ref()
                .map(|(c, ts)| offsets_topic::commit_value(c, *ts)),
        ),
        Entry::Group { group, value } => (
            offsets_topic::group_key(group),
            value.as_ref().map(offsets_topic::group_value),
        ),
    }
}

/// Appends `entries` to partition `p` as one batch, acknowledged once the ISR has it
/// (as acks=all), and applies them to the cache if it still hosts `p` at `epoch`.
async fn append_entries(
    shard: &Rc<Shard>,
    p: i32,
    epoch: i32,
    entries: Vec<Entry>,
) -> Result<(), i16> {
    let tp = offsets_tp(p)?;
    let batch =
        offsets_topic::batch_of(entries.iter().map(encode).collect(), now_ms()).map_err(|e| {
            tracing::error!(error = %e, "cannot encode a __consumer_offsets batch");
            error_code::UNKNOWN_SERVER_ERROR
        })?;
    let timeout = Duration::from_millis(shard.config().offsets_commit_timeout_ms);
    let appended = compio::time::timeout(timeout, shard.append(tp, batch, AppendWait::Durable))
        .await
        .unwrap_or(Err(PartitionError::Replication {
            code: error_code::REQUEST_TIMED_OUT,
            reason: "not replicated within offsets_commit_timeout_ms",
        }));
    let info = appended.map_err(|e| {
        tracing::debug!(partition = p, error = %e, "__consumer_offsets write refused");
        commit_error(e.code())
    })?;
    let mut cache = shard.shared.offsets();
    if !cache.is_hosting(p, epoch) {
        // Leadership moved meanwhile: the new load reads this record from the log.
        return Err(error_code::NOT_COORDINATOR);
    }
    for (i, entry) in entries.into_iter().enumerate() {
        cache.apply(p, info.base_offset + i as i64, entry);
    }
    Ok(())
}

/// What an OffsetCommit answers for a failed append (Kafka's mapping).
fn commit_error(code: i16) -> i16 {
    match code {
        error_code::UNKNOWN_TOPIC_OR_PARTITION
        | error_code::NOT_ENOUGH_REPLICAS
        | error_code::NOT_ENOUGH_REPLICAS_AFTER_APPEND
        | error_code::REQUEST_TIMED_OUT => error_code::COORDINATOR_NOT_AVAILABLE,
        error_code::NOT_LEADER_OR_FOLLOWER
        | error_code::LEADER_NOT_AVAILABLE
        | error_code::FENCED_LEADER_EPOCH
        | error_code::KAFKA_STORAGE_ERROR => error_code::NOT_COORDINATOR,
        error_code::MESSAGE_TOO_LARGE | error_code::RECORD_LIST_TOO_LARGE => {
            error_code::INVALID_COMMIT_OFFSET_SIZE
        }
        _ => error_code::UNKNOWN_SERVER_ERROR,
    }
}

/// Writes tombstones for `keys` of partition `p`, in batches.
pub async fn delete_keys(shard: &Rc<Shard>, p: i32, keys: Vec<Key>) -> Result<(), i16> {
    let epoch = shard
        .shared
        .offsets()
        .hosted()
        .into_iter()
        .find(|(q, _)| *q == p)
        .map(|(_, e)| e)
        .ok_or(error_code::NOT_COORDINATOR)?;
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        let chunk: Vec<Written> = keys
            .by_ref()
            .take(RECORDS_PER_BATCH)
            .map(|k| (k, None))
            .collect();
        write(shard, p, epoch, chunk).await?;
    }
    Ok(())
}

/// Deletes the committed offsets of a deleted topic in every hosted partition (so a
/// topic created again under its name starts without them), and from the old file.
pub async fn forget_topic(shard: &Rc<Shard>, topic: &str) {
    if let Some(store) = shard
        .shared
        .legacy_offsets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        && let Err(e) = store.forget_topic(topic)
    {
        tracing::warn!(topic, error = %e, "cannot drop a deleted topic's offsets from the old offsets file");
    }
    let per_partition = shard.shared.offsets().keys_of_topic(topic);
    for (p, keys) in per_partition {
        if let Err(code) = delete_keys(shard, p, keys).await {
            tracing::warn!(
                topic,
                partition = p,
                code,
                "cannot delete a deleted topic's committed offsets"
            );
        }
    }
}

/// Offsets retention: the offsets of a group with no members whose every commit is
/// older than `offsets_retention_minutes` (and whose partition has been loaded here for
/// that long) are deleted. Each batch is checked again just before it is written: a
/// group that committed or gained members meanwhile keeps its offsets.
async fn expire_offsets(shard: &Rc<Shard>) {
    let retention_ms = shard
        .config()
        .offsets_retention_minutes
        .saturating_mul(60_000);
    let before = now_ms().saturating_sub(i64::try_from(retention_ms).unwrap_or(i64::MAX));
    let expired = {
        let groups = shard.shared.groups();
        let cache = shard.shared.offsets();
        cache.expired(before, |g| !groups.has_members(g))
    };
    for (p, keys) in expired {
        let n = keys.len();
        let mut keys = keys.into_iter().peekable();
        let mut deleted = 0;
        while keys.peek().is_some() {
            let chunk: Vec<Key> = keys.by_ref().take(RECORDS_PER_BATCH).collect();
            let (still, epoch): (Vec<Written>, Option<i32>) = {
                let groups = shard.shared.groups();
                let cache = shard.shared.offsets();
                let epoch = cache
                    .hosted()
                    .into_iter()
                    .find(|(q, _)| *q == p)
                    .map(|(_, e)| e);
                let still = chunk
                    .into_iter()
                    .filter(|k| {
                        !groups.has_members(&k.0)
                            && cache.commit_timestamp(p, k).is_some_and(|ts| ts < before)
                    })
                    .map(|k| (k, None))
                    .collect();
                (still, epoch)
            };
            let Some(epoch) = epoch else { break };
            if still.is_empty() {
                continue;
            }
            let count = still.len();
            match write(shard, p, epoch, still).await {
                Ok(()) => deleted += count,
                Err(code) => {
                    tracing::warn!(partition = p, code, "cannot expire committed offsets");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(
                partition = p,
                offsets = deleted,
                of = n,
                "expired committed offsets of groups without members"
            );
        }
    }
}
