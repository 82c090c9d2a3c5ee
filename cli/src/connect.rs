//! `klog connect`: file source and sink, like Kafka Connect's standalone file connectors,
//! but exactly-once across restarts:
//! - the source writes each line to partition 0 with a `klog.position` header (the byte
//!   offset after the line) through an idempotent producer; on start it reads the last
//!   record back and resumes the file right after it, so what is in the topic is the
//!   resume point and nothing is sent twice or skipped;
//! - the sink appends values to its file, fsyncs, then commits the offset with the file's
//!   length as commit metadata; on start it cuts the file back to that length, so lines
//!   written after the last commit are not written twice.
//!
//! On a fresh broker the source creates its topic (CreateTopics with the broker's
//! defaults) and the sink waits for it, bounded, so either may start first.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use futures_executor::block_on;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::Ctx;
use crate::topics::{TIMEOUT, ensure_topic, partitions_of};

const POSITION_HEADER: &str = "klog.position";
/// Lines sent before waiting for their acknowledgements.
const SOURCE_BATCH_LINES: usize = 5_000;
/// How long the sink waits for its topic by default (the source may not have run yet).
const SINK_TOPIC_WAIT_MS_DEFAULT: u64 = 60_000;
/// How long the source waits for a topic it just created to show in metadata.
const SOURCE_TOPIC_WAIT: Duration = Duration::from_secs(10);
/// Pause between metadata requests while waiting for a topic.
const TOPIC_POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Subcommand)]
pub enum ConnectCommand {
    /// Send a file's lines to a topic, resuming after the last line the topic holds.
    FileSource {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        topic: String,
        /// Keep waiting for new lines at the end of the file.
        #[arg(long)]
        follow: bool,
    },
    /// Append a topic's values to a file, resuming at the group's committed offset.
    FileSink {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        file: PathBuf,
        /// Consumer group that remembers the sink's progress.
        #[arg(long, default_value = "klog-file-sink")]
        group: String,
        /// Stop after this long without a message (default: run until interrupted).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// How long to wait for the topic to exist (the source creates it).
        #[arg(long, default_value_t = SINK_TOPIC_WAIT_MS_DEFAULT)]
        topic_wait_ms: u64,
    },
}

pub fn run(ctx: &Ctx, command: ConnectCommand) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))
        .context("signal handler")?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))
        .context("signal handler")?;
    match command {
        ConnectCommand::FileSource {
            file,
            topic,
            follow,
        } => source(ctx, &file, &topic, follow, &stop),
        ConnectCommand::FileSink {
            topic,
            file,
            group,
            timeout_ms,
            topic_wait_ms,
        } => {
            let wait = Duration::from_millis(topic_wait_ms);
            let Some(partitions) = wait_for_topic(ctx, &topic, wait, "file-sink", &stop)? else {
                eprintln!("file-sink: stopped before topic {topic} appeared; wrote 0 lines");
                return Ok(());
            };
            sink(ctx, &topic, &partitions, &file, &group, timeout_ms, &stop)
        }
    }
}

/// The partitions of `topic` once it exists: at once, or after waiting up to `wait` (and
/// saying so on stderr); `None` when stopped while waiting. Fails with what to do when the
/// topic does not appear in time.
fn wait_for_topic(
    ctx: &Ctx,
    topic: &str,
    wait: Duration,
    who: &str,
    stop: &AtomicBool,
) -> anyhow::Result<Option<Vec<i32>>> {
    let deadline = Instant::now() + wait;
    let mut said = false;
    loop {
        if let Some(partitions) = partitions_of(ctx, topic)? {
            return Ok(Some(partitions));
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            bail!(
                "topic {topic} does not exist (waited {} s): start `klog connect file-source \
                 --topic {topic}` or create it with `klog topics create {topic}`",
                wait.as_secs()
            );
        }
        if !said {
            eprintln!(
                "{who}: waiting up to {} s for topic {topic} to be created \
                 (by `klog connect file-source` or `klog topics create`)",
                wait.as_secs()
            );
            said = true;
        }
        std::thread::sleep(TOPIC_POLL_INTERVAL);
    }
}

/// The `klog.position` of the last record in partition 0, or 0 when it is empty.
fn resume_position(ctx: &Ctx, topic: &str) -> anyhow::Result<u64> {
    let consumer: BaseConsumer = ctx
        .config()
        .set("group.id", "klog-file-source-resume")
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a Kafka client")?;
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, TIMEOUT)
        .context("watermarks")?;
    if high == 0 {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(high - 1))
        .context("partition")?;
    consumer.assign(&tpl).context("assign")?;
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.context("reading the last record")?;
            let position = m
                .headers()
                .and_then(|hs| {
                    hs.iter()
                        .find(|h| h.key == POSITION_HEADER)
                        .and_then(|h| h.value)
                })
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok());
            return position.context(
                "the topic's last record has no klog.position header: not written by klog connect",
            );
        }
    }
    bail!("could not read the topic's last record")
}

