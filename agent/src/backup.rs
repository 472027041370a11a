//! Backups: `pg_dump -Fc` streamed straight into an S3 multipart upload,
//! with credentials from this host's AWS chain.
//!
//! The order makes a backup visible only when it is whole: the upload is
//! recorded in the work dir before its first part (so a crash leaves a
//! record that the next start aborts), completed only after `pg_dump`
//! exited 0, checked, and only then is the manifest written. Retention runs
//! after that, and never on a failed attempt.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use stagesync_proto::v1 as pb;
use stagesync_s3::backups::{Aborted, Manifest, PendingUpload, Store, UploadProgress, stamp};
use stagesync_s3::{ClientPool, S3Location, SideConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::{args, db, pg, policy, procs};

/// Events buffered for the controller.
const QUEUE: usize = 16;
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

pub type Events = mpsc::Receiver<Result<pb::BackupEvent, Status>>;

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

fn uploads_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("uploads")
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
        let cfg = &self.config;
        let invalid = |reason: String| AgentError::invalid(&cfg.name, reason);
        policy::may_dump(cfg, &req.database)?;
        let daily = req
            .daily
            .clone()
            .ok_or_else(|| invalid("no place to put the backup".into()))?;
        for p in std::iter::once(&daily).chain(req.weekly.as_ref()) {
            policy::may_backup_to(cfg, p)?;
        }
        if req.weekly_days.iter().any(|d| !(1..=31).contains(d)) {
            return Err(invalid(format!(
                "weekly_days {:?}: days of the month are 1 to 31",
                req.weekly_days
            )));
        }
        backup_args(cfg, &req).map_err(&invalid)?;
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            if !running.insert(req.database.clone()) {
                return Err(AgentError::FailedPrecondition {
                    agent: cfg.name.clone(),
                    reason: format!(
                        "a backup of {:?} is already running here; wait for it",
                        req.database
                    ),
                });
            }
        }
        let slot = Slot {
            backups: self.clone(),
            database: req.database.clone(),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let this = self.clone();
        let cancel = CancellationToken::new();
        {
            // The controller going away (Ctrl-C, a timeout) cancels the backup.
            let (tx, cancel) = (tx.clone(), cancel.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = tx.closed() => cancel.cancel(),
                    () = cancel.cancelled() => {}
                }
            });
        }
        tokio::spawn(async move {
            let _slot = slot;
            let db = req.database.clone();
            let result = this.run(&req, &tx, &cancel).await;
            cancel.cancel();
            match result {
                Ok(done) => {
                    tracing::info!(database = %db, key = %done.dump_key, size = done.size, "backup complete");
                    let event = pb::BackupEvent {
                        kind: Some(pb::backup_event::Kind::Done(done)),
                    };
                    let _ = tx.send(Ok(event)).await;
                }
                Err(message) => {
                    tracing::warn!(database = %db, error = %message, "backup failed");
                    let _ = tx
                        .send(Err(Status::internal(format!(
                            "agent {}: backup of {db:?}: {message}",
                            this.config.name
                        ))))
                        .await;
                }
            }
        });
        Ok(rx)
    }

    async fn run(
        &self,
        req: &pb::BackupRequest,
        tx: &mpsc::Sender<Result<pb::BackupEvent, Status>>,
        cancel: &CancellationToken,
    ) -> Result<pb::BackupDone, String> {
        let cfg = &self.config;
        let daily_place = req.daily.clone().unwrap_or_default();
        let daily = self.open(&daily_place).await?;
        let c = pg::connect(&cfg.postgres, "postgres")
            .await
            .map_err(|e| format!("connecting to PostgreSQL: {}", pg::error_chain(&e)))?;
        if !db::database_exists(&c, &req.database)
            .await
            .map_err(|e| e.0)?
        {
            return Err(format!("database {:?} does not exist here", req.database));
        }
        let server_version: String = c
            .query_one("SHOW server_version", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| format!("asking the server version: {e}"))?;
        // Only a hint for restores (0 = unknown): not worth failing a backup.
        let database_size: i64 = match c
            .query_one("SELECT pg_database_size($1::text::name)", &[&req.database])
            .await
            .and_then(|r| r.try_get::<_, Option<i64>>(0))
        {
            Ok(size) => size.unwrap_or(0),
            Err(e) => {
                tracing::warn!(database = %req.database, error = %e, "cannot read the database's size; the manifest records 0");
                0
            }
        };
        let (pg_dump_version, _) = pg::tool_version(&cfg.postgres.bin_dir, "pg_dump").await;
        let now = time::OffsetDateTime::now_utc();
        let taken = stamp(now);
        let (dump_key, manifest_key) = daily.keys(&req.database, &taken, &cfg.name);

        // Start the upload and record it before the first byte goes out.
        let pending = daily
            .start_upload(&dump_key)
            .await
            .map_err(|e| e.to_string())?;
        let record = record_upload(&cfg.work_dir, &pending).map_err(|e| {
            format!(
                "recording the upload in {}: {e}",
                uploads_dir(&cfg.work_dir).display()
            )
        });
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let _ = daily.abort_upload(&pending).await;
                return Err(e);
            }
        };
        let uploaded = self.dump_into(req, &daily, &pending, tx, cancel).await;
        let uploaded = match uploaded {
            Ok(u) => u,
            Err(e) => {
                match daily.abort_upload(&pending).await {
                    Ok(_) => {
                        let _ = std::fs::remove_file(&record);
                    }
                    Err(abort) => {
                        tracing::warn!(error = %abort, "could not abort the upload; the next start tries again")
                    }
                }
                return Err(e);
            }
        };
        let _ = std::fs::remove_file(&record);
        let manifest = Manifest {
            format: 1,
            database: req.database.clone(),
            dump: dump_key.rsplit('/').next().unwrap_or_default().to_string(),
            size: uploaded.size,
            sha256: uploaded.sha256.clone(),
            taken: taken.clone(),
            host: cfg.name.clone(),
            pg_dump_version,
            server_version,
            database_size: database_size.max(0) as u64,
        };
        if let Err(e) = daily.put_manifest(&manifest_key, &manifest).await {
            // Without its manifest the dump is not a backup: remove it.
            let _ = daily.delete(&dump_key).await;
            return Err(e.to_string());
        }

        // Weekly copy, then retention: only after a good backup. The backup
        // is complete now; what fails from here on is a warning.
        let mut pruned = Vec::new();
        let mut warnings = Vec::new();
        let mut weekly_done = false;
        let found = daily.list(&req.database).await.map_err(|e| e.to_string());
        let this = found.and_then(|f| {
            f.complete
                .into_iter()
                .find(|b| b.manifest_key == manifest_key)
                .ok_or_else(|| format!("the new backup {manifest_key} is not listed"))
        });
        match (&req.weekly, this) {
            (_, Err(e)) => warnings.push(format!("no weekly copy or retention: {e}")),
            (Some(place), Ok(this)) if req.weekly_days.contains(&u32::from(now.day())) => {
                let copied = async {
                    let weekly = self.open(place).await?;
                    let key = daily
                        .copy_to(&weekly, &this)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((weekly, key))
                }
                .await;
                match copied {
                    Ok((weekly, key)) => {
                        weekly_done = true;
                        if req.keep_weekly > 0 {
                            match weekly
                                .prune(&req.database, req.keep_weekly as usize, Some(&key))
                                .await
                            {
                                Ok(p) => pruned.extend(p),
                                Err(e) => warnings.push(format!("weekly retention: {e}")),
                            }
                        }
                    }
                    Err(e) => warnings.push(format!("weekly copy: {e}")),
                }
            }
            _ => {}
        }
        if req.keep_daily > 0 {
            match daily
                .prune(&req.database, req.keep_daily as usize, Some(&manifest_key))
                .await
            {
                Ok(p) => pruned.extend(p),
                Err(e) => warnings.push(format!("daily retention: {e}")),
            }
        }
        for w in &warnings {
            tracing::warn!(database = %req.database, warning = %w, "backup complete, with a warning");
        }
        Ok(pb::BackupDone {
            dump_key,
            manifest_key,
            size: uploaded.size,
            sha256: uploaded.sha256,
            taken,
            weekly: weekly_done,
            pruned,
            warnings,
        })
    }

    async fn open(&self, place: &pb::S3Place) -> Result<Store, String> {
        Store::open(
            &self.pool,
            S3Location::new(&place.bucket, &place.prefix),
            side(place),
            &self.config.s3_files,
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Runs `pg_dump` into the upload's parts and completes the upload once
    /// `pg_dump` exited 0.
    async fn dump_into(
        &self,
        req: &pb::BackupRequest,
        store: &Store,
        pending: &PendingUpload,
        tx: &mpsc::Sender<Result<pb::BackupEvent, Status>>,
        cancel: &CancellationToken,
    ) -> Result<stagesync_s3::backups::Uploaded, String> {
        let cfg = &self.config;
        let argv = backup_args(cfg, req)?;
        let mut tool = procs::spawn(
            &cfg.postgres.bin_dir,
            procs::Program::PgDump,
            &argv,
            &[],
            Stdio::null(),
            Stdio::piped(),
        )
        .map_err(|e| format!("cannot start pg_dump: {e}"))?;
        let mut out = tool
            .child
            .stdout
            .take()
            .ok_or_else(|| "pg_dump has no stdout".to_string())?;
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0), AtomicU32::new(0)));
        let c = counts.clone();
        let progress = move |p: UploadProgress| {
            c.0.store(p.bytes_read, Ordering::Relaxed);
            c.1.store(p.bytes_uploaded, Ordering::Relaxed);
            c.2.store(p.parts, Ordering::Relaxed);
        };
        let ticker = {
            let (tx, counts) = (tx.clone(), counts.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PROGRESS_EVERY);
                loop {
                    tick.tick().await;
                    let event = pb::BackupEvent {
                        kind: Some(pb::backup_event::Kind::Progress(pb::BackupProgress {
                            bytes_dumped: counts.0.load(Ordering::Relaxed),
                            bytes_uploaded: counts.1.load(Ordering::Relaxed),
                            parts: counts.2.load(Ordering::Relaxed),
                        })),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            })
        };
        let parts = tokio::select! {
            p = store.upload_parts(pending, &mut out, &progress) => p.map_err(|e| e.to_string()),
            () = cancel.cancelled() => Err("the controller went away: the backup was cancelled".to_string()),
        };
        ticker.abort();
        let parts = match parts {
            Ok(p) => p,
            Err(e) => {
                tool.kill().await;
                return Err(e);
            }
        };
        let status = tool.child.wait().await;
        tool.drain().await;
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                return Err(format!(
                    "pg_dump failed ({s}): {}",
                    tool.stderr.text().trim()
                ));
            }
            Err(e) => return Err(format!("waiting for pg_dump: {e}")),
        }
        store
            .complete(pending, parts)
            .await
            .map_err(|e| e.to_string())
    }
}

