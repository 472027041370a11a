//! One database refresh, end to end, driven from the controller.
//!
//! Preflight (both agents, versions, policy, owner role, disk), then the
//! destination prepares a fresh database, the source dumps and pushes to the
//! destination directly, the controller watches both and commits only when
//! the destination reports the restore verified and finished. Any failure
//! aborts both sides; the live database is untouched until the commit, and
//! the commit is one transaction on the destination.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use stagesync_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::client::{self, AgentTarget, ClientError, ClientTls};
use crate::status;

/// Everything one pair's refresh needs.
#[derive(Clone, Debug)]
pub struct PairSpec {
    pub source: AgentTarget,
    pub source_db: String,
    pub dest: AgentTarget,
    /// The address the source agent dials for the destination, when it is
    /// not the one the controller uses (a private network between hosts).
    pub dest_peer_address: Option<String>,
    pub dest_db: String,
    pub owner: String,
    pub mode: pb::Mode,
    /// Workers: the whole restore in parallel mode; indexes, constraints and
    /// triggers after the data in stream mode (1: one pass).
    pub jobs: u32,
    /// Stream mode: at most this many concurrent data lanes (None: `jobs`;
    /// 1: one data stream). Never more than `jobs`.
    pub lanes: Option<u32>,
    pub dump: pb::DumpOptions,
    pub restore: pb::RestoreOptions,
    pub post_restore_sql: String,
    /// Values for `${NAME}` in the post-restore SQL (secrets: never logged).
    pub params: HashMap<String, String>,
    /// zstd on the wire: by default on, except between agents on one host.
    pub compress: Compress,
}

impl PairSpec {
    pub fn new(
        source: AgentTarget,
        source_db: &str,
        dest: AgentTarget,
        dest_db: &str,
        owner: &str,
    ) -> Self {
        PairSpec {
            source,
            source_db: source_db.to_string(),
            dest,
            dest_peer_address: None,
            dest_db: dest_db.to_string(),
            owner: owner.to_string(),
            mode: pb::Mode::Stream,
            jobs: 2,
            lanes: None,
            dump: pb::DumpOptions::default(),
            restore: pb::RestoreOptions::default(),
            post_restore_sql: String::new(),
            params: HashMap::new(),
            compress: Compress::Auto,
        }
    }
}

/// Whether the dump is compressed on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compress {
    /// zstd, unless the destination agent is reached on a loopback address
    /// (both agents on one host), where compressing only costs CPU.
    #[default]
    Auto,
    Always,
    Never,
}

impl Compress {
    /// Decides for a destination reached at `address` (`HOST:PORT`).
    pub fn wanted(self, address: &str) -> bool {
        match self {
            Compress::Always => true,
            Compress::Never => false,
            Compress::Auto => !is_loopback(address),
        }
    }
}

fn is_loopback(address: &str) -> bool {
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(address)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

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
        step: String,
        host: String,
        message: String,
        stderr_tail: String,
    },
    /// An agent stopped answering mid-job.
    #[error("lost contact with {0} during the refresh: {1}")]
    Lost(String, String),
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

/// The destination's part of preflight: its PostgreSQL answers, its
/// direction guard lets the database be overwritten, the owner role exists.
fn check_dest(dst: &pb::InfoResponse, spec: &PairSpec) -> Result<(), RefreshError> {
    let dpg = dst.postgres.clone().unwrap_or_default();
    let fail = |m: String| Err(RefreshError::Preflight(m));
    if !dpg.reachable {
        return fail(format!(
            "destination agent {}: PostgreSQL: {}",
            dst.name, dpg.error
        ));
    }
    if let Some(d) = dpg.databases.iter().find(|d| d.name == spec.dest_db)
        && !d.may_overwrite
    {
        return fail(format!(
            "direction guard: the destination agent {} may not overwrite {:?} (its policy.may_overwrite)",
            dst.name, spec.dest_db
        ));
    }
    if !dpg.roles.iter().any(|r| r == &spec.owner) {
        return fail(format!(
            "the owner role {:?} does not exist on the destination agent {}: create it first",
            spec.owner, dst.name
        ));
    }
    Ok(())
}

