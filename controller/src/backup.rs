//! `stagesync backup`: asks an agent to back a database up into S3, and
//! follows it to the end.

use std::sync::Arc;

use stagesync_proto::v1 as pb;

use crate::client::{self, AgentTarget, ClientError, ClientTls};
use crate::plan::BackupPlan;

/// The agent's request for one database, from the plan's `[backups]`.
pub fn request(plan: &BackupPlan, database: &str) -> pb::BackupRequest {
    let place = |loc: &stagesync_s3::S3Location| pb::S3Place {
        bucket: loc.bucket.clone(),
        prefix: loc.prefix.clone(),
        profile: plan.side.profile.clone().unwrap_or_default(),
        region: plan.side.region.clone().unwrap_or_default(),
        endpoint: plan.side.endpoint.clone().unwrap_or_default(),
    };
    pb::BackupRequest {
        database: database.to_string(),
        daily: Some(place(&plan.daily)),
        weekly: plan.weekly.as_ref().map(place),
        weekly_days: plan.weekly_days.clone(),
        keep_daily: plan.keep_daily,
        keep_weekly: plan.keep_weekly,
        dump: None,
    }
}

/// Runs one backup on `target`, calling `progress` as it goes. Dropping
/// the returned future (Ctrl-C) closes the stream, which cancels the backup
/// on the agent and aborts its upload.
pub async fn run<T: ClientTls>(
    tls: Arc<T>,
    target: &AgentTarget,
    req: pb::BackupRequest,
    mut progress: impl FnMut(&pb::BackupProgress),
) -> Result<pb::BackupDone, ClientError> {
    let mut client = client::connect(tls, target).await?;
    let mut events = client
        .backup(req)
        .await
        .map_err(|s| client::explain(target, &s))?
        .into_inner();
    loop {
        match events.message().await {
            Ok(Some(pb::BackupEvent {
                kind: Some(pb::backup_event::Kind::Progress(p)),
            })) => progress(&p),
            Ok(Some(pb::BackupEvent {
                kind: Some(pb::backup_event::Kind::Done(d)),
            })) => return Ok(d),
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(ClientError::Unreachable {
                    target: target.label(),
                    message: "the backup stream ended without a result; see the agent's log".into(),
                });
            }
            Err(status) => return Err(client::explain(target, &status)),
        }
    }
}
