//! One client connection: read a frame, handle it, write the response, in order, one
//! request at a time (as Kafka's own broker does, so responses keep request order, and
//! the in-flight bound per connection is one: pipelined requests wait in the kernel).
//! A frame whose length is out of bounds, an unknown API, an unsupported version or a
//! body that does not decode closes this connection and nothing else.
//!
//! Memory: a frame over 64 KiB takes its bytes from the broker-wide request budget
//! before it is allocated, and gives them back once its response is built. A response write that
//! makes no progress for `connections_send_timeout_ms` (a client that stopped reading)
//! closes the connection with a reset; file ranges wait in the page cache, never in a
//! buffer of ours.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::{AsyncRead, AsyncReadAtExt, AsyncReadExt, AsyncWrite};
use compio::net::TcpStream;

use crate::kafka::fetch_response::Piece;
use crate::kafka::handlers;
use crate::kafka::protocol::{self, Frame, FrameError, RequestBody};
use crate::metrics::CloseKind;
use crate::runtime::limits::{ConnectionSlot, MemoryPermit, RequestMemory};
use crate::runtime::pacing;
use crate::runtime::shard::{Incoming, Shard, UnackedRefusals};

/// Bytes moved per splice step; also the copy-path chunk.
const SEND_CHUNK_BYTES: usize = 1024 * 1024;

/// Why a connection was closed by the broker.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("response write made no progress for {0:?} (client not reading)")]
    SendTimeout(Duration),
    #[error(transparent)]
    Decode(#[from] protocol::DecodeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "acks=0 produce to {0} refused; closing, as Kafka does, so that the client refreshes its metadata"
    )]
    ProduceRefused(String),
}

impl CloseReason {
    fn kind(&self) -> CloseKind {
        match self {
            CloseReason::Frame(FrameError::FrameLength(_)) => CloseKind::FrameTooLarge,
            CloseReason::Idle(_) => CloseKind::Idle,
            CloseReason::SendTimeout(_) => CloseKind::SendTimeout,
            CloseReason::Frame(_) | CloseReason::Decode(_) => CloseKind::BadRequest,
            CloseReason::Io(_) => CloseKind::Io,
            CloseReason::ProduceRefused(_) => CloseKind::ProduceRefused,
        }
    }
}

/// What a connection brings when it moves to another core.
pub struct Moved {
    /// Bytes read from the socket and not handled yet (pipelined requests), at most
    /// `READ_AHEAD_BYTES`.
    buffered: Vec<u8>,
    /// When it moved: it stays at least `MOVE_INTERVAL` on its new core.
    at: Instant,
}

/// Produce and Fetch requests in a row whose partitions all belong to one other core,
/// after which the connection moves to that core.
const MOVE_AFTER_REQUESTS: u32 = 32;

/// Shortest stay of a connection on a core it moved to, or after a move was refused.
const MOVE_INTERVAL: Duration = Duration::from_secs(10);

/// Longest a move waits for its core's acks=0 appends to be written; a core that other
/// connections keep busy with them longer than this keeps this connection for now.
const MOVE_DRAIN_WAIT: Duration = Duration::from_millis(10);

/// Where a connection's partitions live. A connection is served by the core the acceptor
/// gave it; each partition it produces to or fetches from by the core that owns it, which
/// is another one in most cases: every such request then crosses cores twice (there and
/// back), waking the other core each time, and a fetch that waits for data crosses again
/// for each read. At low rates those wake-ups are most of the broker's CPU per message.
/// A connection whose Produce and Fetch requests keep naming partitions of one other
/// core moves there (most connections of a single-partition producer or consumer, and a
/// follower fetching partitions of one core), where all of it is local. Connections whose
/// partitions span cores stay where they are.
struct Home {
    /// The core the last requests pointed to, and how many in a row.
    candidate: usize,
    streak: u32,
    /// No move before this.
    not_before: Option<Instant>,
}

/// Where the partitions a request names are served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Not a Produce or Fetch request: says nothing about where the connection belongs.
    Other,
    /// Partitions of several cores, or unknown ones.
    Spread,
    /// Every partition on this core.
    On(usize),
}

impl Home {
    fn new(not_before: Option<Instant>) -> Self {
        Self {
            candidate: usize::MAX,
            streak: 0,
            not_before,
        }
    }