/// `pg_dump` arguments for a backup: custom format with pg_dump's own
/// compression (the dump is stored, not streamed to a restore).
fn backup_args(cfg: &AgentConfig, req: &pb::BackupRequest) -> Result<Vec<String>, String> {
    let dump = req.dump.clone().unwrap_or_default();
    let argv = args::pg_dump(&cfg.postgres, &req.database, &dump, args::DumpTo::Stdout)?;
    Ok(argv.into_iter().filter(|a| a != "--compress=0").collect())
}

/// Writes the record of a started upload; returns its path.
fn record_upload(work_dir: &Path, p: &PendingUpload) -> std::io::Result<PathBuf> {
    let dir = uploads_dir(work_dir);
    std::fs::create_dir_all(&dir)?;
    let name: String = p
        .upload_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(120)
        .collect();
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_vec(p).map_err(std::io::Error::other)?;
    // Whole or not at all: a torn record would lose track of the upload.
    let tmp = dir.join(format!(".{name}.json.tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The upload records a crash left behind, read before the agent serves (so
/// a backup started after that is never mistaken for one).
pub fn left_uploads(config: &AgentConfig) -> Vec<PathBuf> {
    std::fs::read_dir(uploads_dir(&config.work_dir))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

/// At start: aborts the uploads a crash left behind (recorded in the work
/// dir), so no half-uploaded dump lingers in the bucket. A record is kept
/// when the abort fails, and tried again at the next start.
pub async fn abort_left_uploads(config: &AgentConfig, records: Vec<PathBuf>) {
    let pool = ClientPool::new();
    for path in records {
        let pending: PendingUpload = match std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(p) => p,
            None => {
                tracing::warn!(path = %path.display(), "unreadable upload record removed");
                let _ = std::fs::remove_file(&path);
                continue;
            }
        };
        let side = SideConfig {
            profile: pending.side.profile.clone(),
            region: pending.side.region.clone(),
            endpoint: pending.side.endpoint.clone(),
        };
        let location = S3Location::new(&pending.bucket, "");
        let aborted = async {
            let store = Store::open(&pool, location, side, &config.s3_files).await?;
            store.abort_upload(&pending).await
        };
        match tokio::time::timeout(Duration::from_secs(60), aborted).await {
            Ok(Ok(Aborted::Now)) => {
                tracing::info!(bucket = %pending.bucket, key = %pending.key, "aborted an upload a crash left behind");
                let _ = std::fs::remove_file(&path);
            }
            Ok(Ok(Aborted::AlreadyGone)) => {
                let _ = std::fs::remove_file(&path);
            }
            Ok(Err(e)) => {
                tracing::warn!(bucket = %pending.bucket, key = %pending.key, error = %e, "could not abort an upload a crash left behind; trying again at the next start")
            }
            Err(_) => {
                tracing::warn!(bucket = %pending.bucket, key = %pending.key, "aborting an upload left behind timed out; trying again at the next start")
            }
        }
    }
}
