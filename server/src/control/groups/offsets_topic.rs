//! `__consumer_offsets`: the compacted, replicated topic that holds committed offsets, as
//! in Kafka. A group belongs to partition `hash(group) mod N` (Java's `String.hashCode`,
//! as Kafka computes it); the leader of that partition is the group's coordinator.
//!
//! This module is pure: the records' encoding (Kafka's own `OffsetCommitKey` v1 and
//! `OffsetCommitValue` v3, so Kafka's tools can read the topic) and the cache of the
//! committed offsets of the partitions this broker coordinates. Writing and loading go
//! through the partition's log (`hosting.rs`).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::coordinator::{GroupSnapshot, MemberSnapshot};
use super::offsets::Committed;
use crate::kafka::protocol::error_code;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Kafka's `offsets.topic.segment.bytes`.
pub const OFFSETS_SEGMENT_BYTES: u64 = 100 * 1024 * 1024;

/// Key versions: 0 and 1 are an offset commit, 2 a group's metadata.
const COMMIT_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
/// The value version written (v3 adds the leader epoch; v4 is flexible).
const COMMIT_VALUE_VERSION: i16 = 3;
/// The group value version written (v3 adds static members' instance ids).
const GROUP_VALUE_VERSION: i16 = 3;

/// Java's `String.hashCode` over UTF-16 code units.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)))
}

/// The `__consumer_offsets` partition a group belongs to (Kafka's
/// `Utils.abs(groupId.hashCode) % partitions`, where `abs(i32::MIN)` is 0).
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let hash = java_hash(group);
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// (group, topic, partition)
pub type Key = (String, String, i32);

/// One decoded record of the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A committed offset, or its tombstone (`None`).
    Commit {
        key: Key,
        value: Option<(Committed, i64)>,
    },
    /// A group's state (generation, members, assignments), or its tombstone.
    Group {
        group: String,
        value: Option<GroupSnapshot>,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Group and topic names are bounded far below i16::MAX by the request decoder.
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

pub fn commit_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut out = Vec::with_capacity(10 + group.len() + topic.len());
    out.extend_from_slice(&COMMIT_KEY_VERSION.to_be_bytes());
    put_str(&mut out, group);
    put_str(&mut out, topic);
    out.extend_from_slice(&partition.to_be_bytes());
    out.into()
}

pub fn commit_value(c: &Committed, commit_timestamp: i64) -> Bytes {
    let metadata = c.metadata.as_deref().unwrap_or("");
    let mut out = Vec::with_capacity(26 + metadata.len());
    out.extend_from_slice(&COMMIT_VALUE_VERSION.to_be_bytes());
    out.extend_from_slice(&c.offset.to_be_bytes());
    out.extend_from_slice(&c.leader_epoch.to_be_bytes());
    put_str(&mut out, metadata);
    out.extend_from_slice(&commit_timestamp.to_be_bytes());
    out.into()
}

pub fn group_key(group: &str) -> Bytes {
    let mut out = Vec::with_capacity(4 + group.len());
    out.extend_from_slice(&GROUP_KEY_VERSION.to_be_bytes());
    put_str(&mut out, group);
    out.into()
}

fn put_nullable_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Whether every string of the state fits the record format (an `i16` length).
pub fn encodable(g: &GroupSnapshot) -> bool {
    let fits = |s: &str| s.len() <= i16::MAX as usize;
    fits(&g.protocol_type)
        && g.protocol.as_deref().is_none_or(fits)
        && g.leader.as_deref().is_none_or(fits)
        && g.members.iter().all(|m| {
            fits(&m.member_id)
                && m.group_instance_id.as_deref().is_none_or(fits)
                && fits(&m.client_id)
                && fits(&m.client_host)
        })
}

