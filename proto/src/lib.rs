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
