//! The records of started uploads in `work_dir/uploads/`: written before
//! the first part goes out and removed once the upload is completed or
//! aborted, so that what a crash leaves is aborted at the next start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use stagesync_s3::backups::{Aborted, PendingUpload, Store};
use stagesync_s3::{ClientPool, S3Location, SideConfig};

use crate::config::AgentConfig;

/// How long the abort of one upload left behind may take at start.
const ABORT_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn uploads_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("uploads")
}

/// The record of one started upload.
pub(super) struct Record(PathBuf);

impl Record {
    /// Writes the record of a started upload.
    pub(super) fn write(work_dir: &Path, p: &PendingUpload) -> std::io::Result<Record> {
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
        Ok(Record(path))
    }

    /// The upload is completed or aborted: nothing is left to track.
    pub(super) fn remove(self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// After a failed backup: aborts its upload, and forgets the record once
/// the abort went through (otherwise the next start tries again).
pub(super) async fn abort_failed(store: &Store, pending: &PendingUpload, record: Record) {
    match store.abort_upload(pending).await {
        Ok(_) => record.remove(),
        Err(abort) => {
            tracing::warn!(error = %abort, "could not abort the upload; the next start tries again")
        }
    }
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
        let Some(pending) = read_record(&path) else {
            tracing::warn!(path = %path.display(), "unreadable upload record removed");
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let aborted = async {
            let location = S3Location::new(&pending.bucket, "");
            let side = SideConfig::from(&pending.side);
            let store = Store::open(&pool, location, side, &config.s3_files).await?;
            store.abort_upload(&pending).await
        };
        let (bucket, key) = (&pending.bucket, &pending.key);
        match tokio::time::timeout(ABORT_TIMEOUT, aborted).await {
            Ok(Ok(Aborted::Now)) => {
                tracing::info!(%bucket, %key, "aborted an upload a crash left behind");
                let _ = std::fs::remove_file(&path);
            }
            Ok(Ok(Aborted::AlreadyGone)) => {
                let _ = std::fs::remove_file(&path);
            }
            Ok(Err(e)) => {
                tracing::warn!(%bucket, %key, error = %e, "could not abort an upload a crash left behind; trying again at the next start")
            }
            Err(_) => {
                tracing::warn!(%bucket, %key, "aborting an upload left behind timed out; trying again at the next start")
            }
        }
    }
}

fn read_record(path: &Path) -> Option<PendingUpload> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}
