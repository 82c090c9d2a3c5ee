//! The topic registry: which topics exist, with how many partitions and which configs,
//! and which core owns each partition. Shared by every core; read on metadata paths and
//! written only by CreateTopics/DeleteTopics, never on the produce or fetch path.
//!
//! Each topic's definition is a small TOML file under `{data_dir}/.topics/`, written
//! atomically; partition data lives in the engine's `{topic}-{partition}` directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use engine::LogConfig;
use event_listener::Event;
use serde::{Deserialize, Serialize};

const TOPICS_DIR: &str = ".topics";
/// Most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

/// Smallest `segment.ms`: every segment keeps files open, so rolls must not be too quick.
pub const SEGMENT_MS_MIN: u64 = 1000;

/// Topic-level configs the broker understands (Kafka names), with what they change.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "delete.retention.ms",
    "min.cleanable.dirty.ratio",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub partitions: i32,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    /// The id the controller gave the topic (0: recorded before ids were kept, or not
    /// created yet). Kept as hex text: TOML integers stop at 64 bits.
    #[serde(default, with = "hex_id")]
    pub topic_id: u128,
}

mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{id:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        u128::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    #[error("topic {0} already exists")]
    AlreadyExists(String),
    #[error("invalid topic name: {0}")]
    InvalidName(String),
    #[error("partition count {0} is out of range 1..={PARTITIONS_PER_TOPIC_MAX}")]
    InvalidPartitions(i32),
    #[error("invalid config {key}={value}: {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("cannot store topic definition: {0}")]
    Storage(String),
}

struct TopicEntry {
    meta: TopicMeta,
    /// Notified after every append to the partition, for long-polling fetches.
    data_events: Vec<Arc<Event>>,
}

pub struct Registry {
    dir: PathBuf,
    cores: usize,
    topics: RwLock<BTreeMap<String, TopicEntry>>,
    /// Serializes CreateTopics and auto-creation, so the definition can be written to
    /// disk (with fsyncs) without holding `topics` for writing meanwhile.
    creating: std::sync::Mutex<()>,
}

