//! What every broker driver offers the workloads: set up a destination, open producers
//! and consumers on it, and tear it down. The workloads (`workload.rs`) are written once
//! against these traits, so every target runs the same loop.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde::Serialize;

/// Asks `ready` every 50 ms until it answers true; an error after `timeout`, naming `what`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready()? {
        if Instant::now() > deadline {
            anyhow::bail!("{what}: not after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// How a producer spreads its messages over the partitions (or queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Partitioner {
    /// Message by message, round robin: a batch is split over every partition.
    PerMessage,
    /// Batch by batch, round robin: each batch goes whole to one partition, as Kafka's
    /// sticky partitioner (KIP-480, librdkafka's default for keyless messages) does.
    PerBatch,
}

impl Partitioner {
    /// The partition of producer `id`'s message `seq`.
    pub fn partition(self, id: u32, seq: u64, batch: usize, partitions: u32) -> u32 {
        let step = match self {
            Partitioner::PerMessage => seq,
            Partitioner::PerBatch => seq / batch.max(1) as u64,
        };
        ((u64::from(id) + step) % u64::from(partitions.max(1))) as u32
    }
}

/// Durability settings, chosen to be comparable across brokers (see the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The 2011 paper's setting: no producer acknowledgements, brokers flush to disk
    /// asynchronously, consumers auto-acknowledge.
    Paper,
    /// Every message acknowledged after it is durable (Kafka acks=all with an
    /// idempotent producer; RabbitMQ persistent messages with publisher confirms;
    /// ActiveMQ persistent sends with a receipt each); consumers acknowledge by hand.
    Durable,
}

/// Where messages go: a topic with `partitions` partitions, or `partitions` queues named
/// `{name}-{i}` on queue brokers.
#[derive(Debug, Clone)]
pub struct Dest {
    pub name: String,
    pub partitions: u32,
}

/// Per-producer settings.
#[derive(Debug, Clone, Copy)]
pub struct ProducerSpec {
    pub id: u32,
    pub mode: Mode,
    /// Messages per request (Kafka) or per socket flush / confirm window (queue brokers).
    pub batch: usize,
    /// How long a Kafka producer may wait to fill a batch.
    pub linger_ms: u64,
}

/// Per-consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub id: u32,
    pub mode: Mode,
    /// Which partitions or queues this consumer reads.
    pub partitions: Vec<u32>,
    /// Messages the broker may push ahead of acknowledgements (queue brokers).
    pub prefetch: u16,
}

pub trait Producer: Send {
    /// Queues one message for partition or queue `partition`; may block for backpressure.
    fn send(&mut self, partition: u32, payload: &[u8]) -> anyhow::Result<()>;
    /// Marks a batch boundary: drivers that batch on the client side write (and, in
    /// durable mode, wait for acknowledgements) here.
    fn end_batch(&mut self) -> anyhow::Result<()>;
    /// Waits until the broker has everything sent so far; returns how many messages the
    /// broker acknowledged (equal to the messages sent when the mode has no acks).
    fn finish(&mut self) -> anyhow::Result<u64>;
    /// For a client that queues messages on its own side (librdkafka): a count of the
    /// messages that have left it, which the progress series follows instead of `send`
    /// calls. None: a message has left the client when `send` (or `end_batch`) returns.
    fn departed(&self) -> Option<Arc<AtomicU64>> {
        None
    }
}

pub trait Consumer: Send {
    /// Waits up to `timeout` for messages, handing each payload to `on_message`; returns
    /// how many arrived.
    fn poll(
        &mut self,
        timeout: Duration,
        on_message: &mut dyn FnMut(&[u8]),
    ) -> anyhow::Result<usize>;
    /// Acknowledges what was received (durable mode) and closes.
    fn close(&mut self) -> anyhow::Result<()>;
}

pub trait Target: Send + Sync {
    /// Short name used in reports: `kafka`, `rabbitmq`, `activemq`.
    fn name(&self) -> &'static str;
    /// The client library and its version, for reports.
    fn client(&self) -> String;
    /// The address given on the command line.
    fn address(&self) -> String;
    /// The TCP port the broker listens on (to find its process for CPU accounting).
    fn port(&self) -> u16;
    /// Fails fast with a clear error when the broker does not answer.
    fn check(&self) -> anyhow::Result<()>;
    /// Creates the topic or queues, empty.
    fn prepare(&self, dest: &Dest) -> anyhow::Result<()>;
    fn producer(&self, dest: &Dest, spec: ProducerSpec) -> anyhow::Result<Box<dyn Producer>>;
    fn consumer(&self, dest: &Dest, spec: ConsumerSpec) -> anyhow::Result<Box<dyn Consumer>>;
    /// How many messages the destination holds, where the broker can tell.
    fn backlog(&self, dest: &Dest) -> anyhow::Result<Option<u64>>;
    /// Deletes the topic or queues.
    fn cleanup(&self, dest: &Dest) -> anyhow::Result<()>;
    /// How to start this broker, printed when it cannot be reached.
    fn how_to_start(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::Partitioner;

    #[test]
    fn per_message_splits_a_batch_and_per_batch_keeps_it_whole() {
        let spread =
            |p: Partitioner| -> Vec<u32> { (0..8).map(|s| p.partition(1, s, 4, 3)).collect() };
        assert_eq!(spread(Partitioner::PerMessage), [1, 2, 0, 1, 2, 0, 1, 2]);
        assert_eq!(spread(Partitioner::PerBatch), [1, 1, 1, 1, 2, 2, 2, 2]);
    }
}