/// Kafka's `GroupMetadataValue` v3 (`encodable` first).
pub fn group_value(g: &GroupSnapshot) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&GROUP_VALUE_VERSION.to_be_bytes());
    put_str(&mut out, &g.protocol_type);
    out.extend_from_slice(&g.generation.to_be_bytes());
    put_nullable_str(&mut out, g.protocol.as_deref());
    put_nullable_str(&mut out, g.leader.as_deref());
    out.extend_from_slice(&g.state_timestamp.to_be_bytes());
    out.extend_from_slice(&(g.members.len() as i32).to_be_bytes());
    for m in &g.members {
        put_str(&mut out, &m.member_id);
        put_nullable_str(&mut out, m.group_instance_id.as_deref());
        put_str(&mut out, &m.client_id);
        put_str(&mut out, &m.client_host);
        out.extend_from_slice(&m.rebalance_timeout_ms.to_be_bytes());
        out.extend_from_slice(&m.session_timeout_ms.to_be_bytes());
        put_bytes(&mut out, &m.subscription);
        put_bytes(&mut out, &m.assignment);
    }
    out.into()
}

/// Kafka's `GroupMetadataValue` v0-v3; `None` for anything else or damage. Counts and
/// lengths are bounded by the bytes present.
fn decode_group_value(value: &[u8]) -> Option<GroupSnapshot> {
    let mut v = Reader {
        bytes: value,
        at: 0,
    };
    let version = v.i16()?;
    if !(0..=3).contains(&version) {
        return None;
    }
    let protocol_type = v.string()?;
    let generation = v.i32()?;
    let protocol = v.nullable_string()?;
    let leader = v.nullable_string()?;
    let state_timestamp = if version >= 2 { v.i64()? } else { -1 };
    let count = usize::try_from(v.i32()?).ok()?;
    // Each member takes at least 20 bytes: no count larger than the bytes allow.
    if count > value.len() / 20 {
        return None;
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let member_id = v.string()?;
        let group_instance_id = if version >= 3 {
            v.nullable_string()?
        } else {
            None
        };
        let client_id = v.string()?;
        let client_host = v.string()?;
        let rebalance_timeout_ms = if version >= 1 { v.i32()? } else { -1 };
        let session_timeout_ms = v.i32()?;
        let rebalance_timeout_ms = if version >= 1 {
            rebalance_timeout_ms
        } else {
            session_timeout_ms
        };
        let subscription = v.bytes()?;
        let assignment = v.bytes()?;
        members.push(MemberSnapshot {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Some(GroupSnapshot {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp,
        members,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
    /// `Some(None)` for a null string.
    fn nullable_string(&mut self) -> Option<Option<String>> {
        let len = self.i16()?;
        if len < 0 {
            return Some(None);
        }
        let len = usize::try_from(len).ok()?;
        Some(Some(String::from_utf8(self.take(len)?.to_vec()).ok()?))
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let len = self.i32()?;
        if len < 0 {
            return Some(Bytes::new());
        }
        Some(Bytes::copy_from_slice(
            self.take(usize::try_from(len).ok()?)?,
        ))
    }
}

/// Decodes one record; `None` for a key or value this broker does not know (a newer
/// version, or damage), which the loader skips.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<Entry> {
    let mut k = Reader { bytes: key, at: 0 };
    match k.i16()? {
        0 | 1 => {
            let key = (k.string()?, k.string()?, k.i32()?);
            let Some(value) = value else {
                return Some(Entry::Commit { key, value: None });
            };
            let mut v = Reader {
                bytes: value,
                at: 0,
            };
            let version = v.i16()?;
            let offset = v.i64()?;
            let leader_epoch = if version >= 3 { v.i32()? } else { -1 };
            let metadata = v.string()?;
            let commit_timestamp = match version {
                0..=3 => v.i64()?,
                _ => return None,
            };
            Some(Entry::Commit {
                key,
                value: Some((
                    Committed {
                        offset,
                        leader_epoch,
                        metadata: Some(metadata),
                    },
                    commit_timestamp,
                )),
            })
        }
        GROUP_KEY_VERSION => {
            let group = k.string()?;
            let value = match value {
                None => None,
                Some(v) => Some(decode_group_value(v)?),
            };
            Some(Entry::Group { group, value })
        }
        _ => None,
    }
}

/// Records (key, value; `None` a tombstone) as one uncompressed batch, timestamped `now_ms`.
pub fn batch_of(records: Vec<(Bytes, Option<Bytes>)>, now_ms: i64) -> Result<Bytes, String> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch where offset - sequence changes; with no
            // producer id the sequence means nothing.
            sequence: i as i32,
            timestamp: now_ms,
            key: Some(key),
            value,
            headers: Default::default(),
        })
        .collect();
    let mut out = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(out.freeze())
}

/// A committed offset as the cache holds it: where in the log its record is, and when it
/// was committed (for offset retention).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    /// `None`: deleted by a tombstone (kept as a marker while hosted, so that an older
    /// record applied later cannot bring the key back; not counted anywhere).
    committed: Option<Committed>,
    commit_timestamp: i64,
    log_offset: i64,
}

