//! `loadgen`: the same workloads against a Kafka-compatible broker (ours by default),
//! RabbitMQ and ActiveMQ, reporting msgs/s, MB/s, latency percentiles and CPU time.
//! `loadgen paper` reproduces the producer and consumer experiments of the 2011 Kafka
//! paper. It starts no brokers: it measures whatever answers at the given addresses.

mod activemq;
mod commits;
mod kafka;
mod kafka_lean;
mod payload;
mod procfs;
mod rabbitmq;
mod report;
mod target;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use report::{Meta, Report, Unreachable};
use target::{Dest, Mode, Partitioner, Target};
use workload::{Knobs, RunResult, Verify};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Identical workloads against Kafka-compatible brokers, RabbitMQ and ActiveMQ"
)]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        global = true,
        env = "LOADGEN_KAFKA",
        default_value = "127.0.0.1:9092"
    )]
    kafka: String,
    /// Apache Kafka's bootstrap servers, for the `apache-kafka` and `apache-kafka-lean`
    /// targets (where `scripts/kafka.sh start` listens).
    #[arg(
        long,
        global = true,
        env = "LOADGEN_APACHE_KAFKA",
        default_value = "127.0.0.1:29092"
    )]
    apache_kafka: String,
    /// RabbitMQ AMQP 0-9-1 URI.
    #[arg(
        long,
        global = true,
        env = "LOADGEN_RABBITMQ",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    rabbitmq: String,
    /// ActiveMQ STOMP address.
    #[arg(
        long,
        global = true,
        env = "LOADGEN_ACTIVEMQ",
        default_value = "127.0.0.1:61613"
    )]
    activemq: String,
    /// Replication factor of the topics the `kafka` and `kafka-lean` targets create.
    #[arg(long, global = true, default_value_t = 1)]
    replication_factor: i32,
    /// The `kafka` target's producer acks, overriding the mode's (`0`, `1` or `all`;
    /// idempotence is on only with `all` in durable mode). `kafka-lean` takes `1` or
    /// `all` for its durable mode (idempotent with `all`); its paper mode stays acks=0.
    #[arg(long, global = true)]
    kafka_acks: Option<String>,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// A Kafka-compatible broker through librdkafka.
    Kafka,
    /// The same broker through loadgen's lean pipelined client (`kafka-protocol` codecs).
    KafkaLean,
    /// Apache Kafka (`scripts/kafka.sh`) through librdkafka, at `--apache-kafka`.
    ApacheKafka,
    /// Apache Kafka through the lean client.
    ApacheKafkaLean,
    Rabbitmq,
    Activemq,
}

#[derive(Subcommand)]
enum Command {
    /// The 2011 paper's experiments against every target that answers: one producer
    /// at batch 1 and at batch 50, one consumer draining the backlog, and end-to-end
    /// latency at a fixed rate.
    Paper(PaperArgs),
    /// Producer throughput.
    Produce(RunArgs),
    /// Consumer throughput draining a backlog (written first, unmeasured).
    Consume(RunArgs),
    /// End-to-end latency at a fixed offered rate (open loop).
    Latency(LatencyArgs),
    /// OffsetCommit throughput and latency from many committers (each its own group),
    /// and a produce probe's latency alone and during that commit storm.
    Commits(CommitsArgs),
}

#[derive(Args)]
struct CommitsArgs {
    /// The Kafka broker to drive (ours at --kafka by default; Apache Kafka at
    /// --apache-kafka works the same).
    #[arg(long)]
    bootstrap: Option<String>,
    /// Committers, each with its own group and connection.
    #[arg(long, default_value_t = 100)]
    committers: usize,
    /// Seconds of each phase (the probe alone, then with the committers).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Produce requests per second of the probe (one record each, acks=all).
    #[arg(long, default_value_t = 200.0)]
    produce_rate: f64,
    /// Commits per second offered by all committers together, paced; 0 commits back to
    /// back (the throughput).
    #[arg(long, default_value_t = 0.0)]
    commit_rate: f64,
    /// Where to write the figures as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct PaperArgs {
    /// Messages per experiment (the paper used 10 million).
    #[arg(long, default_value_t = 10_000_000)]
    messages: u64,
    /// Where results.json, results.md and the charts go.
    #[arg(long)]
    out: PathBuf,
    /// Targets to try (those that do not answer are reported, not fatal).
    #[arg(long, value_delimiter = ',', default_values = ["kafka", "kafka-lean", "rabbitmq", "activemq"])]
    targets: Vec<TargetKind>,
    #[arg(long, value_enum, default_value = "paper")]
    mode: Mode,
    /// Message size in bytes (the paper: 200).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Offered rate of the latency experiment, messages per second.
    #[arg(long, default_value_t = 10_000.0)]
    latency_rate: f64,
    /// Length of the latency experiment, seconds (0 skips it).
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// A line for the report (how the brokers were started, say). Repeatable.
    #[arg(long)]
    note: Vec<String>,
}

