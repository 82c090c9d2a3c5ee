//! The Kafka protocol layer: connections, request framing and bounds, the hand-written
//! Fetch response, and one handler module per API group.

pub mod client;
pub mod connection;
pub mod fetch_response;
pub mod handlers;
pub mod protocol;
pub mod request_bounds;
