//! Jobs: a refresh as one agent sees it.
//!
//! - [`Job`] (`job.rs`): its phase, byte counters, error and lease.
//! - [`Jobs`] (`registry.rs`): every job of this agent, by id and side.
//! - [`supervisor`]: aborts unwatched jobs and cleans up after failures.
//! - [`StepError`] (`step.rs`): what failed, and waiting for a tool.
//!
//! What a job does lives with its side: [`crate::source`] dumps and pushes,
//! [`crate::dest`] receives, restores and swaps.

mod job;
mod registry;
mod step;
pub mod supervisor;

pub use job::{DestSetup, Job, Side, WatchGuard};
pub use registry::Jobs;
pub use step::{Cause, StepError, finish_tool};