#[derive(Args, Clone)]
struct KnobArgs {
    /// Durability settings (see the README).
    #[arg(long, value_enum, default_value = "paper")]
    mode: Mode,
    /// Messages in all (warm-up included).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Message size in bytes (at least 24).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Messages per request (Kafka) or per socket write / confirm window (queues).
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// How long a Kafka producer may wait to fill a batch.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    #[arg(long, default_value_t = 1)]
    producers: u32,
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// Topic partitions, or queues on queue brokers.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// How producers spread messages over partitions: per-message round robin splits each
    /// batch over all of them; per-batch sends each batch whole to one (Kafka's sticky
    /// partitioner).
    #[arg(long, value_enum, default_value = "per-message")]
    partitioner: Partitioner,
    /// Unacknowledged messages a queue broker may push to a consumer.
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Messages excluded from the measurement at the start.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Produce for this many seconds (after the warm-up) instead of --messages; for
    /// `latency`, the run length at --rate.
    #[arg(long)]
    duration: Option<u64>,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "kafka")]
    target: TargetKind,
    #[command(flatten)]
    knobs: KnobArgs,
    /// Write results.json, results.md and charts here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Produce only: skip reading the messages back to check them.
    #[arg(long)]
    no_verify: bool,
}

#[derive(Args)]
struct LatencyArgs {
    #[arg(long, value_enum, default_value = "kafka")]
    target: TargetKind,
    /// Offered rate, messages per second.
    #[arg(long)]
    rate: f64,
    #[command(flatten)]
    knobs: KnobArgs,
    #[arg(long)]
    out: Option<PathBuf>,
}