impl Registry {
    /// Loads the topic definitions in `data_dir`, adopting partition directories that
    /// have none (data written before the definition was, or by an older version).
    pub fn open(data_dir: &Path, cores: usize) -> Result<Self, TopicError> {
        let dir = data_dir.join(TOPICS_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|e| TopicError::Storage(format!("{}: {e}", dir.display())))?;
        let mut topics = BTreeMap::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| TopicError::Storage(e.to_string()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let meta = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| toml::from_str::<TopicMeta>(&text).ok());
            match meta {
                Some(meta) if validate(&meta).is_ok() => {
                    topics.insert(meta.name.clone(), entry_for(meta));
                }
                _ => tracing::warn!(path = %path.display(), "ignoring unreadable topic definition"),
            }
        }
        let on_disk =
            engine::list_partitions(data_dir).map_err(|e| TopicError::Storage(e.to_string()))?;
        for tp in on_disk {
            let count = tp.partition() + 1;
            match topics.get_mut(tp.topic()) {
                Some(entry) if entry.meta.partitions >= count => {}
                Some(entry) => {
                    entry.meta.partitions = count;
                    *entry = entry_for(entry.meta.clone());
                }
                None => {
                    let meta = TopicMeta {
                        name: tp.topic().to_owned(),
                        partitions: count,
                        configs: BTreeMap::new(),
                        topic_id: 0,
                    };
                    topics.insert(meta.name.clone(), entry_for(meta));
                }
            }
        }
        let registry = Self {
            dir,
            cores: cores.max(1),
            topics: RwLock::new(topics),
            creating: std::sync::Mutex::new(()),
        };
        for meta in registry.list() {
            registry.store(&meta)?;
        }
        Ok(registry)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, TopicEntry>> {
        self.topics
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, TopicEntry>> {
        self.topics
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<TopicMeta> {
        self.read().get(name).map(|e| e.meta.clone())
    }

    pub fn list(&self) -> Vec<TopicMeta> {
        self.read().values().map(|e| e.meta.clone()).collect()
    }

    /// The core that owns a partition: a topic's partitions spread round-robin over the
    /// cores from a start that depends on the topic name.
    pub fn owner(&self, topic: &str, partition: i32) -> usize {
        let start = crc32c::crc32c(topic.as_bytes()) as usize;
        start.wrapping_add(partition.max(0) as usize) % self.cores
    }

    /// Every partition's append event of a topic (empty when the topic is not here).
    pub fn data_events(&self, topic: &str) -> Vec<Arc<Event>> {
        self.read()
            .get(topic)
            .map(|entry| entry.data_events.clone())
            .unwrap_or_default()
    }

    pub fn data_event(&self, topic: &str, partition: i32) -> Option<Arc<Event>> {
        let topics = self.read();
        let entry = topics.get(topic)?;
        entry
            .data_events
            .get(usize::try_from(partition).ok()?)
            .cloned()
    }

    /// Adds a topic and stores its definition. The caller opens its partitions.
    pub fn create(&self, meta: TopicMeta) -> Result<TopicMeta, TopicError> {
        validate(&meta)?;
        let _creating = self
            .creating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.read().contains_key(&meta.name) {
            return Err(TopicError::AlreadyExists(meta.name));
        }
        self.store(&meta)?;
        self.write()
            .insert(meta.name.clone(), entry_for(meta.clone()));
        Ok(meta)
    }

    /// Replaces a held topic's definition with one of as many partitions or more (a
    /// topic grown by CreatePartitions, or its id recorded); the caller opens the new
    /// partitions.
    pub fn update(&self, meta: TopicMeta) -> Result<TopicMeta, TopicError> {
        validate(&meta)?;
        let _creating = self
            .creating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = self
            .get(&meta.name)
            .ok_or_else(|| TopicError::Storage(format!("topic {} is not held", meta.name)))?;
        if meta.partitions < held.partitions {
            return Err(TopicError::InvalidPartitions(meta.partitions));
        }
        self.store(&meta)?;
        let mut topics = self.write();
        if let Some(entry) = topics.get_mut(&meta.name) {
            // Listeners on the old partitions keep their events.
            let have = entry.data_events.len();
            let wanted = usize::try_from(meta.partitions).unwrap_or(have);
            entry
                .data_events
                .extend((have..wanted).map(|_| Arc::new(Event::new())));
            entry.meta = meta.clone();
        }
        Ok(meta)
    }

    /// Removes a topic's definition; the caller deletes its partitions.
    pub fn delete(&self, name: &str) -> Option<TopicMeta> {
        let removed = self.write().remove(name)?;
        let path = self.dir.join(format!("{name}.toml"));
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove topic definition");
        }
        Some(removed.meta)
    }

    fn store(&self, meta: &TopicMeta) -> Result<(), TopicError> {
        let text = toml::to_string(meta).map_err(|e| TopicError::Storage(e.to_string()))?;
        let path = self.dir.join(format!("{}.toml", meta.name));
        let temp = self.dir.join(format!("{}.toml.tmp", meta.name));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&temp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&temp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| TopicError::Storage(format!("{}: {e}", path.display())))
    }
}

fn entry_for(meta: TopicMeta) -> TopicEntry {
    let data_events = (0..meta.partitions)
        .map(|_| Arc::new(Event::new()))
        .collect();
    TopicEntry { meta, data_events }
}

/// The registry's checks on a new topic: name, partition count, configs.
pub fn validate(meta: &TopicMeta) -> Result<(), TopicError> {
    engine::data_dir::validate_topic_name(&meta.name)
        .map_err(|e| TopicError::InvalidName(e.to_string()))?;
    if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&meta.partitions) {
        return Err(TopicError::InvalidPartitions(meta.partitions));
    }
    for (key, value) in &meta.configs {
        check_config(key, value)?;
    }
    Ok(())
}

/// Checks one topic config against what the broker understands.
pub fn check_config(key: &str, value: &str) -> Result<(), TopicError> {
    let bad = |reason| {
        Err(TopicError::InvalidConfig {
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        })
    };
    match key {
        "cleanup.policy" => match parse_cleanup_policy(value) {
            Some(_) => Ok(()),
            None => bad("must be delete, compact or both (\"compact,delete\")"),
        },
        "delete.retention.ms" => match value.parse::<i64>() {
            Ok(v) if v >= 0 => Ok(()),
            _ => bad("must be an integer >= 0"),
        },
        "min.cleanable.dirty.ratio" => match value.parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(()),
            _ => bad("must be a number between 0 and 1"),
        },
        "retention.ms" | "retention.bytes" => match value.parse::<i64>() {
            Ok(v) if v >= -1 => Ok(()),
            _ => bad("must be an integer >= -1"),
        },
        "segment.bytes" => match value.parse::<u64>() {
            Ok(v)
                if (engine::limits::SEGMENT_BYTES_MIN..=engine::limits::SEGMENT_BYTES_MAX)
                    .contains(&v) =>
            {
                Ok(())
            }
            _ => bad("must be between 1024 and 2147483647"),
        },
        "max.message.bytes" => match value.parse::<usize>() {
            Ok(v)
                if (engine::batch::BATCH_HEADER_BYTES..=engine::limits::BATCH_BYTES_MAX)
                    .contains(&v) =>
            {
                Ok(())
            }
            _ => bad("must be between 61 and 67108864"),
        },
        "segment.ms" => match value.parse::<u64>() {
            Ok(v) if v >= SEGMENT_MS_MIN => Ok(()),
            _ => bad("must be at least 1000"),
        },
        _ => bad("unknown or unsupported topic config"),
    }
}

