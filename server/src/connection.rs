//! One client connection: read a frame, handle it, write the response, in order, one
//! request at a time (as Kafka's own broker does, so responses keep request order).
//! A frame whose length is out of bounds, an unknown API, an unsupported version or a
//! body that does not decode closes this connection and nothing else.

use std::rc::Rc;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::{AsyncReadAtExt, AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;

use crate::fetch_response::Piece;
use crate::handlers;
use crate::protocol::{self, Frame, FrameError};
use crate::shard::Shard;

/// Bytes moved per splice step; also the copy-path chunk.
const SEND_CHUNK_BYTES: usize = 1024 * 1024;

/// Why a connection was closed by the broker.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("idle for {0:?}")]
    Idle(std::time::Duration),
    #[error(transparent)]
    Decode(#[from] protocol::DecodeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves one connection; the shard counted it in when it accepted it.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, peer: std::net::SocketAddr) {
    let mut sender = ResponseSender {
        stream: &stream,
        pipe: None,
        zero_copy: shard.config().fetch_zero_copy
            && compio::runtime::Runtime::with_current(|rt| rt.driver_type().is_iouring()),
    };
    let result = serve_requests(&shard, &stream, &mut sender, peer).await;
    match result {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(CloseReason::Io(e)) => tracing::debug!(%peer, error = %e, "connection ended"),
        Err(reason) => tracing::warn!(%peer, %reason, "closing connection"),
    }
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
    let idle = std::time::Duration::from_millis(shard.config().connections_max_idle_ms);
    loop {
        let frame = {
            // A connection that sends nothing, or only part of a frame, for `idle` is
            // closed (Kafka's connections.max.idle.ms), so it cannot hold a slot forever.
            let read = std::pin::pin!(async {
                compio::time::timeout(idle, read_frame(stream, max))
                    .await
                    .map_err(|_| CloseReason::Idle(idle))?
            });
            let stop = std::pin::pin!(shard.shared.stopped());
            match futures_util::future::select(read, stop).await {
                futures_util::future::Either::Left((frame, _)) => frame?,
                futures_util::future::Either::Right(_) => return Ok(()),
            }
        };
        let Some(frame) = frame else {
            return Ok(());
        };
        if let Some(pieces) = handle_frame(shard, frame, peer).await? {
            sender.send(pieces).await?;
        }
    }
}

/// Reads one length-prefixed frame; `None` at a clean end of stream. Only Produce may use
/// the full `max`; the API key is read before the rest of the frame is allocated.
async fn read_frame(stream: &TcpStream, max: usize) -> Result<Option<Vec<u8>>, CloseReason> {
    let mut reader = stream;
    let BufResult(res, len) = reader.read_exact([0u8; 4]).await;
    match res {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = protocol::check_frame_length(i32::from_be_bytes(len), max)?;
    let BufResult(res, key) = reader.read_exact([0u8; 2]).await;
    res?;
    protocol::check_frame_length_for_api(len, i16::from_be_bytes(key))?;
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(&key);
    let BufResult(res, frame) = reader.read_exact(frame.slice(2..len)).await;
    res?;
    Ok(Some(frame.into_inner()))
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

    async fn write_buffers(&mut self, buffers: Vec<Vec<u8>>) -> Result<(), CloseReason> {
        if buffers.is_empty() {
            return Ok(());
        }
        let mut writer = self.stream;
        let BufResult(res, _) = writer.write_vectored_all(buffers).await;
        Ok(res?)
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
        let Some((rx, tx)) = &self.pipe else {
            return Ok(());
        };
        let mut offset = position;
        let mut left = len;
        while left > 0 {
            let step = left.min(SEND_CHUNK_BYTES as u64) as usize;
            let moved = splice(file, tx, step).offset_in(offset as i64).await?;
            if moved == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment shorter than its range",
                )
                .into());
            }
            let mut drained = 0;
            while drained < moved {
                let n = splice(rx, self.stream, moved - drained).await?;
                if n == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                }
                drained += n;
            }
            offset += moved as u64;
            left -= moved as u64;
        }
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
            let mut writer = self.stream;
            let BufResult(res, _) = writer.write_all(buf.into_inner()).await;
            res?;
            offset += step as u64;
            left -= step as u64;
        }
        Ok(())
    }
}
