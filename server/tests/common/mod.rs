//! The workspace's one test harness (`testkit`): the broker binary, bounded tools.
#![allow(unused_imports)]

pub use testkit::{
    Broker, Tmpfs, bounded, require_python_clients, require_python_test_tools, require_tool,
};