/// A topic's `cleanup.policy`: old segments deleted by retention, compacted, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleanup {
    pub delete: bool,
    pub compact: bool,
}

/// Kafka's list syntax: `delete`, `compact`, or both (`compact,delete`, either order).
pub fn parse_cleanup_policy(value: &str) -> Option<Cleanup> {
    let mut cleanup = Cleanup {
        delete: false,
        compact: false,
    };
    for part in value.split(',') {
        match part.trim() {
            "delete" => cleanup.delete = true,
            "compact" => cleanup.compact = true,
            _ => return None,
        }
    }
    Some(cleanup)
}

/// Kafka's `delete.retention.ms` default: a day.
pub const DELETE_RETENTION_MS_DEFAULT: i64 = 24 * 3600 * 1000;
/// Kafka's `min.cleanable.dirty.ratio` default.
pub const MIN_CLEANABLE_DIRTY_RATIO_DEFAULT: f64 = 0.5;

impl TopicMeta {
    pub fn cleanup(&self) -> Cleanup {
        self.configs
            .get("cleanup.policy")
            .and_then(|v| parse_cleanup_policy(v))
            .unwrap_or(Cleanup {
                delete: true,
                compact: false,
            })
    }

    /// How long a tombstone outlives the clean that could first remove it.
    pub fn delete_retention_ms(&self) -> i64 {
        self.configs
            .get("delete.retention.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DELETE_RETENTION_MS_DEFAULT)
    }

    /// The share of a log not yet cleaned that starts a clean.
    pub fn min_cleanable_dirty_ratio(&self) -> f64 {
        self.configs
            .get("min.cleanable.dirty.ratio")
            .and_then(|v| v.parse().ok())
            .unwrap_or(MIN_CLEANABLE_DIRTY_RATIO_DEFAULT)
    }
}

/// The engine configuration of a topic's partitions: the broker's, with the topic's
/// overrides applied. A topic that is only compacted deletes nothing by retention.
pub fn log_config_for(meta: &TopicMeta, base: &LogConfig) -> LogConfig {
    let mut config = base.clone();
    let int = |key: &str| meta.configs.get(key).and_then(|v| v.parse::<i64>().ok());
    if let Some(v) = int("retention.ms") {
        config.retention_age = u64::try_from(v).ok().map(std::time::Duration::from_millis);
    }
    if let Some(v) = int("retention.bytes") {
        config.retention_bytes = u64::try_from(v).ok();
    }
    if !meta.cleanup().delete {
        config.retention_age = None;
        config.retention_bytes = None;
    }
    if let Some(v) = int("segment.bytes").and_then(|v| u64::try_from(v).ok()) {
        config.segment_bytes = v.clamp(
            engine::limits::SEGMENT_BYTES_MIN,
            engine::limits::SEGMENT_BYTES_MAX,
        );
    }
    if let Some(v) = int("segment.ms").and_then(|v| u64::try_from(v).ok()) {
        config.segment_age_max = Some(std::time::Duration::from_millis(v));
    }
    if let Some(v) = int("max.message.bytes").and_then(|v| usize::try_from(v).ok()) {
        config.batch_bytes_max = v;
    }
    // Keep the combination valid whatever the overrides: a batch and an index interval
    // never exceed a segment.
    let segment = usize::try_from(config.segment_bytes).unwrap_or(usize::MAX);
    config.batch_bytes_max = config
        .batch_bytes_max
        .clamp(
            engine::batch::BATCH_HEADER_BYTES,
            engine::limits::BATCH_BYTES_MAX,
        )
        .min(segment);
    config.index_interval_bytes = config.index_interval_bytes.min(config.segment_bytes);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, partitions: i32) -> TopicMeta {
        TopicMeta {
            name: name.into(),
            partitions,
            configs: BTreeMap::new(),
            topic_id: 0,
        }
    }

