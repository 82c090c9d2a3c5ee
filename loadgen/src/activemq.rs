//! ActiveMQ over STOMP 1.2 (Debian's ActiveMQ has no AMQP module, and there is no
//! maintained Rust OpenWire client).
//!
//! The STOMP client is written here, on blocking sockets, because the STOMP crates on
//! crates.io are young forks (`tokio-stomp-2` and relatives: nom 4, "use with care") and
//! the part of the protocol a load generator needs is small: CONNECT, SEND, SUBSCRIBE,
//! ACK, RECEIPT, DISCONNECT. Every length from the wire is bounded.
//!
//! Messages are persistent in both modes. The paper mode sends without receipts (ActiveMQ
//! treats those as asynchronous sends) and consumes with `ack:auto`; the durable mode asks a
//! receipt for every message and waits for a batch's receipts before the next batch, and
//! consumes with `ack:client`, acknowledging cumulatively every `ACK_EVERY` messages.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::target::{Consumer, ConsumerSpec, Dest, Mode, Producer, ProducerSpec, Target};

const ACK_EVERY: u64 = 100;
const MAX_FRAME: usize = 64 << 20;
const MAX_HEADERS: usize = 128;
const IO_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ActiveMq {
    addr: String,
}

impl ActiveMq {
    pub fn new(addr: String) -> Self {
        Self { addr }
    }

    fn connect(&self) -> anyhow::Result<Stomp> {
        Stomp::connect(&self.addr)
    }
}

fn queue_name(dest: &Dest, i: u32) -> String {
    format!("/queue/{}-{i}", dest.name)
}

impl Target for ActiveMq {
    fn name(&self) -> &'static str {
        "activemq"
    }

    fn client(&self) -> String {
        "STOMP 1.2 (loadgen's own client)".to_string()
    }

    fn address(&self) -> String {
        self.addr.clone()
    }

    fn port(&self) -> u16 {
        crate::kafka::port_of(&self.addr).unwrap_or(61613)
    }

    fn check(&self) -> anyhow::Result<()> {
        self.connect()?.disconnect()
    }

    fn prepare(&self, _dest: &Dest) -> anyhow::Result<()> {
        // Queue names carry the run's unique name, so they start empty; ActiveMQ creates
        // them on first use.
        Ok(())
    }

    fn producer(&self, dest: &Dest, spec: ProducerSpec) -> anyhow::Result<Box<dyn Producer>> {
        Ok(Box::new(StompProducer {
            stomp: self.connect()?,
            queues: (0..dest.partitions).map(|i| queue_name(dest, i)).collect(),
            mode: spec.mode,
            next_receipt: 0,
            awaiting: 0,
            acked: 0,
            sent: 0,
        }))
    }

    fn consumer(&self, dest: &Dest, spec: ConsumerSpec) -> anyhow::Result<Box<dyn Consumer>> {
        let mut stomp = self.connect()?;
        let ack = match spec.mode {
            Mode::Paper => "auto",
            Mode::Durable => "client",
        };
        for &p in &spec.partitions {
            let id = p.to_string();
            let queue = queue_name(dest, p);
            let prefetch = spec.prefetch.to_string();
            stomp.write_frame(
                "SUBSCRIBE",
                &[
                    ("id", &id),
                    ("destination", &queue),
                    ("ack", ack),
                    ("activemq.prefetchSize", &prefetch),
                ],
                b"",
            )?;
        }
        stomp.flush()?;
        Ok(Box::new(StompConsumer {
            stomp,
            mode: spec.mode,
            last_ack: HashMap::new(),
            unacked: 0,
        }))
    }

    fn backlog(&self, _dest: &Dest) -> anyhow::Result<Option<u64>> {
        // STOMP cannot ask a queue's depth (and Debian's ActiveMQ has no JMX).
        Ok(None)
    }

    fn cleanup(&self, _dest: &Dest) -> anyhow::Result<()> {
        // Consumers drained the queues; STOMP cannot delete a destination.
        Ok(())
    }

    fn how_to_start(&self) -> &'static str {
        "scripts/activemq.sh install && scripts/activemq.sh start paper   (or `start durable`)"
    }
}

