//! The destination side of a refresh: a fresh database, the incoming dump
//! restored into it, the post-restore SQL, and the swap on commit.
//!
//! - [`prepare`]: `PrepareRestore`: the checks, the job, the fresh database.
//! - [`push`]: `PushDump`: a peer's stream, its header checked against the
//!   shape the job was prepared for.
//! - [`from_backup`]: `RestoreBackup`: a backup in S3, framed like a stream.
//! - [`inbound`]: the one reader of incoming frames, for every path.
//! - [`stream`], [`lanes`]: what each shape does with them.
//! - [`restore`]: the `pg_restore` runs, the post-data pass, the
//!   post-restore SQL, and the end of a restore (ready, or failed).
//! - [`commit`]: `Commit` (the swap) and `Rollback`.

mod commit;
mod copy;
mod from_backup;
mod inbound;
mod lanes;
mod post_data;
mod prepare;
mod push;
mod restore;
mod stream;
mod ticket;

use std::sync::Arc;

use crate::config::AgentConfig;
use crate::jobs::{DestSetup, Job, Jobs};

pub use inbound::check_file_name;

/// Prepares, restores and commits the refreshes of this agent's databases.
pub struct Restorer {
    config: Arc<AgentConfig>,
    jobs: Arc<Jobs>,
}

impl Restorer {
    pub fn new(config: Arc<AgentConfig>, jobs: Arc<Jobs>) -> Self {
        Restorer { config, jobs }
    }
}

/// One job's restore: what every path needs.
struct RestoreRun<'a> {
    config: &'a AgentConfig,
    job: &'a Arc<Job>,
    setup: &'a DestSetup,
}
