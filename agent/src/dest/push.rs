//! `PushDump`: the stream from the source agent. Its header names the job
//! and carries the ticket; the caller must be the job's peer, and the
//! stream's shape must fit the one the job was prepared for.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use stagesync_certs::Identity;
use stagesync_proto::v1 as pb;
use tonic::Streaming;

use super::inbound::{Inbound, Origin};
use super::{RestoreRun, Restorer, ticket};
use crate::error::AgentError;
use crate::jobs::{Job, Side, StepError};

impl Restorer {
    /// `PushDump`: checks the header, restores the stream, and answers once
    /// the job is ready to commit (or failed).
    pub async fn push_dump(
        self: &Arc<Self>,
        caller: Identity,
        mut stream: Streaming<pb::DumpFrame>,
    ) -> Result<pb::PushDumpResponse, AgentError> {
        let header = self.read_header(&mut stream).await?;
        let job = self.job_for(&header, &caller)?;
        let shape = self.check_shape(&job, &header)?;
        if header.unmasked_personal_data {
            let what = format!("the stream of {:?} from {caller}", header.source_database);
            if let Err(e) = crate::policy::may_receive_unmasked(&self.config, &what) {
                job.fail(StepError::new(pb::Step::Stream, e.to_string()));
                return Err(e);
            }
        }
        if let Err(e) = super::copy::check_lane_tables(&shape, &header.lane_tables) {
            job.fail(StepError::new(pb::Step::Stream, e.clone()));
            return Err(self.denied(e));
        }
        let Some(setup) = job.dest.as_ref() else {
            return Err(self.denied("not a destination job".into()));
        };
        let _pipeline = job.pipeline.lock().await;
        if !job.advance(pb::Phase::Restoring) {
            return Err(self.denied(format!("job {} has ended ({:?})", job.id, job.phase())));
        }
        tracing::info!(job = %job.id, source = %caller, ?shape, "stream started");
        let compression =
            pb::Compression::try_from(header.compression).unwrap_or(pb::Compression::None);
        // Checked with the shape.
        let digest = shape.stream_digest().unwrap_or(pb::Digest::Sha256);
        let run = RestoreRun {
            config: &self.config,
            job: &job,
            setup,
        };
        let inbound = Inbound::new(
            stream,
            job.clone(),
            Origin::Peer,
            self.config.jobs.stall_timeout,
            compression,
            digest,
            shape.lanes(),
        );
        let restored = run.restore(inbound, &shape, &header.lane_tables).await;
        run.conclude(restored)
            .map_err(|reason| AgentError::precondition(&self.config.name, reason))?;
        Ok(pb::PushDumpResponse {
            bytes_received: job.received.load(Ordering::Relaxed),
        })
    }

    fn denied(&self, reason: String) -> AgentError {
        AgentError::denied(&self.config.name, reason)
    }

    /// The stream's first frame, which must be its header.
    async fn read_header(
        &self,
        stream: &mut Streaming<pb::DumpFrame>,
    ) -> Result<pb::DumpHeader, AgentError> {
        let first = stream.message().await.map_err(|e| {
            AgentError::invalid(
                &self.config.name,
                format!("reading the stream header: {}", e.message()),
            )
        })?;
        match first {
            Some(pb::DumpFrame {
                kind: Some(pb::dump_frame::Kind::Header(header)),
            }) => Ok(header),
            _ => Err(AgentError::invalid(
                &self.config.name,
                "the stream must start with a header",
            )),
        }
    }

    /// The job the header names, if `caller` is its peer and the ticket is
    /// right (the ticket is then used up).
    fn job_for(&self, header: &pb::DumpHeader, caller: &Identity) -> Result<Arc<Job>, AgentError> {
        let job = self.jobs.get(&header.job_id, Side::Dest).ok_or_else(|| {
            self.denied(format!(
                "no job {:?} is waiting for a stream here",
                header.job_id
            ))
        })?;
        let setup = job
            .dest
            .as_ref()
            .ok_or_else(|| self.denied("not a destination job".into()))?;
        match &setup.source {
            Some(expected) if expected == caller => {}
            Some(expected) => {
                return Err(self.denied(format!(
                    "job {} expects its stream from {expected}, not from {caller}",
                    job.id
                )));
            }
            None => {
                return Err(self.denied(format!(
                    "job {} is restored from a backup, not from a peer's stream",
                    job.id
                )));
            }
        }
        ticket::take(&job, setup, &header.ticket).map_err(|r| self.denied(r))?;
        Ok(job)
    }

    /// The stream's shape, if it fits the one the job was prepared for;
    /// otherwise the job fails.
    fn check_shape(&self, job: &Job, header: &pb::DumpHeader) -> Result<pb::Shape, AgentError> {
        let agreed = job.dest.as_ref().map(|d| d.shape).unwrap_or_default();
        let shape = header.shape.unwrap_or_default();
        if let Err(e) = shape.fits_within(&agreed) {
            let reason = format!(
                "the stream announced {} data lanes {} a post-data file, which job {} cannot take: {e}",
                shape.data_lanes,
                if shape.post_data_file {
                    "with"
                } else {
                    "without"
                },
                job.id
            );
            job.fail(StepError::new(pb::Step::Stream, reason.clone()));
            return Err(self.denied(reason));
        }
        Ok(shape)
    }
}
