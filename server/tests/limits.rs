//! Limits, against the real broker binary over real sockets: connection floods (total
//! and per address), a metadata flood, a consumer that stops reading, pipelined requests
//! that are never read, oversized frames, and the request memory budget. Each test
//! checks that the excess is cut off, that the broker's resident memory stays bounded
//! (read from /proc), and that other clients are still served. The figures are printed
//! (`cargo test -p server --test limits -- --nocapture`).

mod common;
mod wire;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Broker;
use futures_executor::block_on;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use wire::{Scrape, rss_kib, wait_until};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a broker with metrics on a free port; returns it and the metrics address.
fn broker_with(dir: &std::path::Path, env: &[(&str, &str)]) -> (Broker, String) {
    let metrics = format!("127.0.0.1:{}", wire::free_port());
    let mut env = env.to_vec();
    env.push(("BROKER_METRICS_LISTEN", &metrics));
    (Broker::start_with(dir, &env), metrics)
}

fn producer(broker: &Broker) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

fn consumer(broker: &Broker, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "limits-tests")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    c
}

/// Produces `count` messages to partition 0 of `topic` and waits for every ack.
fn produce(p: &FutureProducer, topic: &str, count: usize, tag: &str) {
    let acks: Vec<_> = (0..count)
        .map(|i| {
            let value = format!("{tag}-{i}");
            p.send_result(
                FutureRecord::<(), _>::to(topic)
                    .partition(0)
                    .payload(&value),
            )
            .map_err(|(e, _)| e)
            .expect("queued")
        })
        .collect();
    for ack in acks {
        block_on(ack)
            .expect("delivery future")
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
}

/// Polls until `count` messages with `tag` arrived; returns how many did.
fn consume(c: &BaseConsumer, count: usize, tag: &str) -> usize {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = 0;
    while got < count && Instant::now() < deadline {
        if let Some(msg) = c.poll(Duration::from_millis(100)) {
            let msg = msg.expect("consume");
            if msg
                .payload()
                .is_some_and(|p| p.starts_with(format!("{tag}-").as_bytes()))
            {
                got += 1;
            }
        }
    }
    got
}

/// A broker with max_connections 1000 and max_connections_per_ip 300 gets 4000
/// connections from ten addresses. Exactly the slots left are served, no address gets
/// more than 300, the rest are closed at once; a client connected before the flood keeps
/// producing and fetching through it; resident memory stays bounded.
#[test]
fn given_connection_flood_should_refuse_the_excess_and_keep_serving_connected_clients() {
    const PER_IP: usize = 400;
    const IPS: usize = 10;
    let files = wire::raise_open_files_limit();
    assert!(
        files >= 6000,
        "this test opens 4000 connections: raise `ulimit -n` (now {files})"
    );
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics) = broker_with(
        dir.path(),
        &[
            ("BROKER_MAX_CONNECTIONS", "1000"),
            ("BROKER_MAX_CONNECTIONS_PER_IP", "300"),
        ],
    );
    wire::create_topic(&broker.addr, "flood", 1);
    // The client already connected when the flood comes.
    let mut client = wire::connect_from("127.0.0.1", &broker.addr);
    assert_eq!(wire::produce(&mut client, "flood", 10), (0, 0));
    assert!(
        wait_until(TIMEOUT, || Scrape::take(&metrics)
            .get("broker_connections_open", &[])
            == 1.0)
        .is_some(),
        "only the client is connected"
    );
    let rss_before = rss_kib(broker.pid());

    let started = Instant::now();
    let mut flood: Vec<(usize, TcpStream)> = Vec::with_capacity(PER_IP * IPS);
    for i in 0..PER_IP * IPS {
        let ip = i / PER_IP;
        // A refusal's reset may even beat connect() back: that one is simply not served.
        if let Ok(s) = wire::try_connect_with(&format!("127.0.0.{}", ip + 2), &broker.addr, None) {
            flood.push((ip, s));
        }
    }
    // Ask on every connection at once, then count who answers.
    let request = wire::api_versions_frame();
    for (_, s) in &mut flood {
        let _ = s.write_all(&request);
    }
    let mut served_per_ip = [0usize; IPS];
    let mut kept = Vec::new();
    for (ip, mut s) in flood {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if wire::read_response(&mut s).is_ok() {
            served_per_ip[ip] += 1;
            kept.push(s);
        }
    }
    let served: usize = served_per_ip.iter().sum();
    let flood_took = started.elapsed();
    let rss_during = rss_kib(broker.pid());
    let scrape = Scrape::take(&metrics);
    eprintln!(
        "connection flood: {} attempts from {IPS} addresses in {flood_took:?}, {served} \
         served (per address {served_per_ip:?}); broker RSS {rss_before} KiB with 1 \
         connection, {rss_during} KiB with 1000 (+{} KiB)",
        PER_IP * IPS,
        rss_during.saturating_sub(rss_before)
    );
    assert_eq!(served, 999, "every slot but the client's used, none beyond");
    assert!(served_per_ip.iter().all(|&n| n <= 300), "{served_per_ip:?}");
    assert_eq!(scrape.get("broker_connections_open", &[]), 1000.0);
    let per_ip = scrape.get(
        "broker_connections_rejected_total",
        &[("reason", "max_connections_per_ip")],
    );
    let total = scrape.get(
        "broker_connections_rejected_total",
        &[("reason", "max_connections")],
    );
    assert_eq!((per_ip + total) as usize, PER_IP * IPS - served);
    assert!(
        per_ip >= 100.0 && total >= 100.0,
        "both limits refused some"
    );
    // A newcomer is refused while the broker is full...
    assert!(
        wire::refused("127.0.0.1", &broker.addr),
        "refused while full"
    );
    // ...and the client connected before is served.
    assert_eq!(wire::produce(&mut client, "flood", 10), (0, 10));
    assert_eq!(wire::fetch_high_watermark(&mut client, "flood"), 20);
    // 1000 connections cost far less than a MiB each.
    assert!(
        rss_during.saturating_sub(rss_before) < 64 * 1024,
        "RSS grew {} KiB",
        rss_during - rss_before
    );
    drop(kept);
    assert!(
        wait_until(TIMEOUT, || Scrape::take(&metrics)
            .get("broker_connections_open", &[])
            == 1.0)
        .is_some(),
        "slots given back when the flood closes"
    );
    let mut after = wire::connect_from("127.0.0.12", &broker.addr);
    assert!(
        wire::answered(&mut after),
        "served again once slots are free"
    );
}

