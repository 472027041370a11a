//! A job's supervisor: it aborts the job when no controller watches it any
//! more (or, on the destination, when the stream never came), and after a
//! failure or abort waits for the job's pipeline to stop its processes,
//! then removes what the job made: the new database and the work directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stagesync_proto::v1 as pb;

use super::{Job, Side};
use crate::config::AgentConfig;
use crate::db;

/// How often the supervisor looks at its job's lease.
const LEASE_CHECK: Duration = Duration::from_millis(250);

/// Starts the supervisor of `job`.
pub fn spawn(config: Arc<AgentConfig>, job: Arc<Job>) {
    tokio::spawn(async move {
        watch_lease(&config, &job).await;
        if matches!(job.phase(), pb::Phase::Failed | pb::Phase::Aborted) {
            // Wait until the pipeline has killed and reaped its tools.
            let _running = job.pipeline.lock().await;
            clean_up(&config, &job).await;
        }
    });
}

/// Returns once the job ended, or was aborted for a lapsed lease.
async fn watch_lease(config: &AgentConfig, job: &Job) {
    let limits = &config.jobs;
    loop {
        tokio::select! {
            _ = job.cancel.cancelled() => return,
            _ = tokio::time::sleep(LEASE_CHECK) => {}
        }
        if job.is_terminal() {
            return;
        }
        let unwatched = job.unwatched_for();
        // A job that is committing cannot be aborted; keep watching it.
        if unwatched > limits.controller_timeout
            && job
                .abort(&format!(
                    "no controller has watched this job for {} s (jobs.controller_timeout_secs): the controller is gone",
                    unwatched.as_secs()
                ))
                .is_ok()
        {
            return;
        }
        if let Some(d) = &job.dest
            && job.phase() == pb::Phase::Waiting
            && Instant::now() > d.ticket_expires
        {
            let _ = job.abort("the source agent did not start streaming before the ticket expired");
            return;
        }
    }
}

/// Drops the job's unfinished database and removes its work directory.
async fn clean_up(config: &AgentConfig, job: &Job) {
    if job.side == Side::Dest {
        let ledger = db::Ledger::new(&config.work_dir);
        match db::drop_database(&config.postgres, &ledger, &job.new_database).await {
            Ok(()) => {
                tracing::info!(job = %job.id, database = %job.new_database, "dropped the unfinished database")
            }
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "could not drop the unfinished database; it is dropped when the agent next starts")
            }
        }
    }
    remove_work_dir(job.work_dir.as_deref()).await;
}

/// Removes a job's work directory, if it has one.
pub async fn remove_work_dir(dir: Option<&Path>) {
    if let Some(dir) = dir
        && let Err(e) = tokio::fs::remove_dir_all(dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove the job's work directory");
    }
}

/// Where jobs keep their files under the agent's work directory.
pub fn jobs_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("jobs")
}

/// Removes what crashed jobs left in the work directory.
pub async fn clean_work_dir(work_dir: &Path) {
    let jobs = jobs_dir(work_dir);
    match tokio::fs::remove_dir_all(&jobs).await {
        Ok(()) => tracing::info!(dir = %jobs.display(), "removed leftover job directories"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %jobs.display(), error = %e, "could not remove leftover job directories")
        }
    }
}