impl KnobArgs {
    fn knobs(&self, quiet: bool) -> Knobs {
        Knobs {
            mode: self.mode,
            messages: self.messages,
            size: self.size,
            batch: self.batch,
            linger_ms: self.linger_ms,
            producers: self.producers,
            consumers: self.consumers,
            partitions: self.partitions,
            partitioner: self.partitioner,
            prefetch: self.prefetch,
            warmup: self.warmup,
            duration: self.duration.map(Duration::from_secs),
            quiet,
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    payload::epoch();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let lean_replication_factor =
        i16::try_from(cli.replication_factor).context("--replication-factor")?;
    let kafka_driver = |flavour, bootstrap: &String| {
        kafka::Kafka::new(flavour, bootstrap.clone(), runtime.handle().clone())
            .with_replication(cli.replication_factor, cli.kafka_acks.clone())
    };
    let lean_driver = |flavour, bootstrap: &String| -> anyhow::Result<kafka_lean::KafkaLean> {
        Ok(
            kafka_lean::KafkaLean::new(flavour, bootstrap.clone()).with_replication(
                lean_replication_factor,
                kafka_lean::durable_acks(cli.kafka_acks.as_deref())?,
            ),
        )
    };
    let make = |kind: TargetKind| -> anyhow::Result<Box<dyn Target>> {
        Ok(match kind {
            TargetKind::Kafka => Box::new(kafka_driver(kafka::OURS, &cli.kafka)),
            TargetKind::ApacheKafka => Box::new(kafka_driver(kafka::APACHE, &cli.apache_kafka)),
            TargetKind::KafkaLean => Box::new(lean_driver(kafka_lean::OURS, &cli.kafka)?),
            TargetKind::ApacheKafkaLean => {
                Box::new(lean_driver(kafka_lean::APACHE, &cli.apache_kafka)?)
            }
            TargetKind::Rabbitmq => Box::new(rabbitmq::RabbitMq::new(
                cli.rabbitmq.clone(),
                runtime.handle().clone(),
            )),
            TargetKind::Activemq => Box::new(activemq::ActiveMq::new(cli.activemq.clone())),
        })
    };
    match &cli.command {
        Command::Paper(args) => paper(args, &make, cli.quiet),
        Command::Produce(args) => {
            let target = make(args.target)?;
            reachable(target.as_ref())?;
            let knobs = args.knobs.knobs(cli.quiet);
            let dest = new_dest(target.as_ref(), "produce", knobs.partitions)?;
            let mut run = produce_run(target.as_ref(), &dest, &knobs, "produce")?;
            if !args.no_verify {
                verify_by_draining(target.as_ref(), &dest, &knobs, &mut run)?;
            }
            cleanup(target.as_ref(), &dest);
            finish(vec![run], Vec::new(), args.out.as_deref(), Vec::new())
        }
        Command::Consume(args) => {
            let target = make(args.target)?;
            reachable(target.as_ref())?;
            let knobs = args.knobs.knobs(cli.quiet);
            let dest = new_dest(target.as_ref(), "consume", knobs.partitions)?;
            let fill = Knobs {
                warmup: 0,
                ..knobs.clone()
            };
            let produced = workload::produce(target.as_ref(), &dest, &fill, "writing the backlog")?;
            let run = consume_run(
                target.as_ref(),
                &dest,
                &knobs,
                &produced.per_producer,
                produced.acknowledged,
                "consume",
            )?;
            cleanup(target.as_ref(), &dest);
            finish(vec![run], Vec::new(), args.out.as_deref(), Vec::new())
        }
        Command::Commits(args) => {
            let bootstrap = args.bootstrap.clone().unwrap_or_else(|| cli.kafka.clone());
            let report = commits::run(
                &bootstrap,
                args.committers,
                args.seconds,
                args.produce_rate,
                args.commit_rate,
            )?;
            let json = serde_json::to_string_pretty(&report)?;
            println!("{json}");
            if let Some(out) = &args.out {
                std::fs::write(out, json + "\n")
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            Ok(())
        }
        Command::Latency(args) => {
            let target = make(args.target)?;
            reachable(target.as_ref())?;
            let mut knobs = args.knobs.knobs(cli.quiet);
            if let Some(d) = knobs.duration.take() {
                knobs.messages = (args.rate * d.as_secs_f64()).round() as u64;
            }
            let dest = new_dest(target.as_ref(), "latency", knobs.partitions)?;
            let run = latency_run(target.as_ref(), &dest, &knobs, args.rate, "latency")?;
            cleanup(target.as_ref(), &dest);
            finish(vec![run], Vec::new(), args.out.as_deref(), Vec::new())
        }
    }
}

fn reachable(target: &dyn Target) -> anyhow::Result<()> {
    target.check().with_context(|| {
        format!(
            "{} is not reachable at {}; start it with: {}",
            target.name(),
            target.address(),
            target.how_to_start()
        )
    })
}

/// A destination name no earlier run used.
fn new_dest(target: &dyn Target, what: &str, partitions: u32) -> anyhow::Result<Dest> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let dest = Dest {
        name: format!("loadgen-{what}-{stamp}-{}", std::process::id()),
        partitions,
    };
    target
        .prepare(&dest)
        .with_context(|| format!("preparing {} on {}", dest.name, target.name()))?;
    Ok(dest)
}

fn cleanup(target: &dyn Target, dest: &Dest) {
    if let Err(e) = target.cleanup(dest) {
        tracing::warn!("could not delete {} on {}: {e:#}", dest.name, target.name());
    }
}

fn base_result(
    target: &dyn Target,
    experiment: &str,
    workload: &'static str,
    k: &Knobs,
) -> RunResult {
    RunResult {
        target: target.name().to_string(),
        client: target.client(),
        address: target.address(),
        experiment: experiment.to_string(),
        workload,
        mode: k.mode,
        size: k.size,
        batch: k.batch,
        producers: k.producers,
        consumers: k.consumers,
        partitions: k.partitions,
        partitioner: k.partitioner,
        warmup: k.warmup,
        messages: 0,
        bytes: 0,
        seconds: 0.0,
        msgs_per_sec: 0.0,
        mb_per_sec: 0.0,
        rate: None,
        latency: None,
        client_cpu_s: 0.0,
        broker_cpu_s: None,
        broker_pid: None,
        broker_rss_mb: None,
        verify: Verify::default(),
        series: Vec::new(),
        sent_per_producer: Vec::new(),
    }
}

fn set_throughput(r: &mut RunResult, messages: u64, bytes: u64, seconds: f64) {
    r.messages = messages;
    r.bytes = bytes;
    r.seconds = seconds;
    if seconds > 0.0 {
        r.msgs_per_sec = messages as f64 / seconds;
        r.mb_per_sec = bytes as f64 / seconds / 1e6;
    }
}

fn produce_run(
    target: &dyn Target,
    dest: &Dest,
    k: &Knobs,
    experiment: &str,
) -> anyhow::Result<RunResult> {
    let label = format!("{} {experiment}", target.name());
    let p = workload::produce(target, dest, k, &label)?;
    let mut r = base_result(target, experiment, "produce", k);
    set_throughput(
        &mut r,
        p.measured_messages,
        p.measured_messages * k.size as u64,
        p.seconds,
    );
    (r.client_cpu_s, r.broker_cpu_s, r.broker_rss_mb) = p.cpu;
    r.broker_pid = p.broker_pid;
    r.verify.sent = p.per_producer.iter().sum();
    r.verify.acknowledged = p.acknowledged;
    r.series = p.series;
    r.sent_per_producer = p.per_producer;
    Ok(r)
}

/// Reads everything back (unmeasured) and records the check on the produce run.
fn verify_by_draining(
    target: &dyn Target,
    dest: &Dest,
    k: &Knobs,
    run: &mut RunResult,
) -> anyhow::Result<()> {
    let expected = run.sent_per_producer.clone();
    let drain = Knobs {
        warmup: 0,
        ..k.clone()
    };
    let label = format!("{} reading back {}", target.name(), run.experiment);
    let c = workload::consume(target, dest, &drain, &expected, &label)?;
    run.verify.add_tracker(&c.tracker, &expected);
    Ok(())
}

fn consume_run(
    target: &dyn Target,
    dest: &Dest,
    k: &Knobs,
    expected: &[u64],
    acknowledged: u64,
    experiment: &str,
) -> anyhow::Result<RunResult> {
    let label = format!("{} {experiment}", target.name());
    let c = workload::consume(target, dest, k, expected, &label)?;
    let mut r = base_result(target, experiment, "consume", k);
    set_throughput(&mut r, c.measured_messages, c.measured_bytes, c.seconds);
    (r.client_cpu_s, r.broker_cpu_s, r.broker_rss_mb) = c.cpu;
    r.broker_pid = c.broker_pid;
    r.verify.sent = expected.iter().sum();
    r.verify.acknowledged = acknowledged;
    r.verify.add_tracker(&c.tracker, expected);
    r.series = c.series;
    Ok(r)
}

fn latency_run(
    target: &dyn Target,
    dest: &Dest,
    k: &Knobs,
    rate: f64,
    experiment: &str,
) -> anyhow::Result<RunResult> {
    let label = format!("{} {experiment} at {rate:.0}/s", target.name());
    let (p, c) = workload::latency(target, dest, k, rate, &label)?;
    let mut r = base_result(target, experiment, "latency", k);
    set_throughput(&mut r, c.measured_messages, c.measured_bytes, c.seconds);
    (r.client_cpu_s, r.broker_cpu_s, r.broker_rss_mb) = c.cpu;
    r.broker_pid = c.broker_pid;
    r.rate = Some(rate);
    r.latency = c.latency.as_ref().map(workload::summarize);
    r.verify.sent = p.per_producer.iter().sum();
    r.verify.acknowledged = p.acknowledged;
    r.verify.add_tracker(&c.tracker, &p.per_producer);
    r.series = c.series;
    Ok(r)
}

fn paper(
    args: &PaperArgs,
    make: &dyn Fn(TargetKind) -> anyhow::Result<Box<dyn Target>>,
    quiet: bool,
) -> anyhow::Result<()> {
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    let mut runs = Vec::new();
    let mut unreachable = Vec::new();
    let base = Knobs {
        mode: args.mode,
        messages: args.messages,
        size: args.size,
        batch: 1,
        linger_ms: 5,
        producers: 1,
        consumers: 1,
        partitions: 1,
        partitioner: Partitioner::PerMessage,
        prefetch: 1000,
        warmup: 0,
        duration: None,
        quiet,
    };
    for &kind in &args.targets {
        let target = make(kind)?;
        let t = target.as_ref();
        if let Err(e) = t.check() {
            eprintln!(
                "loadgen: {} not reachable at {} ({e:#}); skipping it. Start it with: {}",
                t.name(),
                t.address(),
                t.how_to_start()
            );
            unreachable.push(Unreachable {
                target: t.name().to_string(),
                address: t.address(),
                error: format!("nothing answered ({e:#})"),
                how_to_start: t.how_to_start().to_string(),
            });
            continue;
        }
        let result = paper_target(t, &base, args);
        match result {
            Ok(mut r) => runs.append(&mut r),
            Err(e) => {
                eprintln!("loadgen: {} failed: {e:#}", t.name());
                unreachable.push(Unreachable {
                    target: t.name().to_string(),
                    address: t.address(),
                    error: format!("failed mid-run: {e:#}"),
                    how_to_start: t.how_to_start().to_string(),
                });
            }
        }
    }
    let notes = args.note.clone();
    finish(runs, unreachable, Some(&args.out), notes)
}

/// The paper's experiments on one target. The consumer drains the batch-1 producer's
/// messages (the paper's consumer read a backlog the same way); the batch-50 messages
/// are read back unmeasured, so every message of every run is checked.
fn paper_target(t: &dyn Target, base: &Knobs, args: &PaperArgs) -> anyhow::Result<Vec<RunResult>> {
    let mut runs = Vec::new();
    let a = new_dest(t, "paper-b1", 1)?;
    let mut b1 = produce_run(t, &a, base, "producer, batch 1")?;
    let b = new_dest(t, "paper-b50", 1)?;
    let k50 = Knobs {
        batch: 50,
        ..base.clone()
    };
    let mut b50 = produce_run(t, &b, &k50, "producer, batch 50")?;
    let consumer = consume_run(
        t,
        &a,
        base,
        &b1.sent_per_producer,
        b1.verify.acknowledged,
        "consumer",
    )?;
    b1.verify.take_read_back(&consumer.verify);
    verify_by_draining(t, &b, &k50, &mut b50)?;
    cleanup(t, &a);
    cleanup(t, &b);
    runs.push(b1);
    runs.push(b50);
    runs.push(consumer);
    if args.latency_seconds > 0 {
        let c = new_dest(t, "paper-latency", 1)?;
        let k = Knobs {
            messages: (args.latency_rate * args.latency_seconds as f64).round() as u64,
            linger_ms: 0,
            warmup: (args.latency_rate.round() as u64).min(10_000),
            ..base.clone()
        };
        let experiment = format!("latency at {:.0} msgs/s", args.latency_rate);
        let r = latency_run(t, &c, &k, args.latency_rate, &experiment)?;
        cleanup(t, &c);
        runs.push(r);
    }
    Ok(runs)
}

fn finish(
    runs: Vec<RunResult>,
    unreachable: Vec<Unreachable>,
    out: Option<&std::path::Path>,
    notes: Vec<String>,
) -> anyhow::Result<()> {
    println!("{}", report::table(&runs));
    for r in &runs {
        let wall = r.seconds.max(1e-9);
        println!(
            "{} {}: client CPU {:.2} s ({:.0}% of one core), broker CPU {} over {:.2} s",
            r.target,
            r.experiment,
            r.client_cpu_s,
            r.client_cpu_s / wall * 100.0,
            r.broker_cpu_s.map_or(
                "unknown (broker process not found)".to_string(),
                |c| format!("{c:.2} s ({:.0}% of one core)", c / wall * 100.0)
            ),
            r.seconds
        );
    }
    let clean = runs.iter().all(RunResult::is_clean);
    let report = Report {
        meta: Meta::collect(notes),
        runs,
        unreachable,
    };
    if let Some(dir) = out {
        report::write(dir, &report)?;
        println!(
            "wrote {}/results.json, results.md and charts",
            dir.display()
        );
    }
    if !clean {
        bail!("some messages were lost, duplicated or not acknowledged (see the verified column)");
    }
    if report.runs.is_empty() {
        bail!("no target answered; nothing was measured");
    }
    Ok(())
}