/// With max_connections_per_ip 5, a sixth connection from one address is closed at once
/// while another address is served, and a slot freed on close is reusable.
#[test]
fn given_per_ip_limit_should_refuse_one_address_and_serve_another() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics) = broker_with(dir.path(), &[("BROKER_MAX_CONNECTIONS_PER_IP", "5")]);
    let mut five: Vec<TcpStream> = (0..5)
        .map(|_| wire::connect_from("127.0.0.1", &broker.addr))
        .collect();
    for s in &mut five {
        assert!(wire::answered(s));
    }
    assert!(
        wire::refused("127.0.0.1", &broker.addr),
        "sixth from one address refused"
    );
    let mut other = wire::connect_from("127.0.0.2", &broker.addr);
    assert!(wire::answered(&mut other), "another address is served");
    drop(five.pop());
    assert!(
        wait_until(TIMEOUT, || Scrape::take(&metrics)
            .get("broker_connections_open", &[])
            == 5.0)
        .is_some()
    );
    let mut again = wire::connect_from("127.0.0.1", &broker.addr);
    assert!(wire::answered(&mut again), "a freed slot is reusable");
    let scrape = Scrape::take(&metrics);
    assert_eq!(
        scrape.get(
            "broker_connections_rejected_total",
            &[("reason", "max_connections_per_ip")]
        ),
        1.0
    );
}

