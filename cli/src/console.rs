//! `klog produce` and `klog consume`: the console producer and consumer.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_executor::block_on;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::Ctx;
use crate::topics::metadata;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[arg(long)]
    pub topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// Split each line at the first occurrence into key and value.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Header added to every message (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[arg(long)]
    pub topic: String,
    /// Start at the earliest offset (otherwise at the end, or the group's commit).
    #[arg(long)]
    pub from_beginning: bool,
    /// Consume as a member of this group, committing offsets as it goes and on exit.
    #[arg(long)]
    pub group: Option<String>,
    /// Stop after this many messages.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Stop after this long without a message.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Read only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// With --partition: start at this offset.
    #[arg(long, requires = "partition")]
    pub offset: Option<i64>,
    #[arg(long)]
    pub print_key: bool,
    #[arg(long)]
    pub print_headers: bool,
    #[arg(long)]
    pub print_partition: bool,
    #[arg(long)]
    pub print_offset: bool,
    #[arg(long)]
    pub print_timestamp: bool,
}

pub fn produce(ctx: &Ctx, args: ProduceArgs) -> anyhow::Result<()> {
    let acks = match args.acks.as_str() {
        "0" | "1" | "all" | "-1" => args.acks.clone(),
        other => bail!("--acks must be 0, 1 or all, not {other:?}"),
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        let Some((k, v)) = h.split_once('=') else {
            bail!("--header wants KEY=VALUE, got {h:?}");
        };
        headers.push((k.to_owned(), v.to_owned()));
    }
    metadata(ctx, Some(&args.topic))?;
    let producer: FutureProducer = ctx
        .config()
        .set("acks", &acks)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .context("cannot create a producer")?;
    let input: Box<dyn BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut pending = Vec::new();
    let mut failed = 0u64;
    let mut sent = 0u64;
    for line in input.lines() {
        let line = line.context("cannot read input")?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k.to_owned()), v.to_owned()),
                None => (None, line),
            },
            None => (None, line),
        };
        let mut h = OwnedHeaders::new();
        for (k, v) in &headers {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&args.topic)
            .payload(value.as_bytes())
            .headers(h);
        if let Some(k) = &key {
            record = record.key(k.as_bytes());
        }
        pending.push(crate::connect::enqueue(&producer, record)?);
        // Bound what is in flight.
        if pending.len() >= 10_000 {
            await_deliveries(&mut pending, &mut sent, &mut failed);
        }
    }
    await_deliveries(&mut pending, &mut sent, &mut failed);
    if ctx.json {
        println!("{}", serde_json::json!({"sent": sent, "failed": failed}));
    }
    if failed > 0 {
        bail!(
            "{failed} of {} messages were not acknowledged",
            sent + failed
        );
    }
    Ok(())
}

/// Waits for every queued message's acknowledgement, counting successes and failures.
fn await_deliveries(
    pending: &mut Vec<rdkafka::producer::DeliveryFuture>,
    sent: &mut u64,
    failed: &mut u64,
) {
    for f in pending.drain(..) {
        match block_on(f) {
            Ok(Ok(_)) => *sent += 1,
            Ok(Err((e, _))) => {
                *failed += 1;
                eprintln!("klog: a message failed: {e}");
            }
            Err(_) => *failed += 1,
        }
    }
}

pub fn consume(ctx: &Ctx, args: ConsumeArgs) -> anyhow::Result<()> {
    let md = metadata(ctx, Some(&args.topic))?;
    let topic_md = md.topics().first().context("no metadata for the topic")?;
    if topic_md.error().is_some() || topic_md.partitions().is_empty() {
        bail!("unknown topic {}", args.topic);
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))
        .context("signal handler")?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))
        .context("signal handler")?;
    let mut config = ctx.config();
    config
        .set("group.id", args.group.as_deref().unwrap_or("klog-console"))
        .set(
            "enable.auto.commit",
            if args.group.is_some() {
                "true"
            } else {
                "false"
            },
        )
        .set(
            "auto.offset.reset",
            if args.from_beginning {
                "earliest"
            } else {
                "latest"
            },
        );
    let consumer: BaseConsumer = config.create().context("cannot create a consumer")?;
    if args.group.is_some() && args.partition.is_none() {
        consumer.subscribe(&[&args.topic]).context("subscribe")?;
    } else {
        let mut tpl = TopicPartitionList::new();
        let start = match (args.offset, args.from_beginning) {
            (Some(o), _) => Offset::Offset(o),
            (None, true) => Offset::Beginning,
            (None, false) => Offset::End,
        };
        let partitions: Vec<i32> = match args.partition {
            Some(p) => vec![p],
            None => topic_md.partitions().iter().map(|p| p.id()).collect(),
        };
        for p in partitions {
            tpl.add_partition_offset(&args.topic, p, start)
                .context("partition")?;
        }
        consumer.assign(&tpl).context("assign")?;
    }
    let mut count = 0u64;
    let mut last_message = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if args.max_messages.is_some_and(|m| count >= m) {
            break;
        }
        if args
            .timeout_ms
            .is_some_and(|t| last_message.elapsed() > Duration::from_millis(t))
        {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => bail!("consume: {e}"),
            Some(Ok(m)) => {
                count += 1;
                last_message = Instant::now();
                print_message(ctx, &args, &m);
            }
        }
    }
    if args.group.is_some() && count > 0 {
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .context("committing offsets on exit")?;
    }
    eprintln!("Processed a total of {count} messages");
    Ok(())
}

fn print_message(ctx: &Ctx, args: &ConsumeArgs, m: &rdkafka::message::BorrowedMessage<'_>) {
    let value = String::from_utf8_lossy(m.payload().unwrap_or_default());
    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
    let headers: Vec<(String, String)> = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({"partition": m.partition(), "offset": m.offset(), "timestamp": m.timestamp().to_millis(),
                "key": key, "headers": headers.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(), "value": value})
        );
        return;
    }
    let mut fields = Vec::new();
    if args.print_timestamp {
        fields.push(format!(
            "CreateTime:{}",
            m.timestamp().to_millis().unwrap_or(-1)
        ));
    }
    if args.print_partition {
        fields.push(format!("Partition:{}", m.partition()));
    }
    if args.print_offset {
        fields.push(format!("Offset:{}", m.offset()));
    }
    if args.print_headers {
        let text: Vec<String> = headers.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        fields.push(if text.is_empty() {
            "NO_HEADERS".to_owned()
        } else {
            text.join(",")
        });
    }
    if args.print_key {
        fields.push(key.unwrap_or_else(|| "null".to_owned()));
    }
    fields.push(value.into_owned());
    println!("{}", fields.join("\t"));
}