struct Hosted {
    /// Each group's latest state record: (its log offset, the state; `None` a tombstone).
    groups: BTreeMap<String, (i64, Option<GroupSnapshot>)>,
    leader_epoch: i32,
    loaded: bool,
    /// When the load finished (wall clock, ms): offsets expire only after retention has
    /// passed since then too, as groups had no chance to rejoin here before.
    loaded_at_ms: i64,
    entries: BTreeMap<Key, Stored>,
}

/// The committed offsets of the `__consumer_offsets` partitions this broker leads: each
/// loaded from the log when leadership arrives, then kept current by this broker's own
/// commits. A record applies only over an older one (by log offset), so a load and a
/// commit that finishes during it may apply in either order.
#[derive(Default)]
pub struct CommittedOffsets {
    /// Partitions of `__consumer_offsets`, when known (0 before the topic exists).
    partitions: i32,
    hosted: HashMap<i32, Hosted>,
}

impl CommittedOffsets {
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    pub fn set_partitions(&mut self, n: i32) {
        self.partitions = n;
    }

    pub fn partition_of(&self, group: &str) -> Option<i32> {
        (self.partitions > 0).then(|| partition_for(group, self.partitions))
    }

    /// Starts hosting `partition` at `leader_epoch` (loading); true when this is new (not
    /// already hosted at that epoch), and any older state was dropped.
    pub fn host(&mut self, partition: i32, leader_epoch: i32) -> bool {
        if self
            .hosted
            .get(&partition)
            .is_some_and(|h| h.leader_epoch == leader_epoch)
        {
            return false;
        }
        self.hosted.insert(
            partition,
            Hosted {
                groups: BTreeMap::new(),
                leader_epoch,
                loaded: false,
                loaded_at_ms: i64::MAX,
                entries: BTreeMap::new(),
            },
        );
        true
    }

    pub fn unhost(&mut self, partition: i32) -> bool {
        self.hosted.remove(&partition).is_some()
    }

    /// (partition, leader epoch) of every hosted partition.
    pub fn hosted(&self) -> Vec<(i32, i32)> {
        self.hosted
            .iter()
            .map(|(p, h)| (*p, h.leader_epoch))
            .collect()
    }

    /// The leader epoch a group's partition is coordinated at here, or why not:
    /// NOT_COORDINATOR (not hosted), COORDINATOR_LOAD_IN_PROGRESS (loading), or
    /// COORDINATOR_NOT_AVAILABLE (the topic does not exist yet).
    pub fn status(&self, group: &str) -> Result<(i32, i32), i16> {
        let p = self
            .partition_of(group)
            .ok_or(error_code::COORDINATOR_NOT_AVAILABLE)?;
        match self.hosted.get(&p) {
            None => Err(error_code::NOT_COORDINATOR),
            Some(h) if !h.loaded => Err(error_code::COORDINATOR_LOAD_IN_PROGRESS),
            Some(h) => Ok((p, h.leader_epoch)),
        }
    }

    /// Whether `partition` is still hosted at `leader_epoch`.
    pub fn is_hosting(&self, partition: i32, leader_epoch: i32) -> bool {
        self.hosted
            .get(&partition)
            .is_some_and(|h| h.leader_epoch == leader_epoch)
    }

