//! Turns request frames captured from real clients (scripts/capture-fuzz-seeds.sh) into the
//! seed corpora of every target:
//! - `front_door/`: a few frames of each API and version seen; for every other version in
//!   `SUPPORTED_APIS`, a captured request of that API re-encoded at that version; and one
//!   multi-frame stream;
//! - `batch/`, `batch_mutated/`: the record batches those clients produced, every codec;
//! - `recovery/`: partition directories the engine wrote from those batches, packed in the
//!   recovery target's input layout (clean, crashed, two segments, full recovery).
//!
//! Usage: seeds FRAMES_DIR OUT_DIR

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use engine::batch::{self, BatchHeader};
use engine::{AppendWait, LogConfig, Partition};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};
use server::kafka::protocol::{self, Frame, RequestBody, SUPPORTED_APIS};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const FRAMES_PER_VERSION: usize = 3;
const FRAME_BYTES_MAX: usize = 64 * 1024;
const BATCHES_PER_CODEC: usize = 6;
const BATCH_BYTES_MAX: usize = 16 * 1024;
const RECOVERY_LOG_BYTES_MAX: usize = 48 * 1024;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, frames_dir, out_dir] = args.as_slice() else {
        return Err("usage: seeds FRAMES_DIR OUT_DIR".into());
    };
    let out = PathBuf::from(out_dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(frames_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    let mut frames = Vec::new();
    for f in &files {
        frames.push(std::fs::read(f)?);
    }
    // Smallest first, so the kept seeds are small.
    frames.sort_by_key(|f| f.len());

    let mut per_version: BTreeMap<(i16, i16), Vec<&Vec<u8>>> = BTreeMap::new();
    let mut batches: BTreeMap<i16, Vec<Vec<u8>>> = BTreeMap::new();
    for frame in &frames {
        let key = i16::from_be_bytes([frame[4], frame[5]]);
        let version = i16::from_be_bytes([frame[6], frame[7]]);
        let kept = per_version.entry((key, version)).or_default();
        if kept.len() < FRAMES_PER_VERSION && frame.len() <= FRAME_BYTES_MAX {
            kept.push(frame);
        }
        let Ok(Frame::Request(request)) = protocol::decode_frame(frame[4..].to_vec()) else {
            continue;
        };
        let RequestBody::Produce(produce) = request.body else {
            continue;
        };
        for topic in &produce.topic_data {
            for pd in &topic.partition_data {
                let Some(records) = &pd.records else { continue };
                let Ok(header) = batch::validate(records, engine::limits::BATCH_BYTES_MAX) else {
                    continue;
                };
                let codec = header.attributes & 0x07;
                let same = batches.entry(codec).or_default();
                if same.len() < BATCHES_PER_CODEC
                    && records.len() <= BATCH_BYTES_MAX
                    && !same.iter().any(|b| b[..] == records[..])
                {
                    same.push(records.to_vec());
                }
            }
        }
    }

    let front = out.join("front_door");
    reset(&front)?;
    for ((key, version), kept) in &per_version {
        for (i, frame) in kept.iter().enumerate() {
            std::fs::write(front.join(format!("k{key:02}-v{version}-{i}")), frame)?;
        }
    }
    // Every accepted version the clients did not use: a captured request of the same API,
    // re-encoded at that version.
    let mut reencoded = 0;
    for &(key, min, max) in SUPPORTED_APIS {
        // An API no client used gets empty requests of each version.
        let kept: &[&Vec<u8>] = per_version
            .iter()
            .find(|((k, _), _)| *k == key as i16)
            .map_or(&[], |(_, kept)| kept.as_slice());
        for version in min..=max {
            if per_version.contains_key(&(key as i16, version)) {
                continue;
            }
            let frame = kept
                .iter()
                .find_map(|f| match protocol::decode_frame(f[4..].to_vec()) {
                    Ok(Frame::Request(request)) => {
                        reencode(key, version, &adapt(version, request.body))
                    }
                    _ => None,
                })
                // Fields the version cannot carry: an empty request of that API instead.
                .or_else(|| reencode(key, version, &default_body(key)?));
            if let Some(frame) = frame {
                std::fs::write(
                    front.join(format!("k{:02}-v{version}-reencoded", key as i16)),
                    frame,
                )?;
                reencoded += 1;
            }
        }
    }
    println!("seeds: {reencoded} front door frames re-encoded at versions no client used");
    // One connection's opening: ApiVersions, Metadata, then a Produce.
    let stream: Vec<u8> = [18i16, 3, 0]
        .iter()
        .filter_map(|k| per_version.iter().find(|((key, _), _)| key == k))
        .flat_map(|(_, kept)| kept[0].iter().copied())
        .collect();
    std::fs::write(front.join("stream-apiversions-metadata-produce"), stream)?;

    let raw = out.join("batch");
    let mutated = out.join("batch_mutated");
    reset(&raw)?;
    reset(&mutated)?;
    let mut all = Vec::new();
    for (codec, list) in &batches {
        for (i, b) in list.iter().enumerate() {
            std::fs::write(raw.join(format!("codec{codec}-{i}")), b)?;
            // Flags 0b011: fix the length and the CRC after mutation.
            std::fs::write(
                mutated.join(format!("codec{codec}-{i}")),
                [&[0b011], &b[..]].concat(),
            )?;
            all.push(b.clone());
        }
    }
    // Built batches (flag 0b100), plain and with one mutation (the first record's length).
    std::fs::write(
        mutated.join("built-3"),
        [&[0b111u8][..], b"a\xffbc\xffdef"].concat(),
    )?;
    std::fs::write(
        mutated.join("built-mutated"),
        [&[0b111u8][..], b"xyz\xfe\x00\x3d\x7e"].concat(),
    )?;

    let recovery = out.join("recovery");
    reset(&recovery)?;
    let runtime = compio::runtime::Runtime::new()?;
    for (interval_bits, interval) in [(0u8, 64u64), (2, 4096)] {
        let dir = tempdir()?;
        let packed = runtime.block_on(write_log(&dir, &all, interval))?;
        std::fs::remove_dir_all(&dir)?;
        for (name, flags) in [
            ("clean", 0b1_1011u8),
            ("crashed", 0b1_1010),
            ("full", 0b0_1101),
            ("one-segment-crashed", 0b1_0000),
        ] {
            let seed = packed.pack(flags | (interval_bits << 5));
            std::fs::write(recovery.join(format!("{name}-interval{interval}")), seed)?;
        }
    }
    println!(
        "seeds: {} front door, {} batches ({} codecs), {} recovery",
        std::fs::read_dir(&front)?.count(),
        all.len(),
        batches.len(),
        std::fs::read_dir(&recovery)?.count()
    );
    Ok(())
}

fn reset(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("klog-seeds-{}", std::process::id()));
    reset(&dir)?;
    Ok(dir.join("seeds-0"))
}

