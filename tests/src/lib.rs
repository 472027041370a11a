//! Test harness shared by stagesync's integration tests: real PostgreSQL
//! clusters, a throwaway PKI and in-process agents, each in its own
//! temporary directory so tests never share state.
//!
//! - [`pg`]: `initdb` + `pg_ctl` clusters on their own unix socket
//!   (run as the `postgres` OS user when the tests run as root).
//! - [`pki`]: a fleet CA and certificates on disk.
//! - [`agent`]: agents served in-process on `127.0.0.1:0`, or run as the
//!   real binary.
//! - [`fleet`]: the standard test fleet (two clusters, their agents, a PKI,
//!   on request an S3 server and a plan), built with only what differs.
//! - [`wait`]: [`eventually`], and the rule for tests that need root.
//! - [`masked`]: the masking suites' production data, rules and fleet.
//! - [`demo`]: the `stagesync-demo` binary's throwaway fleet, built from
//!   these parts.

pub mod agent;
pub mod demo;
pub mod fixtures;
pub mod fleet;
pub mod masked;
pub mod pg;
pub mod pki;
pub mod proxy;
pub mod s3;
pub mod wait;

pub use agent::{AgentProcess, AgentSpec, TestAgent};
pub use fleet::{AgentRun, Fleet, FleetAgent};
pub use pg::PgCluster;
pub use pki::TestPki;
pub use wait::{eventually, require_root};

/// Installs a test-friendly tracing subscriber once (`RUST_LOG` to tune).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
