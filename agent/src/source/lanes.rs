//! Data lanes on the source: the schema file first (so the destination can
//! create the tables), then the data in several data-only dumps of one
//! snapshot at once, each framed by an encoder of its own on a task of its
//! own. Lane 0 carries every table the other lanes do not.

use std::sync::Arc;

use stagesync_proto::SCHEMA_FILE;
use stagesync_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::DumpRun;
use super::outbound::{Chunked, Outbound};
use super::stream::schema_error;
use crate::args::{self, TableName};
use crate::frames::{Encoder, frame};
use crate::jobs::{Job, StepError, finish_tool};
use crate::procs;

impl DumpRun {
    /// The schema file, then `tables.len() + 1` lanes (lane 0, every other
    /// table, on `enc`, so the trailer covers the schema file too).
    pub(super) async fn produce_lanes(
        &self,
        enc: &mut Encoder,
        snapshot: &str,
        tables: &[TableName],
    ) -> Result<(), StepError> {
        let (mut schema, dir) = self
            .start_schema_dump(self.schema_snapshot(snapshot))
            .await?;
        // The lanes' dumps start only once the schema dump is done: a lane
        // holds its tables' locks while it waits for its pipe to be read,
        // and a DDL statement queued behind it would hold the schema dump
        // (and so the pipe's reader) behind itself.
        finish_tool(&self.job, &mut schema, true, &self.database)
            .await
            .map_err(schema_error)?;
        let mut dumps = self.start_lane_dumps(snapshot, tables).await?;
        // Meanwhile the lanes read the catalogs; none holds a lock anything
        // here waits for.
        if let Err(e) = self.out.send_file(&dir, SCHEMA_FILE, enc).await {
            for (t, _) in &mut dumps {
                t.kill().await;
            }
            return Err(e);
        }
        let stop = self.job.cancel.child_token();
        let running: Vec<_> = dumps
            .into_iter()
            .zip(self.lane_encoders(enc, tables.len()))
            .enumerate()
            .map(|(lane, ((tool, chunks), encoder))| {
                let lane = LaneRun {
                    job: self.job.clone(),
                    lane: lane as u32,
                    tool,
                    chunks,
                    encoder,
                    out: self.out.clone(),
                    stop: stop.clone(),
                    database: self.database.clone(),
                };
                tokio::spawn(lane.run())
            })
            .collect();
        collect_lanes(running, enc).await
    }

    /// One data-only dump per lane: lane 0 all but `tables`, then each table.
    async fn start_lane_dumps(
        &self,
        snapshot: &str,
        tables: &[TableName],
    ) -> Result<Vec<(procs::Tool, procs::Chunks)>, StepError> {
        let mut dumps = Vec::with_capacity(tables.len() + 1);
        for lane in 0..=tables.len() {
            let which = match lane {
                0 => args::Lane::AllBut(tables),
                n => args::Lane::Table(&tables[n - 1]),
            };
            let to = args::DumpTo::LaneData {
                snapshot,
                lane: which,
            };
            match self.dump_to_stdout(to) {
                Ok(d) => dumps.push(d),
                Err(e) => {
                    for (mut t, _) in dumps {
                        t.kill().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(dumps)
    }

    /// Lane 0 goes on with the encoder that framed the schema file; lanes
    /// 1 and up get their own.
    fn lane_encoders(&self, enc: &mut Encoder, tables: usize) -> Vec<Encoder> {
        let compression = enc.compression();
        let faults = &self.config.faults;
        std::iter::once(std::mem::replace(enc, Encoder::new(compression, None)))
            .chain((1..=tables as u32).map(|n| {
                let corrupt = faults.corrupt_frame.filter(|_| faults.corrupt_lane == n);
                Encoder::for_lane(compression, n, corrupt)
            }))
            .collect()
    }
}

/// Waits for every lane; lane 0's encoder goes back into `enc` for the
/// trailer. The first lane to fail says why; the others were stopped.
async fn collect_lanes(
    running: Vec<tokio::task::JoinHandle<(Result<(), StepError>, Encoder)>>,
    enc: &mut Encoder,
) -> Result<(), StepError> {
    let mut failure: Option<StepError> = None;
    for (lane, handle) in running.into_iter().enumerate() {
        let result = match handle.await {
            Ok((r, e)) => {
                if lane == 0 {
                    *enc = e;
                }
                r
            }
            Err(e) => Err(StepError::new(
                pb::Step::PgDump,
                format!("a data lane's task failed: {e}"),
            )),
        };
        if let Err(e) = result {
            failure = Some(StepError::first_cause(failure, e));
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One data lane on the source: its pg_dump's output, framed by its own
/// encoder; lanes 1 and up end with a LaneEnd frame.
struct LaneRun {
    job: Arc<Job>,
    lane: u32,
    tool: procs::Tool,
    chunks: procs::Chunks,
    encoder: Encoder,
    out: Outbound,
    /// Cancelled when any lane fails, so the others stop.
    stop: CancellationToken,
    database: String,
}

impl LaneRun {
    /// The lane's result, and its encoder for the trailer (lane 0).
    async fn run(mut self) -> (Result<(), StepError>, Encoder) {
        let sent = tokio::select! {
            r = self.out.send_reader(Chunked::Tool(&mut self.chunks), &mut self.encoder) => r,
            _ = self.stop.cancelled() => Err(StepError::stopped(pb::Step::PgDump, "another data lane failed")),
        };
        let mut result = match sent {
            Ok(_) => finish_tool(&self.job, &mut self.tool, true, &self.database).await,
            Err(e) => {
                self.tool.kill().await;
                Err(e)
            }
        };
        if result.is_ok() && self.lane > 0 {
            let end = pb::LaneEnd {
                lane: self.lane,
                trailer: Some(self.encoder.trailer()),
            };
            result = self
                .out
                .send(frame(pb::dump_frame::Kind::LaneEnd(end)))
                .await;
        }
        if result.is_err() {
            self.stop.cancel();
        }
        (result, self.encoder)
    }
}