/// A partition directory as the engine wrote it.
struct Packed {
    index: Vec<u8>,
    time_index: Vec<u8>,
    snapshot: Option<(i64, Vec<u8>)>,
    first_log: Vec<u8>,
    second: Option<(i64, Vec<u8>)>,
}

impl Packed {
    /// The recovery target's input layout (see `fuzz::recovery`).
    fn pack(&self, flags: u8) -> Vec<u8> {
        let second_base = self.second.as_ref().map_or(0, |(b, _)| *b);
        let checkpoint = self.snapshot.as_ref().map_or(second_base, |(o, _)| *o);
        let snapshot = self.snapshot.as_ref().map_or(&[][..], |(_, b)| &b[..]);
        let mut out = vec![flags];
        out.extend_from_slice(&(checkpoint as u32).to_be_bytes());
        out.extend_from_slice(&(self.first_log.len() as u32).to_be_bytes());
        out.extend_from_slice(&(second_base as u32).to_be_bytes());
        for part in [&self.index[..], &self.time_index[..], snapshot] {
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&self.index);
        out.extend_from_slice(&self.time_index);
        out.extend_from_slice(snapshot);
        out.extend_from_slice(&self.first_log);
        if let Some((_, log)) = &self.second {
            out.extend_from_slice(log);
        }
        out
    }
}

