//! RabbitMQ over AMQP 0-9-1 through `lapin`.
//!
//! Queues are durable and messages persistent in both modes; the paper mode publishes
//! without confirms and consumes with auto-ack, the durable mode pipelines publisher
//! confirms one batch at a time and acknowledges by hand every `ACK_EVERY` messages.
//! A partition here is a queue named `{dest}-{i}` on the default exchange.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use futures_util::future::try_join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::target::{Consumer, ConsumerSpec, Dest, Mode, Producer, ProducerSpec, Target};

const ACK_EVERY: u64 = 100;
const PERSISTENT: u8 = 2;

pub struct RabbitMq {
    uri: String,
    runtime: Handle,
}

impl RabbitMq {
    pub fn new(uri: String, runtime: Handle) -> Self {
        Self { uri, runtime }
    }

    fn channel(&self) -> anyhow::Result<(Connection, Channel)> {
        self.runtime.block_on(async {
            let conn = tokio::time::timeout(
                Duration::from_secs(5),
                Connection::connect(&self.uri, ConnectionProperties::default()),
            )
            .await
            .with_context(|| format!("RabbitMQ at {} did not answer within 5 s", self.uri))?
            .with_context(|| format!("no RabbitMQ broker answered at {}", self.uri))?;
            let channel = conn.create_channel().await?;
            Ok((conn, channel))
        })
    }
}

fn queue_name(dest: &Dest, i: u32) -> String {
    format!("{}-{i}", dest.name)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

impl Target for RabbitMq {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn client(&self) -> String {
        format!("lapin {}", env!("LOADGEN_LAPIN_VERSION"))
    }

    fn address(&self) -> String {
        self.uri.clone()
    }

    fn port(&self) -> u16 {
        self.uri
            .rsplit('@')
            .next()
            .and_then(|host| host.split('/').next())
            .and_then(crate::kafka::port_of)
            .unwrap_or(5672)
    }

    fn check(&self) -> anyhow::Result<()> {
        let (conn, _channel) = self.channel()?;
        self.runtime
            .block_on(conn.close(200, "loadgen check".into()))?;
        Ok(())
    }

    fn prepare(&self, dest: &Dest) -> anyhow::Result<()> {
        let (conn, ch) = self.channel()?;
        self.runtime.block_on(async {
            for i in 0..dest.partitions {
                let q = queue_name(dest, i);
                ch.queue_declare(q.as_str().into(), durable(), FieldTable::default())
                    .await?;
                ch.queue_purge(q.as_str().into(), Default::default())
                    .await?;
            }
            conn.close(200, "prepared".into()).await?;
            anyhow::Ok(())
        })
    }

    fn producer(&self, dest: &Dest, spec: ProducerSpec) -> anyhow::Result<Box<dyn Producer>> {
        let (conn, channel) = self.channel()?;
        if spec.mode == Mode::Durable {
            self.runtime
                .block_on(channel.confirm_select(ConfirmSelectOptions::default()))?;
        }
        Ok(Box::new(RabbitProducer {
            runtime: self.runtime.clone(),
            _conn: conn,
            channel,
            queues: (0..dest.partitions).map(|i| queue_name(dest, i)).collect(),
            mode: spec.mode,
            pending: Vec::with_capacity(spec.batch),
            acked: 0,
        }))
    }

    fn consumer(&self, dest: &Dest, spec: ConsumerSpec) -> anyhow::Result<Box<dyn Consumer>> {
        let (conn, channel) = self.channel()?;
        let (tx, rx) = mpsc::channel(usize::from(spec.prefetch).max(1) * 2);
        self.runtime.block_on(async {
            channel
                .basic_qos(spec.prefetch, BasicQosOptions::default())
                .await?;
            for &p in &spec.partitions {
                let options = BasicConsumeOptions {
                    no_ack: spec.mode == Mode::Paper,
                    ..BasicConsumeOptions::default()
                };
                let tag = format!("loadgen-{}-{p}", spec.id);
                let mut stream = channel
                    .basic_consume(
                        queue_name(dest, p).as_str().into(),
                        tag.as_str().into(),
                        options,
                        FieldTable::default(),
                    )
                    .await?;
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(delivery) = stream.next().await {
                        let item = delivery
                            .map(|d| (d.delivery_tag, d.data))
                            .map_err(|e| e.to_string());
                        if tx.send(item).await.is_err() {
                            break;
                        }
                    }
                });
            }
            anyhow::Ok(())
        })?;
        Ok(Box::new(RabbitConsumer {
            runtime: self.runtime.clone(),
            _conn: conn,
            channel,
            rx,
            mode: spec.mode,
            last_tag: None,
            unacked: 0,
        }))
    }

    fn backlog(&self, dest: &Dest) -> anyhow::Result<Option<u64>> {
        let (conn, ch) = self.channel()?;
        self.runtime.block_on(async {
            let mut total = 0u64;
            for i in 0..dest.partitions {
                let options = QueueDeclareOptions {
                    passive: true,
                    ..durable()
                };
                let q = ch
                    .queue_declare(
                        queue_name(dest, i).as_str().into(),
                        options,
                        FieldTable::default(),
                    )
                    .await?;
                total += u64::from(q.message_count());
            }
            conn.close(200, "backlog".into()).await?;
            Ok(Some(total))
        })
    }

    fn cleanup(&self, dest: &Dest) -> anyhow::Result<()> {
        let (conn, ch) = self.channel()?;
        self.runtime.block_on(async {
            for i in 0..dest.partitions {
                ch.queue_delete(
                    queue_name(dest, i).as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await?;
            }
            conn.close(200, "cleaned up".into()).await?;
            anyhow::Ok(())
        })
    }

    fn how_to_start(&self) -> &'static str {
        "scripts/rabbitmq.sh install && scripts/rabbitmq.sh start"
    }
}

