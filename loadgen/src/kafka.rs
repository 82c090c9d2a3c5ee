//! Kafka-protocol brokers (ours by default) through librdkafka, the client most Kafka
//! users run, via the `rdkafka` crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::target::{
    Consumer, ConsumerSpec, Dest, Mode, Producer, ProducerSpec, Target, wait_until,
};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Our broker, driven through librdkafka.
pub const OURS: Flavour = Flavour {
    name: "kafka",
    how_to_start: "BROKER_FLUSH=interval cargo run --release -p server --bin broker   (paper mode; the default flush is per append)",
};

/// Apache Kafka itself (`scripts/kafka.sh`), driven through librdkafka.
pub const APACHE: Flavour = Flavour {
    name: "apache-kafka",
    how_to_start: "scripts/kafka.sh install && scripts/kafka.sh start paper   (or durable)",
};

/// What a Kafka-protocol target calls itself in results, and how to start its broker.
#[derive(Clone, Copy)]
pub struct Flavour {
    pub name: &'static str,
    pub how_to_start: &'static str,
}

pub struct Kafka {
    flavour: Flavour,
    bootstrap: String,
    runtime: Handle,
    replication_factor: i32,
    /// Overrides the mode's acks (`0`, `1`, `all`).
    acks: Option<String>,
}

impl Kafka {
    pub fn new(flavour: Flavour, bootstrap: String, runtime: Handle) -> Self {
        Self {
            flavour,
            bootstrap,
            runtime,
            replication_factor: 1,
            acks: None,
        }
    }

    /// Topics created with `replication_factor` replicas; producers with `acks` when set.
    pub fn with_replication(mut self, replication_factor: i32, acks: Option<String>) -> Self {
        self.replication_factor = replication_factor.max(1);
        self.acks = acks;
        self
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "3")
            .set("socket.timeout.ms", "30000");
        c
    }

    fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        Ok(self.config().create()?)
    }

    fn watermarks(&self, dest: &Dest) -> anyhow::Result<Vec<(i64, i64)>> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", "loadgen-watermarks")
            .create()?;
        (0..dest.partitions)
            .map(|p| {
                Ok(consumer.fetch_watermarks(&dest.name, p as i32, Duration::from_secs(10))?)
            })
            .collect()
    }
}

impl Target for Kafka {
    fn name(&self) -> &'static str {
        self.flavour.name
    }

    fn client(&self) -> String {
        format!("librdkafka {}", rdkafka::util::get_rdkafka_version().1)
    }

    fn address(&self) -> String {
        self.bootstrap.clone()
    }

    fn port(&self) -> u16 {
        port_of(&self.bootstrap).unwrap_or(9092)
    }

    fn check(&self) -> anyhow::Result<()> {
        let producer: BaseProducer = self.config().create()?;
        let md = producer
            .client()
            .fetch_metadata(None, Duration::from_secs(5))
            .with_context(|| format!("no Kafka broker answered at {}", self.bootstrap))?;
        if md.brokers().is_empty() {
            bail!("the broker at {} lists no brokers", self.bootstrap);
        }
        Ok(())
    }

    fn prepare(&self, dest: &Dest) -> anyhow::Result<()> {
        let admin = self.admin()?;
        let topic = NewTopic::new(
            &dest.name,
            dest.partitions as i32,
            TopicReplication::Fixed(self.replication_factor),
        );
        let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .runtime
            .block_on(admin.create_topics([&topic], &opts))?;
        for r in results {
            if let Err((name, code)) = r {
                bail!("creating topic {name}: {code}");
            }
        }
        let what = format!("every partition of topic {} has a leader", dest.name);
        wait_until(ADMIN_TIMEOUT, &what, || {
            let md = admin
                .inner()
                .fetch_metadata(Some(&dest.name), Duration::from_secs(5))?;
            Ok(md.topics().first().is_some_and(|t| {
                t.error().is_none()
                    && t.partitions().len() == dest.partitions as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            }))
        })
    }

    fn producer(&self, dest: &Dest, spec: ProducerSpec) -> anyhow::Result<Box<dyn Producer>> {
        let counts = Arc::new(DeliveryCounts::default());
        let mut c = self.config();
        c.set("client.id", format!("loadgen-producer-{}", spec.id))
            .set("batch.num.messages", spec.batch.max(1).to_string())
            .set("linger.ms", spec.linger_ms.to_string())
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", "300000");
        match (spec.mode, self.acks.as_deref()) {
            (Mode::Durable, None | Some("all" | "-1")) => {
                c.set("acks", "all").set("enable.idempotence", "true")
            }
            (Mode::Paper, None) => c.set("acks", "0").set("enable.idempotence", "false"),
            (_, Some(acks)) => c.set("acks", acks).set("enable.idempotence", "false"),
        };
        let producer: BaseProducer<Counting> =
            c.create_with_context(Counting(Arc::clone(&counts)))?;
        Ok(Box::new(KafkaProducer {
            producer,
            topic: dest.name.clone(),
            counts,
            sent: 0,
        }))
    }

    fn consumer(&self, dest: &Dest, spec: ConsumerSpec) -> anyhow::Result<Box<dyn Consumer>> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", format!("loadgen-{}-{}", dest.name, spec.id))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .set("max.partition.fetch.bytes", "8388608")
            .set("queued.min.messages", "1000000")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for &p in &spec.partitions {
            tpl.add_partition_offset(&dest.name, p as i32, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Box::new(KafkaConsumer {
            consumer,
            mode: spec.mode,
        }))
    }

    fn backlog(&self, dest: &Dest) -> anyhow::Result<Option<u64>> {
        let total = self
            .watermarks(dest)?
            .iter()
            .map(|(low, high)| (high - low).max(0) as u64)
            .sum();
        Ok(Some(total))
    }

    fn cleanup(&self, dest: &Dest) -> anyhow::Result<()> {
        let admin = self.admin()?;
        let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        for r in self
            .runtime
            .block_on(admin.delete_topics(&[&dest.name], &opts))?
        {
            if let Err((name, code)) = r {
                bail!("deleting topic {name}: {code}");
            }
        }
        Ok(())
    }

    fn how_to_start(&self) -> &'static str {
        self.flavour.how_to_start
    }
}