/// Checks both agents and the pair before anything changes.
pub async fn preflight<T: ClientTls>(
    tls: Arc<T>,
    spec: &PairSpec,
) -> Result<(pb::InfoResponse, pb::InfoResponse), RefreshError> {
    let (src, dst) = tokio::join!(
        status::info(tls.clone(), &spec.source),
        status::info(tls.clone(), &spec.dest)
    );
    let (src, dst) = (src?, dst?);
    let fail = |m: String| Err(RefreshError::Preflight(m));
    let spg = src.postgres.clone().unwrap_or_default();
    let dpg = dst.postgres.clone().unwrap_or_default();
    if !spg.reachable {
        return fail(format!(
            "source agent {}: PostgreSQL: {}",
            src.name, spg.error
        ));
    }
    check_dest(&dst, spec)?;
    let Some(sdb) = spg.databases.iter().find(|d| d.name == spec.source_db) else {
        return fail(format!(
            "database {:?} does not exist on the source agent {}",
            spec.source_db, src.name
        ));
    };
    if !sdb.may_dump {
        return fail(format!(
            "direction guard: the source agent {} may not dump {:?} (its policy.may_dump)",
            src.name, spec.source_db
        ));
    }
    let stools = src.tools.clone().unwrap_or_default();
    let dtools = dst.tools.clone().unwrap_or_default();
    if stools.pg_dump_major == 0 || dtools.pg_restore_major == 0 {
        return fail(format!(
            "cannot tell the tool versions (source pg_dump: {:?}, destination pg_restore: {:?})",
            stools.pg_dump_version, dtools.pg_restore_version
        ));
    }
    if dtools.pg_restore_major < stools.pg_dump_major {
        return fail(format!(
            "pg_restore {} on {} cannot read what pg_dump {} on {} writes: upgrade the destination's client tools",
            dtools.pg_restore_major, dst.name, stools.pg_dump_major, src.name
        ));
    }
    // A second copy of the database must fit next to the live one.
    let need = sdb.size_bytes + sdb.size_bytes / 10;
    if dpg.data_dir_free_bytes > 0 && dpg.data_dir_free_bytes < need {
        return fail(format!(
            "the destination {} has {} MiB free where PostgreSQL keeps its data; a copy of {:?} needs about {} MiB",
            dst.name,
            dpg.data_dir_free_bytes >> 20,
            spec.source_db,
            need >> 20
        ));
    }
    if spec.mode == pb::Mode::Parallel {
        for (info, side) in [(&src, "source"), (&dst, "destination")] {
            let free = info.work_dir.as_ref().map(|w| w.free_bytes).unwrap_or(0);
            if free > 0 && free < need {
                return fail(format!(
                    "parallel mode lands the dump in the {side} agent {}'s work directory, which has {} MiB free; it needs about {} MiB",
                    info.name,
                    free >> 20,
                    need >> 20
                ));
            }
        }
    }
    Ok((src, dst))
}

enum Side {
    Source,
    Dest,
}

/// Forwards a job's status stream into `tx` until it ends.
async fn watch<T: ClientTls>(
    tls: Arc<T>,
    target: AgentTarget,
    job_id: String,
    side: Side,
    tx: mpsc::Sender<(u8, Result<Option<pb::JobStatus>, String>)>,
) {
    let tag = match side {
        Side::Source => 0,
        Side::Dest => 1,
    };
    let stream = async {
        let mut c = client::connect(tls, &target)
            .await
            .map_err(|e| e.to_string())?;
        let resp = c
            .watch_job(pb::WatchJobRequest {
                job_id,
                side: match side {
                    Side::Source => pb::Side::Source as i32,
                    Side::Dest => pb::Side::Dest as i32,
                },
            })
            .await
            .map_err(|s| client::explain(&target, &s).to_string())?;
        Ok::<_, String>(resp.into_inner())
    }
    .await;
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send((tag, Err(e))).await;
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(s)) => {
                if tx.send((tag, Ok(Some(s)))).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send((tag, Ok(None))).await;
                return;
            }
            Err(status) => {
                let _ = tx
                    .send((tag, Err(client::explain(&target, &status).to_string())))
                    .await;
                return;
            }
        }
    }
}

fn phase(s: &pb::JobStatus) -> pb::Phase {
    pb::Phase::try_from(s.phase).unwrap_or(pb::Phase::Unspecified)
}

fn failed(s: &pb::JobStatus) -> bool {
    matches!(phase(s), pb::Phase::Failed | pb::Phase::Aborted)
}

