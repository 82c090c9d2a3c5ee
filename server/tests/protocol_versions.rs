//! The current (flexible, KIP-482) protocol versions on a raw socket, encoded and decoded
//! by the `kafka-protocol` crate: topic ids from CreateTopics v7 through Metadata v12,
//! Fetch v13+ and DeleteTopics v6; the divergence check of Fetch v12+ (a fetcher whose
//! last fetched epoch this log does not have where it thinks is told where that epoch
//! ends); DescribeCluster. The clients' own tests show the same versions working end to
//! end (the Java test asserts which versions Kafka's client spoke).

mod common;
mod wire;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::Broker;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeClusterRequest, DescribeClusterResponse, FetchRequest,
    FetchResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(30);
const UNKNOWN_TOPIC_ID: i16 = 100;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// One partition's fetch at `version`: topic by name before v13, by id after.
fn fetch(
    stream: &mut TcpStream,
    version: i16,
    topic: (&str, Uuid),
    offset: i64,
    last_fetched_epoch: i32,
) -> FetchResponse {
    let mut t = FetchTopic::default().with_partitions(vec![
        FetchPartition::default()
            .with_partition(0)
            .with_fetch_offset(offset)
            .with_last_fetched_epoch(last_fetched_epoch)
            .with_partition_max_bytes(1 << 20),
    ]);
    t = if version >= 13 {
        t.with_topic_id(topic.1)
    } else {
        t.with_topic(name(topic.0))
    };
    let mut request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![t]);
    if version < 15 {
        request = request.with_replica_id(BrokerId(-1));
    }
    wire::call(stream, ApiKey::Fetch, version, &request)
}

/// A partition's directory under the broker's data directory.
fn dir_of(broker: &Broker, partition_dir: &str) -> std::path::PathBuf {
    broker.data_dir.join(partition_dir)
}

fn metadata_by_id(stream: &mut TcpStream, id: Uuid) -> MetadataResponse {
    wire::call(
        stream,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default()
                    .with_name(None)
                    .with_topic_id(id),
            ]))
            .with_allow_auto_topic_creation(false),
    )
}