    /// Notes where a request's partitions are; the core to move to once enough requests
    /// in a row named partitions of that one other core.
    fn note(&mut self, here: usize, placement: Placement, now: Instant) -> Option<usize> {
        match placement {
            Placement::Other => None,
            Placement::On(core) if core != here => {
                if core == self.candidate {
                    self.streak = self.streak.saturating_add(1);
                } else {
                    self.candidate = core;
                    self.streak = 1;
                }
                let settled = self.not_before.is_none_or(|t| now >= t);
                (self.streak >= MOVE_AFTER_REQUESTS && settled).then_some(core)
            }
            Placement::On(_) | Placement::Spread => {
                self.streak = 0;
                None
            }
        }
    }

    /// A move was refused: try again later.
    fn back_off(&mut self, now: Instant) {
        self.streak = 0;
        self.not_before = Some(now + MOVE_INTERVAL);
    }
}

/// The one core that owns every partition a Produce or Fetch request names.
fn placement(shard: &Shard, body: &RequestBody, version: i16) -> Placement {
    let table = shard.partition_table();
    let mut on: Option<usize> = None;
    let mut same = |core: Option<usize>| match (on, core) {
        (_, None) => false,
        (None, Some(c)) => {
            on = Some(c);
            true
        }
        (Some(a), Some(b)) => a == b,
    };
    match body {
        RequestBody::Produce(req) => {
            for t in &req.topic_data {
                for p in &t.partition_data {
                    if !same(table.route(&t.name.0, p.index).map(|r| r.core)) {
                        return Placement::Spread;
                    }
                }
            }
        }
        RequestBody::Fetch(req) => {
            for t in &req.topics {
                let name = if version >= 13 {
                    table.topic_name(t.topic_id.as_u128())
                } else {
                    Some(&*t.topic.0)
                };
                for p in &t.partitions {
                    let core = name
                        .and_then(|n| table.route(n, p.partition))
                        .map(|r| r.core);
                    if !same(core) {
                        return Placement::Spread;
                    }
                }
            }
        }
        _ => return Placement::Other,
    }
    on.map_or(Placement::Spread, Placement::On)
}

/// Serves one connection; the shard counted it in when it accepted it, and `slot` holds
/// its place in the broker's connection limits until it ends (or moves with it).
pub async fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    slot: ConnectionSlot,
    moved: Option<Moved>,
) {
    let mut sender = ResponseSender {
        stream: &stream,
        pipe: None,
        zero_copy: shard.config().fetch_zero_copy
            && compio::runtime::Runtime::with_current(|rt| rt.driver_type().is_iouring()),
        inline_max: shard.config().fetch_inline_max_bytes,
        memory: Arc::clone(&shard.shared.request_memory),
        timeout: Duration::from_millis(shard.config().connections_send_timeout_ms),
        splicing: false,
    };
    // Counted in this core's `moved_in` while it is here (see `Shard::accept`).
    let moved_in = moved.is_some();
    let leave = |shard: &Shard| {
        shard
            .connections
            .set(shard.connections.get().saturating_sub(1));
        if moved_in {
            shard.moved_in.set(shard.moved_in.get().saturating_sub(1));
        }
    };
    let (mut reader, mut home) = match moved {
        Some(m) => (
            FrameReader::with_buffered(&m.buffered),
            Home::new(Some(m.at + MOVE_INTERVAL)),
        ),
        None => (FrameReader::new(), Home::new(None)),
    };
    let mut slot = slot;
    let result = loop {
        let core = match serve_requests(&shard, &stream, &mut sender, peer, &mut reader, &mut home)
            .await
        {
            Ok(Some(core)) => core,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let now = Instant::now();
        let dup = match rustix::io::fcntl_dupfd_cloexec(&stream, 0) {
            Ok(fd) => std::net::TcpStream::from(fd),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot duplicate the socket; not moving");
                home.back_off(now);
                continue;
            }
        };
        let incoming = Incoming {
            stream: dup,
            peer,
            slot,
            moved: Some(Moved {
                buffered: reader.take_unread(),
                at: now,
            }),
        };
        match shard.hand_over(core, incoming) {
            Ok(()) => {
                // That core serves it from here on; this copy of the socket just closes.
                tracing::debug!(%peer, from = shard.id, to = core, "connection moved");
                drop(sender);
                drop(stream);
                leave(&shard);
                return;
            }
            Err(back) => {
                let Incoming {
                    stream: dup,
                    slot: back_slot,
                    moved,
                    ..
                } = *back;
                drop(dup);
                slot = back_slot;
                if let Some(m) = moved {
                    reader = FrameReader::with_buffered(&m.buffered);
                }
                home.back_off(now);
            }
        }
    };
    let kind = result
        .as_ref()
        .map_or_else(CloseReason::kind, |()| CloseKind::Client);
    if kind == CloseKind::SendTimeout {
        // A reset drops what the kernel still holds for this client at once, rather than
        // keeping it queued for a reader that is not reading.
        let _ = stream.set_zero_linger();
    }
    // Shuts the socket down first if a splice may still be blocked (see its Drop).
    drop(sender);
    shard.shared.metrics.connection_closed(kind);
    match result {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(CloseReason::Io(e)) => tracing::debug!(%peer, error = %e, "connection ended"),
        // Expected while leadership moves; the client reconnects at once.
        Err(reason @ CloseReason::ProduceRefused(_)) => {
            tracing::info!(%peer, %reason, "closing connection")
        }
        Err(reason) => tracing::warn!(%peer, %reason, "closing connection"),
    }
    drop(stream);
    drop(slot);
    leave(&shard);
}