/// Picks the error that explains a failure best: a tool or SQL failure over
/// the stream breaking, which is usually its consequence.
fn best_error(
    source: Option<&pb::JobStatus>,
    dest: Option<&pb::JobStatus>,
) -> Option<pb::JobError> {
    let errs: Vec<pb::JobError> = [source, dest]
        .into_iter()
        .flatten()
        .filter(|s| failed(s))
        .filter_map(|s| s.error.clone())
        .collect();
    errs.iter()
        .find(|e| e.step != "stream" && e.step != "abort")
        .or_else(|| errs.iter().find(|e| e.step != "abort"))
        .or(errs.first())
        .cloned()
}

/// Asks both agents to abort `job_id` (best effort: an agent that cannot be
/// reached aborts on its own once nobody watches the job).
pub async fn abort_both<T: ClientTls>(tls: Arc<T>, spec: &PairSpec, job_id: &str, reason: &str) {
    for target in [&spec.source, &spec.dest] {
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

/// Whether a stream-mode refresh sends the post-data section apart, to be
/// built by `spec.jobs` workers: only when that is more than one, and both
/// agents say they can. Not when privileges are restored: a one-pass restore
/// grants them after indexes, constraints and triggers exist, and so keeps
/// the order a dump was made for.
fn split_post_data(spec: &PairSpec, src: &pb::InfoResponse, dst: &pb::InfoResponse) -> bool {
    let can = |i: &pb::InfoResponse| {
        i.features
            .iter()
            .any(|f| f == stagesync_proto::FEATURE_SPLIT_POST_DATA)
    };
    spec.mode == pb::Mode::Stream
        && spec.jobs > 1
        && !spec.restore.privileges
        && can(src)
        && can(dst)
}

/// Refreshes `spec.dest_db` from `spec.source_db`.
pub async fn refresh<T: ClientTls>(
    tls: Arc<T>,
    spec: &PairSpec,
    mut on_event: impl FnMut(Event),
) -> Result<Report, RefreshError> {
    let started = Instant::now();
    let (src_info, dst_info) = preflight(tls.clone(), spec).await?;
    let source_size = src_info
        .postgres
        .as_ref()
        .and_then(|p| p.databases.iter().find(|d| d.name == spec.source_db))
        .map(|d| d.size_bytes)
        .unwrap_or(0);
    on_event(Event::Preflight { source_size });

    let job_id = random_hex(8);
    let ticket = random_hex(32);
    let call_err = |t: &AgentTarget, s: tonic::Status| RefreshError::Agent(client::explain(t, &s));
    let mut dest = client::connect(tls.clone(), &spec.dest).await?;
    let prepared = dest
        .prepare_restore(pb::PrepareRestoreRequest {
            job_id: job_id.clone(),
            database: spec.dest_db.clone(),
            owner: spec.owner.clone(),
            mode: spec.mode as i32,
            jobs: spec.jobs,
            restore: Some(spec.restore.clone()),
            post_restore_sql: spec.post_restore_sql.clone(),
            params: spec.params.clone(),
            ticket: ticket.clone(),
            source_identity: src_info.identity.clone(),
        })
        .await
        .map_err(|s| call_err(&spec.dest, s))?
        .into_inner();
    on_event(Event::Prepared {
        job_id: job_id.clone(),
        new_database: prepared.new_database.clone(),
    });

    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(watch(
        tls.clone(),
        spec.dest.clone(),
        job_id.clone(),
        Side::Dest,
        tx.clone(),
    ));
    let mut source = match client::connect(tls.clone(), &spec.source).await {
        Ok(c) => c,
        Err(e) => {
            abort_both(
                tls.clone(),
                spec,
                &job_id,
                "the source agent cannot be reached",
            )
            .await;
            return Err(e.into());
        }
    };
    let started_dump = source
        .start_dump(pb::StartDumpRequest {
            job_id: job_id.clone(),
            database: spec.source_db.clone(),
            mode: spec.mode as i32,
            jobs: spec.jobs,
            dump: Some(spec.dump.clone()),
            dest_address: spec
                .dest_peer_address
                .clone()
                .unwrap_or_else(|| spec.dest.address.clone()),
            dest_identity: dst_info.identity.clone(),
            ticket,
            split_post_data: split_post_data(spec, &src_info, &dst_info),
            data_lanes: data_lanes(spec, &src_info, &dst_info),
            compression: if spec.compress.wanted(
                spec.dest_peer_address
                    .as_deref()
                    .unwrap_or(&spec.dest.address),
            ) {
                pb::Compression::Zstd as i32
            } else {
                pb::Compression::None as i32
            },
        })
        .await;
    if let Err(s) = started_dump {
        abort_both(tls.clone(), spec, &job_id, "the dump could not start").await;
        return Err(call_err(&spec.source, s));
    }
    tokio::spawn(watch(
        tls.clone(),
        spec.source.clone(),
        job_id.clone(),
        Side::Source,
        tx,
    ));

    let mut last_src: Option<pb::JobStatus> = None;
    let mut last_dst: Option<pb::JobStatus> = None;
    let mut source_done = false;
    loop {
        let Some((tag, msg)) = rx.recv().await else {
            abort_both(
                tls.clone(),
                spec,
                &job_id,
                "the controller lost both agents",
            )
            .await;
            return Err(RefreshError::Lost("both agents".into(), "no status".into()));
        };
        match msg {
            Ok(Some(status)) => {
                if tag == 0 {
                    source_done = phase(&status) == pb::Phase::Sent;
                    last_src = Some(status);
                } else {
                    last_dst = Some(status);
                }
                on_event(Event::Progress {
                    source: last_src.clone().map(Box::new),
                    dest: last_dst.clone().map(Box::new),
                });
            }
            Ok(None) if tag == 0 && source_done => continue,
            Ok(None) | Err(_) => {
                let (who, target) = if tag == 0 {
                    ("the source agent", &spec.source)
                } else {
                    ("the destination agent", &spec.dest)
                };
                let why = match msg {
                    Err(e) => e,
                    _ => "its status stream ended".to_string(),
                };
                // A failed side usually reported why before its stream ended.
                if let Some(e) = best_error(last_src.as_ref(), last_dst.as_ref()) {
                    abort_both(tls.clone(), spec, &job_id, &e.message).await;
                    return Err(job_error(e));
                }
                abort_both(tls.clone(), spec, &job_id, &format!("lost {who}")).await;
                return Err(RefreshError::Lost(
                    format!("{who} ({})", target.address),
                    why,
                ));
            }
        }
        let src_failed = last_src.as_ref().is_some_and(failed);
        let dst_failed = last_dst.as_ref().is_some_and(failed);
        if src_failed || dst_failed {
            // Give the other side a moment to report its view, then choose.
            let deadline = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    m = rx.recv() => match m {
                        Some((0, Ok(Some(s)))) => last_src = Some(s),
                        Some((1, Ok(Some(s)))) => last_dst = Some(s),
                        Some(_) => {}
                        None => break,
                    },
                }
                if last_src.as_ref().is_some_and(failed) && last_dst.as_ref().is_some_and(failed) {
                    break;
                }
            }
            let e = best_error(last_src.as_ref(), last_dst.as_ref()).unwrap_or(pb::JobError {
                step: "refresh".into(),
                host: String::new(),
                message: "failed without a reason".into(),
                stderr_tail: String::new(),
            });
            abort_both(tls.clone(), spec, &job_id, &format!("{} failed", e.step)).await;
            return Err(job_error(e));
        }
        if last_dst.as_ref().map(phase) == Some(pb::Phase::Ready) {
            let committed = commit(
                tls.clone(),
                spec,
                &mut dest,
                &job_id,
                &prepared,
                &mut on_event,
            )
            .await?;
            let s = last_src.unwrap_or_default();
            let d = last_dst.unwrap_or_default();
            return Ok(Report {
                job_id,
                database: committed.database,
                previous: committed.previous_database,
                bytes_dumped: s.bytes_dumped,
                bytes_sent: s.bytes_sent,
                bytes_restored: d.bytes_restored,
                post_data_jobs: d.post_data_jobs,
                data_lanes: d.data_lanes,
                elapsed: started.elapsed(),
            });
        }
    }
}

