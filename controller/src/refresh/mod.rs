//! One database refresh, end to end, driven from the controller, whatever
//! the pair's source: a live database behind a source agent, or a backup
//! in S3 read by the destination agent.
//!
//! Preflight (both ends, versions, policy, owner role, disk) agrees the
//! stream's shape; the destination prepares a fresh database for it; the
//! source starts (the source agent dumps and pushes to the destination
//! directly, or the destination reads the backup); the controller follows
//! both and commits only when the destination reports the restore verified
//! and finished. Any failure aborts every agent involved; the live database
//! is untouched until the commit, and the commit is one transaction on the
//! destination.
//!
//! - [`spec`]: what a pair's refresh needs.
//! - [`preflight`]: the checks before anything changes.
//! - [`shape`]: the one place the stream's shape is decided.
//! - [`follow`]: both sides' statuses, until ready or failed.
//! - [`commit`]: the swap, aborts, rollback.

mod commit;
mod follow;
mod preflight;
mod shape;
mod spec;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use stagesync_proto::v1 as pb;

use crate::client::{self, ClientError, ClientTls};
pub use commit::{abort_all, rollback};
use follow::{Finals, Follow, Side, Stopped};
pub use preflight::{CheckedSource, Preflighted, pick_backup, preflight};
pub use spec::{BackupSource, Compress, CopyFormat, PairSource, PairSpec};

/// What a refresh reports while it runs.
#[derive(Clone, Debug)]
pub enum Event {
    Preflight {
        source_size: u64,
    },
    Prepared {
        job_id: String,
        new_database: String,
    },
    Progress {
        source: Option<Box<pb::JobStatus>>,
        dest: Option<Box<pb::JobStatus>>,
    },
    Committed {
        database: String,
        previous: String,
    },
}

/// A finished refresh.
/// What a plan or command line asking for parallel mode is told.
pub const PARALLEL_RETIRED: &str = "parallel mode (pg_dump -Fd) was retired: stream mode's copy lanes move the data faster (docs/benchmarks.md). Leave `mode` out (or set \"stream\"); `jobs` sets the copy lanes and index builders";

