//! Naming of partition directories inside a data directory: `{topic}-{partition}`.

use std::path::{Path, PathBuf};

use crate::error::{LogError, Result};

/// Kafka's limit on topic name length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Suffix of a partition directory being deleted.
pub const DELETED_DIR_SUFFIX: &str = ".deleted";

/// A topic name and partition number, validated so that it is safe as a path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    topic: String,
    partition: i32,
}

/// Checks a topic name against Kafka's rules: 1..=249 bytes of `[a-zA-Z0-9._-]`,
/// and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(LogError::InvalidTopic {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return bad("longer than 249 bytes");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Result<Self> {
        validate_topic_name(topic)?;
        if partition < 0 {
            return Err(LogError::InvalidTopic {
                name: topic.to_owned(),
                reason: "negative partition",
            });
        }
        Ok(Self {
            topic: topic.to_owned(),
            partition,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    pub fn dir_in(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.dir_name())
    }

    /// Parses a directory name back; `None` for anything that is not one of ours.
    pub fn from_dir_name(name: &str) -> Option<Self> {
        let (topic, partition) = name.rsplit_once('-')?;
        let number: i32 = partition.parse().ok()?;
        // Only the canonical spelling: "t-01" or "t-+1" is not a directory we made.
        if number.to_string() != partition {
            return None;
        }
        Self::new(topic, number).ok()
    }
}

/// Partitions present in `data_dir`, sorted. Directories left half-deleted by a crash
/// are removed.
pub fn list_partitions(data_dir: &Path) -> Result<Vec<TopicPartition>> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io(data_dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(data_dir, e))?;
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(DELETED_DIR_SUFFIX) {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not remove deleted partition");
            }
            continue;
        }
        if let Some(tp) = TopicPartition::from_dir_name(name) {
            found.push(tp);
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "orders", "my.topic_1-x", &"t".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../etc",
            "sp ace",
            "é",
            &"t".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dir_names_round_trip() {
        let tp = TopicPartition::new("my-topic", 12).unwrap();
        assert_eq!(tp.dir_name(), "my-topic-12");
        assert_eq!(TopicPartition::from_dir_name("my-topic-12"), Some(tp));
        assert_eq!(TopicPartition::from_dir_name("nodash"), None);
        assert_eq!(TopicPartition::from_dir_name("t-"), None);
        assert_eq!(TopicPartition::from_dir_name("t-01"), None);
        assert_eq!(
            TopicPartition::from_dir_name("t--1").map(|t| t.topic().to_owned()),
            Some("t-".to_owned())
        );
    }

    #[test]
    fn listing_skips_strangers_and_removes_deleted_dirs() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a-0", "a-1", "b.c-3", "junk", "x-1.deleted"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("file-0"), b"").unwrap();
        let names: Vec<String> = list_partitions(dir.path())
            .unwrap()
            .iter()
            .map(|t| t.dir_name())
            .collect();
        assert_eq!(names, ["a-0", "a-1", "b.c-3"]);
        assert!(!dir.path().join("x-1.deleted").exists());
    }
}
