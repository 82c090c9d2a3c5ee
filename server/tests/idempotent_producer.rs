//! The idempotent producer (InitProducerId, per-partition sequence checks) with
//! librdkafka: a connection cut after a Produce request reached the broker but before its
//! response came back, and a broker killed mid-stream, still leave every message exactly
//! once in the log.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Broker;
use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A TCP proxy in front of the broker that, for the first `cuts` Produce requests,
/// forwards the request, waits for the broker to handle it, then cuts both connections
/// before the response can reach the client.
fn cutting_proxy(listener: TcpListener, broker: String, cuts: usize) -> Arc<AtomicUsize> {
    let done = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&done);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut upstream) = TcpStream::connect(&broker) else {
                return;
            };
            let (mut client_r, mut upstream_w) =
                (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                loop {
                    let mut len = [0u8; 4];
                    if client_r.read_exact(&mut len).is_err() {
                        break;
                    }
                    let mut frame = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
                    if client_r.read_exact(&mut frame).is_err() {
                        break;
                    }
                    let is_produce = frame.len() >= 2 && frame[0] == 0 && frame[1] == 0;
                    let cut = is_produce && counter.fetch_add(1, Ordering::SeqCst) < cuts;
                    if cut {
                        // Drop the client first, so the broker's answer can never reach it,
                        // then let the broker have (and handle) the request.
                        let _ = client_r.shutdown(Shutdown::Both);
                    }
                    if upstream_w
                        .write_all(&len)
                        .and_then(|_| upstream_w.write_all(&frame))
                        .is_err()
                    {
                        break;
                    }
                    if cut {
                        std::thread::sleep(Duration::from_millis(300));
                        let _ = upstream_w.shutdown(Shutdown::Both);
                        break;
                    }
                }
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut upstream, &mut client);
                let _ = client.shutdown(Shutdown::Both);
            });
        }
    });
    done
}

fn idempotent_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("retry.backoff.ms", "100")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("idempotent producer")
}

fn create_topic(bootstrap: &str, name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let r = block_on(admin.create_topics(
        &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
    assert_eq!(r[0], Ok(name.to_owned()));
}

/// Every value in partition 0 of `topic`, in offset order.
fn read_all(bootstrap: &str, topic: &str, at_least: usize) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "idempotence-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            Some(m) => out.push(String::from_utf8(m.unwrap().payload().unwrap().to_vec()).unwrap()),
            None if out.len() >= at_least => break,
            None => {}
        }
    }
    out
}

fn assert_exactly_once(values: &[String], expected: &[String]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for v in values {
        *counts.entry(v.as_str()).or_default() += 1;
    }
    for e in expected {
        assert_eq!(
            counts.get(e.as_str()).copied().unwrap_or(0),
            1,
            "{e} must be in the log exactly once"
        );
    }
    assert_eq!(values.len(), expected.len(), "no extra messages");
}

#[test]
fn given_connection_cut_before_produce_response_should_write_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    let port = proxy_port.to_string();
    let broker = Broker::start_with(dir.path(), &[("BROKER_ADVERTISED_PORT", &port)]);
    let cuts = cutting_proxy(proxy, broker.addr.clone(), 3);
    let bootstrap = format!("127.0.0.1:{proxy_port}");
    create_topic(&bootstrap, "exactly-once");
    let p = idempotent_producer(&bootstrap);
    let values: Vec<String> = (0..300).map(|i| format!("once-{i}")).collect();
    let futures: Vec<_> = values
        .iter()
        .map(|v| {
            p.send(
                FutureRecord::<[u8], [u8]>::to("exactly-once").payload(v.as_bytes()),
                TIMEOUT,
            )
        })
        .collect();
    for f in futures {
        block_on(f)
            .map_err(|(e, _)| e)
            .expect("acknowledged after retries");
    }
    assert!(
        cuts.load(Ordering::SeqCst) >= 3,
        "the proxy cut connections after produce requests"
    );
    let got = read_all(&broker.addr, "exactly-once", values.len());
    assert_exactly_once(&got, &values);
    assert_eq!(got, values, "and in order");
}

#[test]
fn given_broker_killed_mid_stream_should_keep_each_acknowledged_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_with(dir.path(), &[("BROKER_FLUSH", "per-append")]);
    create_topic(&broker.addr, "crash-once");
    let p = idempotent_producer(&broker.addr);
    let values: Vec<String> = (0..2000).map(|i| format!("c-{i}")).collect();
    let mut futures: Vec<_> = values[..1000]
        .iter()
        .map(|v| {
            p.send(
                FutureRecord::<[u8], [u8]>::to("crash-once").payload(v.as_bytes()),
                TIMEOUT,
            )
        })
        .collect();
    // Kill while batches are in flight, restart on the same port; the producer retries.
    std::thread::sleep(Duration::from_millis(30));
    broker.kill9();
    broker.restart();
    futures.extend(values[1000..].iter().map(|v| {
        p.send(
            FutureRecord::<[u8], [u8]>::to("crash-once").payload(v.as_bytes()),
            TIMEOUT,
        )
    }));
    for f in futures {
        block_on(f).map_err(|(e, _)| e).expect("acknowledged");
    }
    let got = read_all(&broker.addr, "crash-once", values.len());
    assert_exactly_once(&got, &values);
}
