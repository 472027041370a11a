//! Parallel mode on the source: `pg_dump -Fd -j N` into the work
//! directory, each file shipped as soon as pg_dump closes it (inotify), and
//! `toc.dat` last, so the destination can restore once it has it.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;

use futures::StreamExt;
use stagesync_proto::v1 as pb;

use super::{DumpRun, created_dir};
use crate::args;
use crate::frames::Encoder;
use crate::jobs::StepError;
use crate::procs;

/// The archive's table of contents: shipped last.
const TOC: &str = "toc.dat";

fn step(message: impl Into<String>) -> StepError {
    StepError::new(pb::Step::PgDump, message)
}

impl DumpRun {
    pub(super) async fn produce_parallel(&self, enc: &mut Encoder) -> Result<(), StepError> {
        let dir = self.job.work_dir.as_ref().map(|d| d.join("dump"));
        let dir = created_dir(dir, "parallel job without a work directory").await?;
        let mut events = closed_files(&dir)?;
        let pg = &self.config.postgres;
        let to = args::DumpTo::Directory(&dir, self.jobs);
        let argv = args::pg_dump(pg, &self.database, &self.dump, to).map_err(step)?;
        let mut tool = procs::spawn_pg_dump(&pg.bin_dir, &argv, Stdio::null())
            .map_err(|e| step(format!("cannot start pg_dump: {e}")))?;
        let mut shipped: HashSet<String> = HashSet::new();
        let status = loop {
            tokio::select! {
                _ = self.job.cancel.cancelled() => {
                    tool.kill().await;
                    return Err(StepError::cancelled(pb::Step::PgDump));
                }
                ev = events.next() => {
                    if let Some(Ok(ev)) = ev
                        && let Some(name) = ev.name.and_then(|n| n.to_str().map(str::to_string))
                        && name != TOC
                        && !shipped.contains(&name)
                    {
                        if let Err(e) = self.out.send_file(&dir, &name, enc).await {
                            tool.kill().await;
                            return Err(e);
                        }
                        shipped.insert(name);
                    }
                }
                s = tool.child.wait() => break s,
            }
        };
        tool.drain().await;
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                return Err(step(format!("pg_dump on {:?} failed ({s})", self.database))
                    .with_stderr(tool.stderr.text()));
            }
            Err(e) => return Err(step(format!("waiting for pg_dump: {e}"))),
        }
        for name in rest(&dir, &shipped)? {
            self.out.send_file(&dir, &name, enc).await?;
        }
        Ok(())
    }
}

/// Events for files closed after writing in `dir`.
fn closed_files(dir: &Path) -> Result<inotify::EventStream<Vec<u8>>, StepError> {
    let inotify = inotify::Inotify::init().map_err(|e| step(format!("inotify: {e}")))?;
    inotify
        .watches()
        .add(dir, inotify::WatchMask::CLOSE_WRITE)
        .map_err(|e| step(format!("inotify on {}: {e}", dir.display())))?;
    inotify
        .into_event_stream(vec![0u8; 4096])
        .map_err(|e| step(format!("inotify: {e}")))
}

/// The files not shipped yet, in name order, the table of contents last.
fn rest(dir: &Path, shipped: &HashSet<String>) -> Result<Vec<String>, StepError> {
    let mut rest: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| step(format!("reading {}: {e}", dir.display())))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !shipped.contains(n) && n != TOC)
        .collect();
    rest.sort();
    rest.push(TOC.to_string());
    Ok(rest)
}
