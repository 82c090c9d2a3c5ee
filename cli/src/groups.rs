//! `klog groups`: list, describe (committed offset, log end, lag), reset offsets.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::Ctx;
use crate::topics::{TIMEOUT, metadata, print_names};

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups.
    List,
    /// Per partition: committed offset, log-end offset and lag.
    Describe { group: String },
    /// Move a group's committed offsets (the group must have no active members).
    ResetOffsets(ResetArgs),
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    pub group: String,
    #[arg(long)]
    pub topic: String,
    #[arg(long, group = "target")]
    pub to_earliest: bool,
    #[arg(long, group = "target")]
    pub to_latest: bool,
    #[arg(long, group = "target")]
    pub to_offset: Option<i64>,
    /// Milliseconds since the epoch: the first offset at or after that time.
    #[arg(long, group = "target")]
    pub to_datetime: Option<i64>,
}

fn group_consumer(ctx: &Ctx, group: &str) -> anyhow::Result<BaseConsumer> {
    ctx.config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a Kafka client")
}

pub fn run(ctx: &Ctx, command: GroupsCommand) -> anyhow::Result<()> {
    match command {
        GroupsCommand::List => {
            let consumer: BaseConsumer = ctx
                .config()
                .create()
                .context("cannot create a Kafka client")?;
            let list = consumer
                .fetch_group_list(None, TIMEOUT)
                .with_context(|| format!("broker {} unreachable", ctx.bootstrap))?;
            print_names(ctx, list.groups().iter().map(|g| g.name()).collect());
            Ok(())
        }
        GroupsCommand::Describe { group } => describe(ctx, &group),
        GroupsCommand::ResetOffsets(args) => reset(ctx, args),
    }
}

fn describe(ctx: &Ctx, group: &str) -> anyhow::Result<()> {
    let md = metadata(ctx, None)?;
    let consumer = group_consumer(ctx, group)?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition(t.name(), p.id());
        }
    }
    let committed = consumer
        .committed_offsets(tpl, TIMEOUT)
        .context("fetching committed offsets")?;
    let mut rows = Vec::new();
    for e in committed.elements() {
        let Offset::Offset(offset) = e.offset() else {
            continue;
        };
        let (_, end) = consumer
            .fetch_watermarks(e.topic(), e.partition(), TIMEOUT)
            .context("fetching log-end offsets")?;
        rows.push((
            e.topic().to_owned(),
            e.partition(),
            offset,
            end,
            (end - offset).max(0),
        ));
    }
    if rows.is_empty() {
        bail!("group {group} has no committed offsets");
    }
    if ctx.json {
        let json: Vec<_> = rows
            .iter()
            .map(|(t, p, o, e, l)| serde_json::json!({"topic": t, "partition": p, "current_offset": o, "log_end_offset": e, "lag": l}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"group": group, "partitions": json})
        );
    } else {
        println!("GROUP\tTOPIC\tPARTITION\tCURRENT-OFFSET\tLOG-END-OFFSET\tLAG");
        for (t, p, o, e, l) in rows {
            println!("{group}\t{t}\t{p}\t{o}\t{e}\t{l}");
        }
    }
    Ok(())
}

fn reset(ctx: &Ctx, args: ResetArgs) -> anyhow::Result<()> {
    let md = metadata(ctx, Some(&args.topic))?;
    let topic = md.topics().first().context("no metadata for the topic")?;
    if topic.error().is_some() || topic.partitions().is_empty() {
        bail!("unknown topic {}", args.topic);
    }
    let consumer = group_consumer(ctx, &args.group)?;
    let mut tpl = TopicPartitionList::new();
    for p in topic.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(&args.topic, p.id(), TIMEOUT)
            .context("watermarks")?;
        let target = if args.to_earliest {
            low
        } else if args.to_latest {
            high
        } else if let Some(o) = args.to_offset {
            o.clamp(low, high)
        } else if let Some(ts) = args.to_datetime {
            let mut q = TopicPartitionList::new();
            q.add_partition_offset(&args.topic, p.id(), Offset::Offset(ts))
                .context("partition")?;
            let found = consumer
                .offsets_for_times(q, TIMEOUT)
                .context("offsets for time")?;
            match found
                .find_partition(&args.topic, p.id())
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => high,
            }
        } else {
            bail!("choose one of --to-earliest, --to-latest, --to-offset, --to-datetime");
        };
        tpl.add_partition_offset(&args.topic, p.id(), Offset::Offset(target))
            .context("partition")?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .with_context(|| format!("cannot reset group {} (is it still active?)", args.group))?;
    for e in tpl.elements() {
        if let Offset::Offset(o) = e.offset() {
            if ctx.json {
                println!(
                    "{}",
                    serde_json::json!({"group": args.group, "topic": e.topic(), "partition": e.partition(), "new_offset": o})
                );
            } else {
                println!("{}\t{}\t{}\t{}", args.group, e.topic(), e.partition(), o);
            }
        }
    }
    Ok(())
}
