//! Data lanes on the source: the schema file first (so the destination can
//! create the tables), then the data of one snapshot in several lanes at
//! once, each framed by an encoder of its own on a task of its own. Lane 0
//! is a data-only pg_dump of everything the other lanes do not carry
//! (small tables, sequence values, large objects); lanes 1 and up are each
//! one big table's `COPY … TO STDOUT`.

use std::sync::Arc;

use stagesync_proto::SCHEMA_FILE;
use stagesync_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::DumpRun;
use super::copy::CopyChunks;
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
        columns: &[Vec<String>],
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
        let mut dumps = self.start_lanes(snapshot, tables, columns).await?;
        // Meanwhile the lanes read the catalogs; none holds a lock anything
        // here waits for.
        if let Err(e) = self.out.send_file(&dir, SCHEMA_FILE, enc).await {
            for d in &mut dumps {
                d.stop().await;
            }
            return Err(e);
        }
        let stop = self.job.cancel.child_token();
        let running: Vec<_> = dumps
            .into_iter()
            .zip(self.lane_encoders(enc, tables.len()))
            .enumerate()
            .map(|(lane, (source, encoder))| {
                let lane = LaneRun {
                    job: self.job.clone(),
                    lane: lane as u32,
                    source,
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

    /// Lane 0's data-only dump of all but `tables`, then each table's COPY.
    async fn start_lanes(
        &self,
        snapshot: &str,
        tables: &[TableName],
        columns: &[Vec<String>],
    ) -> Result<Vec<LaneSource>, StepError> {
        let to = args::DumpTo::LaneData {
            snapshot,
            lane: args::Lane::AllBut(tables),
        };
        let (tool, chunks) = self.dump_to_stdout(to)?;
        let mut lanes = vec![LaneSource::Dump(tool, chunks)];
        for (table, columns) in tables.iter().zip(columns) {
            let pg = &self.config.postgres;
            match CopyChunks::open(pg, &self.database, snapshot, table, columns).await {
                Ok(c) => lanes.push(LaneSource::Copy(c)),
                Err(e) => {
                    for l in &mut lanes {
                        l.stop().await;
                    }
                    return Err(StepError::new(pb::Step::PgDump, e));
                }
            }
        }
        Ok(lanes)
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

/// What a lane sends: lane 0's pg_dump, or a table's COPY.
enum LaneSource {
    Dump(procs::Tool, procs::Chunks),
    Copy(CopyChunks),
}

impl LaneSource {
    /// Ends it early: the tool is killed, the COPY's session closed.
    async fn stop(&mut self) {
        match self {
            LaneSource::Dump(tool, _) => tool.kill().await,
            LaneSource::Copy(_) => {}
        }
    }
}

/// One data lane on the source, framed by its own encoder; lanes 1 and up
/// end with a LaneEnd frame.
struct LaneRun {
    job: Arc<Job>,
    lane: u32,
    source: LaneSource,
    encoder: Encoder,
    out: Outbound,
    /// Cancelled when any lane fails, so the others stop.
    stop: CancellationToken,
    database: String,
}

impl LaneRun {
    /// The lane's result, and its encoder for the trailer (lane 0).
    async fn run(mut self) -> (Result<(), StepError>, Encoder) {
        let chunked = match &mut self.source {
            LaneSource::Dump(_, chunks) => Chunked::Tool(chunks),
            LaneSource::Copy(copy) => Chunked::Copy(copy),
        };
        let sent = tokio::select! {
            r = self.out.send_reader(chunked, &mut self.encoder) => r,
            _ = self.stop.cancelled() => Err(StepError::stopped(pb::Step::PgDump, "another data lane failed")),
        };
        let mut result = match (sent, &mut self.source) {
            (Ok(_), LaneSource::Dump(tool, _)) => {
                finish_tool(&self.job, tool, true, &self.database).await
            }
            (Ok(_), LaneSource::Copy(_)) => Ok(()),
            (Err(e), source) => {
                source.stop().await;
                Err(e)
            }
        };
        // Lane 0 ends too (its trailer comes once every lane did), so the
        // destination can finish its tables before the others.
        if result.is_ok() {
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