/// A pair's source when it is a backup in S3 rather than a live database.
#[derive(Clone, Debug)]
pub struct BackupSource {
    /// Where the backups are (`s3://bucket/prefix/`, the database's
    /// folder below it).
    pub place: stagesync_s3::S3Location,
    /// Profile, region, endpoint: used here to pick the backup, and by the
    /// destination agent (with its own host's credentials) to read it.
    pub side: stagesync_s3::SideConfig,
    /// AWS profile files here (default: the standard chain).
    pub files: stagesync_s3::ProfileFilePaths,
    pub database: String,
    /// A backup by its time stamp; the newest complete one when unset.
    pub taken: Option<String>,
}

/// Picks the backup to restore: the named one, else the newest complete.
pub async fn pick_backup(
    source: &BackupSource,
) -> Result<stagesync_s3::backups::Listed, RefreshError> {
    let store = stagesync_s3::backups::Store::open(
        &stagesync_s3::ClientPool::new(),
        source.place.clone(),
        source.side.clone(),
        &source.files,
    )
    .await
    .map_err(|e| RefreshError::Preflight(e.to_string()))?;
    let found = store
        .list(&source.database)
        .await
        .map_err(|e| RefreshError::Preflight(e.to_string()))?;
    let chosen = match &source.taken {
        Some(t) => found.complete.iter().find(|b| &b.manifest.taken == t),
        None => found.complete.last(),
    };
    chosen.cloned().ok_or_else(|| {
        RefreshError::Preflight(match &source.taken {
            Some(t) => format!(
                "no complete backup of {:?} taken {t} under {}",
                source.database, source.place
            ),
            None => format!(
                "no complete backup of {:?} under {} (incomplete uploads are never restored)",
                source.database, source.place
            ),
        })
    })
}

