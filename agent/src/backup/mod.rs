//! Backups: `pg_dump -Fc` streamed straight into an S3 multipart upload,
//! with credentials from this host's AWS chain.
//!
//! The order makes a backup visible only when it is whole: the upload is
//! recorded in the work dir before its first part (so a crash leaves a
//! record that the next start aborts), completed only after `pg_dump`
//! exited 0, checked, and only then is the manifest written. Retention runs
//! after that, and never on a failed attempt.
//!
//! This file is the registry (one backup per database) and the checks
//! before one starts; `run` holds the steps of one backup in that order,
//! `dump` the `pg_dump` feeding the upload, `retention` the weekly copy and
//! pruning after it, `uploads` the records of started uploads, and
//! `failure` says which step failed.

mod dump;
mod failure;
mod retention;
mod run;
mod uploads;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use stagesync_proto::v1 as pb;
use stagesync_s3::backups::{BackupError, Store};
use stagesync_s3::{ClientPool, S3Location, SideConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::policy;

pub use failure::{BackupFailure, BackupStep};
pub use uploads::{abort_left_uploads, left_uploads};

/// Events buffered for the controller.
const QUEUE: usize = 16;

pub type Events = mpsc::Receiver<Result<pb::BackupEvent, Status>>;
/// Where a backup's events go.
type Sender = mpsc::Sender<Result<pb::BackupEvent, Status>>;

/// Backups running on this agent, one per database at a time.
pub struct Backups {
    config: Arc<AgentConfig>,
    pool: ClientPool,
    running: Mutex<HashSet<String>>,
}

/// Frees the database's slot when the backup ends, however it ends.
struct Slot {
    backups: Arc<Backups>,
    database: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.backups
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.database);
    }
}

/// How to reach a place: empty fields are the standard chain's defaults.
pub(crate) fn side(p: &pb::S3Place) -> SideConfig {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    SideConfig {
        profile: opt(&p.profile),
        region: opt(&p.region),
        endpoint: opt(&p.endpoint),
    }
}

impl Backups {
    pub fn new(config: Arc<AgentConfig>) -> Self {
        Backups {
            config,
            pool: ClientPool::new(),
            running: Mutex::new(HashSet::new()),
        }
    }

    /// Checks the request against this agent's policy and starts the
    /// backup; events arrive on the returned channel. Dropping the channel
    /// (the controller went away) cancels the backup.
    pub fn start(self: &Arc<Self>, req: pb::BackupRequest) -> Result<Events, AgentError> {
        self.check(&req)?;
        let slot = self.take_slot(&req.database)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let cancel = cancel_when_closed(&tx);
        let this = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let result = this.run(&req, &tx, &cancel).await;
            cancel.cancel();
            this.report(&req.database, result, &tx).await;
        });
        Ok(rx)
    }

    /// The policy's guards, and a request this agent can carry out.
    fn check(&self, req: &pb::BackupRequest) -> Result<(), AgentError> {
        let cfg = &self.config;
        let invalid = |reason: String| AgentError::invalid(&cfg.name, reason);
        policy::may_dump(cfg, &req.database)?;
        let daily = req
            .daily
            .as_ref()
            .ok_or_else(|| invalid("no place to put the backup".into()))?;
        for p in std::iter::once(daily).chain(req.weekly.as_ref()) {
            policy::may_backup_to(cfg, p)?;
        }
        policy::may_back_up_unmasked(
            cfg,
            &req.database,
            std::iter::once(daily).chain(req.weekly.as_ref()),
        )?;
        if req.weekly_days.iter().any(|d| !(1..=31).contains(d)) {
            return Err(invalid(format!(
                "weekly_days {:?}: days of the month are 1 to 31",
                req.weekly_days
            )));
        }
        dump::backup_args(cfg, req).map_err(&invalid)?;
        Ok(())
    }

    /// Takes the database's slot, refused while another backup of it runs.
    fn take_slot(self: &Arc<Self>, database: &str) -> Result<Slot, AgentError> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if !running.insert(database.to_string()) {
            return Err(AgentError::precondition(
                &self.config.name,
                format!("a backup of {database:?} is already running here; wait for it"),
            ));
        }
        Ok(Slot {
            backups: self.clone(),
            database: database.to_string(),
        })
    }

    /// Sends the backup's outcome, the last event of its stream.
    async fn report(
        &self,
        database: &str,
        result: Result<pb::BackupDone, BackupFailure>,
        tx: &Sender,
    ) {
        let event = match result {
            Ok(done) => {
                tracing::info!(database, key = %done.dump_key, size = done.size, "backup complete");
                Ok(pb::BackupEvent {
                    kind: Some(pb::backup_event::Kind::Done(done)),
                })
            }
            Err(failure) => {
                tracing::warn!(database, step = ?failure.step, error = %failure, "backup failed");
                Err(AgentError::backup(&self.config.name, database, failure).into())
            }
        };
        let _ = tx.send(event).await;
    }

    /// The store at `place`, reached with this agent's AWS chain.
    async fn open(&self, place: &pb::S3Place) -> Result<Store, BackupError> {
        Store::open(
            &self.pool,
            S3Location::new(&place.bucket, &place.prefix),
            side(place),
            &self.config.s3_files,
        )
        .await
    }
}

/// A token cancelled when the controller goes away (Ctrl-C, a timeout) and
/// its end of the channel closes.
fn cancel_when_closed(tx: &Sender) -> CancellationToken {
    let cancel = CancellationToken::new();
    let (tx, token) = (tx.clone(), cancel.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = tx.closed() => token.cancel(),
            () = token.cancelled() => {}
        }
    });
    cancel
}
