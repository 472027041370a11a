//! `RestoreBackup`: feeds a prepared job from a backup in S3 (credentials
//! from this host's AWS chain) instead of a peer's stream. The object is
//! framed like a stream and read by the same reader; its trailer carries
//! the manifest's size and SHA-256, so a corrupted or swapped object fails
//! the job before anything is swapped in.

use std::sync::Arc;

use stagesync_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::inbound::{Inbound, Origin};
use super::{RestoreRun, Restorer, ticket};
use crate::error::AgentError;
use crate::frames::{CHUNK, Encoder, frame, read_chunk};
use crate::jobs::{Job, Side};
use crate::policy;

/// Frames buffered between S3 and the restore.
const QUEUE: usize = 4;

/// A checked `RestoreBackup` request: the object and what it must be.
struct Wanted {
    key: String,
    size: u64,
    sha256: Vec<u8>,
}

impl Restorer {
    /// `RestoreBackup`: checks the request and starts restoring.
    pub async fn restore_backup(
        self: &Arc<Self>,
        req: pb::RestoreBackupRequest,
    ) -> Result<pb::RestoreBackupResponse, AgentError> {
        let cfg = &self.config;
        let (job, place, wanted) = self.check_backup_request(req)?;
        let store = stagesync_s3::backups::Store::open(
            &stagesync_s3::ClientPool::new(),
            stagesync_s3::S3Location::new(&place.bucket, &place.prefix),
            crate::backup::side(&place),
            &cfg.s3_files,
        )
        .await;
        let store = match store {
            Ok(s) => s,
            Err(e) => {
                job.fail(crate::jobs::StepError::new(pb::Step::S3, e.to_string()));
                return Err(AgentError::precondition(&cfg.name, e.to_string()));
            }
        };
        if let Err(e) = self.check_manifest(&store, &wanted).await {
            job.fail(crate::jobs::StepError::new(pb::Step::S3, e.to_string()));
            return Err(e);
        }
        let this = self.clone();
        tokio::spawn(async move { this.run_backup_restore(job, store, wanted).await });
        Ok(pb::RestoreBackupResponse {})
    }

    /// The job the request names, if it waits for a backup and the place
    /// and ticket are right (the ticket is then used up).
    fn check_backup_request(
        &self,
        req: pb::RestoreBackupRequest,
    ) -> Result<(Arc<Job>, pb::S3Place, Wanted), AgentError> {
        let cfg = &self.config;
        let denied = |r: String| AgentError::denied(&cfg.name, r);
        let invalid = |r: String| AgentError::invalid(&cfg.name, r);
        let job = self
            .jobs
            .get(&req.job_id, Side::Dest)
            .ok_or_else(|| denied(format!("no job {:?} is waiting here", req.job_id)))?;
        let setup = job
            .dest
            .as_ref()
            .ok_or_else(|| denied("not a destination job".into()))?;
        if setup.shape != pb::Shape::one_pass(pb::Mode::Stream) {
            return Err(invalid(
                "a backup is restored in stream mode, in one pass".into(),
            ));
        }
        if let Some(source) = &setup.source {
            return Err(denied(format!(
                "job {} waits for a stream from {source}, not for a backup",
                job.id
            )));
        }
        let place = req
            .place
            .ok_or_else(|| invalid("no S3 place given".into()))?;
        let sha256 = hex::decode(&req.sha256)
            .ok()
            .filter(|d| d.len() == 32)
            .ok_or_else(|| invalid(format!("{:?} is not a SHA-256", req.sha256)))?;
        policy::may_restore_from(cfg, &place, &req.dump_key)?;
        ticket::take(&job, setup, &req.ticket).map_err(denied)?;
        let wanted = Wanted {
            key: req.dump_key,
            size: req.size,
            sha256,
        };
        Ok((job, place, wanted))
    }