fn source(
    ctx: &Ctx,
    path: &PathBuf,
    topic: &str,
    follow: bool,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    // Kafka's file source gets its topic from the broker's auto-create; ours asks for it
    // explicitly, with the broker's defaults, so it also works where auto-create is off.
    ensure_topic(ctx, topic)?;
    if wait_for_topic(ctx, topic, SOURCE_TOPIC_WAIT, "file-source", stop)?.is_none() {
        return Ok(());
    }
    let mut position = resume_position(ctx, topic)?;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(position)).context("seek")?;
    let producer: FutureProducer = ctx
        .config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("cannot create a producer")?;
    let mut sent = 0u64;
    let mut line = Vec::new();
    'outer: while !stop.load(Ordering::Relaxed) {
        let mut pending = Vec::with_capacity(SOURCE_BATCH_LINES);
        while pending.len() < SOURCE_BATCH_LINES {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .context("reading the file")?;
            if n == 0 || line.last() != Some(&b'\n') {
                // End of file, or a line still being written: resume from its start later.
                reader.seek(SeekFrom::Start(position)).context("seek")?;
                break;
            }
            position += n as u64;
            let value = &line[..line.len() - 1];
            let headers = OwnedHeaders::new().insert(Header {
                key: POSITION_HEADER,
                value: Some(&position.to_string()),
            });
            let record = FutureRecord::<[u8], [u8]>::to(topic)
                .partition(0)
                .payload(value)
                .headers(headers);
            pending.push(enqueue(&producer, record)?);
        }
        let got = pending.len();
        for f in pending {
            block_on(f)
                .context("producer went away")?
                .map_err(|(e, _)| e)
                .context("a line was not acknowledged")?;
        }
        sent += got as u64;
        if got == 0 {
            if !follow {
                break 'outer;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    producer.flush(TIMEOUT).context("flush")?;
    eprintln!(
        "file-source: sent {sent} lines; {} is read up to byte {position}",
        path.display()
    );
    Ok(())
}

fn sink(
    ctx: &Ctx,
    topic: &str,
    partitions: &[i32],
    path: &PathBuf,
    group: &str,
    timeout_ms: Option<u64>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ctx
        .config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("cannot create a consumer")?;
    // Resume: the committed offset, and the file length recorded with it.
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, TIMEOUT)
        .context("committed offsets")?;
    let mut start = TopicPartitionList::new();
    let mut file_len = 0u64;
    for e in committed.elements() {
        start
            .add_partition_offset(
                topic,
                e.partition(),
                if e.offset() == Offset::Invalid {
                    Offset::Beginning
                } else {
                    e.offset()
                },
            )
            .context("partition")?;
        if let Ok(len) = e.metadata().parse::<u64>() {
            file_len = file_len.max(len);
        }
    }
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    out.set_len(file_len)
        .context("cutting the file back to the last commit")?;
    out.seek(SeekFrom::End(0)).context("seek")?;
    consumer.assign(&start).context("assign")?;
    let mut last = Instant::now();
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if timeout_ms.is_some_and(|t| last.elapsed() > Duration::from_millis(t)) {
            break;
        }
        let mut progressed: std::collections::BTreeMap<i32, i64> =
            std::collections::BTreeMap::new();
        let mut buf = Vec::new();
        while let Some(m) =
            consumer.poll(Duration::from_millis(if buf.is_empty() { 200 } else { 0 }))
        {
            let m = m.context("consume")?;
            buf.extend_from_slice(m.payload().unwrap_or_default());
            buf.push(b'\n');
            progressed.insert(m.partition(), m.offset() + 1);
            written += 1;
            if buf.len() > 1 << 20 {
                break;
            }
        }
        if buf.is_empty() {
            continue;
        }
        last = Instant::now();
        out.write_all(&buf).context("writing the file")?;
        out.sync_data().context("syncing the file")?;
        let len = out.metadata().context("file length")?.len();
        let mut commit = TopicPartitionList::new();
        for (partition, next) in progressed {
            let mut elem = commit.add_partition(topic, partition);
            elem.set_offset(Offset::Offset(next)).context("offset")?;
            elem.set_metadata(len.to_string());
        }
        consumer
            .commit(&commit, CommitMode::Sync)
            .context("committing the sink's progress")?;
    }
    eprintln!("file-sink: wrote {written} lines to {}", path.display());
    Ok(())
}

/// Queues a record without borrowing it past the call, waiting while the local queue is full.
pub fn enqueue(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e).context("cannot queue a message"),
        }
    }
}