/// Disk a restore of `m` needs: the database's size when it was backed up,
/// plus a tenth, as for a live copy. Older manifests do not record it;
/// then three times the compressed dump, a rough guess.
fn restore_space(m: &stagesync_s3::backups::Manifest) -> u64 {
    if m.database_size > 0 {
        m.database_size + m.database_size / 10
    } else {
        m.size.saturating_mul(3)
    }
}

/// Checks the destination and picks the backup, before anything changes.
pub async fn preflight_from_backup<T: ClientTls>(
    tls: Arc<T>,
    spec: &PairSpec,
    source: &BackupSource,
) -> Result<(pb::InfoResponse, stagesync_s3::backups::Listed), RefreshError> {
    let dst = status::info(tls.clone(), &spec.dest).await?;
    let dpg = dst.postgres.clone().unwrap_or_default();
    let fail = |m: String| Err(RefreshError::Preflight(m));
    check_dest(&dst, spec)?;
    let backup = pick_backup(source).await?;
    let need = restore_space(&backup.manifest);
    if dpg.data_dir_free_bytes > 0 && dpg.data_dir_free_bytes < need {
        return fail(format!(
            "the destination {} has {} MiB free where PostgreSQL keeps its data; restoring the backup of {:?} taken {} needs about {} MiB",
            dst.name,
            dpg.data_dir_free_bytes >> 20,
            backup.manifest.database,
            backup.manifest.taken,
            need >> 20
        ));
    }
    Ok((dst, backup))
}

