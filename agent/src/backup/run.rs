//! The steps of one backup, in the order that makes it visible only when
//! whole: what the manifest will record, the recorded upload fed by
//! `pg_dump`, the manifest, and only then the weekly copy and retention.

use stagesync_proto::v1 as pb;
use stagesync_s3::backups::{Manifest, Store, Uploaded, stamp};
use tokio_util::sync::CancellationToken;

use super::failure::{BackupFailure, BackupStep};
use super::uploads::{Record, abort_failed, uploads_dir};
use super::{Backups, Sender};
use crate::{db, pg, policy};

/// What the manifest records about the server and the tools.
struct Facts {
    server_version: String,
    /// 0 when unknown.
    database_size: u64,
    pg_dump_version: String,
}

impl Backups {
    /// One backup, from the first check to retention.
    pub(super) async fn run(
        &self,
        req: &pb::BackupRequest,
        tx: &Sender,
        cancel: &CancellationToken,
    ) -> Result<pb::BackupDone, BackupFailure> {
        let cfg = &self.config;
        let daily_place = req.daily.clone().unwrap_or_default();
        let daily = self
            .open(&daily_place)
            .await
            .map_err(BackupFailure::at(BackupStep::Store))?;
        let facts = self.facts(&req.database).await?;
        let now = time::OffsetDateTime::now_utc();
        let taken = stamp(now);
        let (dump_key, manifest_key) = daily.keys(&req.database, &taken, &cfg.name);
        let uploaded = self.upload(req, &daily, &dump_key, tx, cancel).await?;
        let manifest = Manifest {
            format: 1,
            database: req.database.clone(),
            dump: dump_key.rsplit('/').next().unwrap_or_default().to_string(),
            size: uploaded.size,
            sha256: uploaded.sha256.clone(),
            taken: taken.clone(),
            host: cfg.name.clone(),
            pg_dump_version: facts.pg_dump_version,
            server_version: facts.server_version,
            database_size: facts.database_size,
            unmasked_personal_data: policy::masking_for(cfg, &req.database).is_some(),
        };
        put_manifest(&daily, &manifest_key, &dump_key, &manifest).await?;
        let kept = self.keep(req, &daily, &manifest_key, now.day()).await;
        Ok(pb::BackupDone {
            dump_key,
            manifest_key,
            size: uploaded.size,
            sha256: uploaded.sha256,
            taken,
            weekly: kept.weekly,
            pruned: kept.pruned,
            warnings: kept.warnings,
        })
    }

    /// Checks the database is there and reads what the manifest records.
    async fn facts(&self, database: &str) -> Result<Facts, BackupFailure> {
        let cfg = &self.config;
        let failed = |message: String| BackupFailure::new(BackupStep::Database, message);
        let c = pg::connect(&cfg.postgres, "postgres")
            .await
            .map_err(|e| failed(format!("connecting to PostgreSQL: {}", pg::error_chain(&e))))?;
        if !db::database_exists(&c, database)
            .await
            .map_err(|e| failed(e.0))?
        {
            return Err(failed(format!("database {database:?} does not exist here")));
        }
        let server_version: String = c
            .query_one("SHOW server_version", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| failed(format!("asking the server version: {e}")))?;
        // Only a hint for restores: not worth failing a backup.
        let database_size: i64 = match c
            .query_one("SELECT pg_database_size($1::text::name)", &[&database])
            .await
            .and_then(|r| r.try_get::<_, Option<i64>>(0))
        {
            Ok(size) => size.unwrap_or(0),
            Err(e) => {
                tracing::warn!(database, error = %e, "cannot read the database's size; the manifest records 0");
                0
            }
        };
        let (pg_dump_version, _) = pg::tool_version(&cfg.postgres.bin_dir, "pg_dump").await;
        Ok(Facts {
            server_version,
            database_size: database_size.max(0) as u64,
            pg_dump_version,
        })
    }

    /// Starts the upload of `dump_key`, records it before the first byte
    /// goes out, and runs `pg_dump` into it. On failure the upload is
    /// aborted; its record stays only if the abort failed too.
    async fn upload(
        &self,
        req: &pb::BackupRequest,
        daily: &Store,
        dump_key: &str,
        tx: &Sender,
        cancel: &CancellationToken,
    ) -> Result<Uploaded, BackupFailure> {
        let work_dir = &self.config.work_dir;
        let pending = daily
            .start_upload(dump_key)
            .await
            .map_err(BackupFailure::at(BackupStep::StartUpload))?;
        let record = match Record::write(work_dir, &pending) {
            Ok(r) => r,
            Err(e) => {
                let failure = BackupFailure::new(
                    BackupStep::Record,
                    format!(
                        "recording the upload in {}: {e}",
                        uploads_dir(work_dir).display()
                    ),
                );
                let _ = daily.abort_upload(&pending).await;
                return Err(failure);
            }
        };
        match self.dump_into(req, daily, &pending, tx, cancel).await {
            Ok(uploaded) => {
                record.remove();
                Ok(uploaded)
            }
            Err(e) => {
                abort_failed(daily, &pending, record).await;
                Err(e)
            }
        }
    }
}

/// Writes the manifest: the backup now exists. Without its manifest the
/// dump is not a backup, so a failure removes the dump.
async fn put_manifest(
    daily: &Store,
    manifest_key: &str,
    dump_key: &str,
    manifest: &Manifest,
) -> Result<(), BackupFailure> {
    if let Err(e) = daily.put_manifest(manifest_key, manifest).await {
        let _ = daily.delete(dump_key).await;
        return Err(BackupFailure::new(BackupStep::Manifest, e.to_string()));
    }
    Ok(())
}