/// 64 connections send Metadata requests back to back while librdkafka produces and
/// consumes 1000 messages: the flood is answered, and so is everyone else.
#[test]
fn given_metadata_flood_should_keep_serving_a_producer_and_a_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _metrics) = broker_with(dir.path(), &[]);
    wire::create_topic(&broker.addr, "busy", 1);
    for i in 0..20 {
        wire::create_topic(&broker.addr, &format!("other-{i}"), 4);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicU64::new(0));
    let flooders: Vec<_> = (0..64)
        .map(|_| {
            let (stop, answers, addr) =
                (Arc::clone(&stop), Arc::clone(&answers), broker.addr.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                // All topics: the largest Metadata answer this broker gives.
                let request = wire::frame(
                    ApiKey::Metadata,
                    1,
                    1,
                    &MetadataRequest::default().with_topics(None),
                );
                let mut mine = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&request).unwrap();
                    wire::read_response(&mut s).unwrap();
                    mine += 1;
                }
                answers.fetch_add(mine, Ordering::Relaxed);
                mine
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let p = producer(&broker);
    produce(&p, "busy", 1000, "busy");
    let c = consumer(&broker, "busy");
    let got = consume(&c, 1000, "busy");
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let per_flooder: Vec<u64> = flooders.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!(
        "metadata flood: {} Metadata answers to 64 connections while 1000 messages were \
         produced and consumed in {took:?}",
        answers.load(Ordering::Relaxed)
    );
    assert_eq!(got, 1000);
    assert!(
        per_flooder.iter().all(|&n| n > 0),
        "every flooder was answered too"
    );
}

/// A Fetch of a 50 MB partition on a socket that is never read: the broker holds the
/// file ranges, not the bytes, and resets the connection once a write has made no
/// progress for connections_send_timeout_ms (1 s here), with splice and with the copy
/// path; meanwhile another client is served.
#[test]
fn given_consumer_that_stops_reading_should_be_reset_after_the_send_timeout() {
    for zero_copy in ["true", "false"] {
        stalled_consumer(zero_copy);
    }
}

fn stalled_consumer(zero_copy: &str) {
    const BATCHES: usize = 56;
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics) = broker_with(
        dir.path(),
        &[
            ("BROKER_CONNECTIONS_SEND_TIMEOUT_MS", "1000"),
            ("BROKER_FETCH_ZERO_COPY", zero_copy),
            ("BROKER_FLUSH", "none"),
        ],
    );
    wire::create_topic(&broker.addr, "big", 1);
    // 56 batches of 900 records x 1000 bytes: about 50 MB.
    let mut s = TcpStream::connect(&broker.addr).unwrap();
    let batch = wire::batch(900, 1000);
    let request = wire::produce_frame("big", &[batch]);
    for _ in 0..BATCHES {
        s.write_all(&request).unwrap();
        assert_eq!(
            wire::produce_errors(wire::read_response(&mut s).unwrap()),
            [0]
        );
    }
    let log_bytes = request.len() as u64 * BATCHES as u64;
    let rss_before = rss_kib(broker.pid());

    let mut stalled = wire::connect_with("127.0.0.1", &broker.addr, Some(4096));
    let fetch = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(i32::MAX)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("big")))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(i32::MAX),
                ]),
        ]);
    stalled
        .write_all(&wire::frame(ApiKey::Fetch, 4, 1, &fetch))
        .unwrap();
    let mut rss_peak = rss_before;
    let closed_after = wait_until(TIMEOUT, || {
        rss_peak = rss_peak.max(rss_kib(broker.pid()));
        Scrape::take(&metrics).get(
            "broker_connections_closed_total",
            &[("reason", "send_timeout")],
        ) == 1.0
    });
    let Some(closed_after) = closed_after else {
        panic!("the stalled consumer was not disconnected");
    };
    // What the stalled client can still read: what was in flight, then the reset.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ending = loop {
        match stalled.read(&mut buf) {
            Ok(0) => break "end of stream".to_owned(),
            Ok(n) => received += n,
            Err(e) => break e.to_string(),
        }
    };
    eprintln!(
        "stalled consumer (fetch_zero_copy={zero_copy}): {log_bytes} bytes in the log, fetch \
         for all of it sent and never read; disconnected {closed_after:?} after the request \
         (send timeout 1 s); the client could then read {received} bytes, then: {ending}; \
         broker RSS {rss_before} KiB before, peak {rss_peak} KiB while stalled (+{} KiB)",
        rss_peak.saturating_sub(rss_before)
    );
    assert!(
        closed_after >= Duration::from_secs(1),
        "not before the timeout"
    );
    assert!(
        (received as u64) < log_bytes / 4,
        "the response was cut: {received} of {log_bytes}"
    );
    assert!(
        rss_peak.saturating_sub(rss_before) < 24 * 1024,
        "broker buffered the response: +{} KiB",
        rss_peak - rss_before
    );
    // Others are served, on both cores (connections alternate between them): a blocked
    // splice once froze the stalled connection's whole core while it was closed.
    let small = fetch.clone().with_topics(vec![
        FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("big")))
            .with_partitions(vec![
                FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20),
            ]),
    ]);
    for _ in 0..2 {
        let mut reader = TcpStream::connect(&broker.addr).unwrap();
        reader
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        reader
            .write_all(&wire::frame(ApiKey::Fetch, 4, 2, &small))
            .unwrap();
        let response = wire::read_response(&mut reader).expect("served");
        assert!(response.len() > 900_000, "served {} bytes", response.len());
    }
}