    /// Reads the backup's manifest here, not trusting the request's copy of
    /// it: the dump is the one it describes, and a backup holding personal
    /// data unmasked is restored only where this agent's policy allows.
    async fn check_manifest(
        &self,
        store: &stagesync_s3::backups::Store,
        wanted: &Wanted,
    ) -> Result<(), AgentError> {
        let cfg = &self.config;
        let key = stagesync_s3::backups::Store::manifest_key_of(&wanted.key).ok_or_else(|| {
            AgentError::invalid(
                &cfg.name,
                format!("{:?} is not a backup's dump", wanted.key),
            )
        })?;
        let manifest = store.manifest(&key).await.map_err(|e| {
            AgentError::precondition(
                &cfg.name,
                format!("the backup's manifest {key} cannot be read ({e}); a dump without its manifest is not restored"),
            )
        })?;
        if manifest.size != wanted.size
            || hex::decode(&manifest.sha256).ok() != Some(wanted.sha256.clone())
        {
            return Err(AgentError::denied(
                &cfg.name,
                format!(
                    "the request's size or SHA-256 for {} differ from its manifest {key}",
                    wanted.key
                ),
            ));
        }
        if manifest.unmasked_personal_data {
            let what = format!(
                "the backup {} (database {:?} with masking rules on agent {})",
                wanted.key, manifest.database, manifest.host
            );
            policy::may_receive_unmasked(cfg, &what)?;
        }
        Ok(())
    }

    /// Restores the backup into the job's database; the job ends ready to
    /// commit, or failed.
    async fn run_backup_restore(
        &self,
        job: Arc<Job>,
        store: stagesync_s3::backups::Store,
        wanted: Wanted,
    ) {
        let Some(setup) = job.dest.as_ref() else {
            return;
        };
        let _pipeline = job.pipeline.lock().await;
        if !job.advance(pb::Phase::Restoring) {
            return;
        }
        tracing::info!(job = %job.id, key = %wanted.key, "restoring from a backup");
        let (tx, rx) = mpsc::channel(QUEUE);
        let reader = tokio::spawn(frame_object(store, wanted, tx));
        let inbound = Inbound::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            job.clone(),
            Origin::Backup,
            self.config.jobs.stall_timeout,
            pb::Compression::None,
            pb::Digest::Sha256,
            1,
        );
        let run = RestoreRun {
            config: &self.config,
            job: &job,
            setup,
        };
        let restored = run
            .restore(inbound, &pb::Shape::one_pass(pb::Mode::Stream), &[])
            .await;
        reader.abort();
        // A failure is recorded on the job, where the controller reads it.
        let _ = run.conclude(restored);
    }
}

/// Reads a dump object and sends it as data frames, then a trailer with
/// the size and SHA-256 the manifest promised.
async fn frame_object(
    store: stagesync_s3::backups::Store,
    wanted: Wanted,
    tx: mpsc::Sender<Result<pb::DumpFrame, Status>>,
) {
    let key = &wanted.key;
    let body = match store.open_dump(key).await {
        Ok(b) => b,
        Err(e) => {
            let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
            return;
        }
    };
    let mut body = body.into_async_read();
    // The digest is the manifest's: the reader checks it, nothing to
    // compute here.
    let mut enc = Encoder::new(pb::Compression::None, None).without_digest();
    loop {
        let chunk = match read_chunk(&mut body).await {
            Ok(c) => c,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::unavailable(format!("reading {key}: {e}"))))
                    .await;
                return;
            }
        };
        let last = chunk.len() < CHUNK;
        if !chunk.is_empty() {
            let data = match enc.data(chunk) {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            };
            if tx
                .send(Ok(frame(pb::dump_frame::Kind::Data(data))))
                .await
                .is_err()
            {
                return;
            }
        }
        if last {
            break;
        }
    }
    let mut trailer = enc.trailer();
    trailer.total_len = wanted.size;
    trailer.digest = wanted.sha256;
    let _ = tx
        .send(Ok(frame(pb::dump_frame::Kind::Trailer(trailer))))
        .await;
}