    /// Applies one record read from, or written to, `partition`'s log at `log_offset`.
    pub fn apply(&mut self, partition: i32, log_offset: i64, entry: Entry) {
        let Some(h) = self.hosted.get_mut(&partition) else {
            return;
        };
        let (key, value) = match entry {
            Entry::Commit { key, value } => (key, value),
            Entry::Group { group, value } => {
                if h.groups.get(&group).is_none_or(|(at, _)| *at < log_offset) {
                    h.groups.insert(group, (log_offset, value));
                }
                return;
            }
        };
        if h.entries
            .get(&key)
            .is_some_and(|s| s.log_offset >= log_offset)
        {
            return;
        }
        // A tombstone stays as a marker (`committed: None`), so that a commit with a lower
        // log offset that finishes after it cannot bring the key back.
        let (committed, commit_timestamp) = match value {
            Some((c, ts)) => (Some(c), ts),
            None => (None, 0),
        };
        h.entries.insert(
            key,
            Stored {
                committed,
                commit_timestamp,
                log_offset,
            },
        );
    }

    /// The load of `partition` at `leader_epoch` is done: it is served from now on.
    pub fn finish_load(&mut self, partition: i32, leader_epoch: i32, now_ms: i64) -> bool {
        match self.hosted.get_mut(&partition) {
            Some(h) if h.leader_epoch == leader_epoch => {
                h.loaded = true;
                h.loaded_at_ms = now_ms;
                true
            }
            _ => false,
        }
    }

    /// Whether hosted partition `partition` holds a record for `key` (committed or
    /// deleted).
    pub fn has_key(&self, partition: i32, key: &Key) -> bool {
        self.hosted
            .get(&partition)
            .is_some_and(|h| h.entries.contains_key(key))
    }