/// Serves requests until the connection ends (`None`) or should move to another core
/// (`Some(core)`, between two requests, with nothing of it in flight).
async fn serve_requests(
    shard: &Rc<Shard>,
    stream: &TcpStream,
    sender: &mut ResponseSender<'_>,
    peer: std::net::SocketAddr,
    reader: &mut FrameReader,
    home: &mut Home,
) -> Result<Option<usize>, CloseReason> {
    let max = shard.config().socket_request_max_bytes;
    let idle = Duration::from_millis(shard.config().connections_max_idle_ms);
    let memory = &shard.shared.request_memory;
    let metrics = shard.shared.metrics.core(shard.id);
    // One stop listener and one idle timer for the connection's life, not one of each per
    // request: the timer is armed again only when it fires early.
    let mut stop = std::pin::pin!(shard.shared.stopped());
    let mut idle_timer = std::pin::pin!(compio::time::sleep_until(Instant::now() + idle));
    // Refusals of this connection's acks=0 appends, noted by the cores that tried them. A
    // refusal noted while the connection waits for its next frame closes it at once.
    let refusals = Arc::new(UnackedRefusals::default());
    let refused = |refusals: &UnackedRefusals| match refusals.first() {
        Some(first) => Err(CloseReason::ProduceRefused(first.to_string())),
        None => Ok(()),
    };
    let mut noted = std::pin::pin!(refusals.noted());
    loop {
        let frame = {
            // A connection that sends nothing, or only part of a frame, for `idle` is
            // closed (Kafka's connections.max.idle.ms), so it cannot hold a slot forever.
            // Waiting for request memory counts as idle too.
            let waiting_since = Instant::now();
            let mut read = std::pin::pin!(reader.next(stream, max, memory));
            loop {
                use futures_util::future::{Either, select};
                let stopped = select(stop.as_mut(), noted.as_mut());
                match select(select(read.as_mut(), stopped), idle_timer.as_mut()).await {
                    Either::Left((Either::Left((frame, _)), _)) => break frame?,
                    Either::Left((Either::Right((Either::Left(_), _)), _)) => return Ok(None),
                    Either::Left((Either::Right((Either::Right((first, _)), _)), _)) => {
                        return Err(CloseReason::ProduceRefused(first.to_string()));
                    }
                    Either::Right(_) => {
                        if waiting_since.elapsed() >= idle {
                            return Err(CloseReason::Idle(idle));
                        }
                        // Armed during an earlier wait: the rest of this one's.
                        idle_timer.set(compio::time::sleep_until(waiting_since + idle));
                    }
                }
            }
        };
        let Some((frame, permit)) = frame else {
            return Ok(None);
        };
        // An earlier acks=0 append refused since: the frame is dropped with the connection.
        refused(&refusals)?;
        let started = Instant::now();
        let (api_key, version) = match frame.get(..4) {
            Some(&[a, b, c, d]) => (i16::from_be_bytes([a, b]), i16::from_be_bytes([c, d])),
            _ => return Err(FrameError::FrameLength(frame.len() as i64).into()),
        };
        let (response, placement, unhurried) = handle_frame(shard, frame, peer, &refusals).await?;
        // The request's bytes are gone once its response is built; the response holds
        // no budget (file ranges, and small encoded parts).
        drop(permit);
        if unhurried {
            let small = response.as_deref().is_none_or(|pieces| {
                pieces.iter().map(Piece::len).sum::<u64>() <= PACED_RESPONSE_BYTES_MAX
            });
            pacing::note_request(small);
        }
        if let Some(pieces) = response {
            sender.send(pieces).await?;
        }
        metrics.observe_request(api_key, version, started.elapsed());
        refused(&refusals)?;
        // Moving is safe only once every acks=0 append this core took is written: they
        // are not answered, and one of this connection's could otherwise be overtaken by
        // its next append made directly on the owning core. An acks=0 producer's own
        // last append is always still on its way here, so the move waits for it (a
        // moment: the next request waits in the socket meanwhile).
        if let Some(core) = home.note(shard.id, placement, Instant::now())
            && !shard.shared.stopping()
        {
            if shard.unacknowledged_drained(MOVE_DRAIN_WAIT).await {
                // Its appends are written or refused now: a refusal closes it here.
                refused(&refusals)?;
                // Shutdown may have begun meanwhile: then the connection ends here.
                if shard.shared.stopping() {
                    return Ok(None);
                }
                return Ok(Some(core));
            }
            home.back_off(Instant::now());
        }
    }
}

