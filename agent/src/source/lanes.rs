//! Data lanes on the source: the schema file first (so the destination can
//! create the tables), then the data of one snapshot in several lanes at
//! once, each framed by an encoder of its own on a task of its own. Lane 0
//! is a data-only pg_dump of everything the copy lanes do not carry
//! (sequence values, large objects, tables left to it); lanes 1 and up are
//! copy lanes, each taking the next table (or slice of one) from a queue,
//! largest first, and sending its `COPY … TO STDOUT` between a TableStart
//! and a TableEnd.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use stagesync_proto::SCHEMA_FILE;
use stagesync_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::DumpRun;
use super::copy::CopySession;
use super::layout::{CopyTable, Layout, Slice};
use super::outbound::{Chunked, Outbound};
use super::stream::schema_error;
use crate::args;
use crate::frames::{Encoder, frame};
use crate::jobs::{Job, StepError, finish_tool};
use crate::procs;

/// The copy lanes' shared queue of work.
type Queue = Arc<Mutex<VecDeque<Slice>>>;

impl DumpRun {
    /// The schema file, then lane 0 (on `enc`, so the trailer covers the
    /// schema file too) and the layout's copy lanes.
    pub(super) async fn produce_lanes(
        &self,
        enc: &mut Encoder,
        snapshot: &str,
        layout: &Layout,
    ) -> Result<(), StepError> {
        let (mut schema, dir) = self
            .start_schema_dump(self.schema_snapshot(snapshot))
            .await?;
        // The lanes start only once the schema dump is done: a lane holds
        // its tables' locks while it waits for its pipe to be read, and a
        // DDL statement queued behind it would hold the schema dump (and
        // so the pipe's reader) behind itself.
        finish_tool(&self.job, &mut schema, true, &self.database)
            .await
            .map_err(schema_error)?;
        let copy_lanes = layout.shape.lanes() - 1;
        let mut sources = self.start_lanes(snapshot, layout, copy_lanes).await?;
        // Meanwhile the lanes read the catalogs; none holds a lock anything
        // here waits for.
        if let Err(e) = self.out.send_file(&dir, SCHEMA_FILE, enc).await {
            for s in &mut sources {
                s.stop().await;
            }
            return Err(e);
        }
        let stop = self.job.cancel.child_token();
        let tables = Arc::new(layout.tables.clone());
        let queue: Queue = Arc::new(Mutex::new(layout.work().into()));
        let running: Vec<_> = sources
            .into_iter()
            .zip(self.lane_encoders(enc, copy_lanes))
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
                    tables: tables.clone(),
                    queue: queue.clone(),
                };
                tokio::spawn(lane.run())
            })
            .collect();
        collect_lanes(running, enc).await
    }

    /// Lane 0's data-only dump of all but the copied tables, then a session
    /// on the snapshot for each copy lane.
    async fn start_lanes(
        &self,
        snapshot: &str,
        layout: &Layout,
        copy_lanes: u32,
    ) -> Result<Vec<LaneSource>, StepError> {
        let copied = layout.copied();
        let to = args::DumpTo::LaneData {
            snapshot,
            copied: &copied,
        };
        let (tool, chunks) = self.dump_to_stdout(to).await?;
        let mut lanes = vec![LaneSource::Dump(tool, chunks)];
        for _ in 0..copy_lanes {
            let pg = &self.config.postgres;
            let key = self.config.masking.as_ref().map(|m| m.key.clone());
            match CopySession::open(pg, &self.database, snapshot, key).await {
                Ok(s) => lanes.push(LaneSource::Copy(s)),
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
    fn lane_encoders(&self, enc: &mut Encoder, copy_lanes: u32) -> Vec<Encoder> {
        let (compression, digest) = (enc.compression(), enc.digest());
        let faults = &self.config.faults;
        std::iter::once(std::mem::replace(enc, Encoder::new(compression, None)))
            .chain((1..=copy_lanes).map(|n| {
                let corrupt = faults.corrupt_frame.filter(|_| faults.corrupt_lane == n);
                Encoder::for_lane(compression, n, corrupt).with_digest(digest)
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

/// What a lane sends: lane 0's pg_dump, or tables' COPY in a session.
enum LaneSource {
    Dump(procs::Tool, procs::Chunks),
    Copy(CopySession),
}

impl LaneSource {
    /// Ends it early: the tool is killed (a session closes with the lane).
    async fn stop(&mut self) {
        match self {
            LaneSource::Dump(tool, _) => tool.kill().await,
            LaneSource::Copy(_) => {}
        }
    }
}

/// One data lane on the source, framed by its own encoder; it ends with a
/// LaneEnd frame.
struct LaneRun {
    job: Arc<Job>,
    lane: u32,
    source: LaneSource,
    encoder: Encoder,
    out: Outbound,
    /// Cancelled when any lane fails, so the others stop.
    stop: CancellationToken,
    database: String,
    tables: Arc<Vec<CopyTable>>,
    queue: Queue,
}

impl LaneRun {
    /// The lane's result, and its encoder for the trailer (lane 0).
    async fn run(mut self) -> (Result<(), StepError>, Encoder) {
        let stop = self.stop.clone();
        let sent = tokio::select! {
            r = self.send_all() => r,
            _ = stop.cancelled() => Err(StepError::stopped(pb::Step::PgDump, "another data lane failed")),
        };
        let mut result = match sent {
            Ok(()) => Ok(()),
            Err(e) => {
                self.source.stop().await;
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

    /// Everything the lane carries: lane 0's dump, or tables from the
    /// queue until it is empty.
    async fn send_all(&mut self) -> Result<(), StepError> {
        match &mut self.source {
            LaneSource::Dump(tool, chunks) => {
                self.out
                    .send_reader(Chunked::Tool(chunks), &mut self.encoder)
                    .await?;
                finish_tool(&self.job, tool, true, &self.database).await
            }
            LaneSource::Copy(session) => loop {
                let next = self.queue.lock().map(|mut q| q.pop_front()).ok().flatten();
                let Some(work) = next else {
                    return Ok(());
                };
                let table = &self.tables[work.table as usize];
                send_slice(
                    &self.out,
                    session,
                    &mut self.encoder,
                    self.lane,
                    table,
                    work,
                )
                .await?;
            },
        }
    }
}

/// One table's slice on a copy lane: TableStart, its COPY rows, TableEnd.
async fn send_slice(
    out: &Outbound,
    session: &mut CopySession,
    enc: &mut Encoder,
    lane: u32,
    table: &CopyTable,
    work: Slice,
) -> Result<(), StepError> {
    let start = pb::TableStart {
        lane,
        table: work.table,
        slice: work.slice,
    };
    out.send(frame(pb::dump_frame::Kind::TableStart(start)))
        .await?;
    session
        .copy(table, work.slice)
        .await
        .map_err(|e| StepError::new(pb::Step::PgDump, e))?;
    out.send_reader(Chunked::Copy(session), enc)
        .await
        .map_err(|e| {
            e.context(format_args!(
                "copying {}.{}",
                table.name.schema, table.name.table
            ))
        })?;
    let end = pb::TableEnd {
        lane,
        so_far: Some(enc.trailer()),
        rows: session.rows(),
    };
    out.send(frame(pb::dump_frame::Kind::TableEnd(end))).await
}