pub fn port_of(addr: &str) -> Option<u16> {
    let first = addr.split(',').next()?;
    let last = first.trim().rsplit(':').next()?;
    last.trim_end_matches('/').parse().ok()
}

#[derive(Default)]
struct DeliveryCounts {
    /// Delivery reports: for acks=0, librdkafka reports a message once it is written to
    /// the broker's socket; for acks=all, once the broker acknowledged it.
    delivered: Arc<AtomicU64>,
    failed: AtomicU64,
}

struct Counting(Arc<DeliveryCounts>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

struct KafkaProducer {
    producer: BaseProducer<Counting>,
    topic: String,
    counts: Arc<DeliveryCounts>,
    sent: u64,
}

impl Producer for KafkaProducer {
    fn send(&mut self, partition: u32, payload: &[u8]) -> anyhow::Result<()> {
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic)
            .payload(payload)
            .partition(partition as i32);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("librdkafka refused a message: {e}"),
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(1024) {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    fn end_batch(&mut self) -> anyhow::Result<()> {
        // librdkafka batches by itself (`batch.num.messages`, `linger.ms`).
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<u64> {
        self.producer
            .flush(Duration::from_secs(300))
            .context("librdkafka could not deliver everything within 300 s")?;
        let failed = self.counts.failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} messages failed delivery");
        }
        Ok(self.counts.delivered.load(Ordering::Relaxed))
    }

    /// librdkafka queues up to `queue.buffering.max.messages` on the client side, so a
    /// `send` is only an enqueue: progress follows its delivery reports.
    fn departed(&self) -> Option<Arc<AtomicU64>> {
        Some(Arc::clone(&self.counts.delivered))
    }
}

struct KafkaConsumer {
    consumer: BaseConsumer,
    mode: Mode,
}

impl Consumer for KafkaConsumer {
    fn poll(
        &mut self,
        timeout: Duration,
        on_message: &mut dyn FnMut(&[u8]),
    ) -> anyhow::Result<usize> {
        let mut n = 0;
        let mut wait = timeout;
        while n < 10_000 {
            let Some(result) = self.consumer.poll(wait) else {
                break;
            };
            let message = result.context("consume")?;
            on_message(message.payload().unwrap_or_default());
            n += 1;
            wait = Duration::ZERO;
        }
        Ok(n)
    }

    fn close(&mut self) -> anyhow::Result<()> {
        if self.mode == Mode::Durable {
            let position = self.consumer.position()?;
            if position.count() > 0 {
                self.consumer.commit(&position, CommitMode::Sync)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_from_bootstrap_lists() {
        assert_eq!(super::port_of("127.0.0.1:9092"), Some(9092));
        assert_eq!(super::port_of("a:1,b:2"), Some(1));
        assert_eq!(super::port_of("nohost"), None);
    }
}