/// Frames up to this size do not wait for the request memory budget.
pub const REQUEST_BUDGET_EXEMPT_BYTES_MAX: usize = 64 * 1024;

/// Bytes a connection reads ahead. Small requests (a batch-1 producer's, heartbeats,
/// fetches) arrive many to one read instead of three reads each; frames that do not fit
/// are read straight into their own allocation.
const READ_AHEAD_BYTES: usize = 16 * 1024;

/// Length-prefixed frames from one connection, through a small read-ahead buffer.
struct FrameReader {
    /// Bytes read and not yet handed out are `buf[start..]`; capacity `READ_AHEAD_BYTES`.
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    fn new() -> Self {
        Self {
            buf: Vec::with_capacity(READ_AHEAD_BYTES),
            start: 0,
        }
    }

    /// A reader starting with bytes an earlier reader of this socket had read (at most
    /// `READ_AHEAD_BYTES` are kept; a reader never holds more).
    fn with_buffered(bytes: &[u8]) -> Self {
        let mut reader = Self::new();
        let keep = bytes.len().min(READ_AHEAD_BYTES);
        reader.buf.extend_from_slice(&bytes[..keep]);
        reader
    }

    /// The bytes read and not handed out yet, leaving the reader empty.
    fn take_unread(&mut self) -> Vec<u8> {
        let unread = self.buf.get(self.start..).unwrap_or_default().to_vec();
        self.buf.clear();
        self.start = 0;
        unread
    }