#[derive(Clone, Debug)]
pub struct Report {
    pub job_id: String,
    pub database: String,
    pub previous: String,
    pub bytes_dumped: u64,
    pub bytes_sent: u64,
    pub bytes_restored: u64,
    /// Workers that built indexes, constraints and triggers in a pass of
    /// their own after the data; 0 when they came in one pass with it.
    pub post_data_jobs: u32,
    /// Concurrent streams the data moved in; 0 when it was one.
    pub data_lanes: u32,
    /// Indexes and keys built as their tables landed, before the final
    /// post-data pass.
    pub indexes_built: u32,
    /// Tables the copy lanes brought in, the slices and rows they
    /// committed (0: the data came in pg_dump's stream).
    pub tables_copied: u32,
    /// Of those, the tables whose rows came in the binary COPY format.
    pub tables_binary: u32,
    pub slices_copied: u32,
    pub rows_copied: u64,
    /// With copy lanes: until every table and its early indexes were in,
    /// then the final post-data pass.
    pub copy_time: Duration,
    pub rest_time: Duration,
    /// Rows of staging's own kept across the refresh.
    pub rows_kept: u64,
    /// Rows were to be kept, and there was no live database (a first
    /// refresh): nothing was kept.
    pub nothing_to_keep: bool,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Refused before anything changed.
    #[error("preflight: {0}")]
    Preflight(String),
    #[error(transparent)]
    Agent(#[from] ClientError),
    /// A step failed on an agent; the destination is as it was.
    #[error("{step} failed on {host}: {message}{}", tail(.stderr_tail))]
    Job {
        step: pb::Step,
        host: String,
        message: String,
        stderr_tail: String,
    },
    /// An agent stopped answering mid-job.
    #[error("lost contact with {0} during the refresh: {1}")]
    Lost(String, String),
}

impl From<pb::JobError> for RefreshError {
    fn from(e: pb::JobError) -> Self {
        RefreshError::Job {
            step: e.failed_step(),
            host: e.host,
            message: e.message,
            stderr_tail: e.stderr_tail,
        }
    }
}

fn tail(t: &str) -> String {
    if t.trim().is_empty() {
        String::new()
    } else {
        format!(
            "\n  last lines of its output:\n    {}",
            t.trim().replace('\n', "\n    ")
        )
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A job's id, and the one-time ticket whoever feeds it must present.
struct JobKeys {
    id: String,
    ticket: String,
}

/// Refreshes `spec.dest_db` from the pair's source.
pub async fn refresh<T: ClientTls>(
    tls: Arc<T>,
    spec: &PairSpec,
    mut on_event: impl FnMut(Event),
) -> Result<Report, RefreshError> {
    let started = Instant::now();
    let ready = preflight(tls.clone(), spec).await?;
    on_event(Event::Preflight {
        source_size: ready.source_size(spec),
    });
    let keys = JobKeys {
        id: random_hex(8),
        ticket: random_hex(32),
    };
    let mut dest = client::connect(tls.clone(), &spec.dest).await?;
    let prepared = dest
        .prepare_restore(prepare_request(spec, &ready, &keys))
        .await
        .map_err(|s| RefreshError::Agent(client::explain(&spec.dest, &s)))?
        .into_inner();
    on_event(Event::Prepared {
        job_id: keys.id.clone(),
        new_database: prepared.new_database.clone(),
    });
    let mut follow = Follow::new(tls.clone(), &keys.id);
    follow.watch(Side::Dest, &spec.dest);
    if let Err((e, why)) = start_source(tls.clone(), spec, &ready, &keys, &mut dest).await {
        abort_all(tls.clone(), spec, &keys.id, why).await;
        return Err(e);
    }
    if let Some(source) = spec.source_agent() {
        follow.watch(Side::Source, source);
    }
    let finals = match follow.until_ready(&mut on_event).await {
        Ok(f) => f,
        Err(Stopped {
            error,
            abort_reason,
        }) => {
            abort_all(tls.clone(), spec, &keys.id, &abort_reason).await;
            return Err(error);
        }
    };
    let committed = commit::commit(tls, spec, &mut dest, &keys.id, &prepared).await?;
    on_event(Event::Committed {
        database: committed.database.clone(),
        previous: committed.previous_database.clone(),
    });
    Ok(report(
        keys.id,
        committed,
        &ready,
        finals,
        started.elapsed(),
    ))
}

fn prepare_request(
    spec: &PairSpec,
    ready: &Preflighted,
    keys: &JobKeys,
) -> pb::PrepareRestoreRequest {
    pb::PrepareRestoreRequest {
        job_id: keys.id.clone(),
        database: spec.dest_db.clone(),
        owner: spec.owner.clone(),
        shape: Some(ready.shape),
        jobs: spec.jobs,
        restore: Some(spec.restore.clone()),
        post_restore_sql: spec.post_restore_sql.clone(),
        params: spec.params.clone(),
        staging: Some(spec.staging.clone()),
        ticket: keys.ticket.clone(),
        // No peer for a backup: the job is fed from it (RestoreBackup).
        source_identity: match &ready.source {
            CheckedSource::Agent(info) => info.identity.clone(),
            CheckedSource::Backup(_) => String::new(),
        },
        unmasked: spec.unmasked,
    }
}

/// Starts feeding the prepared job: the source agent's dump, or the
/// destination's read of the backup. On failure, the error and the reason
/// to give the agents.
async fn start_source<T: ClientTls>(
    tls: Arc<T>,
    spec: &PairSpec,
    ready: &Preflighted,
    keys: &JobKeys,
    dest: &mut stagesync_proto::AgentClient<tonic::transport::Channel>,
) -> Result<(), (RefreshError, &'static str)> {
    match (&spec.source, &ready.source) {
        (PairSource::Agent { target, database }, CheckedSource::Agent(_)) => {
            let mut source = client::connect(tls, target)
                .await
                .map_err(|e| (e.into(), "the source agent cannot be reached"))?;
            let req = start_dump_request(spec, database, ready, keys);
            source.start_dump(req).await.map_err(|s| {
                let e = RefreshError::Agent(client::explain(target, &s));
                (e, "the dump could not start")
            })?;
        }
        (PairSource::Backup(b), CheckedSource::Backup(backup)) => {
            let req = restore_backup_request(b, backup, keys);
            dest.restore_backup(req).await.map_err(|s| {
                let e = RefreshError::Agent(client::explain(&spec.dest, &s));
                (e, "the restore could not start")
            })?;
        }
        _ => {
            return Err((
                RefreshError::Preflight("the source changed during preflight".into()),
                "internal error",
            ));
        }
    }
    Ok(())
}

fn start_dump_request(
    spec: &PairSpec,
    database: &str,
    ready: &Preflighted,
    keys: &JobKeys,
) -> pb::StartDumpRequest {
    let compression = match spec.compress.wanted(spec.dest_address_for_peer()) {
        true => pb::Compression::Zstd,
        false => pb::Compression::None,
    };
    pb::StartDumpRequest {
        job_id: keys.id.clone(),
        database: database.to_string(),
        shape: Some(ready.shape),
        jobs: spec.jobs,
        dump: Some(spec.dump.clone()),
        dest_address: spec.dest_address_for_peer().to_string(),
        dest_identity: ready.dest.identity.clone(),
        ticket: keys.ticket.clone(),
        compression: compression as i32,
        unmasked: spec.unmasked,
    }
}

fn restore_backup_request(
    source: &BackupSource,
    backup: &stagesync_s3::backups::Listed,
    keys: &JobKeys,
) -> pb::RestoreBackupRequest {
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    pb::RestoreBackupRequest {
        job_id: keys.id.clone(),
        ticket: keys.ticket.clone(),
        // The database's folder: the narrowest place that holds the backup,
        // which the destination's policy.may_restore_from must list.
        place: Some(pb::S3Place {
            bucket: source.place.bucket.clone(),
            prefix: format!("{}{}/", source.place.prefix, source.database),
            profile: opt(&source.side.profile),
            region: opt(&source.side.region),
            endpoint: opt(&source.side.endpoint),
        }),
        dump_key: backup.dump_key.clone(),
        size: backup.manifest.size,
        sha256: backup.manifest.sha256.clone(),
    }
}

/// The report of a committed refresh, from each side's final counters.
fn report(
    job_id: String,
    committed: pb::CommitResponse,
    ready: &Preflighted,
    finals: Finals,
    elapsed: Duration,
) -> Report {
    let d = finals.dest;
    let (bytes_dumped, bytes_sent) = match (&ready.source, finals.source) {
        (CheckedSource::Backup(b), _) => (b.manifest.size, d.bytes_received),
        (CheckedSource::Agent(_), Some(s)) => (s.bytes_dumped, s.bytes_sent),
        (CheckedSource::Agent(_), None) => (0, d.bytes_received),
    };
    Report {
        job_id,
        database: committed.database,
        previous: committed.previous_database,
        bytes_dumped,
        bytes_sent,
        bytes_restored: d.bytes_restored,
        post_data_jobs: d.post_data_jobs,
        data_lanes: d.data_lanes,
        indexes_built: d.indexes_built,
        tables_copied: d.tables_copied,
        tables_binary: d.tables_binary,
        slices_copied: d.slices_copied,
        rows_copied: d.rows_copied,
        copy_time: Duration::from_millis(d.copy_ms),
        rest_time: Duration::from_millis(d.rest_ms),
        rows_kept: d.rows_kept,
        nothing_to_keep: d.nothing_to_keep,
        elapsed,
    }
}