/// Refreshes `spec.dest_db` from a backup through the same fresh database
/// and swap as a live refresh; the production host is not involved.
/// `spec.source` is ignored.
pub async fn refresh_from_backup<T: ClientTls>(
    tls: Arc<T>,
    spec: &PairSpec,
    source: &BackupSource,
    mut on_event: impl FnMut(Event),
) -> Result<Report, RefreshError> {
    let started = Instant::now();
    let mut spec = spec.clone();
    spec.source = spec.dest.clone();
    spec.mode = pb::Mode::Stream;
    let spec = &spec;
    let (_, backup) = preflight_from_backup(tls.clone(), spec, source).await?;
    on_event(Event::Preflight {
        source_size: backup.manifest.size,
    });

    let job_id = random_hex(8);
    let ticket = random_hex(32);
    let call_err = |s: tonic::Status| RefreshError::Agent(client::explain(&spec.dest, &s));
    let mut dest = client::connect(tls.clone(), &spec.dest).await?;
    let prepared = dest
        .prepare_restore(pb::PrepareRestoreRequest {
            job_id: job_id.clone(),
            database: spec.dest_db.clone(),
            owner: spec.owner.clone(),
            mode: pb::Mode::Stream as i32,
            jobs: spec.jobs,
            restore: Some(spec.restore.clone()),
            post_restore_sql: spec.post_restore_sql.clone(),
            params: spec.params.clone(),
            ticket: ticket.clone(),
            // No peer: the job is fed from the backup (RestoreBackup).
            source_identity: String::new(),
        })
        .await
        .map_err(call_err)?
        .into_inner();
    on_event(Event::Prepared {
        job_id: job_id.clone(),
        new_database: prepared.new_database.clone(),
    });
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(watch(
        tls.clone(),
        spec.dest.clone(),
        job_id.clone(),
        Side::Dest,
        tx,
    ));
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let started_restore = dest
        .restore_backup(pb::RestoreBackupRequest {
            job_id: job_id.clone(),
            ticket,
            place: Some(pb::S3Place {
                bucket: source.place.bucket.clone(),
                prefix: String::new(),
                profile: opt(&source.side.profile),
                region: opt(&source.side.region),
                endpoint: opt(&source.side.endpoint),
            }),
            dump_key: backup.dump_key.clone(),
            size: backup.manifest.size,
            sha256: backup.manifest.sha256.clone(),
        })
        .await;
    if let Err(s) = started_restore {
        abort_both(tls.clone(), spec, &job_id, "the restore could not start").await;
        return Err(call_err(s));
    }
    let mut last: Option<pb::JobStatus> = None;
    loop {
        let msg = match rx.recv().await {
            Some((_, m)) => m,
            None => Err("no status".to_string()),
        };
        match msg {
            Ok(Some(status)) => {
                last = Some(status);
                on_event(Event::Progress {
                    source: None,
                    dest: last.clone().map(Box::new),
                });
            }
            Ok(None) | Err(_) => {
                if let Some(e) = best_error(None, last.as_ref()) {
                    abort_both(tls.clone(), spec, &job_id, &e.message).await;
                    return Err(job_error(e));
                }
                abort_both(tls.clone(), spec, &job_id, "lost the destination agent").await;
                let why = msg
                    .err()
                    .unwrap_or_else(|| "its status stream ended".into());
                return Err(RefreshError::Lost(
                    format!("the destination agent ({})", spec.dest.address),
                    why,
                ));
            }
        }
        if let Some(s) = last.as_ref().filter(|s| failed(s)) {
            let e = s.error.clone().unwrap_or_default();
            abort_both(tls.clone(), spec, &job_id, &format!("{} failed", e.step)).await;
            return Err(job_error(e));
        }
        if last.as_ref().map(phase) == Some(pb::Phase::Ready) {
            let committed = commit(
                tls.clone(),
                spec,
                &mut dest,
                &job_id,
                &prepared,
                &mut on_event,
            )
            .await?;
            let d = last.unwrap_or_default();
            return Ok(Report {
                job_id,
                database: committed.database,
                previous: committed.previous_database,
                bytes_dumped: backup.manifest.size,
                bytes_sent: d.bytes_received,
                bytes_restored: d.bytes_restored,
                post_data_jobs: d.post_data_jobs,
                data_lanes: d.data_lanes,
                elapsed: started.elapsed(),
            });
        }
    }
}

/// Commits a ready job on the destination (the swap), and says so.
async fn commit<T: ClientTls>(
    tls: Arc<T>,
    spec: &PairSpec,
    dest: &mut stagesync_proto::AgentClient<tonic::transport::Channel>,
    job_id: &str,
    prepared: &pb::PrepareRestoreResponse,
    on_event: &mut impl FnMut(Event),
) -> Result<pb::CommitResponse, RefreshError> {
    let committed = match dest
        .commit(pb::CommitRequest {
            job_id: job_id.to_string(),
        })
        .await
    {
        Ok(c) => c.into_inner(),
        Err(status) => commit_outcome(tls, spec, job_id, prepared, status).await?,
    };
    on_event(Event::Committed {
        database: committed.database.clone(),
        previous: committed.previous_database.clone(),
    });
    Ok(committed)
}

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
    let deadline = Instant::now() + Duration::from_secs(120);
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
                    return Err(job_error(job.error.clone().unwrap_or_default()));
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