/// 200,000 pipelined Metadata requests on a connection that never reads: the broker
/// reads one request at a time (the in-flight bound is one), so they wait in the
/// kernel; once its response write stalls for the send timeout, the connection is
/// reset. Memory stays flat and only a fraction of the requests was ever read.
#[test]
fn given_pipelined_requests_never_read_should_not_grow_memory() {
    const REQUESTS: usize = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics) = broker_with(
        dir.path(),
        &[("BROKER_CONNECTIONS_SEND_TIMEOUT_MS", "1000")],
    );
    for i in 0..10 {
        wire::create_topic(&broker.addr, &format!("t{i}"), 8);
    }
    let rss_before = rss_kib(broker.pid());
    let s = wire::connect_with("127.0.0.1", &broker.addr, Some(4096));
    let one = wire::frame(
        ApiKey::Metadata,
        1,
        1,
        &MetadataRequest::default().with_topics(None),
    );
    let all: Vec<u8> = one.repeat(REQUESTS);
    let mut writer = s.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let pushing = std::thread::spawn(move || {
        let mut written = 0usize;
        while written < all.len() {
            match writer.write(&all[written..]) {
                Ok(n) => written += n,
                Err(e) => return (written, Some(e.to_string())),
            }
        }
        (written, None)
    });
    let mut rss_peak = rss_before;
    let closed = wait_until(TIMEOUT, || {
        rss_peak = rss_peak.max(rss_kib(broker.pid()));
        Scrape::take(&metrics).get(
            "broker_connections_closed_total",
            &[("reason", "send_timeout")],
        ) == 1.0
    });
    let (written, error) = pushing.join().unwrap();
    let scrape = Scrape::take(&metrics);
    let answered = scrape.get(
        "broker_request_duration_seconds_count",
        &[("api", "Metadata")],
    );
    eprintln!(
        "pipelining: {} of {REQUESTS} requests written before the broker reset the \
         connection ({error:?}), {answered} answered; broker RSS {rss_before} KiB before, \
         peak {rss_peak} KiB (+{} KiB)",
        written / one.len(),
        rss_peak.saturating_sub(rss_before)
    );
    assert!(
        closed.is_some(),
        "the connection was reset by the send timeout"
    );
    assert!(
        (answered as usize) < REQUESTS / 10,
        "requests were not all slurped"
    );
    assert!(
        rss_peak.saturating_sub(rss_before) < 16 * 1024,
        "RSS grew {} KiB",
        rss_peak - rss_before
    );
    drop(s);
}

