//! Produce then consume N messages of S bytes through librdkafka, and report msgs/s and
//! MB/s for each phase. A stop-gap until `loadgen` (issue #5) measures properly.
//!
//! cargo run --release -p server --example rdkafka_perf -- BOOTSTRAP TOPIC MESSAGES SIZE [ACKS] [PARTITIONS] [consume]
//!
//! With `consume` last, the produce phase is skipped (the topic must already hold the
//! messages), to measure consumers alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

struct Counting {
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 5,
        "usage: rdkafka_perf BOOTSTRAP TOPIC MESSAGES SIZE [ACKS] [PARTITIONS]"
    );
    let (bootstrap, topic) = (&args[1], &args[2]);
    let messages: u64 = args[3].parse()?;
    let size: usize = args[4].parse()?;
    let acks = args.get(5).map_or("1", String::as_str);
    let partitions: i32 = args.get(6).map_or(Ok(1), |p| p.parse())?;
    let consume_only = args.get(7).is_some_and(|a| a == "consume");
    if !consume_only {
        produce(bootstrap, topic, messages, size, acks, partitions)?;
    }
    consume(bootstrap, topic, messages, size, partitions)
}

fn produce(
    bootstrap: &str,
    topic: &str,
    messages: u64,
    size: usize,
    acks: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let created = futures_executor::block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))?;
    if let Err((_, code)) = &created[0]
        && *code != RDKafkaErrorCode::TopicAlreadyExists
    {
        anyhow::bail!("create topic: {code:?}");
    }

    let delivered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let producer: BaseProducer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(Counting {
            delivered: Arc::clone(&delivered),
            failed: Arc::clone(&failed),
        })?;
    let payload = vec![b'x'; size];
    let start = Instant::now();
    for i in 0..messages {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(&payload[..])
            .partition((i % partitions as u64) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => anyhow::bail!("send: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let produce_secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        failed.load(Ordering::Relaxed) == 0,
        "{} deliveries failed",
        failed.load(Ordering::Relaxed)
    );
    anyhow::ensure!(
        delivered.load(Ordering::Relaxed) == messages,
        "not every message was acknowledged"
    );
    report("produce", messages, size, produce_secs);
    Ok(())
}

fn consume(
    bootstrap: &str,
    topic: &str,
    messages: u64,
    size: usize,
    partitions: i32,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "rdkafka-perf")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "1048576")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let start = Instant::now();
    let mut got = 0u64;
    let mut bytes = 0u64;
    while got < messages {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                got += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(e)) => anyhow::bail!("consume: {e}"),
            None => anyhow::bail!("consume stalled at {got} of {messages}"),
        }
    }
    anyhow::ensure!(bytes == messages * size as u64, "consumed bytes differ");
    report("consume", messages, size, start.elapsed().as_secs_f64());
    Ok(())
}

fn report(phase: &str, messages: u64, size: usize, secs: f64) {
    let mb = (messages * size as u64) as f64 / 1e6;
    println!(
        "{phase}: {messages} msgs of {size} B in {secs:.2} s = {:.0} msgs/s, {:.1} MB/s",
        messages as f64 / secs,
        mb / secs
    );
}
