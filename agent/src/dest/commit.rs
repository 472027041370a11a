//! `Commit` swaps a restored database in (one transaction, so the live
//! database is either replaced or untouched); `Rollback` swaps the previous
//! copy back.

use std::sync::Arc;

use stagesync_proto::v1 as pb;

use super::Restorer;
use crate::db;
use crate::error::AgentError;
use crate::jobs::{Job, Side, supervisor};
use crate::policy;

impl Restorer {
    /// `Commit`: swap the restored database in. The swap runs in its own
    /// task, so a caller that goes away mid-commit cannot leave it half done.
    pub async fn commit(self: &Arc<Self>, job_id: &str) -> Result<pb::CommitResponse, AgentError> {
        let name = &self.config.name;
        let job = self.jobs.get(job_id, Side::Dest).ok_or_else(|| {
            AgentError::not_found(name, format!("no destination job {job_id:?} here"))
        })?;
        if job.phase() != pb::Phase::Ready || !job.advance(pb::Phase::Committing) {
            return Err(AgentError::precondition(
                name,
                format!("job {job_id} is {:?}, not ready to commit", job.phase()),
            ));
        }
        let this = self.clone();
        tokio::spawn(async move { this.swap(&job).await })
            .await
            .unwrap_or_else(|e| {
                Err(AgentError::internal(
                    name,
                    format!("the swap task failed: {e}"),
                ))
            })
    }

    async fn swap(&self, job: &Job) -> Result<pb::CommitResponse, AgentError> {
        let closed = self.config.work_dir.join("closed");
        match db::swap_in(
            &self.config.postgres,
            &db::Ledger::new(&self.config.work_dir),
            &closed,
            &job.new_database,
            &job.database,
        )
        .await
        {
            Ok(previous) => {
                job.advance(pb::Phase::Committed);
                tracing::info!(job = %job.id, database = %job.database, %previous, "committed");
                supervisor::remove_work_dir(job.work_dir.as_deref()).await;
                Ok(pb::CommitResponse {
                    database: job.database.clone(),
                    previous_database: previous,
                })
            }
            Err(e) => {
                let message = format!("swap failed, the live database is unchanged: {e}");
                job.commit_failed(message.clone());
                Err(AgentError::internal(&self.config.name, message))
            }
        }
    }

    /// `Rollback`: the previous copy of `database` back in. One at a time
    /// per database, never during its refresh; it runs in its own task, so
    /// a caller that goes away cannot leave it half done.
    pub async fn rollback(&self, database: &str) -> Result<pb::RollbackResponse, AgentError> {
        let name = &self.config.name;
        policy::may_overwrite(&self.config, database)?;
        let claim = self
            .jobs
            .claim_rollback(database)
            .map_err(|busy| AgentError::precondition(name, busy))?;
        let (config, db) = (self.config.clone(), database.to_string());
        let rolled = tokio::spawn(async move {
            let _claim = claim;
            let closed = config.work_dir.join("closed");
            db::rollback(&config.postgres, &closed, &db).await
        })
        .await
        .map_err(|e| AgentError::internal(name, format!("the rollback task failed: {e}")))?;
        let previous = rolled.map_err(|e| AgentError::precondition(name, e.0))?;
        tracing::info!(database, %previous, "rolled back");
        Ok(pb::RollbackResponse {
            database: database.to_string(),
            previous_database: previous,
        })
    }
}