#[test]
fn given_flexible_versions_should_name_topics_by_id_and_tell_a_diverged_fetcher_where_its_epoch_ends()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let mut stream = connect(&broker.addr);

    // CreateTopics v7: the topic's id, partitions and effective configs come back.
    let created: CreateTopicsResponse = wire::call(
        &mut stream,
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(name("flex"))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ])
            .with_timeout_ms(10_000),
    );
    let t = &created.topics[0];
    assert_eq!(t.error_code, 0, "{:?}", t.error_message);
    assert_eq!((t.num_partitions, t.replication_factor), (1, 1));
    assert!(!t.topic_id.is_nil(), "a created topic has an id");
    let configs = t.configs.as_ref().expect("v5+ returns the configs");
    assert!(
        configs
            .iter()
            .any(|c| c.name.as_str() == "retention.ms" && c.value.is_some()),
        "{configs:?}"
    );
    let id = t.topic_id;

    // A replica assignment by hand (`kafka-topics --replica-assignment`): the partitions
    // and replication factor come from it; a broker that is not live, or a count given
    // with it, is refused.
    {
        use kafka_protocol::messages::create_topics_request::CreatableReplicaAssignment;
        let assigned = |stream: &mut TcpStream, topic: &str, lists: &[&[i32]], count: i32| {
            let r: CreateTopicsResponse = wire::call(
                stream,
                ApiKey::CreateTopics,
                7,
                &CreateTopicsRequest::default()
                    .with_topics(vec![
                        CreatableTopic::default()
                            .with_name(name(topic))
                            .with_num_partitions(count)
                            .with_replication_factor(-1)
                            .with_assignments(
                                lists
                                    .iter()
                                    .enumerate()
                                    .map(|(i, brokers)| {
                                        CreatableReplicaAssignment::default()
                                            .with_partition_index(i as i32)
                                            .with_broker_ids(
                                                brokers.iter().map(|b| BrokerId(*b)).collect(),
                                            )
                                    })
                                    .collect(),
                            ),
                    ])
                    .with_timeout_ms(10_000),
            );
            let t = &r.topics[0];
            (t.error_code, t.num_partitions, t.replication_factor)
        };
        assert_eq!(assigned(&mut stream, "hand", &[&[0], &[0]], -1), (0, 2, 1));
        assert_eq!(
            assigned(&mut stream, "hand2", &[&[7]], -1).0,
            39,
            "INVALID_REPLICA_ASSIGNMENT"
        );
        assert_eq!(
            assigned(&mut stream, "hand3", &[&[0]], 1).0,
            42,
            "INVALID_REQUEST"
        );
        // Longer lists than there are live brokers never reach the controller's log.
        let long = vec![0; 50_000];
        assert_eq!(assigned(&mut stream, "hand4", &[&long], -1).0, 39);
        assert_eq!(assigned(&mut stream, "hand5", &[&[0], &[]], -1).0, 39);
    }

    // Metadata v12 looks it up by id; an id nobody holds is UNKNOWN_TOPIC_ID.
    let m = metadata_by_id(&mut stream, id);
    assert_eq!(m.topics[0].error_code, 0);
    assert_eq!(
        m.topics[0].name.as_ref().map(|n| n.0.as_str()),
        Some("flex")
    );
    assert_eq!(m.topics[0].topic_id, id);
    let epoch = m.topics[0].partitions[0].leader_epoch;
    let m = metadata_by_id(&mut stream, Uuid::from_u128(0xdead));
    assert_eq!(m.topics[0].error_code, UNKNOWN_TOPIC_ID);

    // Ten records, then fetches at every version, by name (v4-12) and id (v13+).
    let (code, _) = wire::produce(&mut stream, "flex", 10);
    assert_eq!(code, 0);
    for version in 4..=18 {
        let r = fetch(&mut stream, version, ("flex", id), 0, -1);
        let p = &r.responses[0].partitions[0];
        assert_eq!((p.error_code, p.high_watermark), (0, 10), "v{version}");
        assert!(
            p.records.as_ref().is_some_and(|r| !r.is_empty()),
            "v{version}"
        );
        if version >= 13 {
            assert_eq!(r.responses[0].topic_id, id);
        }
    }

    // A fetcher that last saw the current epoch at an offset the log has reads on.
    let r = fetch(&mut stream, 12, ("flex", id), 5, epoch);
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.diverging_epoch.epoch, -1, "no divergence: {p:?}");
    assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
    // One that claims an epoch later than any this log had cannot be placed: as Kafka,
    // OFFSET_OUT_OF_RANGE (the consumer resets by its policy).
    let r = fetch(&mut stream, 12, ("flex", id), 5, epoch + 3);
    assert_eq!(r.responses[0].partitions[0].error_code, 1);

    // A restart moves leadership, so the next records carry a later epoch.
    broker.stop();
    broker.restart();
    let mut stream = connect(&broker.addr);
    let moved = wire::wait_until(TIMEOUT, || {
        let m = metadata_by_id(&mut stream, id);
        m.topics[0].error_code == 0 && m.topics[0].partitions[0].leader_epoch > epoch
    });
    assert!(
        moved.is_some(),
        "the leader epoch never moved after a restart"
    );
    let later = metadata_by_id(&mut stream, id).topics[0].partitions[0].leader_epoch;
    let appended = wire::wait_until(TIMEOUT, || wire::produce(&mut stream, "flex", 5).0 == 0);
    assert!(appended.is_some());
    // A fetcher at offset 12 whose last batch was of the old epoch has diverged (that
    // epoch ends at 10 here): it is told so, with no records, and truncates to 10.
    for version in [12, 16, 18] {
        let r = fetch(&mut stream, version, ("flex", id), 12, epoch);
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0);
        assert_eq!(
            (p.diverging_epoch.epoch, p.diverging_epoch.end_offset),
            (epoch, 10),
            "v{version}: {p:?}"
        );
        assert!(p.records.as_ref().is_none_or(|r| r.is_empty()));
    }
    // At 10, where the old epoch ends, it reads on; so does one in the new epoch.
    for (offset, last) in [(10, epoch), (12, later)] {
        let r = fetch(&mut stream, 12, ("flex", id), offset, last);
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.diverging_epoch.epoch, -1, "at {offset}: {p:?}");
        assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
    }

    // An id nobody holds.
    let r = fetch(&mut stream, 13, ("", Uuid::from_u128(0xdead)), 0, -1);
    assert_eq!(r.responses[0].partitions[0].error_code, UNKNOWN_TOPIC_ID);
    assert_eq!(r.responses[0].topic_id, Uuid::from_u128(0xdead));

    // DescribeCluster: this broker, the cluster id, the controller.
    for version in 0..=2 {
        let d: DescribeClusterResponse = wire::call(
            &mut stream,
            ApiKey::DescribeCluster,
            version,
            &DescribeClusterRequest::default()
                .with_include_cluster_authorized_operations(true)
                .with_endpoint_type(1),
        );
        assert_eq!(d.error_code, 0, "v{version}: {:?}", d.error_message);
        assert_eq!(d.brokers.len(), 1);
        assert_eq!(
            broker.addr,
            format!("{}:{}", d.brokers[0].host.as_str(), d.brokers[0].port)
        );
        assert_eq!(d.controller_id, d.brokers[0].broker_id);
        assert!(!d.cluster_id.is_empty());
        assert_ne!(d.cluster_authorized_operations, i32::MIN);
    }
    // A request meant for a controller listener is refused as such.
    let d: DescribeClusterResponse = wire::call(
        &mut stream,
        ApiKey::DescribeCluster,
        1,
        &DescribeClusterRequest::default().with_endpoint_type(2),
    );
    assert_eq!(d.error_code, 114, "MISMATCHED_ENDPOINT_TYPE");

    // DescribeLogDirs: the one log directory, this replica's size on disk, the file
    // system's bytes; AlterReplicaLogDirs to it is a no-op, elsewhere LOG_DIR_NOT_FOUND.
    {
        use kafka_protocol::messages::alter_replica_log_dirs_request::{
            AlterReplicaLogDir, AlterReplicaLogDirTopic,
        };
        use kafka_protocol::messages::{
            AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse, DescribeLogDirsRequest,
            DescribeLogDirsResponse,
        };
        let dirs: DescribeLogDirsResponse = wire::call(
            &mut stream,
            ApiKey::DescribeLogDirs,
            4,
            &DescribeLogDirsRequest::default().with_topics(None),
        );
        assert_eq!(dirs.results.len(), 1);
        let dir = &dirs.results[0];
        assert_eq!(dir.error_code, 0);
        assert!(dir.total_bytes > 0 && dir.usable_bytes > 0 && dir.usable_bytes <= dir.total_bytes);
        let flex = dir
            .topics
            .iter()
            .find(|t| t.name.0.as_str() == "flex")
            .expect("the topic's replica is listed");
        let on_disk: u64 = std::fs::read_dir(dir_of(&broker, "flex-0"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(on_disk > 0);
        assert_eq!(flex.partitions[0].partition_size, on_disk as i64);
        let alter = |stream: &mut TcpStream, path: &str| -> i16 {
            let r: AlterReplicaLogDirsResponse = wire::call(
                stream,
                ApiKey::AlterReplicaLogDirs,
                2,
                &AlterReplicaLogDirsRequest::default().with_dirs(vec![
                    AlterReplicaLogDir::default()
                        .with_path(StrBytes::from_string(path.to_owned()))
                        .with_topics(vec![
                            AlterReplicaLogDirTopic::default()
                                .with_name(name("flex"))
                                .with_partitions(vec![0]),
                        ]),
                ]),
            );
            r.results[0].partitions[0].error_code
        };
        assert_eq!(alter(&mut stream, dir.log_dir.as_str()), 0);
        assert_eq!(alter(&mut stream, "/nowhere"), 57, "LOG_DIR_NOT_FOUND");
    }

    // DeleteTopics v6 by id; then the id is unknown.
    let deleted: DeleteTopicsResponse = wire::call(
        &mut stream,
        ApiKey::DeleteTopics,
        6,
        &DeleteTopicsRequest::default()
            .with_topics(vec![DeleteTopicState::default().with_topic_id(id)])
            .with_timeout_ms(10_000),
    );
    let d = &deleted.responses[0];
    assert_eq!(d.error_code, 0, "{:?}", d.error_message);
    assert_eq!(d.name.as_ref().map(|n| n.0.as_str()), Some("flex"));
    assert_eq!(d.topic_id, id);
    let m = metadata_by_id(&mut stream, id);
    assert_eq!(m.topics[0].error_code, UNKNOWN_TOPIC_ID);
}

/// DescribeTopicPartitions pages by partitions with a cursor; ListConfigResources lists
/// topics and brokers; DeleteGroups forgets an empty group's offsets and refuses an
/// unknown group.
#[test]
fn given_admin_apis_of_kafka_4_should_page_topics_list_resources_and_delete_groups() {
    use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{
        DeleteGroupsRequest, DeleteGroupsResponse, DescribeTopicPartitionsRequest,
        DescribeTopicPartitionsResponse, GroupId, ListConfigResourcesRequest,
        ListConfigResourcesResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
        OffsetFetchResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    wire::create_topic(&broker.addr, "paged", 3);
    wire::create_topic(&broker.addr, "zeta", 1);
    let mut stream = connect(&broker.addr);

    // Two partitions per page: paged/0-1, then paged/2 and zeta/0.
    let page =
        |stream: &mut TcpStream, cursor: Option<Cursor>| -> DescribeTopicPartitionsResponse {
            wire::call(
                stream,
                ApiKey::DescribeTopicPartitions,
                0,
                &DescribeTopicPartitionsRequest::default()
                    .with_topics(vec![
                        TopicRequest::default().with_name(name("zeta")),
                        TopicRequest::default().with_name(name("paged")),
                    ])
                    .with_response_partition_limit(2)
                    .with_cursor(cursor),
            )
        };
    let first = page(&mut stream, None);
    assert_eq!(first.topics.len(), 1);
    assert_eq!(first.topics[0].name.as_ref().unwrap().0.as_str(), "paged");
    let indexes: Vec<i32> = first.topics[0]
        .partitions
        .iter()
        .map(|p| p.partition_index)
        .collect();
    assert_eq!(indexes, vec![0, 1]);
    assert!(!first.topics[0].topic_id.is_nil());
    let cursor = first.next_cursor.expect("more partitions follow");
    assert_eq!(
        (cursor.topic_name.0.as_str(), cursor.partition_index),
        ("paged", 2)
    );
    let second = page(
        &mut stream,
        Some(
            Cursor::default()
                .with_topic_name(cursor.topic_name)
                .with_partition_index(cursor.partition_index),
        ),
    );
    let seen: Vec<(String, i32)> = second
        .topics
        .iter()
        .flat_map(|t| {
            let n = t.name.as_ref().unwrap().0.to_string();
            t.partitions
                .iter()
                .map(move |p| (n.clone(), p.partition_index))
        })
        .collect();
    assert_eq!(seen, vec![("paged".to_owned(), 2), ("zeta".to_owned(), 0)]);
    assert!(second.next_cursor.is_none());

    // ListOffsets v7+: the first record with the largest timestamp (-3), the earliest
    // local offset (-4: the log start), the latest tiered offset (-5: none here).
    {
        use kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
        wire::create_topic(&broker.addr, "times", 1);
        stream
            .write_all(&wire::produce_frame(
                "times",
                &[wire::timed_batch(&[100, 300, 200, 300])],
            ))
            .unwrap();
        assert_eq!(
            wire::produce_errors(wire::read_response(&mut stream).unwrap()),
            vec![0]
        );
        for (version, spec, want) in [
            (7, -3, (300, 1)),
            (10, -3, (300, 1)),
            (8, -4, (-1, 0)),
            (9, -5, (-1, -1)),
            (10, -1, (-1, 4)),
        ] {
            let r: ListOffsetsResponse = wire::call(
                &mut stream,
                ApiKey::ListOffsets,
                version,
                &ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![
                        ListOffsetsTopic::default()
                            .with_name(name("times"))
                            .with_partitions(vec![
                                ListOffsetsPartition::default()
                                    .with_partition_index(0)
                                    .with_timestamp(spec),
                            ]),
                    ]),
            );
            let p = &r.topics[0].partitions[0];
            assert_eq!(p.error_code, 0, "v{version} {spec}");
            assert_eq!((p.timestamp, p.offset), want, "v{version} {spec}");
        }
    }

    let listed: ListConfigResourcesResponse = wire::call(
        &mut stream,
        ApiKey::ListConfigResources,
        1,
        &ListConfigResourcesRequest::default(),
    );
    let mut resources: Vec<(i8, String)> = listed
        .config_resources
        .iter()
        .map(|r| (r.resource_type, r.resource_name.to_string()))
        .collect();
    resources.sort();
    assert_eq!(
        resources,
        vec![
            (2, "paged".into()),
            (2, "times".into()),
            (2, "zeta".into()),
            (4, "0".into())
        ]
    );

    // A standalone committer's group (no members): deleted with its offsets.
    wire::find_coordinator(&mut stream, "gone");
    let committed: OffsetCommitResponse = wire::call(
        &mut stream,
        ApiKey::OffsetCommit,
        2,
        &OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("gone")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(name("paged"))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(7),
                    ]),
            ]),
    );
    assert_eq!(committed.topics[0].partitions[0].error_code, 0);
    let deleted: DeleteGroupsResponse = wire::call(
        &mut stream,
        ApiKey::DeleteGroups,
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![
            GroupId(StrBytes::from_static_str("gone")),
            GroupId(StrBytes::from_static_str("never-was")),
        ]),
    );
    let codes: Vec<i16> = deleted.results.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, vec![0, 69], "NONE, then GROUP_ID_NOT_FOUND");
    let fetched: OffsetFetchResponse = wire::call(
        &mut stream,
        ApiKey::OffsetFetch,
        5,
        &OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("gone")))
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(name("paged"))
                    .with_partition_indexes(vec![0]),
            ])),
    );
    assert_eq!(fetched.topics[0].partitions[0].committed_offset, -1);
}