    /// The next frame (API key onwards); `None` at a clean end of stream. Only Produce may
    /// use the full `max`; a frame's length and API key are checked, and a big frame's
    /// bytes taken from the request budget, before the frame is allocated.
    async fn next(
        &mut self,
        stream: &TcpStream,
        max: usize,
        memory: &Arc<RequestMemory>,
    ) -> Result<Option<(Vec<u8>, Option<MemoryPermit>)>, CloseReason> {
        loop {
            let have = &self.buf[self.start..];
            if let Some(prefix) = have.get(..4) {
                let len = protocol::check_frame_length(
                    i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]),
                    max,
                )?;
                if let Some(key) = have.get(4..6) {
                    protocol::check_frame_length_for_api(
                        len,
                        i16::from_be_bytes([key[0], key[1]]),
                    )?;
                    if have.len() >= 4 + len {
                        // Whole frame buffered: it is under READ_AHEAD_BYTES, so exempt
                        // from the budget.
                        let frame = have[4..4 + len].to_vec();
                        self.start += 4 + len;
                        return Ok(Some((frame, None)));
                    }
                    if 4 + len > READ_AHEAD_BYTES {
                        return self.read_big_frame(stream, len, memory).await.map(Some);
                    }
                }
            }
            if !self.fill(stream).await? {
                if self.start == self.buf.len() {
                    return Ok(None);
                }
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    /// A frame too big for the buffer: what is buffered, then the rest read in place.
    async fn read_big_frame(
        &mut self,
        stream: &TcpStream,
        len: usize,
        memory: &Arc<RequestMemory>,
    ) -> Result<(Vec<u8>, Option<MemoryPermit>), CloseReason> {
        // Small frames (metadata, heartbeats, commits, fetches, small produces) are not
        // held back: big produce requests waiting for memory must not starve the control
        // plane (a heartbeat stuck here would cost its member the group). Their total is
        // bounded by one in flight per connection.
        let permit = if len > REQUEST_BUDGET_EXEMPT_BYTES_MAX {
            Some(memory.acquire(len).await)
        } else {
            None
        };
        let have = &self.buf[self.start + 4..];
        let mut frame = Vec::with_capacity(len);
        frame.extend_from_slice(have);
        let got = frame.len();
        self.buf.clear();
        self.start = 0;
        let mut reader = stream;
        let BufResult(res, frame) = reader.read_exact(frame.slice(got..len)).await;
        res?;
        pacing::note_backlog();
        Ok((frame.into_inner(), permit))
    }

    /// Reads more into the buffer, first moving unread bytes to its front; false at end of
    /// stream.
    async fn fill(&mut self, stream: &TcpStream) -> Result<bool, CloseReason> {
        if self.start > 0 {
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(self.buf.len() - self.start);
            self.start = 0;
        }
        let filled = self.buf.len();
        let mut reader = stream;
        let buf = std::mem::take(&mut self.buf);
        let BufResult(res, buf) = reader.read(buf.slice(filled..READ_AHEAD_BYTES)).await;
        self.buf = buf.into_inner();
        let n = res?;
        if n == READ_AHEAD_BYTES - filled {
            // More may be queued in the socket: the read pacer must not sleep on it.
            pacing::note_backlog();
        }
        Ok(n > 0)
    }
}

/// The response to one frame, and where the partitions it named are served from.
async fn handle_frame(
    shard: &Rc<Shard>,
    frame: Vec<u8>,
    peer: std::net::SocketAddr,
    refusals: &Arc<UnackedRefusals>,
) -> Result<(Option<Vec<Piece>>, Placement, bool), CloseReason> {
    let request = match protocol::decode_frame(frame)? {
        Frame::ApiVersionsUnsupported { correlation_id } => {
            let response = vec![Piece::Bytes(handlers::api_versions::unsupported(
                correlation_id,
            )?)];
            return Ok((Some(response), Placement::Other, false));
        }
        Frame::Request(r) => r,
    };
    let placement = placement(shard, &request.body, request.version);
    let unhurried = unhurried(&request.body, request.version);
    match unhurried {
        // Counted as it starts, so the pacer stops before this request's own waits (a
        // reply from another core, a write) could sit through a window.
        None => pacing::note_request(false),
        // While the core paces, served after the produce requests of the same pass.
        Some(Unhurried::ConsumerFetch) => pacing::end_of_pass().await,
        Some(Unhurried::Acks0Produce) => {}
    }
    let request = handlers::Request {
        key: request.key,
        version: request.version,
        correlation_id: request.header.correlation_id,
        client_id: request
            .header
            .client_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        peer: peer.ip(),
        body: Some(request.body),
        unacked_refusals: Arc::clone(refusals),
    };
    Ok((
        handlers::handle(shard, request).await?,
        placement,
        unhurried.is_some(),
    ))
}

/// A request whose client is not waiting on its answer to go on (see `runtime::pacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unhurried {
    /// No answer at all.
    Acks0Produce,
    /// A long poll; a follower's fetch is hurried, as acks=all producers wait on it.
    ConsumerFetch,
}

fn unhurried(body: &RequestBody, version: i16) -> Option<Unhurried> {
    match body {
        RequestBody::Produce(req) if req.acks == 0 => Some(Unhurried::Acks0Produce),
        RequestBody::Fetch(req) => {
            let replica = if version >= 15 {
                req.replica_state.replica_id.0
            } else {
                req.replica_id.0
            };
            (replica < 0).then_some(Unhurried::ConsumerFetch)
        }
        _ => None,
    }
}

/// An unhurried request whose answer is bigger is counted as hurried by the read pacer
/// (`runtime::pacing`): a consumer catching up (full responses) is never paced.
const PACED_RESPONSE_BYTES_MAX: u64 = 16 * 1024;

