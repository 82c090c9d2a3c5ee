//! `loadgen commits`: OffsetCommit throughput and latency from many committers (each its
//! own group and connection, committing one partition's offset back to back, as a
//! consumer that commits after every poll), and a produce probe's latency (one record
//! per request, acks=all, paced) alone and during that commit storm, in one run. Any
//! Kafka broker: groups are found with FindCoordinator, as clients do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, GroupId, OffsetCommitRequest,
    ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde::Serialize;

use crate::kafka_lean::{Conn, commit_at_coordinator, find_coordinator};

#[derive(Debug, Serialize)]
pub struct Latencies {
    pub count: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn summarize(mut samples: Vec<Duration>, seconds: f64) -> Latencies {
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Latencies {
        count: samples.len() as u64,
        per_second: samples.len() as f64 / seconds,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    }
}

#[derive(Debug, Serialize)]
pub struct CommitsReport {
    pub committers: usize,
    pub seconds: u64,
    pub produce_rate: f64,
    /// Commits per second offered (0: back to back).
    pub commit_rate: f64,
    pub produce_alone: Latencies,
    pub produce_during_commits: Latencies,
    pub commits: Latencies,
}

fn create_topic(conn: &mut Conn, name: &str) -> anyhow::Result<()> {
    let response: CreateTopicsResponse = conn.call(
        ApiKey::CreateTopics,
        4,
        &CreateTopicsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name.to_owned())))
                    .with_num_partitions(1)
                    .with_replication_factor(-1),
            ]),
    )?;
    match response.topics.first().map(|t| t.error_code) {
        Some(0) | Some(36) => Ok(()),
        other => bail!("creating {name}: error {other:?}"),
    }
}

/// Sends one record per request (acks=all) at `rate` per second until `stop`; the
/// latency of each.
fn produce_probe(
    addr: &str,
    topic: &str,
    rate: f64,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Duration>> {
    let mut conn = Conn::connect(addr)?;
    let mut samples = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now();
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = start + interval * n;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        n += 1;
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(bytes::Bytes::from_static(&[b'x'; 100])),
            headers: Default::default(),
        };
        let mut batch = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut batch,
            [&record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )?;
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch.freeze())),
                    ]),
            ]);
        // Measured from when it was due (no coordinated omission).
        let response: ProduceResponse = conn.call(ApiKey::Produce, 8, &request)?;
        let code = response
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .map_or(-1, |p| p.error_code);
        if code != 0 {
            bail!("produce refused: error {code}");
        }
        samples.push(due.elapsed());
    }
    Ok(samples)
}

/// Commits offset after offset of `topic`/0 for `group` until `stop`; each latency.
fn committer(
    bootstrap: &str,
    group: &str,
    topic: &str,
    rate: f64,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Duration>> {
    let mut conn = Conn::connect(&find_coordinator(bootstrap, group)?)?;
    let mut samples = Vec::new();
    let mut offset = 0i64;
    let request = |offset: i64| {
        OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(offset),
                    ]),
            ])
    };
    // The first commit waits out a loading coordinator; then every one is timed.
    commit_at_coordinator(bootstrap, group, &request(0))?;
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        offset += 1;
        // Paced: timed from when it was due; unpaced: back to back.
        let started = match interval {
            Some(interval) => {
                let due = start + interval * (offset as u32);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                due
            }
            None => Instant::now(),
        };
        let response: kafka_protocol::messages::OffsetCommitResponse =
            conn.call(ApiKey::OffsetCommit, 7, &request(offset))?;
        let code = response
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .map_or(-1, |p| p.error_code);
        if code != 0 {
            bail!("commit refused for {group}: error {code}");
        }
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// `commit_rate`: commits per second offered by all committers together (0: each
/// commits back to back, for the throughput).
pub fn run(
    bootstrap: &str,
    committers: usize,
    seconds: u64,
    produce_rate: f64,
    commit_rate: f64,
) -> anyhow::Result<CommitsReport> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let topic = format!("commits-{stamp}");
    let mut admin = Conn::connect(bootstrap)?;
    create_topic(&mut admin, &topic)?;
    // Every group's coordinator found (the offsets topic created) before timing.
    for i in 0..committers {
        find_coordinator(bootstrap, &format!("storm-{stamp}-{i}"))?;
    }
    let window = Duration::from_secs(seconds);
    let stop = AtomicBool::new(false);
    let produce_alone = std::thread::scope(|s| {
        let probe = s.spawn(|| produce_probe(bootstrap, &topic, produce_rate, &stop));
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
        probe
            .join()
            .map_err(|_| anyhow::anyhow!("produce probe panicked"))?
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let (produce_during, commits) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..committers)
            .map(|i| {
                let group = format!("storm-{stamp}-{i}");
                let (stop, topic) = (&stop, &topic);
                let rate = commit_rate / committers as f64;
                s.spawn(move || committer(bootstrap, &group, topic, rate, stop))
            })
            .collect();
        let probe = s.spawn(|| produce_probe(bootstrap, &topic, produce_rate, &stop));
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
        let during = probe
            .join()
            .map_err(|_| anyhow::anyhow!("produce probe panicked"))??;
        let mut commits = Vec::new();
        for w in workers {
            commits.extend(
                w.join()
                    .map_err(|_| anyhow::anyhow!("committer panicked"))?
                    .context("a committer")?,
            );
        }
        anyhow::Ok((during, commits))
    })?;
    let secs = window.as_secs_f64();
    Ok(CommitsReport {
        committers,
        seconds,
        produce_rate,
        commit_rate,
        produce_alone: summarize(produce_alone, secs),
        produce_during_commits: summarize(produce_during, secs),
        commits: summarize(commits, secs),
    })
}
