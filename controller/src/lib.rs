//! The stagesync controller library: everything the `stagesync` CLI does
//! besides parsing arguments and drawing output.
//!
//! - [`client`]: mutual-TLS gRPC connections to agents, with identity checks
//!   and errors that say what to do.
//! - [`status`]: asking agents what they are and what they may do.

#![forbid(unsafe_code)]

pub mod ansible;
pub mod backup;
pub mod checks;
pub mod client;
pub mod dag;
pub mod history;
pub mod mask;
pub mod notify;
pub mod plan;
pub mod refresh;
pub mod run;
pub mod status;

pub use client::{AgentTarget, ClientError, connect};
