//! Stream mode: one `pg_dump -Fc` on stdout, chunked into frames. Given a
//! snapshot, that archive holds pre-data and data only, and a schema dump
//! made meanwhile into the work directory follows it as the file
//! [`SCHEMA_FILE`], so the destination builds the indexes with several
//! workers once the data is in.

use std::path::PathBuf;
use std::process::Stdio;

use stagesync_proto::SCHEMA_FILE;
use stagesync_proto::v1 as pb;

use super::outbound::Chunked;
use super::{DumpRun, created_dir};
use crate::args;
use crate::frames::Encoder;
use crate::jobs::{StepError, finish_tool};
use crate::procs;

impl DumpRun {
    pub(super) async fn produce_stream(
        &self,
        enc: &mut Encoder,
        snapshot: Option<&str>,
    ) -> Result<(), StepError> {
        let mut schema = match snapshot {
            None => None,
            Some(id) => Some(self.start_schema_dump(self.schema_snapshot(id)).await?),
        };
        let to = match snapshot {
            Some(id) => args::DumpTo::StdoutWithoutPostData { snapshot: id },
            None => args::DumpTo::Stdout,
        };
        let (mut tool, mut out) = match self.dump_to_stdout(to).await {
            Ok(t) => t,
            Err(e) => {
                if let Some((s, _)) = schema.as_mut() {
                    s.kill().await;
                }
                return Err(e);
            }
        };
        let sending = self.out.send_reader(Chunked::Tool(&mut out), enc);
        let sent = match schema.as_mut() {
            None => sending.await,
            Some((side, _)) => {
                tokio::pin!(sending);
                tokio::select! {
                    r = &mut sending => r,
                    status = side.child.wait() => match status {
                        Ok(s) if s.success() => sending.await,
                        // The schema dump failed: no use sending the data.
                        _ => {
                            tool.kill().await;
                            let e = finish_tool(&self.job, side, true, &self.database)
                                .await
                                .err()
                                .unwrap_or_else(|| StepError::new(pb::Step::PgDump, "it ended unexpectedly"));
                            return Err(schema_error(e));
                        }
                    },
                }
            }
        };
        let main = match sent {
            Ok(_) => finish_tool(&self.job, &mut tool, true, &self.database).await,
            Err(e) => {
                tool.kill().await;
                Err(e)
            }
        };
        let Some((side, dir)) = schema.as_mut() else {
            return main;
        };
        if let Err(e) = main {
            side.kill().await;
            return Err(e);
        }
        finish_tool(&self.job, side, true, &self.database)
            .await
            .map_err(schema_error)?;
        self.out.send_file(dir, SCHEMA_FILE, enc).await
    }

    /// Starts the schema dump (pre-data and post-data) of `snapshot` into
    /// the job's work directory.
    pub(super) async fn start_schema_dump(
        &self,
        snapshot: &str,
    ) -> Result<(procs::Tool, PathBuf), StepError> {
        let pg = &self.config.postgres;
        let dir = self.job.work_dir.clone();
        let dir = created_dir(dir, "a split stream without a work directory").await?;
        let file = dir.join(SCHEMA_FILE);
        let to = args::DumpTo::Schema {
            snapshot,
            file: &file,
        };
        let argv = args::pg_dump(pg, &self.database, &self.dump, to)
            .map_err(|e| StepError::new(pb::Step::PgDump, e))?;
        let env = self.tool_env().await?;
        let tool = procs::spawn_pg_dump(&pg.bin_dir, &argv, &env, Stdio::null())
            .map_err(|e| StepError::new(pb::Step::PgDump, format!("cannot start pg_dump: {e}")))?;
        Ok((tool, dir))
    }

    /// Starts a `pg_dump` whose archive comes out on its stdout, read in
    /// chunks.
    pub(super) async fn dump_to_stdout(
        &self,
        to: args::DumpTo<'_>,
    ) -> Result<(procs::Tool, procs::Chunks), StepError> {
        let pg = &self.config.postgres;
        let argv = args::pg_dump(pg, &self.database, &self.dump, to)
            .map_err(|e| StepError::new(pb::Step::PgDump, e))?;
        let cannot = |e| StepError::new(pb::Step::PgDump, format!("cannot start pg_dump: {e}"));
        let (stdout, chunks) = procs::chunked_stdout().map_err(cannot)?;
        let env = self.tool_env().await?;
        let tool = procs::spawn_pg_dump(&pg.bin_dir, &argv, &env, stdout).map_err(cannot)?;
        Ok((tool, chunks))
    }

    /// The environment `pg_dump` logs in with.
    async fn tool_env(&self) -> Result<Vec<(&'static str, String)>, StepError> {
        crate::pg::own_tool_env(&self.config.postgres)
            .await
            .map_err(|e| StepError::new(pb::Step::PgDump, e.to_string()))
    }
}

/// Names the schema dump in a failure, apart from the main one.
pub(super) fn schema_error(e: StepError) -> StepError {
    e.context("the schema dump (for indexes and constraints)")
}
