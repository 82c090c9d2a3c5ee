//! How a broker follows the committed cluster metadata, as a KRaft broker follows the
//! metadata log: core 0 waits for each new version and makes the local state match it,
//! opening on every core the partitions of topics this broker holds a replica of and
//! deleting those of topics the metadata no longer has.
//!
//! The local topic registry (`topics.rs`) is this broker's materialization of the
//! metadata: written only from here, so a restart opens what it held before the
//! controller has caught up. Deletions wait until the metadata holds this start's own
//! registration: everything committed before the broker started is applied by then, so a
//! partial view (a snapshot followed by entries not yet re-applied) never deletes data.

use std::rc::Rc;
use std::time::{Duration, Instant};

use cluster::{ControllerError, Metadata, MetadataError, TopicRecord};

use crate::control::topics::TopicMeta;
use crate::kafka::protocol::error_code;
use crate::runtime::shard::Shard;

/// How long an admin request waits for its committed change to be applied here.
pub const APPLY_WAIT_MAX: Duration = Duration::from_secs(10);
const APPLY_POLL: Duration = Duration::from_millis(2);

/// Runs on core 0 until shutdown.
pub async fn follow_metadata(shard: Rc<Shard>) {
    let controller = shard.shared.controller.clone();
    let mut seen = 0;
    loop {
        let changed = std::pin::pin!(controller.view().changed_since(seen));
        let stop = std::pin::pin!(shard.shared.stopped());
        if let futures_util::future::Either::Right(_) =
            futures_util::future::select(changed, stop).await
        {
            return;
        }
        let (version, metadata) = controller.view().versioned();
        seen = version;
        apply(&shard, &metadata, controller.caught_up()).await;
        shard
            .shared
            .metadata_applied
            .fetch_max(seen, std::sync::atomic::Ordering::AcqRel);
    }
}

fn hosted_here(topic: &TopicRecord, me: i32) -> bool {
    topic.partitions.iter().any(|p| p.replicas.contains(&me))
}

fn local_meta(topic: &TopicRecord) -> TopicMeta {
    TopicMeta {
        name: topic.name.clone(),
        partitions: i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX),
        configs: topic.configs.clone(),
        topic_id: topic.topic_id,
    }
}

/// What to do here with a committed topic this broker holds a replica of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    Keep,
    /// Keep it, and record its id (held from before ids were kept).
    RecordId,
    /// Open the partitions from `had` on (CreatePartitions).
    Grow {
        had: i32,
    },
    /// Delete what is held (another incarnation of the name), then create.
    Replace,
    Create,
}

/// `held` is the local definition, `wanted` the committed one; `caught_up` says whether
/// the committed view holds everything committed before this start (a partial view after
/// a restart may be older than what is held).
fn decide(held: Option<&TopicMeta>, wanted: &TopicMeta, caught_up: bool) -> Local {
    let Some(held) = held else {
        return Local::Create;
    };
    // Held under id 0: recorded before ids were kept, taken as this incarnation.
    let same = held.topic_id == wanted.topic_id || held.topic_id == 0;
    match held.partitions.cmp(&wanted.partitions) {
        _ if !same && !caught_up => Local::Keep,
        _ if !same => Local::Replace,
        std::cmp::Ordering::Equal if held.topic_id == 0 && caught_up => Local::RecordId,
        std::cmp::Ordering::Equal => Local::Keep,
        std::cmp::Ordering::Less => Local::Grow {
            had: held.partitions,
        },
        // A partial view shows fewer partitions than held: partitions never shrink.
        std::cmp::Ordering::Greater => Local::Keep,
    }
}

async fn apply(shard: &Rc<Shard>, metadata: &Metadata, caught_up: bool) {
    let me = shard.shared.node_id();
    let registry = &shard.shared.registry;
    for topic in metadata.topics.values().filter(|t| hosted_here(t, me)) {
        let wanted = local_meta(topic);
        match decide(registry.get(&topic.name).as_ref(), &wanted, caught_up) {
            Local::Keep => continue,
            Local::RecordId => {
                if let Err(e) = registry.update(wanted.clone()) {
                    tracing::warn!(topic = %topic.name, error = %e, "cannot record the topic id");
                }
                continue;
            }
            Local::Grow { had } => {
                grow_local(shard, &wanted, had).await;
                continue;
            }
            Local::Replace => delete_local(shard, &topic.name).await,
            Local::Create => {}
        }
        if let Err(e) = registry.create(wanted.clone()) {
            tracing::error!(topic = %topic.name, error = %e, "cannot record a committed topic");
            continue;
        }
        match shard.open_topic_everywhere(&wanted).await {
            Ok(()) => tracing::info!(
                topic = %topic.name,
                partitions = wanted.partitions,
                replication_factor = topic.replication_factor(),
                "opened committed topic"
            ),
            Err(e) => {
                tracing::error!(topic = %topic.name, error = %e, "cannot open a committed topic")
            }
        }
    }
    if !caught_up {
        return;
    }
    for held in registry.list() {
        let keep = metadata
            .topics
            .get(&held.name)
            .is_some_and(|t| hosted_here(t, me));
        if !keep {
            delete_local(shard, &held.name).await;
        }
    }
}