/// One received frame.
#[derive(Debug)]
pub struct Frame {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn header(&self, name: &str) -> Option<&str> {
        // STOMP 1.2: the first occurrence of a repeated header wins.
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one frame from the front of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the frame and how many bytes it took (heart-beat newlines before it included).
pub fn parse_frame(buf: &[u8]) -> anyhow::Result<Option<(Frame, usize)>> {
    let start = buf
        .iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .count();
    let rest = &buf[start..];
    let Some(head_end) = rest.windows(2).position(|w| w == b"\n\n") else {
        if rest.len() > MAX_FRAME {
            bail!("STOMP frame header longer than {MAX_FRAME} bytes");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&rest[..head_end]).context("STOMP header is not UTF-8")?;
    let mut lines = head.lines();
    let command = lines
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r')
        .to_string();
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() >= MAX_HEADERS {
            bail!("STOMP frame with more than {MAX_HEADERS} headers");
        }
        let line = line.trim_end_matches('\r');
        let (k, v) = line
            .split_once(':')
            .context("STOMP header line without ':'")?;
        headers.push((k.to_string(), v.to_string()));
    }
    let body_start = head_end + 2;
    let frame = Frame {
        command,
        headers,
        body: Vec::new(),
    };
    let (body_len, end) = match frame.header("content-length") {
        Some(len) => {
            let len: usize = len.parse().context("bad content-length")?;
            if len > MAX_FRAME {
                bail!("STOMP body of {len} bytes is over the {MAX_FRAME} limit");
            }
            if rest.len() < body_start + len + 1 {
                return Ok(None);
            }
            if rest[body_start + len] != 0 {
                bail!("STOMP frame not terminated by NUL after content-length");
            }
            (len, body_start + len + 1)
        }
        None => match rest[body_start..].iter().position(|&b| b == 0) {
            Some(len) => (len, body_start + len + 1),
            None if rest.len() - body_start > MAX_FRAME => bail!("unterminated STOMP frame"),
            None => return Ok(None),
        },
    };
    let mut frame = frame;
    frame.body = rest[body_start..body_start + body_len].to_vec();
    Ok(Some((frame, start + end)))
}

/// A STOMP 1.2 connection on a blocking socket.
pub struct Stomp {
    stream: TcpStream,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    filled: usize,
    pub server: String,
}

impl Stomp {
    pub fn connect(addr: &str) -> anyhow::Result<Self> {
        let sockaddr = addr
            .to_socket_addrs()
            .with_context(|| format!("bad ActiveMQ address {addr}"))?
            .next()
            .with_context(|| format!("{addr} resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&sockaddr, Duration::from_secs(5))
            .with_context(|| format!("no STOMP broker answered at {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut stomp = Self {
            stream,
            out: Vec::with_capacity(256 << 10),
            inbuf: vec![0; 256 << 10],
            filled: 0,
            server: String::new(),
        };
        stomp.write_frame(
            "CONNECT",
            &[
                ("accept-version", "1.2"),
                ("host", "localhost"),
                ("heart-beat", "0,0"),
            ],
            b"",
        )?;
        stomp.flush()?;
        let reply = stomp
            .read_frame(Some(Duration::from_secs(5)))?
            .with_context(|| format!("{addr} did not answer CONNECT within 5 s"))?;
        if reply.command != "CONNECTED" {
            bail!(
                "{addr} answered CONNECT with {}: {}",
                reply.command,
                String::from_utf8_lossy(&reply.body)
            );
        }
        stomp.server = reply.header("server").unwrap_or("unknown").to_string();
        Ok(stomp)
    }

    /// Appends a frame to the output buffer (written by `flush`).
    pub fn write_frame(
        &mut self,
        command: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<()> {
        self.out.extend_from_slice(command.as_bytes());
        self.out.push(b'\n');
        for (k, v) in headers {
            self.out.extend_from_slice(k.as_bytes());
            self.out.push(b':');
            self.out.extend_from_slice(v.as_bytes());
            self.out.push(b'\n');
        }
        if !body.is_empty() {
            self.out.extend_from_slice(b"content-length:");
            self.out
                .extend_from_slice(body.len().to_string().as_bytes());
            self.out.push(b'\n');
        }
        self.out.push(b'\n');
        self.out.extend_from_slice(body);
        self.out.push(0);
        if self.out.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).context("STOMP write")?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads the next frame, waiting at most `timeout` (`None`: the I/O timeout).
    pub fn read_frame(&mut self, timeout: Option<Duration>) -> anyhow::Result<Option<Frame>> {
        let deadline = Instant::now() + timeout.unwrap_or(IO_TIMEOUT);
        loop {
            if let Some((frame, used)) = parse_frame(&self.inbuf[..self.filled])? {
                self.inbuf.copy_within(used..self.filled, 0);
                self.filled -= used;
                if frame.command == "ERROR" {
                    bail!(
                        "STOMP ERROR: {} {}",
                        frame.header("message").unwrap_or_default(),
                        String::from_utf8_lossy(&frame.body)
                    );
                }
                return Ok(Some(frame));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if self.filled == self.inbuf.len() {
                if self.inbuf.len() >= MAX_FRAME + 4096 {
                    bail!("STOMP frame over {MAX_FRAME} bytes");
                }
                self.inbuf.resize(self.inbuf.len() * 2, 0);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut self.inbuf[self.filled..]) {
                Ok(0) => bail!("the STOMP broker closed the connection"),
                Ok(n) => self.filled += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("STOMP read"),
            }
        }
    }

    /// Waits for the RECEIPT with id `id`, skipping other frames.
    fn await_receipt(&mut self, id: &str) -> anyhow::Result<()> {
        loop {
            let frame = self
                .read_frame(None)?
                .with_context(|| format!("no RECEIPT {id} within {IO_TIMEOUT:?}"))?;
            if frame.command == "RECEIPT" && frame.header("receipt-id") == Some(id) {
                return Ok(());
            }
        }
    }

    pub fn disconnect(mut self) -> anyhow::Result<()> {
        self.write_frame("DISCONNECT", &[("receipt", "bye")], b"")?;
        self.flush()?;
        self.await_receipt("bye")
    }
}

struct StompProducer {
    stomp: Stomp,
    queues: Vec<String>,
    mode: Mode,
    next_receipt: u64,
    /// Receipts asked for and not yet seen, in order.
    awaiting: u64,
    acked: u64,
    sent: u64,
}

impl Producer for StompProducer {
    fn send(&mut self, partition: u32, payload: &[u8]) -> anyhow::Result<()> {
        let queue = self
            .queues
            .get(partition as usize)
            .context("no such queue")?;
        match self.mode {
            Mode::Paper => {
                self.stomp.write_frame(
                    "SEND",
                    &[("destination", queue), ("persistent", "true")],
                    payload,
                )?;
            }
            Mode::Durable => {
                let receipt = self.next_receipt.to_string();
                self.next_receipt += 1;
                self.awaiting += 1;
                self.stomp.write_frame(
                    "SEND",
                    &[
                        ("destination", queue),
                        ("persistent", "true"),
                        ("receipt", &receipt),
                    ],
                    payload,
                )?;
            }
        }
        self.sent += 1;
        Ok(())
    }

    fn end_batch(&mut self) -> anyhow::Result<()> {
        self.stomp.flush()?;
        // Receipts come back in order, so the last one asked covers the batch; count each.
        while self.awaiting > 0 {
            let frame = self
                .stomp
                .read_frame(None)?
                .context("no RECEIPT for a persistent send")?;
            if frame.command == "RECEIPT" {
                self.awaiting -= 1;
                self.acked += 1;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<u64> {
        self.end_batch()?;
        // ActiveMQ handles a connection's frames in order: the DISCONNECT receipt comes
        // after every send before it has been taken in.
        self.stomp
            .write_frame("DISCONNECT", &[("receipt", "finish")], b"")?;
        self.stomp.flush()?;
        self.stomp.await_receipt("finish")?;
        Ok(match self.mode {
            Mode::Paper => self.sent,
            Mode::Durable => self.acked,
        })
    }
}

struct StompConsumer {
    stomp: Stomp,
    mode: Mode,
    /// Per subscription, the `ack` header of the newest message not yet acknowledged.
    last_ack: HashMap<String, String>,
    unacked: u64,
}

impl StompConsumer {
    fn ack(&mut self) -> anyhow::Result<()> {
        for (_, id) in self.last_ack.drain() {
            self.stomp.write_frame("ACK", &[("id", &id)], b"")?;
        }
        self.stomp.flush()?;
        self.unacked = 0;
        Ok(())
    }
}

impl Consumer for StompConsumer {
    fn poll(
        &mut self,
        timeout: Duration,
        on_message: &mut dyn FnMut(&[u8]),
    ) -> anyhow::Result<usize> {
        let mut n = 0;
        let mut wait = Some(timeout);
        while n < 10_000 {
            let Some(frame) = self.stomp.read_frame(wait)? else {
                break;
            };
            wait = Some(Duration::ZERO);
            if frame.command != "MESSAGE" {
                continue;
            }
            on_message(&frame.body);
            n += 1;
            if self.mode == Mode::Durable {
                if let (Some(sub), Some(ack)) = (frame.header("subscription"), frame.header("ack"))
                {
                    self.last_ack.insert(sub.to_string(), ack.to_string());
                }
                self.unacked += 1;
                if self.unacked >= ACK_EVERY {
                    self.ack()?;
                }
            }
        }
        Ok(n)
    }

    fn close(&mut self) -> anyhow::Result<()> {
        self.ack()?;
        self.stomp
            .write_frame("DISCONNECT", &[("receipt", "bye")], b"")?;
        self.stomp.flush()?;
        self.stomp.await_receipt("bye")
    }
}

#[cfg(test)]
mod tests {
    use super::parse_frame;

    #[test]
    fn parses_frames_with_and_without_content_length() {
        let mut wire = b"\n\nMESSAGE\nsubscription:0\nack:7\ncontent-length:3\n\na\0b\0".to_vec();
        wire.extend_from_slice(b"RECEIPT\nreceipt-id:9\n\n\0");
        let (f, used) = parse_frame(&wire).unwrap().unwrap();
        assert_eq!(f.command, "MESSAGE");
        assert_eq!(f.body, b"a\0b");
        assert_eq!(f.header("ack"), Some("7"));
        let (g, used2) = parse_frame(&wire[used..]).unwrap().unwrap();
        assert_eq!(g.header("receipt-id"), Some("9"));
        assert_eq!(used + used2, wire.len());
        // Every prefix is incomplete, never an error.
        for cut in 0..used - 1 {
            assert!(parse_frame(&wire[..cut]).unwrap().is_none(), "cut {cut}");
        }
        assert!(parse_frame(b"MESSAGE\ncontent-length:99999999999\n\n").is_err());
        assert!(parse_frame(b"MESSAGE\ncontent-length:1\n\nab").is_err());
    }
}