fn job_error(e: pb::JobError) -> RefreshError {
    RefreshError::Job {
        step: e.step,
        host: e.host,
        message: e.message,
        stderr_tail: e.stderr_tail,
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

/// How many data lanes a refresh may use: with a split stream, up to
/// `spec.jobs` when both agents can, except with schema filters (pg_dump
/// does not apply them to tables named on their own). The source decides
/// how many it really uses, by the size of the tables.
fn data_lanes(spec: &PairSpec, src: &pb::InfoResponse, dst: &pb::InfoResponse) -> u32 {
    let can = |i: &pb::InfoResponse| {
        i.features
            .iter()
            .any(|f| f == stagesync_proto::FEATURE_DATA_LANES)
    };
    if split_post_data(spec, src, dst)
        && can(src)
        && can(dst)
        && spec.dump.schemas.is_empty()
        && spec.dump.exclude_schemas.is_empty()
    {
        match spec.lanes.unwrap_or(spec.jobs).min(spec.jobs) {
            0 | 1 => 0,
            n => n.min(stagesync_proto::MAX_DATA_LANES),
        }
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_spec() -> PairSpec {
        let target = || AgentTarget {
            address: "127.0.0.1:1".into(),
            expected: None,
        };
        PairSpec::new(target(), "prod", target(), "stage", "stage")
    }

    #[test]
    fn post_data_is_split_only_when_both_agents_can_and_it_helps() {
        let mut spec = test_spec();
        let can = pb::InfoResponse {
            features: vec![stagesync_proto::FEATURE_SPLIT_POST_DATA.into()],
            ..Default::default()
        };
        let old = pb::InfoResponse::default();
        assert!(split_post_data(&spec, &can, &can));
        assert!(!split_post_data(&spec, &can, &old), "old destination");
        assert!(!split_post_data(&spec, &old, &can), "old source");
        spec.jobs = 1;
        assert!(!split_post_data(&spec, &can, &can), "one worker: one pass");
        spec.jobs = 4;
        spec.restore.privileges = true;
        assert!(!split_post_data(&spec, &can, &can), "privileges restored");
        spec.restore.privileges = false;
        spec.mode = pb::Mode::Parallel;
        assert!(!split_post_data(&spec, &can, &can), "parallel mode");
    }

    #[test]
    fn data_lanes_only_with_a_split_stream_and_no_schema_filters() {
        let mut spec = test_spec();
        spec.jobs = 3;
        let lanes = pb::InfoResponse {
            features: vec![
                stagesync_proto::FEATURE_SPLIT_POST_DATA.into(),
                stagesync_proto::FEATURE_DATA_LANES.into(),
            ],
            ..Default::default()
        };
        let split_only = pb::InfoResponse {
            features: vec![stagesync_proto::FEATURE_SPLIT_POST_DATA.into()],
            ..Default::default()
        };
        assert_eq!(data_lanes(&spec, &lanes, &lanes), 3);
        assert_eq!(data_lanes(&spec, &lanes, &split_only), 0, "old destination");
        assert_eq!(data_lanes(&spec, &split_only, &lanes), 0, "old source");
        spec.lanes = Some(2);
        assert_eq!(data_lanes(&spec, &lanes, &lanes), 2, "capped by the plan");
        spec.lanes = Some(1);
        assert_eq!(data_lanes(&spec, &lanes, &lanes), 0, "one data stream");
        spec.lanes = None;
        spec.jobs = 100;
        assert_eq!(
            data_lanes(&spec, &lanes, &lanes),
            stagesync_proto::MAX_DATA_LANES
        );
        spec.dump.exclude_schemas = vec!["audit".into()];
        assert_eq!(data_lanes(&spec, &lanes, &lanes), 0, "schema filter");
        spec.dump.exclude_schemas.clear();
        spec.jobs = 1;
        assert_eq!(data_lanes(&spec, &lanes, &lanes), 0, "no split, no lanes");
    }

    #[test]
    fn restore_space_uses_the_recorded_database_size() {
        let mut m: stagesync_s3::backups::Manifest = serde_json::from_str(
            r#"{"format":1,"database":"production","dump":"x.dump","size":100,"sha256":"00",
                "taken":"2026-11-25T01-00-00Z","host":"prod-db","pg_dump_version":"pg_dump (PostgreSQL) 15",
                "server_version":"15"}"#,
        )
        .expect("a manifest without database_size still reads");
        assert_eq!(m.database_size, 0);
        assert_eq!(restore_space(&m), 300, "older manifests: 3x the dump");
        m.database_size = 1000;
        assert_eq!(restore_space(&m), 1100);
    }

    #[test]
    fn compression_is_off_only_on_one_host_by_default() {
        for (addr, want) in [
            ("127.0.0.1:7443", false),
            ("[::1]:7443", false),
            ("localhost:7443", false),
            ("10.0.0.7:7443", true),
            ("db1.example.com:7443", true),
        ] {
            assert_eq!(Compress::Auto.wanted(addr), want, "{addr}");
        }
        assert!(Compress::Always.wanted("127.0.0.1:1"));
        assert!(!Compress::Never.wanted("10.0.0.7:1"));
    }
}