/// Writes responses: memory pieces by vectored writes, file ranges by io_uring splice
/// (file -> pipe -> socket, never through user space), or by a copy where splice is not
/// available (the polling fallback driver).
struct ResponseSender<'a> {
    stream: &'a TcpStream,
    pipe: Option<(compio::fs::pipe::Receiver, compio::fs::pipe::Sender)>,
    zero_copy: bool,
    /// Records of a response up to this many bytes are read and sent with its other
    /// pieces in one write (`fetch_inline_max_bytes`).
    inline_max: u64,
    /// The broker-wide request budget: records read into memory for a response above
    /// `REQUEST_BUDGET_EXEMPT_BYTES_MAX` are charged to it while they are sent.
    memory: Arc<RequestMemory>,
    /// Longest one write step may take (`connections_send_timeout_ms`).
    timeout: Duration,
    /// A splice was started and has not finished: it may still be blocked in an
    /// io_uring worker if its future was dropped (send timeout, task dropped).
    splicing: bool,
}

impl Drop for ResponseSender<'_> {
    fn drop(&mut self) {
        if self.splicing {
            // A splice cut short may still be blocked in an io_uring worker, holding the
            // pipe's lock until the socket has room: closing the pipe (next, as the
            // fields drop) would then block this whole core on that lock (seen: a core
            // frozen until the stalled client went away). Shutting the socket down makes
            // that splice fail at once.
            let _ = socket2::SockRef::from(self.stream).shutdown(std::net::Shutdown::Both);
        }
    }
}

impl ResponseSender<'_> {
    async fn send(&mut self, pieces: Vec<Piece>) -> Result<(), CloseReason> {
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let file_bytes: u64 = pieces.iter().map(Piece::file_len).sum();
        // A small response goes out in one write, its records read into memory. Above
        // the size every connection may hold anyway, that memory comes from the request
        // budget, and when the budget has no room the records are spliced instead: the
        // inline path is a shortcut, never a reason to wait.
        let small = file_bytes <= self.inline_max.min(crate::config::FETCH_INLINE_BYTES_MAX);
        // Held until the response is sent. `file_bytes` is at most FETCH_INLINE_BYTES_MAX
        // when it is taken.
        let held = (small && file_bytes > REQUEST_BUDGET_EXEMPT_BYTES_MAX as u64)
            .then(|| self.memory.try_acquire(file_bytes as usize));
        let inline = match &held {
            Some(permit) => permit.is_some(),
            None => small,
        };
        for piece in pieces {
            match piece {
                Piece::Bytes(b) => pending.push(b),
                Piece::File {
                    file,
                    position,
                    len,
                } if inline => pending.push(read_range(file.file(), position, len).await?),
                Piece::File {
                    file,
                    position,
                    len,
                } => {
                    self.write_buffers(std::mem::take(&mut pending)).await?;
                    if self.zero_copy {
                        self.splice_file(file.file(), position, len).await?;
                    } else {
                        self.copy_file(file.file(), position, len).await?;
                    }
                }
            }
        }
        self.write_buffers(pending).await
    }

    /// Runs one write step, or fails with `SendTimeout` if it does not finish in time.
    async fn timed<T>(
        &self,
        step: impl std::future::IntoFuture<Output = T>,
    ) -> Result<T, CloseReason> {
        compio::time::timeout(self.timeout, step.into_future())
            .await
            .map_err(|_| CloseReason::SendTimeout(self.timeout))
    }

    /// Writes `buffers` whole, one vectored write at a time; each write must make
    /// progress within the send timeout.
    async fn write_buffers(&mut self, mut buffers: Vec<Vec<u8>>) -> Result<(), CloseReason> {
        buffers.retain(|b| !b.is_empty());
        if !buffers.is_empty() {
            let sent = send_now(self.stream, &buffers)?;
            drop_sent(&mut buffers, sent);
        }
        while !buffers.is_empty() {
            let mut writer = self.stream;
            let BufResult(res, back) = self.timed(writer.write_vectored(buffers)).await?;
            buffers = back;
            let written = res?;
            if written == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            drop_sent(&mut buffers, written);
        }
        Ok(())
    }

    async fn splice_file(
        &mut self,
        file: &compio::fs::File,
        position: u64,
        len: u64,
    ) -> Result<(), CloseReason> {
        use compio::fs::pipe::splice;
        if self.pipe.is_none() {
            let (rx, tx) = compio::fs::pipe::anonymous().await?;
            // A bigger pipe moves more per splice; the kernel may refuse, which is fine.
            let _ = rustix::pipe::fcntl_setpipe_size(&tx, SEND_CHUNK_BYTES);
            self.pipe = Some((rx, tx));
        }
        self.splicing = true;
        let Some((rx, tx)) = &self.pipe else {
            return Ok(());
        };
        let mut offset = position;
        let mut left = len;
        while left > 0 {
            let step = left.min(SEND_CHUNK_BYTES as u64) as usize;
            let moved = self
                .timed(splice(file, tx, step).offset_in(offset as i64))
                .await??;
            if moved == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment shorter than its range",
                )
                .into());
            }
            let mut drained = 0;
            while drained < moved {
                let n = self
                    .timed(splice(rx, self.stream, moved - drained))
                    .await??;
                if n == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                }
                drained += n;
            }
            offset += moved as u64;
            left -= moved as u64;
        }
        self.splicing = false;
        Ok(())
    }

    /// Copies a file range through memory, a chunk per write (the polling fallback, and
    /// `fetch_zero_copy = false`).
    async fn copy_file(
        &mut self,
        file: &compio::fs::File,
        position: u64,
        len: u64,
    ) -> Result<(), CloseReason> {
        let mut offset = position;
        let mut left = len;
        while left > 0 {
            let step = left.min(SEND_CHUNK_BYTES as u64) as usize;
            let BufResult(res, buf) = file
                .read_exact_at(Vec::with_capacity(step).slice(..step), offset)
                .await;
            res?;
            self.write_buffers(vec![buf.into_inner()]).await?;
            offset += step as u64;
            left -= step as u64;
        }
        Ok(())
    }
}

