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
use crate::kafka::protocol::{self, Frame, FrameError};
use crate::metrics::CloseKind;
use crate::runtime::limits::{ConnectionSlot, MemoryPermit, RequestMemory};
use crate::runtime::shard::Shard;

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
}

impl CloseReason {
    fn kind(&self) -> CloseKind {
        match self {
            CloseReason::Frame(FrameError::FrameLength(_)) => CloseKind::FrameTooLarge,
            CloseReason::Idle(_) => CloseKind::Idle,
            CloseReason::SendTimeout(_) => CloseKind::SendTimeout,
            CloseReason::Frame(_) | CloseReason::Decode(_) => CloseKind::BadRequest,
            CloseReason::Io(_) => CloseKind::Io,
        }
    }
}

/// Serves one connection; the shard counted it in when it accepted it, and `slot` holds
/// its place in the broker's connection limits until it ends.
pub async fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    slot: ConnectionSlot,
) {
    let mut sender = ResponseSender {
        stream: &stream,
        pipe: None,
        zero_copy: shard.config().fetch_zero_copy
            && compio::runtime::Runtime::with_current(|rt| rt.driver_type().is_iouring()),
        timeout: Duration::from_millis(shard.config().connections_send_timeout_ms),
        splicing: false,
    };
    let result = serve_requests(&shard, &stream, &mut sender, peer).await;
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
        Err(reason) => tracing::warn!(%peer, %reason, "closing connection"),
    }
    drop(stream);
    drop(slot);
    shard
        .connections
        .set(shard.connections.get().saturating_sub(1));
}

async fn serve_requests(
    shard: &Rc<Shard>,
    stream: &TcpStream,
    sender: &mut ResponseSender<'_>,
    peer: std::net::SocketAddr,
) -> Result<(), CloseReason> {
    let max = shard.config().socket_request_max_bytes;
    let idle = Duration::from_millis(shard.config().connections_max_idle_ms);
    let memory = &shard.shared.request_memory;
    let metrics = shard.shared.metrics.core(shard.id);
    let mut reader = FrameReader::new();
    loop {
        let frame = {
            // A connection that sends nothing, or only part of a frame, for `idle` is
            // closed (Kafka's connections.max.idle.ms), so it cannot hold a slot forever.
            // Waiting for request memory counts as idle too.
            let read = std::pin::pin!(async {
                compio::time::timeout(idle, reader.next(stream, max, memory))
                    .await
                    .map_err(|_| CloseReason::Idle(idle))?
            });
            let stop = std::pin::pin!(shard.shared.stopped());
            match futures_util::future::select(read, stop).await {
                futures_util::future::Either::Left((frame, _)) => frame?,
                futures_util::future::Either::Right(_) => return Ok(()),
            }
        };
        let Some((frame, permit)) = frame else {
            return Ok(());
        };
        let started = Instant::now();
        let (api_key, version) = match frame.get(..4) {
            Some(&[a, b, c, d]) => (i16::from_be_bytes([a, b]), i16::from_be_bytes([c, d])),
            _ => return Err(FrameError::FrameLength(frame.len() as i64).into()),
        };
        let response = handle_frame(shard, frame, peer).await?;
        // The request's bytes are gone once its response is built; the response holds
        // no budget (file ranges, and small encoded parts).
        drop(permit);
        if let Some(pieces) = response {
            sender.send(pieces).await?;
        }
        metrics.observe_request(api_key, version, started.elapsed());
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
        Ok(res? > 0)
    }
}

async fn handle_frame(
    shard: &Rc<Shard>,
    frame: Vec<u8>,
    peer: std::net::SocketAddr,
) -> Result<Option<Vec<Piece>>, CloseReason> {
    let request = match protocol::decode_frame(frame)? {
        Frame::ApiVersionsUnsupported { correlation_id } => {
            return Ok(Some(vec![Piece::Bytes(
                handlers::api_versions::unsupported(correlation_id)?,
            )]));
        }
        Frame::Request(r) => r,
    };
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
        client_host: format!("/{}", peer.ip()),
        peer: peer.ip(),
        body: Some(request.body),
    };
    Ok(handlers::handle(shard, request).await?)
}

/// Writes responses: memory pieces by vectored writes, file ranges by io_uring splice
/// (file -> pipe -> socket, never through user space), or by a copy where splice is not
/// available (the polling fallback driver).
struct ResponseSender<'a> {
    stream: &'a TcpStream,
    pipe: Option<(compio::fs::pipe::Receiver, compio::fs::pipe::Sender)>,
    zero_copy: bool,
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
        for piece in pieces {
            match piece {
                Piece::Bytes(b) => pending.push(b),
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
        while !buffers.is_empty() {
            let mut writer = self.stream;
            let BufResult(res, back) = self.timed(writer.write_vectored(buffers)).await?;
            buffers = back;
            let mut written = res?;
            if written == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            // Drop what went out: whole buffers, then the front of a partial one.
            let whole = buffers
                .iter()
                .take_while(|b| {
                    let fits = b.len() <= written;
                    if fits {
                        written -= b.len();
                    }
                    fits
                })
                .count();
            buffers.drain(..whole);
            if written > 0
                && let Some(first) = buffers.first_mut()
            {
                first.drain(..written);
            }
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
