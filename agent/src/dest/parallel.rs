//! Parallel mode on the destination: every file of pg_dump's directory
//! format lands in the work directory, then `pg_restore -j N` restores it.

use futures::Stream;
use stagesync_proto::v1 as pb;
use tonic::Status;

use super::RestoreRun;
use super::inbound::{Event, Inbound};
use crate::args;
use crate::jobs::StepError;

impl RestoreRun<'_> {
    pub(super) async fn parallel<S>(&self, mut inbound: Inbound<S>) -> Result<(), StepError>
    where
        S: Stream<Item = Result<pb::DumpFrame, Status>> + Unpin,
    {
        let dir = self
            .job
            .work_dir
            .as_ref()
            .map(|d| d.join("dump"))
            .ok_or_else(|| {
                StepError::new(pb::Step::Stream, "parallel job without a work directory")
            })?;
        loop {
            match inbound.next().await? {
                Event::FileStart(f) => inbound.land(&dir, &f, self.dump_file_cap()).await?,
                Event::FileLanded(_) => {}
                Event::End => break,
                Event::Data { .. } => {
                    return Err(StepError::new(
                        pb::Step::Stream,
                        "data arrived outside a file",
                    ));
                }
                other => return Err(other.unexpected("in a parallel-mode job")),
            }
        }
        self.restore_from(args::RestoreFrom::Directory(&dir, self.setup.jobs))
            .await
    }
}