struct RabbitProducer {
    runtime: Handle,
    _conn: Connection,
    channel: Channel,
    queues: Vec<String>,
    mode: Mode,
    pending: Vec<(u32, Vec<u8>)>,
    acked: u64,
}

impl Producer for RabbitProducer {
    fn send(&mut self, partition: u32, payload: &[u8]) -> anyhow::Result<()> {
        self.pending.push((partition, payload.to_vec()));
        Ok(())
    }

    /// Publishes the batch in one go; in durable mode, waits for its confirms.
    fn end_batch(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let (channel, queues) = (&self.channel, &self.queues);
        let publishes = batch.iter().map(|(p, body)| {
            let queue = queues.get(*p as usize).map_or("", String::as_str);
            channel.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(PERSISTENT),
            )
        });
        let mode = self.mode;
        let acked = self.runtime.block_on(async {
            let confirms = try_join_all(publishes).await?;
            if mode == Mode::Paper {
                return anyhow::Ok(confirms.len() as u64);
            }
            let mut acked = 0;
            for confirmation in try_join_all(confirms).await? {
                match confirmation {
                    Confirmation::Ack(_) => acked += 1,
                    other => bail!("RabbitMQ did not confirm a message: {other:?}"),
                }
            }
            Ok(acked)
        })?;
        self.acked += acked;
        self.pending = batch;
        self.pending.clear();
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<u64> {
        self.end_batch()?;
        // A synchronous method on the same channel: RabbitMQ answers it after it has
        // handled every publish before it.
        if let Some(q) = self.queues.first() {
            let options = QueueDeclareOptions {
                passive: true,
                ..durable()
            };
            self.runtime.block_on(self.channel.queue_declare(
                q.as_str().into(),
                options,
                FieldTable::default(),
            ))?;
        }
        Ok(self.acked)
    }
}

type DeliveryItem = Result<(u64, Vec<u8>), String>;

struct RabbitConsumer {
    runtime: Handle,
    _conn: Connection,
    channel: Channel,
    rx: mpsc::Receiver<DeliveryItem>,
    mode: Mode,
    last_tag: Option<u64>,
    unacked: u64,
}

impl RabbitConsumer {
    fn ack(&mut self) -> anyhow::Result<()> {
        if let Some(tag) = self.last_tag.take() {
            self.runtime.block_on(
                self.channel
                    .basic_ack(tag, BasicAckOptions { multiple: true }),
            )?;
            self.unacked = 0;
        }
        Ok(())
    }
}

impl Consumer for RabbitConsumer {
    fn poll(
        &mut self,
        timeout: Duration,
        on_message: &mut dyn FnMut(&[u8]),
    ) -> anyhow::Result<usize> {
        let first = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, self.rx.recv()).await });
        let mut next = match first {
            Ok(Some(item)) => Some(item),
            Ok(None) => bail!("RabbitMQ consumer stream ended"),
            Err(_) => None,
        };
        let mut n = 0;
        while let Some(item) = next.take() {
            let (tag, data) = item.map_err(|e| anyhow::anyhow!("RabbitMQ delivery: {e}"))?;
            on_message(&data);
            n += 1;
            if self.mode == Mode::Durable {
                self.last_tag = Some(tag);
                self.unacked += 1;
                if self.unacked >= ACK_EVERY {
                    self.ack()?;
                }
            }
            if n < 10_000 {
                next = self.rx.try_recv().ok();
            }
        }
        Ok(n)
    }

    fn close(&mut self) -> anyhow::Result<()> {
        self.ack()?;
        self.runtime
            .block_on(self.channel.close(200, "done".into()))?;
        Ok(())
    }
}
