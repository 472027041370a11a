//! `pg_dump` feeding the upload: its stdout read a part at a time into the
//! upload's parts, progress sent to the controller every second, and the
//! upload completed only once `pg_dump` exited 0.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use stagesync_proto::v1 as pb;
use stagesync_s3::backups::{PendingUpload, Store, UploadProgress, Uploaded};
use tokio_util::sync::CancellationToken;

use super::failure::{BackupFailure, BackupStep};
use super::{Backups, Sender};
use crate::config::AgentConfig;
use crate::{args, procs};

const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// `pg_dump` arguments for a backup: custom format with pg_dump's own
/// compression (the dump is stored, not streamed to a restore).
pub(super) fn backup_args(
    cfg: &AgentConfig,
    req: &pb::BackupRequest,
) -> Result<Vec<String>, String> {
    let dump = req.dump.clone().unwrap_or_default();
    let argv = args::pg_dump(&cfg.postgres, &req.database, &dump, args::DumpTo::Stdout)?;
    Ok(argv.into_iter().filter(|a| a != "--compress=0").collect())
}

impl Backups {
    /// Runs `pg_dump` into the upload's parts and completes the upload once
    /// `pg_dump` exited 0.
    pub(super) async fn dump_into(
        &self,
        req: &pb::BackupRequest,
        store: &Store,
        pending: &PendingUpload,
        tx: &Sender,
        cancel: &CancellationToken,
    ) -> Result<Uploaded, BackupFailure> {
        let (mut tool, mut out) = self.start_pg_dump(req).await?;
        let counts = Arc::new(Counts::default());
        let ticker = tokio::spawn(send_progress(counts.clone(), tx.clone()));
        let progress = |p: UploadProgress| counts.set(p);
        let parts = tokio::select! {
            p = store.upload_parts(pending, &mut out, &progress) => {
                p.map_err(BackupFailure::at(BackupStep::Upload))
            }
            () = cancel.cancelled() => Err(BackupFailure::new(
                BackupStep::Upload,
                "the controller went away: the backup was cancelled",
            )),
        };
        ticker.abort();
        let parts = match parts {
            Ok(p) => p,
            Err(e) => {
                tool.kill().await;
                return Err(e);
            }
        };
        finish_pg_dump(&mut tool).await?;
        store
            .complete(pending, parts)
            .await
            .map_err(BackupFailure::at(BackupStep::Complete))
    }

    /// Starts `pg_dump` with its stdout piped to us.
    async fn start_pg_dump(
        &self,
        req: &pb::BackupRequest,
    ) -> Result<(procs::Tool, tokio::process::ChildStdout), BackupFailure> {
        let cfg = &self.config;
        let argv = backup_args(cfg, req).map_err(BackupFailure::at(BackupStep::Dump))?;
        let env = crate::pg::own_tool_env(&cfg.postgres)
            .await
            .map_err(|e| BackupFailure::new(BackupStep::Dump, e.to_string()))?;
        let mut tool = procs::spawn_pg_dump(&cfg.postgres.bin_dir, &argv, &env, Stdio::piped())
            .map_err(|e| {
                BackupFailure::new(BackupStep::Dump, format!("cannot start pg_dump: {e}"))
            })?;
        let out = tool
            .child
            .stdout
            .take()
            .ok_or_else(|| BackupFailure::new(BackupStep::Dump, "pg_dump has no stdout"))?;
        Ok((tool, out))
    }
}

/// Waits for `pg_dump` after its stdout ended; a failure carries its stderr.
async fn finish_pg_dump(tool: &mut procs::Tool) -> Result<(), BackupFailure> {
    let status = tool.child.wait().await;
    tool.drain().await;
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(
            BackupFailure::new(BackupStep::Dump, format!("pg_dump failed ({s})"))
                .with_stderr(tool.stderr.text().trim().to_string()),
        ),
        Err(e) => Err(BackupFailure::new(
            BackupStep::Dump,
            format!("waiting for pg_dump: {e}"),
        )),
    }
}

/// The counts of the upload in progress, written by the upload and read
/// by the progress ticker.
#[derive(Default)]
struct Counts {
    dumped: AtomicU64,
    uploaded: AtomicU64,
    parts: AtomicU32,
}

impl Counts {
    fn set(&self, p: UploadProgress) {
        self.dumped.store(p.bytes_read, Ordering::Relaxed);
        self.uploaded.store(p.bytes_uploaded, Ordering::Relaxed);
        self.parts.store(p.parts, Ordering::Relaxed);
    }

    fn event(&self) -> pb::BackupEvent {
        pb::BackupEvent {
            kind: Some(pb::backup_event::Kind::Progress(pb::BackupProgress {
                bytes_dumped: self.dumped.load(Ordering::Relaxed),
                bytes_uploaded: self.uploaded.load(Ordering::Relaxed),
                parts: self.parts.load(Ordering::Relaxed),
            })),
        }
    }
}

/// Sends the counts every [`PROGRESS_EVERY`] until the controller is gone
/// or the task is aborted.
async fn send_progress(counts: Arc<Counts>, tx: Sender) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tick.tick().await;
        if tx.send(Ok(counts.event())).await.is_err() {
            return;
        }
    }
}
