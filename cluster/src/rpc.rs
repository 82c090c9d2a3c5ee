//! The controllers' wire: Raft's RPCs (vote, append entries, snapshot chunks) and the
//! brokers' requests to the active controller (proposals, heartbeats), over TCP on the
//! `controller_listen` address.
//!
//! A frame is `[length u32 BE][JSON]`, the length checked against `RPC_FRAME_BYTES_MAX`
//! before anything is allocated. One request in flight per connection; a client reconnects
//! after any error. JSON because the control plane carries a few small messages a second
//! and must be easy to inspect; the data path never comes here.

use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TypeConfig;
use crate::limits::{RPC_CONNECT_TIMEOUT, RPC_FRAME_BYTES_MAX};
use crate::metadata::{Applied, BrokerId, Command, MetadataError};

type NodeId = u64;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A command for the active controller to commit.
    Propose(Command),
    Heartbeat {
        id: BrokerId,
        incarnation: u64,
    },
    /// The quorum's replication state, from the active controller (DescribeQuorum).
    DescribeQuorum,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Propose(Result<Result<Applied, MetadataError>, ProposeError>),
    Heartbeat(Result<(), ProposeError>),
    DescribeQuorum(Result<QuorumState, ProposeError>),
}

/// The controller quorum as its active controller sees it, in Kafka's DescribeQuorum
/// terms: Raft's term is the leader epoch, offsets are log indexes plus one (the next
/// entry), times are milliseconds since the epoch (-1: never seen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumState {
    pub leader_id: BrokerId,
    pub leader_epoch: i32,
    /// Entries below it are committed (applied on the active controller).
    pub high_watermark: i64,
    pub voters: Vec<VoterState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterState {
    pub id: BrokerId,
    /// The end of what the active controller knows this voter holds.
    pub log_end_offset: i64,
    /// When its replication last moved forward (for the leader itself: now).
    pub last_fetch_ms: i64,
    /// When it last held everything the leader had.
    pub last_caught_up_ms: i64,
}

/// Why a proposal or heartbeat did not reach a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    #[error("not the active controller (the active one is {0:?})")]
    NotController(Option<BrokerId>),
    #[error("broker {0} is not registered with this incarnation")]
    StaleBroker(BrokerId),
    #[error("controller unavailable: {0}")]
    Unavailable(String),
}

pub async fn write_frame<T: Serialize>(stream: &mut TcpStream, value: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    if body.len() > RPC_FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "an RPC frame of {} bytes is over {RPC_FRAME_BYTES_MAX}",
            body.len()
        )));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

/// Reads one frame; `Ok(None)` when the peer closed between frames.
pub async fn read_frame<T: DeserializeOwned>(stream: &mut TcpStream) -> std::io::Result<Option<T>> {
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_be_bytes(header) as usize;
    if length > RPC_FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an RPC frame of {length} bytes is over {RPC_FRAME_BYTES_MAX}"),
        ));
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// One connection to one peer, opened on first use and again after any error.
pub struct Peer {
    addr: String,
    /// The address outgoing connections are bound to (this controller's own listen
    /// address), so that a network partition can be made by address in tests.
    source: Option<std::net::IpAddr>,
    stream: Option<TcpStream>,
}

impl Peer {
    pub fn new(addr: String, source: Option<std::net::IpAddr>) -> Self {
        Self {
            addr,
            source,
            stream: None,
        }
    }

    pub async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> std::io::Result<Response> {
        let result = tokio::time::timeout(timeout, self.call_inner(request)).await;
        let result = result.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from {} in {timeout:?}", self.addr),
            ))
        });
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn call_inner(&mut self, request: &Request) -> std::io::Result<Response> {
        if self.stream.is_none() {
            let stream =
                tokio::time::timeout(RPC_CONNECT_TIMEOUT, connect(&self.addr, self.source))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                    })??;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::Error::other("no connection"));
        };
        write_frame(stream, request).await?;
        read_frame(stream)
            .await?
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed"))
    }
}

/// Connects to `addr`, from `source` when given.
async fn connect(addr: &str, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let target = tokio::net::lookup_host(addr)
        .await?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("{addr}: no address of {source}'s family")))?;
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// openraft's view of the other controllers: connections from `source` when set.
pub struct Network {
    pub source: Option<std::net::IpAddr>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            target,
            peer: Peer::new(node.addr.clone(), self.source),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    peer: Peer,
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &mut self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, BasicNode, E>> {
        self.peer
            .call(&request, option.hard_ttl())
            .await
            .map_err(|e| {
                tracing::trace!(target_node = self.target, error = %e, "controller RPC failed");
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })
    }
}

fn remote<E: std::error::Error>(target: NodeId, e: E) -> RPCError<NodeId, BasicNode, E> {
    RPCError::RemoteError(openraft::error::RemoteError::new(target, e))
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("unexpected answer to {what}"),
    )))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(r) => r.map_err(|e| remote(self.target, e)),
            _ => Err(unexpected("append entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(r) => r.map_err(|e| remote(self.target, e)),
            _ => Err(unexpected("install snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(r) => r.map_err(|e| remote(self.target, e)),
            _ => Err(unexpected("vote")),
        }
    }
}