    /// The groups whose latest state record in hosted `partition` has members: what a
    /// new coordinator restores.
    pub fn stable_groups(&self, partition: i32) -> Vec<(String, GroupSnapshot)> {
        self.hosted
            .get(&partition)
            .map(|h| {
                h.groups
                    .iter()
                    .filter_map(|(g, (_, s))| {
                        s.as_ref()
                            .filter(|s| !s.members.is_empty())
                            .map(|s| (g.clone(), s.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether hosted `partition` holds a live state record of `group` (not deleted).
    pub fn has_group_state(&self, partition: i32, group: &str) -> bool {
        self.hosted
            .get(&partition)
            .and_then(|h| h.groups.get(group))
            .is_some_and(|(_, s)| s.is_some())
    }

    /// The topics hosted `partition` holds committed offsets of.
    pub fn topics_in(&self, partition: i32) -> std::collections::BTreeSet<String> {
        self.hosted
            .get(&partition)
            .map(|h| {
                h.entries
                    .iter()
                    .filter(|(_, s)| s.committed.is_some())
                    .map(|((_, t, _), _)| t.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether hosted `partition` holds any record (committed or deleted) of `group`.
    pub fn has_group_record(&self, partition: i32, group: &str) -> bool {
        self.hosted.get(&partition).is_some_and(|h| {
            h.entries
                .range((group.to_owned(), String::new(), i32::MIN)..)
                .next()
                .is_some_and(|((g, _, _), _)| g == group)
        })
    }

    /// When `key` was last committed, if it is committed in hosted `partition`.
    pub fn commit_timestamp(&self, partition: i32, key: &Key) -> Option<i64> {
        let s = self.hosted.get(&partition)?.entries.get(key)?;
        s.committed.as_ref().map(|_| s.commit_timestamp)
    }

    fn loaded(&self, group: &str) -> Option<&Hosted> {
        let h = self.hosted.get(&self.partition_of(group)?)?;
        h.loaded.then_some(h)
    }

    pub fn fetch(&self, group: &str, topic: &str, partition: i32) -> Option<&Committed> {
        self.loaded(group)?
            .entries
            .get(&(group.to_owned(), topic.to_owned(), partition))?
            .committed
            .as_ref()
    }

    /// Every committed (topic, partition) of a group.
    pub fn group_partitions(&self, group: &str) -> Vec<(String, i32, Committed)> {
        let Some(h) = self.loaded(group) else {
            return Vec::new();
        };
        h.entries
            .range((group.to_owned(), String::new(), i32::MIN)..)
            .take_while(|((g, _, _), _)| g == group)
            .filter_map(|((_, t, p), s)| Some((t.clone(), *p, s.committed.clone()?)))
            .collect()
    }

    /// Groups with committed offsets, of the loaded partitions.
    pub fn groups(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .hosted
            .values()
            .filter(|h| h.loaded)
            .flat_map(|h| {
                h.entries
                    .iter()
                    .filter(|(_, s)| s.committed.is_some())
                    .map(|((g, _, _), _)| g.clone())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The keys of `topic`'s committed offsets, per hosted partition.
    pub fn keys_of_topic(&self, topic: &str) -> Vec<(i32, Vec<Key>)> {
        self.hosted
            .iter()
            .filter(|(_, h)| h.loaded)
            .map(|(p, h)| {
                let keys = h
                    .entries
                    .iter()
                    .filter(|((_, t, _), s)| t == topic && s.committed.is_some())
                    .map(|(k, _)| k.clone())
                    .collect();
                (*p, keys)
            })
            .filter(|(_, keys): &(i32, Vec<Key>)| !keys.is_empty())
            .collect()
    }

    /// The keys of a group's committed offsets.
    pub fn keys_of_group(&self, group: &str) -> Vec<Key> {
        self.group_partitions(group)
            .into_iter()
            .map(|(t, p, _)| (group.to_owned(), t, p))
            .collect()
    }

    /// Keys whose last commit is older than `before_ms`, per hosted partition, for groups
    /// `expires` says may expire (those without members).
    pub fn expired(&self, before_ms: i64, expires: impl Fn(&str) -> bool) -> Vec<(i32, Vec<Key>)> {
        self.hosted
            .iter()
            .filter(|(_, h)| h.loaded && h.loaded_at_ms < before_ms)
            .map(|(p, h)| {
                let mut keys: Vec<Key> = Vec::new();
                let mut group_keys: Vec<Key> = Vec::new();
                let mut group: Option<&str> = None;
                let mut all_old = true;
                let mut flush = |group_keys: &mut Vec<Key>, all_old: bool| {
                    if all_old {
                        keys.append(group_keys);
                    }
                    group_keys.clear();
                };
                for (k, s) in h.entries.iter().filter(|(_, s)| s.committed.is_some()) {
                    if group != Some(k.0.as_str()) {
                        flush(&mut group_keys, all_old);
                        group = Some(k.0.as_str());
                        all_old = expires(&k.0);
                    }
                    all_old &= s.commit_timestamp < before_ms;
                    group_keys.push(k.clone());
                }
                flush(&mut group_keys, all_old);
                (*p, keys)
            })
            .filter(|(_, keys)| !keys.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(offset: i64) -> Committed {
        Committed {
            offset,
            leader_epoch: 3,
            metadata: Some(format!("m{offset}")),
        }
    }

    #[test]
    fn given_kafkas_hash_should_place_groups_as_kafka_does() {
        // Java: "my-group".hashCode() == -1906497762, abs % 50 == 12; "" hashes to 0.
        assert_eq!(java_hash("my-group"), -1_906_497_762);
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(java_hash("console-consumer-12345678"), 378_974_597);
        assert_eq!(partition_for("console-consumer-12345678", 50), 47);
        assert_eq!(partition_for("", 50), 0);
    }

    #[test]
    fn given_a_commit_record_should_decode_what_was_encoded() {
        let key = commit_key("g", "t", 7);
        let value = commit_value(&c(42), 1_700_000_000_000);
        assert_eq!(
            decode(&key, Some(&value)),
            Some(Entry::Commit {
                key: ("g".into(), "t".into(), 7),
                value: Some((c(42), 1_700_000_000_000)),
            })
        );
        assert_eq!(
            decode(&key, None),
            Some(Entry::Commit {
                key: ("g".into(), "t".into(), 7),
                value: None,
            })
        );
        // Truncated or unknown records are skipped, not trusted.
        assert_eq!(decode(&key[..key.len() - 1], Some(&value)), None);
        assert_eq!(decode(&key, Some(&value[..value.len() - 1])), None);
        assert_eq!(decode(&[0, 9, 0, 0], None), None);
    }

    #[test]
    fn given_a_group_record_should_decode_what_was_encoded() {
        let g = GroupSnapshot {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            state_timestamp: 1_700_000_000_000,
            members: vec![MemberSnapshot {
                member_id: "m1".into(),
                group_instance_id: Some("i1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 30_000,
                session_timeout_ms: 6_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        let key = group_key("g");
        let value = group_value(&g);
        assert_eq!(
            decode(&key, Some(&value)),
            Some(Entry::Group {
                group: "g".into(),
                value: Some(g.clone())
            })
        );
        assert_eq!(
            decode(&key, None),
            Some(Entry::Group {
                group: "g".into(),
                value: None
            })
        );
        // A member count the bytes cannot hold is refused before allocating.
        let mut huge = value.to_vec();
        let at = 2 + 2 + 8 + 4 + 2 + 5 + 2 + 2 + 8;
        huge[at..at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(decode(&key, Some(&huge)), None);
        for cut in 0..value.len() {
            assert_eq!(decode(&key, Some(&value[..cut])), None, "cut at {cut}");
        }
    }

    #[test]
    fn given_a_batch_should_decode_with_kafka_protocols_decoder() {
        let batch = batch_of(
            vec![
                (commit_key("g", "t", 0), Some(commit_value(&c(1), 5))),
                (commit_key("g", "t", 1), None),
            ],
            5,
        )
        .unwrap();
        engine::batch::validate(&batch, 1 << 20).unwrap();
        assert_eq!(engine::BatchHeader::parse(&batch).unwrap().record_count, 2);
        let mut buf = batch.clone();
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), 2);
        assert!(set.records[1].value.is_none());
    }

    #[test]
    fn given_records_in_any_order_should_keep_the_latest_by_log_offset() {
        let mut cache = CommittedOffsets::default();
        cache.set_partitions(1);
        assert!(cache.host(0, 4));
        assert!(!cache.host(0, 4));
        let key = ("g".to_owned(), "t".to_owned(), 0);
        let commit = |o| Entry::Commit {
            key: key.clone(),
            value: Some((c(o), 0)),
        };
        cache.apply(0, 10, commit(10));
        cache.apply(0, 5, commit(5));
        // Not served while loading.
        assert_eq!(
            cache.status("g"),
            Err(error_code::COORDINATOR_LOAD_IN_PROGRESS)
        );
        assert_eq!(cache.fetch("g", "t", 0), None);
        // A tombstone read during the load hides older commits that arrive after it.
        cache.apply(
            0,
            12,
            Entry::Commit {
                key: key.clone(),
                value: None,
            },
        );
        cache.apply(0, 11, commit(11));
        assert!(cache.finish_load(0, 4, 0));
        assert_eq!(cache.status("g"), Ok((0, 4)));
        assert_eq!(cache.fetch("g", "t", 0), None);
        cache.apply(0, 13, commit(13));
        assert_eq!(cache.fetch("g", "t", 0), Some(&c(13)));
        assert_eq!(cache.groups(), vec!["g".to_owned()]);
        // A new epoch starts over.
        assert!(cache.host(0, 5));
        assert_eq!(cache.fetch("g", "t", 0), None);
        assert!(!cache.finish_load(0, 4, 0));
        cache.unhost(0);
        assert_eq!(cache.status("g"), Err(error_code::NOT_COORDINATOR));
    }

    #[test]
    fn given_old_commits_should_expire_whole_groups_only() {
        let mut cache = CommittedOffsets::default();
        cache.set_partitions(1);
        cache.host(0, 0);
        cache.finish_load(0, 0, 0);
        let put = |cache: &mut CommittedOffsets, g: &str, p, ts, at| {
            cache.apply(
                0,
                at,
                Entry::Commit {
                    key: (g.into(), "t".into(), p),
                    value: Some((c(1), ts)),
                },
            )
        };
        put(&mut cache, "old", 0, 100, 1);
        put(&mut cache, "old", 1, 100, 2);
        put(&mut cache, "mixed", 0, 100, 3);
        put(&mut cache, "mixed", 1, 900, 4);
        put(&mut cache, "live", 0, 100, 5);
        let expired = cache.expired(500, |g| g != "live");
        assert_eq!(
            expired,
            vec![(
                0,
                vec![("old".into(), "t".into(), 0), ("old".into(), "t".into(), 1)]
            )]
        );
    }
}