/// Frames beyond the limits close their own connection, before the body is read or
/// allocated: a Produce over socket_request_max_bytes (2 MiB here), any other request
/// over 1 MiB. A Produce of 1.8 MiB (two partitions, under the limit) is served.
#[test]
fn given_oversized_frames_should_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics) = broker_with(
        dir.path(),
        &[
            ("BROKER_SOCKET_REQUEST_MAX_BYTES", "2097152"),
            ("BROKER_QUEUED_MAX_REQUEST_BYTES", "2097152"),
        ],
    );
    wire::create_topic(&broker.addr, "sized", 2);
    let mut bystander = TcpStream::connect(&broker.addr).unwrap();
    assert!(wire::answered(&mut bystander));

    let big = wire::produce_frame("sized", &[wire::batch(900, 1000), wire::batch(900, 1000)]);
    assert!(big.len() > 1_800_000 && big.len() < 2_097_152);
    let mut ok = TcpStream::connect(&broker.addr).unwrap();
    ok.write_all(&big).unwrap();
    assert_eq!(
        wire::produce_errors(wire::read_response(&mut ok).unwrap()),
        [0, 0]
    );

    let closed = |len: i32, key: i16| {
        let mut s = TcpStream::connect(&broker.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Only the length, key and version: the body is never needed to refuse it.
        // The broker may close before the key arrives (the length alone is too much).
        let _ = s.write_all(&len.to_be_bytes());
        let _ = s.write_all(&key.to_be_bytes());
        let _ = s.write_all(&[0, 7]);
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => !wire::timed_out(&e),
        }
    };
    assert!(
        closed(2_097_153, ApiKey::Produce as i16),
        "produce over the limit"
    );
    assert!(
        closed(1_048_577, ApiKey::Metadata as i16),
        "metadata over 1 MiB"
    );
    let scrape = Scrape::take(&metrics);
    assert_eq!(
        scrape.get(
            "broker_connections_closed_total",
            &[("reason", "frame_too_large")]
        ),
        2.0
    );
    assert!(wire::answered(&mut bystander), "others keep being served");
}

/// With queued_max_request_bytes exactly two 1.8 MB frames, 48 connections each send
/// most of such a Produce: two are read, the others wait before their frame is allocated
/// (the broker holds 3.6 MB, not 87 MB) while small requests are still answered, though
/// not a byte of budget is left; once the first ones finish, the rest go through.
#[test]
fn given_request_memory_budget_should_make_big_requests_wait_not_allocate() {
    const CONNECTIONS: usize = 48;
    let request = Arc::new(wire::produce_frame(
        "budget",
        &[wire::batch(900, 1000), wire::batch(900, 1000)],
    ));
    let budget = (2 * (request.len() - 4)).to_string();
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics) = broker_with(
        dir.path(),
        &[
            ("BROKER_SOCKET_REQUEST_MAX_BYTES", "2097152"),
            ("BROKER_QUEUED_MAX_REQUEST_BYTES", &budget),
            ("BROKER_FLUSH", "none"),
        ],
    );
    wire::create_topic(&broker.addr, "budget", 2);
    let rss_before = rss_kib(broker.pid());
    let go = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (request, go, addr) = (Arc::clone(&request), Arc::clone(&go), broker.addr.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let held_back = 16;
                s.write_all(&request[..request.len() - held_back]).unwrap();
                while !go.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                s.write_all(&request[request.len() - held_back..]).unwrap();
                wire::produce_errors(wire::read_response(&mut s).unwrap())
            })
        })
        .collect();
    let mut rss_peak = rss_before;
    let mut seen = (0.0, 0.0);
    let settled = wait_until(TIMEOUT, || {
        rss_peak = rss_peak.max(rss_kib(broker.pid()));
        let scrape = Scrape::take(&metrics);
        seen = (
            scrape.get("broker_request_memory_waiting", &[]),
            scrape.get("broker_request_memory_bytes", &[]),
        );
        seen.0 as usize == CONNECTIONS - 2
    });
    // Sample memory a little longer, now that every body is in the sockets.
    for _ in 0..10 {
        rss_peak = rss_peak.max(rss_kib(broker.pid()));
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "request memory: {CONNECTIONS} x {} byte produce frames, budget {budget} bytes; {} waiting, \
         {} bytes held; broker RSS {rss_before} KiB before, peak {rss_peak} KiB (+{} KiB)",
        request.len(),
        seen.0,
        seen.1,
        rss_peak.saturating_sub(rss_before)
    );
    assert!(settled.is_some(), "all but two wait: {seen:?}");
    assert_eq!(seen.1 as usize, 2 * (request.len() - 4), "two frames held");
    assert!(
        rss_peak.saturating_sub(rss_before) < 40 * 1024,
        "RSS grew {} KiB",
        rss_peak - rss_before
    );
    // Small requests are not held back by the budget, on either core.
    for _ in 0..2 {
        let mut small = TcpStream::connect(&broker.addr).unwrap();
        assert!(wire::answered(&mut small), "small requests do not wait");
    }
    go.store(true, Ordering::Relaxed);
    for c in clients {
        assert_eq!(c.join().unwrap(), [0, 0], "every request served in the end");
    }
    let scrape = Scrape::take(&metrics);
    assert_eq!(scrape.get("broker_request_memory_bytes", &[]), 0.0);
    assert!(scrape.get("broker_request_memory_waits_total", &[]) >= (CONNECTIONS - 2) as f64);
}