/// Appends the real batches to a fresh partition with small segments, closes it cleanly,
/// and reads back its first two segments.
async fn write_log(dir: &Path, batches: &[Vec<u8>], interval: u64) -> Result<Packed> {
    let config = LogConfig {
        segment_bytes: 16 * 1024,
        batch_bytes_max: 16 * 1024,
        index_interval_bytes: interval,
        ..LogConfig::default()
    };
    let (p, _) = Partition::open(dir, config).await?;
    let mut written = 0;
    for b in batches {
        if written + b.len() > RECOVERY_LOG_BYTES_MAX {
            break;
        }
        // Idempotent producers' batches may be refused out of sequence: skip those.
        if p.append(b.clone(), AppendWait::Written).await.is_ok() {
            written += b.len();
        }
    }
    p.close().await?;
    drop(p);
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let first = &logs[0];
    let second = match logs.get(1) {
        Some(path) => {
            let log = std::fs::read(path)?;
            let base = BatchHeader::parse(&log)?.base_offset;
            Some((base, log))
        }
        None => None,
    };
    let snapshot = std::fs::read(dir.join("producer-snapshot"))
        .ok()
        .filter(|b| b.len() >= 12 && b.len() - 12 <= usize::from(u16::MAX))
        .map(|b| {
            (
                i64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8])),
                b[12..].to_vec(),
            )
        });
    Ok(Packed {
        index: std::fs::read(first.with_extension("index"))?,
        time_index: std::fs::read(first.with_extension("timeindex"))?,
        snapshot,
        first_log: std::fs::read(first)?,
        second,
    })
}

/// A whole frame (length prefix included) of `body` at `version`, or `None` when the body
/// holds fields that version cannot carry.
fn reencode(key: ApiKey, version: i16, body: &RequestBody) -> Option<Vec<u8>> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("seeds")))
        .encode(&mut buf, key.request_header_version(version))
        .ok()?;
    macro_rules! encode_body {
        ($($variant:ident),*) => {
            match body {
                $(RequestBody::$variant(b) => b.encode(&mut buf, version).ok()?,)*
            }
        };
    }
    encode_body!(
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        DescribeConfigs,
        FindCoordinator,
        JoinGroup,
        SyncGroup,
        Heartbeat,
        LeaveGroup,
        OffsetCommit,
        OffsetFetch,
        ListGroups,
        DescribeGroups,
        InitProducerId,
        OffsetForLeaderEpoch,
        ElectLeaders,
        DescribeCluster,
        DeleteGroups,
        DescribeTopicPartitions,
        ListConfigResources,
        CreatePartitions,
        DescribeLogDirs,
        AlterReplicaLogDirs,
        DescribeQuorum
    );
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    // Only frames the front door takes whole make useful seeds.
    matches!(
        protocol::decode_frame(buf[4..].to_vec()),
        Ok(Frame::Request(_))
    )
    .then(|| buf.to_vec())
}

/// A captured body moved to what `version` carries instead: topics named by id (Fetch
/// v13+, DeleteTopics v6), the replica id in `replica_state` (Fetch v15+).
fn adapt(version: i16, body: RequestBody) -> RequestBody {
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    let id = |n: usize| uuid::Uuid::from_u128(0x5eed_0000 + n as u128);
    match body {
        RequestBody::Fetch(mut fetch) => {
            if version >= 13 {
                for (i, t) in fetch.topics.iter_mut().enumerate() {
                    t.topic = Default::default();
                    t.topic_id = id(i);
                }
                for (i, t) in fetch.forgotten_topics_data.iter_mut().enumerate() {
                    t.topic = Default::default();
                    t.topic_id = id(i);
                }
            }
            if version >= 15 {
                fetch.replica_state.replica_id = fetch.replica_id;
                fetch.replica_id = kafka_protocol::messages::BrokerId(-1);
            }
            RequestBody::Fetch(fetch)
        }
        RequestBody::DeleteTopics(mut delete) if version >= 6 => {
            delete.topics = std::mem::take(&mut delete.topic_names)
                .into_iter()
                .map(|name| DeleteTopicState::default().with_name(Some(name)))
                .collect();
            RequestBody::DeleteTopics(delete)
        }
        other => other,
    }
}

/// An empty request body of `key`'s type.
fn default_body(key: ApiKey) -> Option<RequestBody> {
    macro_rules! defaults {
        ($($variant:ident),*) => {
            match key {
                $(ApiKey::$variant => Some(RequestBody::$variant(Box::default())),)*
                _ => None,
            }
        };
    }
    defaults!(
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        DescribeConfigs,
        FindCoordinator,
        JoinGroup,
        SyncGroup,
        Heartbeat,
        LeaveGroup,
        OffsetCommit,
        OffsetFetch,
        ListGroups,
        DescribeGroups,
        InitProducerId,
        OffsetForLeaderEpoch,
        ElectLeaders,
        DescribeCluster,
        DeleteGroups,
        DescribeTopicPartitions,
        ListConfigResources,
        CreatePartitions,
        DescribeLogDirs,
        AlterReplicaLogDirs,
        DescribeQuorum
    )
}
