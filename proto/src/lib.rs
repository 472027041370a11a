//! The wire protocol between the stagesync controller and its agents
//! (package `stagesync.v1`), generated from `proto/stagesync/v1/*.proto`.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("stagesync.v1");
}

pub mod tomlfile;

pub use v1::agent_client::AgentClient;
pub use v1::agent_server::{Agent, AgentServer};

/// Info lists this feature when the agent can split a stream-mode dump:
/// pre-data and data streamed, the post-data section sent after them as a
/// file and restored by several workers (`StartDumpRequest.split_post_data`).
pub const FEATURE_SPLIT_POST_DATA: &str = "split-post-data";

/// Info lists this feature when the agent can move a split stream's data in
/// several concurrent lanes (`StartDumpRequest.data_lanes`).
pub const FEATURE_DATA_LANES: &str = "data-lanes";

/// The most data lanes one refresh may use (each a pg_dump on the source
/// and a pg_restore on the destination).
pub const MAX_DATA_LANES: u32 = 8;
