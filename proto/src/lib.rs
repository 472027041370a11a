//! The wire protocol between the stagesync controller and its agents
//! (package `stagesync.v1`), generated from `proto/stagesync/v1/*.proto`.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("stagesync.v1");
}

pub mod tomlfile;

pub use v1::agent_client::AgentClient;
pub use v1::agent_server::{Agent, AgentServer};
