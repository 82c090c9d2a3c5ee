//! `klog topics`: create, list, describe, delete.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::Ctx;

pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    Create {
        topic: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
        /// Topic config, e.g. `--config retention.ms=60000` (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Partitions (leader, replicas, ISR) and configs of one topic, or of all.
    Describe { topic: Option<String> },
    /// Delete a topic.
    Delete { topic: String },
}

pub fn admin(ctx: &Ctx) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ctx.config()
        .create()
        .context("cannot create a Kafka client")
}

/// Metadata for one topic or all; fails clearly when the broker cannot be reached.
pub fn metadata(ctx: &Ctx, topic: Option<&str>) -> anyhow::Result<rdkafka::metadata::Metadata> {
    let consumer: BaseConsumer = ctx
        .config()
        .create()
        .context("cannot create a Kafka client")?;
    consumer
        .fetch_metadata(topic, TIMEOUT)
        .with_context(|| format!("broker {} unreachable or not answering", ctx.bootstrap))
}

/// The partitions of `topic`, or `None` when the broker does not know it. Asks without
/// auto-creating it (librdkafka's consumers never ask for that).
pub fn partitions_of(ctx: &Ctx, topic: &str) -> anyhow::Result<Option<Vec<i32>>> {
    let md = metadata(ctx, Some(topic))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<i32>>())
        .filter(|partitions| !partitions.is_empty()))
}

/// Creates `topic` with the broker's default partition count and replication factor
/// (CreateTopics v4's -1, as Kafka's own tools do; plain 1 and 1 where a broker refuses
/// that) unless it exists. Another client creating it first is not an error.
pub fn ensure_topic(ctx: &Ctx, topic: &str) -> anyhow::Result<()> {
    if partitions_of(ctx, topic)?.is_some() {
        return Ok(());
    }
    let admin = admin(ctx)?;
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let mut refused = RDKafkaErrorCode::UnknownTopicOrPartition;
    for (partitions, replication) in [(-1, -1), (1, 1)] {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        let results = block_on(admin.create_topics(&[new], &options))
            .with_context(|| format!("broker {} unreachable", ctx.bootstrap))?;
        match results.first() {
            Some(Ok(_)) => {
                let how = if partitions == -1 {
                    "the broker's default partitions".to_owned()
                } else {
                    format!("{partitions} partition")
                };
                eprintln!("klog: created topic {topic} with {how}");
                return Ok(());
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => return Ok(()),
            Some(Err((_, code))) => refused = *code,
            None => bail!("the broker did not answer for topic {topic}"),
        }
    }
    bail!(
        "topic {topic} does not exist and cannot be created ({refused}): \
         create it with `klog topics create {topic}`"
    )
}

pub fn run(ctx: &Ctx, command: TopicsCommand) -> anyhow::Result<()> {
    match command {
        TopicsCommand::Create {
            topic,
            partitions,
            replication_factor,
            configs,
        } => {
            let pairs: Vec<(String, String)> = configs
                .iter()
                .map(|c| match c.split_once('=') {
                    Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
                    None => bail!("--config wants KEY=VALUE, got {c:?}"),
                })
                .collect::<anyhow::Result<_>>()?;
            let mut new = NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(replication_factor),
            );
            for (k, v) in &pairs {
                new = new.set(k, v);
            }
            let results = block_on(
                admin(ctx)?
                    .create_topics(&[new], &AdminOptions::new().request_timeout(Some(TIMEOUT))),
            )
            .with_context(|| format!("broker {} unreachable", ctx.bootstrap))?;
            match &results[0] {
                Ok(_) => print(
                    ctx,
                    &format!("Created topic {topic}."),
                    serde_json::json!({"created": topic}),
                ),
                Err((_, code)) => bail!("cannot create topic {topic}: {code}"),
            }
            Ok(())
        }
        TopicsCommand::List => {
            let md = metadata(ctx, None)?;
            print_names(ctx, md.topics().iter().map(|t| t.name()).collect());
            Ok(())
        }
        TopicsCommand::Describe { topic } => describe(ctx, topic.as_deref()),
        TopicsCommand::Delete { topic } => {
            let results = block_on(admin(ctx)?.delete_topics(
                &[&topic],
                &AdminOptions::new().request_timeout(Some(TIMEOUT)),
            ))
            .with_context(|| format!("broker {} unreachable", ctx.bootstrap))?;
            match &results[0] {
                Ok(_) => print(
                    ctx,
                    &format!("Deleted topic {topic}."),
                    serde_json::json!({"deleted": topic}),
                ),
                Err((_, code)) => bail!("cannot delete topic {topic}: {code}"),
            }
            Ok(())
        }
    }
}

fn describe(ctx: &Ctx, topic: Option<&str>) -> anyhow::Result<()> {
    let md = metadata(ctx, topic)?;
    let admin = admin(ctx)?;
    let mut out = Vec::new();
    for t in md.topics() {
        if let Some(err) = t.error() {
            bail!("unknown topic {}: {:?}", t.name(), err);
        }
        // Bounded like every other admin call here: with a broker just killed, librdkafka
        // may send it to that broker and wait out its socket timeout (a minute).
        let configs = block_on(admin.describe_configs(
            &[ResourceSpecifier::Topic(t.name())],
            &AdminOptions::new().request_timeout(Some(TIMEOUT)),
        ))
        .ok()
        .and_then(|mut r| r.pop())
        .and_then(|r| r.ok())
        .map(|r| {
            r.entries
                .into_iter()
                .filter_map(|e| e.value.map(|v| (e.name, v)))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
        let partitions: Vec<serde_json::Value> = t
            .partitions()
            .iter()
            .map(|p| {
                serde_json::json!({"partition": p.id(), "leader": p.leader(), "replicas": p.replicas(), "isr": p.isr(), "error": partition_error(p).map(|e| format!("{e:?}"))})
            })
            .collect();
        if !ctx.json {
            let configs_text: Vec<String> =
                configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "Topic: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}",
                t.name(),
                t.partitions().len(),
                t.partitions().first().map_or(0, |p| p.replicas().len()),
                configs_text.join(",")
            );
            for p in t.partitions() {
                let error = partition_error(p)
                    .map(|e| format!("\tError: {e}"))
                    .unwrap_or_default();
                println!(
                    "\tTopic: {}\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}{error}",
                    t.name(),
                    p.id(),
                    p.leader(),
                    join(p.replicas()),
                    join(p.isr())
                );
            }
        }
        out.push(serde_json::json!({"topic": t.name(), "partitions": partitions, "configs": configs.into_iter().collect::<std::collections::BTreeMap<_, _>>()}));
    }
    if ctx.json {
        println!("{}", serde_json::Value::Array(out));
    }
    Ok(())
}

/// The partition's error in Metadata, e.g. `KafkaStorageError` when its log failed.
fn partition_error(p: &rdkafka::metadata::MetadataPartition) -> Option<RDKafkaErrorCode> {
    p.error().map(RDKafkaErrorCode::from)
}

fn join(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

pub fn print(ctx: &Ctx, text: &str, json: serde_json::Value) {
    if ctx.json {
        println!("{json}");
    } else {
        println!("{text}");
    }
}

/// Prints names sorted, one per line (or as a JSON array).
pub fn print_names(ctx: &Ctx, mut names: Vec<&str>) {
    names.sort_unstable();
    if ctx.json {
        println!("{}", serde_json::json!(names));
    } else {
        for n in names {
            println!("{n}");
        }
    }
}
