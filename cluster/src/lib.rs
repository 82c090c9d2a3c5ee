//! The cluster's control plane, as Kafka's KRaft: a quorum of controllers on an existing
//! Raft engine (openraft) commits the cluster metadata (broker registrations and liveness,
//! topics, and per partition replicas, leader, leader epoch, ISR and partition epoch);
//! every broker follows the committed metadata through a `MetadataView`.
//!
//! This crate knows nothing about the Kafka wire protocol, the broker's cores or the
//! storage engine: the broker submits `Command`s and reads `Metadata`. It runs on its own
//! OS thread with a tokio current-thread runtime (openraft 0.9 needs tokio) and talks to
//! the broker's compio cores only through runtime-agnostic channels and events.

use std::io::Cursor;

pub mod config;
pub mod controller;
pub mod limits;
pub mod log_store;
pub mod metadata;
pub mod placement;
pub mod rpc;
pub mod state_machine;

pub use config::{ControllerConfig, Voter, parse_voters};
pub use controller::{Controller, ControllerError, ControllerHandle};
pub use metadata::{
    Applied, BrokerId, BrokerRegistration, Command, Metadata, MetadataError, NO_LEADER,
    PartitionRecord, TopicRecord,
};
pub use rpc::{QuorumState, VoterState};
pub use state_machine::MetadataView;

openraft::declare_raft_types!(
    /// The controller's Raft types: commands in, apply results out.
    pub TypeConfig:
        D = metadata::Command,
        R = metadata::ApplyResult,
);
