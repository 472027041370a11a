//! Backups: asks an agent to back a database up into S3 and follows it to
//! the end; a run of several databases, each recorded in the history.

use std::sync::Arc;

use stagesync_proto::v1 as pb;

use crate::client::{self, AgentTarget, ClientError, ClientTls};
use crate::history::{self, PairOutcome, Record};
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

/// What a run of backups reports as it goes.
pub enum BackupEvent<'a> {
    Started,
    Progress(&'a pb::BackupProgress),
    Finished(&'a Record),
}

/// One database's backup in a run.
pub struct BackupRun {
    pub database: String,
    pub record: Record,
    pub result: Result<pb::BackupDone, ClientError>,
}

/// The databases to back up on `target`: every one its policy lets it
/// dump (`all`), else those named.
pub async fn databases<T: ClientTls>(
    tls: Arc<T>,
    target: &AgentTarget,
    all: bool,
    named: &[String],
) -> Result<Vec<String>, ClientError> {
    if !all {
        return Ok(named.to_vec());
    }
    let info = crate::status::info(tls, target).await?;
    Ok(info
        .postgres
        .map(|p| {
            p.databases
                .into_iter()
                .filter(|d| d.may_dump)
                .map(|d| d.name)
                .collect()
        })
        .unwrap_or_default())
}

/// Backs up `databases` on agent `agent` one after the other, each
/// recorded in the run history under `state_dir` as `backup:AGENT/DB`.
/// Returns the runs, and why the history could not be written, if so.
pub async fn run_all<T: ClientTls>(
    tls: Arc<T>,
    (agent, target): (&str, &AgentTarget),
    plan: &BackupPlan,
    databases: &[String],
    state_dir: &std::path::Path,
    mut on_event: impl FnMut(&str, BackupEvent<'_>),
) -> (Vec<BackupRun>, Option<String>) {
    let run_id = crate::run::new_run_id();
    let mut runs = Vec::new();
    for db in databases {
        on_event(db, BackupEvent::Started);
        let mut record = Record {
            run_id: run_id.clone(),
            pair: format!("backup:{agent}/{db}"),
            started: history::now(),
            ..Default::default()
        };
        let t0 = std::time::Instant::now();
        let result = run(tls.clone(), target, request(plan, db), |p| {
            on_event(db, BackupEvent::Progress(p))
        })
        .await;
        record.finished = history::now();
        record.steps = vec![("backup".into(), t0.elapsed().as_millis() as u64)];
        match &result {
            Ok(done) => {
                record.outcome = PairOutcome::Ok;
                record.bytes_dumped = done.size;
            }
            Err(e) => {
                record.outcome = outcome_of(e);
                record.error = Some(e.to_string());
            }
        }
        on_event(db, BackupEvent::Finished(&record));
        runs.push(BackupRun {
            database: db.clone(),
            record,
            result,
        });
    }
    let records: Vec<Record> = runs.iter().map(|r| r.record.clone()).collect();
    let history_error = history::append(state_dir, &records)
        .err()
        .map(|e| format!("could not record the run in {}: {e}", state_dir.display()));
    (runs, history_error)
}

/// A backup the agent refused (its policy, the request, another backup of
/// the database running) changed nothing; anything else failed.
fn outcome_of(e: &ClientError) -> PairOutcome {
    match e {
        ClientError::Refused {
            code:
                tonic::Code::PermissionDenied
                | tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition,
            ..
        } => PairOutcome::Refused,
        _ => PairOutcome::Failed,
    }
}