async fn grow_local(shard: &Rc<Shard>, wanted: &TopicMeta, had: i32) {
    if let Err(e) = shard.shared.registry.update(wanted.clone()) {
        tracing::error!(topic = %wanted.name, error = %e, "cannot record a topic's new partitions");
        return;
    }
    match shard.open_topic_everywhere(wanted).await {
        Ok(()) => tracing::info!(
            topic = %wanted.name,
            from = had,
            to = wanted.partitions,
            "opened the topic's new partitions"
        ),
        Err(e) => {
            tracing::error!(topic = %wanted.name, error = %e, "cannot open a topic's new partitions")
        }
    }
}

async fn delete_local(shard: &Rc<Shard>, name: &str) {
    if shard.shared.registry.delete(name).is_none() {
        return;
    }
    match shard.delete_topic_everywhere(name).await {
        Ok(()) => {
            tracing::info!(topic = name, "deleted topic");
        }
        Err(e) => tracing::error!(topic = name, error = %e, "deleting topic failed"),
    }
}

/// Waits until a committed creation (`present`) or deletion of `name` is applied here:
/// in this node's metadata view, and by the follower to its local partitions.
pub async fn wait_applied(shard: &Shard, name: &str, present: bool) -> Result<(), i16> {
    wait_applied_until(shard, name, |m| m.topics.contains_key(name) == present).await
}

/// Waits until the committed metadata satisfies `done` and this broker has applied it
/// (its local partitions follow); `name` is the topic, for the log.
pub async fn wait_applied_until(
    shard: &Shard,
    name: &str,
    done: impl Fn(&Metadata) -> bool,
) -> Result<(), i16> {
    let deadline = Instant::now() + APPLY_WAIT_MAX;
    let view = shard.shared.controller.view();
    loop {
        let (version, metadata) = view.versioned();
        let committed = done(&metadata);
        let applied = shard
            .shared
            .metadata_applied
            .load(std::sync::atomic::Ordering::Acquire)
            >= version;
        if committed && applied {
            return Ok(());
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                topic = name,
                "committed topic change not applied here in time"
            );
            return Err(error_code::REQUEST_TIMED_OUT);
        }
        compio::time::sleep(APPLY_POLL).await;
    }
}

/// The Kafka error code and message for a proposal the controller did not accept.
pub fn controller_error(e: &ControllerError) -> (i16, String) {
    let code = match e {
        ControllerError::Refused(MetadataError::TopicAlreadyExists(_)) => {
            error_code::TOPIC_ALREADY_EXISTS
        }
        ControllerError::Refused(MetadataError::UnknownTopic(_)) => {
            error_code::UNKNOWN_TOPIC_OR_PARTITION
        }
        ControllerError::Refused(MetadataError::InvalidReplicationFactor { .. }) => {
            error_code::INVALID_REPLICATION_FACTOR
        }
        ControllerError::Refused(MetadataError::InvalidPartitions(_)) => {
            error_code::INVALID_PARTITIONS
        }
        ControllerError::Refused(MetadataError::InvalidAssignment(_)) => {
            error_code::INVALID_REPLICA_ASSIGNMENT
        }
        ControllerError::Timeout(_) | ControllerError::Busy => error_code::REQUEST_TIMED_OUT,
        _ => error_code::UNKNOWN_SERVER_ERROR,
    };
    (code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(partitions: i32, topic_id: u128) -> TopicMeta {
        TopicMeta {
            name: "t".into(),
            partitions,
            configs: Default::default(),
            topic_id,
        }
    }

    #[test]
    fn held_data_is_deleted_only_for_another_incarnation_seen_in_a_whole_view() {
        let id = 7;
        for caught_up in [false, true] {
            assert_eq!(decide(None, &meta(2, id), caught_up), Local::Create);
            assert_eq!(
                decide(Some(&meta(2, id)), &meta(2, id), caught_up),
                Local::Keep
            );
            assert_eq!(
                decide(Some(&meta(2, id)), &meta(4, id), caught_up),
                Local::Grow { had: 2 }
            );
            // An older view of a grown topic: never shrunk, never deleted.
            assert_eq!(
                decide(Some(&meta(4, id)), &meta(2, id), caught_up),
                Local::Keep
            );
        }
        // Another id: replaced once the view is whole, kept until then (a partial view
        // may show the older incarnation).
        assert_eq!(decide(Some(&meta(2, 8)), &meta(2, id), false), Local::Keep);
        assert_eq!(
            decide(Some(&meta(2, 8)), &meta(2, id), true),
            Local::Replace
        );
        assert_eq!(
            decide(Some(&meta(4, 8)), &meta(2, id), true),
            Local::Replace
        );
        // Held before ids were kept: its id is recorded from a whole view only.
        assert_eq!(decide(Some(&meta(2, 0)), &meta(2, id), false), Local::Keep);
        assert_eq!(
            decide(Some(&meta(2, 0)), &meta(2, id), true),
            Local::RecordId
        );
        assert_eq!(
            decide(Some(&meta(2, 0)), &meta(3, id), true),
            Local::Grow { had: 2 }
        );
    }
}
