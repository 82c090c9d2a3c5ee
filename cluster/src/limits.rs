//! Every bound of the control plane, with its unit.

use std::time::Duration;

/// Largest controller log record (one command, or a membership change). Commands name a
/// topic and its configs, and at most the replica lists a client assigned by hand
/// (bounded by the brokers before proposing). A larger command is refused before Raft
/// sees it: Raft stops on a log entry it cannot store.
pub const RAFT_RECORD_BYTES_MAX: usize = 1024 * 1024;

/// Largest command proposed: a record's entry wraps the command with its log id and
/// framing, so the command stays well below `RAFT_RECORD_BYTES_MAX`.
pub const COMMAND_BYTES_MAX: usize = RAFT_RECORD_BYTES_MAX / 2;

/// Largest frame between controllers: an append of several entries, a snapshot chunk
/// (`SNAPSHOT_CHUNK_BYTES_MAX`, about 4x larger as JSON numbers), or the answer to a
/// proposal (a created topic's whole assignment). Anyone who can reach the controller
/// port can make it allocate this much per connection, up to `RPC_CONNECTIONS_MAX`.
pub const RPC_FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Snapshot bytes per InstallSnapshot RPC.
pub const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 1024 * 1024;

/// A controller connection with no request for this long is closed (peers heartbeat
/// many times a second).
pub const RPC_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub const RPC_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a proposal or heartbeat forwarded to the active controller may take.
pub const RPC_PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections a controller serves at once (its peers and their brokers: a handful).
pub const RPC_CONNECTIONS_MAX: usize = 64;

/// Requests from the broker waiting for the controller thread.
pub const REQUEST_QUEUE_DEPTH_MAX: usize = 1024;

/// How long a proposal may wait for an active controller before it fails.
pub const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);

/// Pause between tries while no controller is active.
pub const PROPOSE_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How often the active controller checks broker sessions.
pub const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Most voters a quorum may name.
pub const VOTERS_MAX: usize = 9;
