//! A minimal Kafka client, for what one broker asks another: a follower's Fetch and
//! OffsetForLeaderEpoch to its leader. One request in flight per connection; every
//! response length is bounded before anything is allocated for it.
//!
//! Why by hand: the Rust Kafka clients (rdkafka, rskafka) are consumer/producer APIs
//! with no replica fetch (`replica_id`) and no OffsetForLeaderEpoch; the wire encoding
//! itself is the `kafka-protocol` crate's, as on the serving side.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use compio::BufResult;
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("i/o with the leader: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("response of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed response: {0}")]
    Malformed(String),
}

pub struct KafkaClient {
    stream: TcpStream,
    correlation_id: i32,
    client_id: StrBytes,
    timeout: Duration,
}

impl KafkaClient {
    /// Connects to `addr` (host:port), from `source` when given: brokers bind their
    /// outgoing connections to their own listen address.
    pub async fn connect(
        addr: &str,
        source: Option<std::net::IpAddr>,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let connect = connect_from(addr, source);
        let stream = match compio::time::timeout(timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    addr: addr.to_owned(),
                    source,
                });
            }
            Err(_) => return Err(ClientError::Timeout(timeout)),
        };
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            correlation_id: 0,
            client_id: StrBytes::from_string(client_id.to_owned()),
            timeout,
        })
    }

    /// Sends one request and waits for its response, at most `extra_wait` longer than
    /// the client's timeout (a long-polling fetch waits on the server's side).
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
        extra_wait: Duration,
        response_max: usize,
    ) -> Result<Resp, ClientError> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        header
            .encode(&mut buf, key.request_header_version(version))
            .map_err(|e| ClientError::Malformed(e.to_string()))?;
        request
            .encode(&mut buf, version)
            .map_err(|e| ClientError::Malformed(e.to_string()))?;
        let len = i32::try_from(buf.len() - 4).map_err(|_| ClientError::TooLarge(buf.len()))?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let wait = self.timeout + extra_wait;
        let exchange = async {
            let BufResult(written, _) = self.stream.write_all(buf.to_vec()).await;
            written?;
            let BufResult(read, prefix) = self.stream.read_exact(Vec::with_capacity(4)).await;
            read?;
            let len = prefix
                .get(..4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(-1);
            let len = usize::try_from(len).map_err(|_| ClientError::TooLarge(0))?;
            if len > response_max {
                return Err(ClientError::TooLarge(len));
            }
            let BufResult(read, body) = self.stream.read_exact(Vec::with_capacity(len)).await;
            read?;
            Ok::<_, ClientError>(body)
        };
        let body = match compio::time::timeout(wait, exchange).await {
            Ok(result) => result?,
            Err(_) => return Err(ClientError::Timeout(wait)),
        };
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, key.response_header_version(version))
            .map_err(|e| ClientError::Malformed(e.to_string()))?;
        if header.correlation_id != correlation_id {
            return Err(ClientError::Malformed(format!(
                "correlation id {} for request {correlation_id}",
                header.correlation_id
            )));
        }
        crate::kafka::request_bounds::check_response(key, version, &body)
            .map_err(|e| ClientError::Malformed(e.to_owned()))?;
        let response =
            Resp::decode(&mut body, version).map_err(|e| ClientError::Malformed(e.to_string()))?;
        if body.has_remaining() {
            tracing::debug!(
                left = body.remaining(),
                "response carried bytes past its body"
            );
        }
        Ok(response)
    }
}

async fn connect_from(addr: &str, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    use compio::net::ToSocketAddrsAsync;
    let target = addr
        .to_socket_addrs_async()
        .await?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("{addr}: no address of {source}'s family")))?;
    let socket = if source.is_ipv4() {
        compio::net::TcpSocket::new_v4().await?
    } else {
        compio::net::TcpSocket::new_v6().await?
    };
    socket.bind(std::net::SocketAddr::new(source, 0)).await?;
    socket.connect(target).await
}
