//! Stream mode on the destination: the frames go straight into one
//! `pg_restore`. With a post-data file, the main archive (without its
//! post-data section) ends where the file [`SCHEMA_FILE`] starts; that is
//! landed, and its post-data section built by several workers once the
//! data is in.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use futures::Stream;
use stagesync_proto::SCHEMA_FILE;
use stagesync_proto::v1 as pb;
use tonic::Status;

use super::RestoreRun;
use super::inbound::{Event, Inbound};
use crate::jobs::{StepError, finish_tool};
use crate::procs;

/// How feeding `pg_restore` ended.
enum Fed {
    /// Everything arrived and was written; with the landed schema file.
    Complete(Option<PathBuf>),
    /// `pg_restore` stopped reading early: its exit status says why.
    ToolStopped,
}

impl RestoreRun<'_> {
    pub(super) async fn stream<S>(
        &self,
        mut inbound: Inbound<S>,
        post_data: bool,
    ) -> Result<(), StepError>
    where
        S: Stream<Item = Result<pb::DumpFrame, Status>> + Unpin,
    {
        let mut tool = self.restore_from_stdin().await?;
        let stdin = tool.take_stdin();
        let fed = self.feed(&mut inbound, stdin, post_data).await;
        let fed = match fed {
            Ok(fed) => fed,
            Err(e) => {
                tool.kill().await;
                return Err(e);
            }
        };
        let landed = match fed {
            Fed::Complete(landed) => {
                finish_tool(self.job, &mut tool, true, &self.job.new_database).await?;
                landed
            }
            Fed::ToolStopped => {
                return finish_tool(self.job, &mut tool, false, &self.job.new_database).await;
            }
        };
        match landed {
            Some(file) => self.post_data(&file).await,
            None => Ok(()),
        }
    }

    /// Writes the stream into `stdin` until its end (or the schema file's
    /// start, which ends the main archive).
    async fn feed<S>(
        &self,
        inbound: &mut Inbound<S>,
        mut stdin: Option<procs::Stdin>,
        post_data: bool,
    ) -> Result<Fed, StepError>
    where
        S: Stream<Item = Result<pb::DumpFrame, Status>> + Unpin,
    {
        let job = self.job;
        let mut landed: Option<PathBuf> = None;
        loop {
            match inbound.next().await? {
                Event::Data { raw, .. } => {
                    if landed.is_some() {
                        return Err(StepError::new(
                            pb::Step::Stream,
                            "data arrived after the post-data section",
                        ));
                    }
                    let Some(w) = stdin.as_mut() else {
                        return Ok(Fed::ToolStopped);
                    };
                    let wrote = tokio::select! {
                        _ = job.cancel.cancelled() => return Err(StepError::cancelled(pb::Step::Stream)),
                        r = w.write(&raw) => r,
                    };
                    if wrote.is_err() {
                        return Ok(Fed::ToolStopped);
                    }
                    job.restored.fetch_add(raw.len() as u64, Ordering::Relaxed);
                }
                Event::FileStart(f) if post_data && stdin.is_some() && f.name == SCHEMA_FILE => {
                    // The main archive is complete: pg_restore may see its end.
                    stdin = None;
                    let dir = job.work_dir.clone().ok_or_else(|| {
                        StepError::new(
                            pb::Step::Stream,
                            "no work directory to land the post-data section in",
                        )
                    })?;
                    inbound.land(&dir, &f, self.schema_cap()).await?;
                }
                Event::FileLanded(path) => landed = Some(path),
                Event::End => {
                    if post_data && landed.is_none() {
                        return Err(StepError::new(
                            pb::Step::Stream,
                            "the stream ended without the post-data section it announced",
                        ));
                    }
                    return Ok(Fed::Complete(landed));
                }
                other => return Err(other.unexpected("in a stream-mode job")),
            }
        }
    }
}