/// Buffers one non-blocking `sendmsg` takes at most (Linux's `IOV_MAX`).
const SEND_NOW_BUFFERS_MAX: usize = 1024;

/// Sends what the socket takes now, without waiting: most responses fit its send buffer,
/// and are then done without an io_uring operation and the trip through the ring that
/// its completion costs. What is left goes by io_uring.
fn send_now(stream: &TcpStream, buffers: &[Vec<u8>]) -> std::io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendFlags};
    let slices: Vec<std::io::IoSlice<'_>> = buffers
        .iter()
        .take(SEND_NOW_BUFFERS_MAX)
        .map(|b| std::io::IoSlice::new(b))
        .collect();
    match rustix::net::sendmsg(
        stream,
        &slices,
        &mut SendAncillaryBuffer::default(),
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    ) {
        Ok(sent) => Ok(sent),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Drops the first `sent` bytes of `buffers`: whole buffers, then the front of a
/// partial one.
fn drop_sent(buffers: &mut Vec<Vec<u8>>, mut sent: usize) {
    let whole = buffers
        .iter()
        .take_while(|b| {
            let fits = b.len() <= sent;
            if fits {
                sent -= b.len();
            }
            fits
        })
        .count();
    buffers.drain(..whole);
    if sent > 0
        && let Some(first) = buffers.first_mut()
    {
        first.drain(..sent);
    }
}

/// Reads a file range whole; the caller bounds `len` by `FETCH_INLINE_BYTES_MAX`. The
/// bytes were usually written a moment ago: a non-blocking `preadv2` (`RWF_NOWAIT`)
/// copies them from the page cache without an io_uring round trip, and refuses rather
/// than wait for the disk; what it does not give is read through io_uring.
async fn read_range(
    file: &compio::fs::File,
    position: u64,
    len: u64,
) -> Result<Vec<u8>, CloseReason> {
    let len =
        usize::try_from(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; len];
    let mut got = 0usize;
    while got < len {
        let slice = &mut [std::io::IoSliceMut::new(&mut buf[got..])];
        match rustix::io::preadv2(
            file,
            slice,
            position + got as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) if n > 0 => got += n,
            // The end of the file, not cached, or not supported: io_uring takes over.
            _ => break,
        }
    }
    if got == len {
        return Ok(buf);
    }
    let BufResult(res, buf) = file
        .read_exact_at(buf.slice(got..len), position + got as u64)
        .await;
    res?;
    Ok(buf.into_inner())
}
