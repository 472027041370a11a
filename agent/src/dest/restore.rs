//! What every restore path shares: the choice of path by the stream's
//! shape, `pg_restore` into the job's new database (from its stdin or a
//! landed archive), the post-data pass, the post-restore SQL, and the end
//! of a restore (ready to commit, or failed).

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;

use futures::Stream;
use stagesync_proto::v1 as pb;
use tonic::Status;

use super::RestoreRun;
use super::inbound::{FileCap, Inbound};
use crate::args;
use crate::db;
use crate::jobs::{StepError, finish_tool};
use crate::procs::{self, Program};

/// A split stream's schema file is DDL, not data: anything near this size
/// is a broken or hostile peer filling the disk.
const MAX_SCHEMA_FILE: u64 = 2 << 30;

/// Landed files stop before the work directory's file system has less than
/// this free.
const KEEP_FREE: u64 = 256 << 20;

impl RestoreRun<'_> {
    /// Restores what `inbound` brings, the way `shape` says, then runs the
    /// post-restore SQL.
    pub(super) async fn restore<S>(
        &self,
        inbound: Inbound<S>,
        shape: &pb::Shape,
        lane_tables: &[pb::LaneTable],
    ) -> Result<(), StepError>
    where
        S: Stream<Item = Result<pb::DumpFrame, Status>> + Unpin,
    {
        match shape.lanes() {
            1 => self.stream(inbound, shape.post_data_file).await?,
            lanes => self.lanes(inbound, lanes, lane_tables).await?,
        }
        self.post_restore().await?;
        self.hand_over().await
    }

    /// What the job's login made goes to the owner; the login is dropped.
    async fn hand_over(&self) -> Result<(), StepError> {
        db::hand_over(
            &self.config.postgres,
            &self.setup.login,
            &self.setup.owner,
            &self.job.new_database,
        )
        .await
        .map_err(|e| StepError::new(pb::Step::PgRestore, e.0))
    }

    /// Ends a restore: the job is ready to commit, or failed. A failure's
    /// reason is an abort's own reason when an abort caused it.
    pub(super) fn conclude(&self, result: Result<(), StepError>) -> Result<(), String> {
        let job = self.job;
        match result {
            Ok(()) => {
                job.advance(pb::Phase::Ready);
                tracing::info!(job = %job.id, bytes = job.restored.load(Ordering::Relaxed), "restored; ready to commit");
                Ok(())
            }
            Err(e) => {
                let (step, reason) = (e.step, format!("{} failed: {}", e.step, e.message));
                job.fail(e);
                Err(match job.abort_reason() {
                    Some(why) => format!("{why} (the job was at step {step})"),
                    None => reason,
                })
            }
        }
    }

    /// The cap on a landed schema file (lowered only by a test fault).
    pub(super) fn schema_cap(&self) -> FileCap {
        FileCap {
            max: self
                .config
                .faults
                .max_schema_file
                .unwrap_or(MAX_SCHEMA_FILE),
            keep_free: self.keep_free(),
            what: "schema file",
            advice: "; refresh with --jobs 1 to restore in one pass",
        }
    }

    /// The job's login and owner, for its `pg_restore` runs.
    fn restore_as(&self) -> args::RestoreAs<'_> {
        args::RestoreAs {
            login: &self.setup.login.role,
            owner: &self.setup.owner,
        }
    }

    /// What landed files leave free (raised only by a test fault).
    fn keep_free(&self) -> u64 {
        self.config.faults.keep_free.unwrap_or(KEEP_FREE)
    }

    /// The environment `pg_restore` logs in with, as the job's login.
    async fn tool_env(&self) -> Result<Vec<(&'static str, String)>, StepError> {
        self.setup
            .login
            .tool_env(&self.config.postgres)
            .await
            .map_err(|e| StepError::new(pb::Step::PgRestore, e.to_string()))
    }

    /// Starts a `pg_restore` into the job's new database that reads a
    /// custom-format archive on its stdin.
    pub(super) async fn restore_from_stdin(&self) -> Result<procs::Tool, StepError> {
        let pg = &self.config.postgres;
        let argv = args::pg_restore(
            pg,
            &self.job.new_database,
            self.restore_as(),
            &self.setup.restore,
            args::RestoreFrom::Stdin,
        )
        .map_err(|e| StepError::new(pb::Step::PgRestore, e))?;
        procs::spawn(
            &pg.bin_dir,
            Program::PgRestore,
            &argv,
            &pg.restore_settings,
            &self.tool_env().await?,
            Stdio::piped(),
            Stdio::null(),
        )
        .map_err(|e| StepError::new(pb::Step::PgRestore, format!("cannot start pg_restore: {e}")))
    }

    /// Runs `pg_restore` on a landed archive to its end.
    pub(super) async fn restore_from(&self, from: args::RestoreFrom<'_>) -> Result<(), StepError> {
        let pg = &self.config.postgres;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let settings = args::restore_settings(&pg.restore_settings, from.workers(), cores);
        let argv = args::pg_restore(
            pg,
            &self.job.new_database,
            self.restore_as(),
            &self.setup.restore,
            from,
        )
        .map_err(|e| StepError::new(pb::Step::PgRestore, e))?;
        let mut tool = procs::spawn(
            &pg.bin_dir,
            Program::PgRestore,
            &argv,
            &settings,
            &self.tool_env().await?,
            Stdio::null(),
            Stdio::null(),
        )
        .map_err(|e| {
            StepError::new(pb::Step::PgRestore, format!("cannot start pg_restore: {e}"))
        })?;
        finish_tool(self.job, &mut tool, true, &self.job.new_database).await
    }

    /// Indexes, constraints and triggers: the post-data section of a landed
    /// schema archive, built by `setup.jobs` workers.
    pub(super) async fn post_data(&self, file: &Path) -> Result<(), StepError> {
        self.post_data_pass(file, None).await
    }

    /// The post-data items `list` names (the others were built already).
    pub(super) async fn post_data_listed(&self, file: &Path, list: &Path) -> Result<(), StepError> {
        self.post_data_pass(file, Some(list)).await
    }

    async fn post_data_pass(&self, file: &Path, list: Option<&Path>) -> Result<(), StepError> {
        let job = self.job;
        let workers = self.setup.jobs.max(1);
        job.post_data_jobs.store(workers, Ordering::Relaxed);
        if !job.advance(pb::Phase::Indexing) {
            return Err(StepError::cancelled(pb::Step::PgRestore));
        }
        tracing::info!(job = %job.id, workers, "data restored; building indexes, constraints and triggers");
        let from = match list {
            None => args::RestoreFrom::PostDataOf(file, workers),
            Some(list) => args::RestoreFrom::PostDataListed {
                file,
                list,
                jobs: workers,
                alongside: workers,
            },
        };
        self.restore_from(from).await.map_err(|e| {
            e.context(format_args!(
                "building indexes, constraints and triggers ({workers} workers)"
            ))
        })?;
        let _ = tokio::fs::remove_file(file).await;
        Ok(())
    }

    /// Staging's kept rows and emptied tables, then the post-restore SQL,
    /// in one transaction as the owner.
    async fn post_restore(&self) -> Result<(), StepError> {
        let finish = db::Finish {
            login: &self.setup.login,
            owner: &self.setup.owner,
            live: &self.job.database,
            staging: &self.setup.staging,
            sql: &self.setup.post_sql,
        };
        if finish.is_empty() {
            return Ok(());
        }
        self.job.advance(pb::Phase::PostRestore);
        let kept = db::post_restore(&self.config.postgres, &self.job.new_database, finish)
            .await
            .map_err(|e| StepError::new(pb::Step::PostRestoreSql, e.0))?;
        self.job.rows_kept.store(kept.rows, Ordering::Relaxed);
        self.job
            .nothing_to_keep
            .store(kept.no_live_database, Ordering::Relaxed);
        if kept.no_live_database {
            tracing::info!(job = %self.job.id, "no live database yet: no rows of staging's own to keep");
        } else if !self.setup.staging.keep.is_empty() {
            tracing::info!(job = %self.job.id, rows = kept.rows, "kept staging's own rows");
        }
        Ok(())
    }
}