    #[test]
    fn a_grown_topic_keeps_its_id_and_old_events_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path(), 2).unwrap();
        let id = (7u128 << 64) | 42;
        r.create(TopicMeta {
            topic_id: id,
            ..meta("grow", 2)
        })
        .unwrap();
        let old_event = r.data_event("grow", 1).unwrap();
        assert_eq!(
            r.update(meta("grow", 1)),
            Err(TopicError::InvalidPartitions(1)),
            "partitions are never removed"
        );
        r.update(TopicMeta {
            topic_id: id,
            ..meta("grow", 4)
        })
        .unwrap();
        assert!(Arc::ptr_eq(&old_event, &r.data_event("grow", 1).unwrap()));
        assert!(r.data_event("grow", 3).is_some());
        drop(r);
        let r = Registry::open(dir.path(), 2).unwrap();
        let held = r.get("grow").unwrap();
        assert_eq!((held.partitions, held.topic_id), (4, id));
        // A definition written before ids were kept reads as id 0.
        std::fs::write(
            dir.path().join(TOPICS_DIR).join("old.toml"),
            "name = \"old\"\npartitions = 1\n",
        )
        .unwrap();
        drop(r);
        let r = Registry::open(dir.path(), 2).unwrap();
        assert_eq!(r.get("old").unwrap().topic_id, 0);
    }

    #[test]
    fn create_persist_reopen_delete() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path(), 2).unwrap();
        r.create(meta("orders", 3)).unwrap();
        assert_eq!(
            r.create(meta("orders", 1)),
            Err(TopicError::AlreadyExists("orders".into()))
        );
        assert!(matches!(
            r.create(meta("bad/name", 1)),
            Err(TopicError::InvalidName(_))
        ));
        assert_eq!(
            r.create(meta("zero", 0)),
            Err(TopicError::InvalidPartitions(0))
        );
        drop(r);
        let r = Registry::open(dir.path(), 2).unwrap();
        assert_eq!(r.get("orders").unwrap().partitions, 3);
        assert!(r.data_event("orders", 2).is_some());
        assert!(r.data_event("orders", 3).is_none());
        r.delete("orders").unwrap();
        drop(r);
        assert!(
            Registry::open(dir.path(), 2)
                .unwrap()
                .get("orders")
                .is_none()
        );
    }

    #[test]
    fn partitions_spread_over_cores() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path(), 4).unwrap();
        let owners: std::collections::BTreeSet<usize> = (0..8).map(|p| r.owner("t", p)).collect();
        assert_eq!(owners.len(), 4);
        assert_eq!(r.owner("t", 1), r.owner("t", 1));
    }

    #[test]
    fn topic_configs_are_checked_and_applied() {
        assert!(check_config("retention.ms", "1000").is_ok());
        assert!(check_config("cleanup.policy", "compact").is_ok());
        assert!(check_config("cleanup.policy", "compact, delete").is_ok());
        assert!(check_config("cleanup.policy", "compact,shred").is_err());
        assert!(check_config("cleanup.policy", "").is_err());
        assert!(check_config("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(check_config("delete.retention.ms", "-1").is_err());
        assert!(check_config("segment.bytes", "-5").is_err());
        assert!(check_config("no.such", "1").is_err());
        let mut m = meta("t", 1);
        m.configs.insert("segment.bytes".into(), "1048576".into());
        m.configs.insert("retention.ms".into(), "-1".into());
        let c = log_config_for(&m, &LogConfig::default());
        assert_eq!(c.segment_bytes, 1 << 20);
        assert_eq!(c.retention_age, None);
        // A segment smaller than the broker's largest batch still gives a valid log config.
        let base = LogConfig {
            batch_bytes_max: 1_048_588,
            ..LogConfig::default()
        };
        assert_eq!(log_config_for(&m, &base).validate(), Ok(()));
        m.configs.insert("segment.bytes".into(), "1024".into());
        assert_eq!(log_config_for(&m, &base).validate(), Ok(()));
        assert!(check_config("segment.ms", "1").is_err());
        assert!(check_config("max.message.bytes", "10").is_err());
    }
}
