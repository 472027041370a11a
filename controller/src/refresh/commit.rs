//! The end of a refresh on the destination: the commit (the swap), what
//! happened to a commit whose answer was lost, an abort of every agent
//! involved, and a rollback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stagesync_proto::v1 as pb;
use tonic::transport::Channel;

use super::RefreshError;
use super::follow::phase;
use super::spec::PairSpec;
use crate::client::{self, AgentTarget, ClientTls};
use crate::status;

/// Commits a ready job on the destination (the swap).
pub async fn commit<T: ClientTls>(
    tls: Arc<T>,
    spec: &PairSpec,
    dest: &mut stagesync_proto::AgentClient<Channel>,
    job_id: &str,
    prepared: &pb::PrepareRestoreResponse,
) -> Result<pb::CommitResponse, RefreshError> {
    let req = pb::CommitRequest {
        job_id: job_id.to_string(),
    };
    match dest.commit(req).await {
        Ok(c) => Ok(c.into_inner()),
        Err(status) => commit_outcome(tls, spec, job_id, prepared, status).await,
    }
}

/// How long to keep asking how a commit whose answer was lost ended.
const OUTCOME_DEADLINE: Duration = Duration::from_secs(120);

/// After a commit call that got no answer, asks the destination how the
/// job ended: the swap runs to its end on the agent whatever the caller does.
async fn commit_outcome<T: ClientTls>(
    tls: Arc<T>,
    spec: &PairSpec,
    job_id: &str,
    prepared: &pb::PrepareRestoreResponse,
    status: tonic::Status,
) -> Result<pb::CommitResponse, RefreshError> {
    let answered = !matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    );
    if answered {
        return Err(RefreshError::Agent(client::explain(&spec.dest, &status)));
    }
    let deadline = Instant::now() + OUTCOME_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(info) = status::info(tls.clone(), &spec.dest).await
            && let Some(job) = info
                .jobs
                .iter()
                .find(|j| j.job_id == job_id && j.side == pb::Side::Dest as i32)
        {
            match phase(job) {
                pb::Phase::Committed => {
                    return Ok(pb::CommitResponse {
                        database: spec.dest_db.clone(),
                        previous_database: prepared.previous_database.clone(),
                    });
                }
                pb::Phase::Failed | pb::Phase::Aborted => {
                    return Err(RefreshError::from(job.error.clone().unwrap_or_default()));
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(RefreshError::Lost(
        format!("the destination agent ({})", spec.dest.address),
        format!(
            "the commit got no answer ({}) and the job's outcome could not be read: check `stagesync status` before retrying",
            status.message()
        ),
    ))
}

/// Asks every agent of the pair to abort `job_id` (best effort: an agent
/// that cannot be reached aborts on its own once nobody watches the job).
pub async fn abort_all<T: ClientTls>(tls: Arc<T>, spec: &PairSpec, job_id: &str, reason: &str) {
    for target in spec.agents() {
        if let Ok(mut c) = client::connect(tls.clone(), target).await {
            let mut req = tonic::Request::new(pb::AbortRequest {
                job_id: job_id.to_string(),
                reason: reason.to_string(),
                side: pb::Side::Unspecified as i32,
            });
            req.set_timeout(Duration::from_secs(10));
            let _ = c.abort(req).await;
        }
    }
}

/// Swaps the previous copy of `database` back in on `dest`.
pub async fn rollback<T: ClientTls>(
    tls: Arc<T>,
    dest: &AgentTarget,
    database: &str,
) -> Result<pb::RollbackResponse, RefreshError> {
    let mut c = client::connect(tls, dest).await?;
    c.rollback(pb::RollbackRequest {
        database: database.to_string(),
    })
    .await
    .map(|r| r.into_inner())
    .map_err(|s| RefreshError::Agent(client::explain(dest, &s)))
}
