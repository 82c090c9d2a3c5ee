//! Every bound of the control plane, with its unit.

use std::time::Duration;

/// Largest controller log record (one command, or a membership change).
pub const RAFT_RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Largest frame between controllers (an append of several entries, a snapshot chunk).
pub const RPC_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

pub const RPC_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a proposal or heartbeat forwarded to the active controller may take.
pub const RPC_PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections a controller serves at once (its peers and their brokers: a handful).
pub const RPC_CONNECTIONS_MAX: usize = 256;

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