/// The idle limit counts from the end of the last request: a connection that made one
/// after a while is closed an idle limit after it, not an idle limit after it opened.
#[test]
fn given_a_request_then_silence_should_close_an_idle_limit_after_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(dir.path(), &[("BROKER_CONNECTIONS_MAX_IDLE_MS", "600")]);
    let mut s = TcpStream::connect(&broker.addr).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(wire::answered(&mut s));
    let answered_at = Instant::now();
    let mut buf = [0u8; 8];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    let after = answered_at.elapsed();
    assert!(
        after >= Duration::from_millis(500),
        "closed {after:?} after the request: the limit counts from it"
    );
    assert!(after < Duration::from_secs(5), "closed by the idle limit");
}

/// Records read into memory for a response above 64 KiB come from the request budget:
/// with `fetch_inline_max_bytes` at 8 MiB and a 16 MiB budget, twelve consumers that each
/// ask for 8 MB of records and read nothing make the broker hold about the budget, not
/// twelve times 8 MiB; the responses the budget cannot cover are spliced from the page
/// cache instead, and every one of them still arrives whole once read.
#[test]
fn given_big_inline_fetches_that_are_not_read_should_hold_no_more_than_the_request_budget() {
    const CONSUMERS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let (broker, _metrics) = broker_with(
        dir.path(),
        &[
            ("BROKER_FETCH_INLINE_MAX_BYTES", "8388608"),
            ("BROKER_SOCKET_REQUEST_MAX_BYTES", "16777216"),
            ("BROKER_QUEUED_MAX_REQUEST_BYTES", "16777216"),
            ("BROKER_CONNECTIONS_SEND_TIMEOUT_MS", "60000"),
            ("BROKER_FLUSH", "none"),
        ],
    );
    wire::create_topic(&broker.addr, "inline", 1);
    // 9 batches of 900 records x 1000 bytes: about 8.1 MB, under the inline limit.
    let mut s = TcpStream::connect(&broker.addr).unwrap();
    let request = wire::produce_frame("inline", &[wire::batch(900, 1000)]);
    for _ in 0..9 {
        s.write_all(&request).unwrap();
        assert_eq!(
            wire::produce_errors(wire::read_response(&mut s).unwrap()),
            [0]
        );
    }
    let fetch = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(8 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("inline")))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(8 << 20),
                ]),
        ]);
    let frame = wire::frame(ApiKey::Fetch, 4, 1, &fetch);
    let rss_before = rss_kib(broker.pid());
    let mut stalled: Vec<TcpStream> = (0..CONSUMERS)
        .map(|_| {
            let mut c = wire::connect_with("127.0.0.1", &broker.addr, Some(4096));
            c.write_all(&frame).unwrap();
            c
        })
        .collect();
    // Every response is being sent (or stuck sending) for a while; the peak is what the
    // broker holds for them.
    let mut rss_peak = rss_before;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        rss_peak = rss_peak.max(rss_kib(broker.pid()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let grown = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "{CONSUMERS} unread fetches of about 8 MB each, inline limit 8 MiB, budget 16 MiB: \
         broker RSS {rss_before} KiB before, peak {rss_peak} KiB (+{grown} KiB)"
    );
    assert!(
        grown < 40 * 1024,
        "the broker read the responses into memory past the budget: +{grown} KiB"
    );
    // Read now: every response arrives whole, inline or spliced.
    for c in &mut stalled {
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        let response = wire::read_response(c).unwrap();
        assert!(
            response.len() > 8_000_000,
            "a response of {} bytes",
            response.len()
        );
    }
}
