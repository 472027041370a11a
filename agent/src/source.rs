//! The source side of a refresh: `pg_dump`, framed and pushed to the
//! destination agent over its own mutual-TLS connection.
//!
//! Backpressure runs end to end: frames go through a small bounded channel
//! into the gRPC stream, whose HTTP/2 window fills when the destination
//! stops reading, so a slow `pg_restore` slows `pg_dump` and memory stays
//! flat.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use stagesync_certs::channel::AgentTarget;
use stagesync_certs::{Identity, ReloadingClientConfig};
use stagesync_proto::AgentClient;
use stagesync_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::dest::{StepError, finish_tool, remove_work_dir};
use crate::error::AgentError;
use crate::frames::{CHUNK, Encoder, MAX_MESSAGE, read_chunk};
use crate::jobs::{Job, Jobs, Side};
use crate::{args, db, pg, procs};

/// Frames buffered between pg_dump and the network.
const QUEUE: usize = 4;

type Frames = mpsc::Sender<pb::DumpFrame>;

fn frame(kind: pb::dump_frame::Kind) -> pb::DumpFrame {
    pb::DumpFrame { kind: Some(kind) }
}

impl Jobs {
    /// `StartDump`: checks the request and starts pushing.
    pub async fn start_dump(
        self: &Arc<Self>,
        req: pb::StartDumpRequest,
        client_tls: Arc<ReloadingClientConfig>,
    ) -> Result<pb::StartDumpResponse, AgentError> {
        let cfg = &self.config;
        let invalid = |r: String| AgentError::InvalidArgument {
            agent: cfg.name.clone(),
            reason: r,
        };
        if !(8..=32).contains(&req.job_id.len())
            || !req.job_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(invalid(format!(
                "job id {:?} is not 8-32 hex digits",
                req.job_id
            )));
        }
        if !cfg.policy.may_dump.matches(&req.database) || req.database.starts_with("stagesync_") {
            return Err(AgentError::PermissionDenied {
                agent: cfg.name.clone(),
                reason: format!(
                    "direction guard: this agent may not dump database {:?} (policy.may_dump = {:?} in {})",
                    req.database,
                    cfg.policy.may_dump.patterns,
                    cfg.source.display()
                ),
            });
        }
        let mode = pb::Mode::try_from(req.mode).unwrap_or(pb::Mode::Unspecified);
        if mode == pb::Mode::Unspecified {
            return Err(invalid("mode must be stream or parallel".into()));
        }
        if !(1..=64).contains(&req.jobs) {
            return Err(invalid(format!("jobs must be 1 to 64, not {}", req.jobs)));
        }
        let dump = req.dump.clone().unwrap_or_default();
        args::pg_dump(&cfg.postgres, &req.database, &dump, args::DumpTo::Stdout)
            .map_err(&invalid)?;
        let dest: Identity = req
            .dest_identity
            .parse()
            .map_err(|e| invalid(format!("destination identity: {e}")))?;
        let exists = async {
            let c = pg::connect(&cfg.postgres, "postgres")
                .await
                .map_err(|e| pg::error_chain(&e))?;
            db::database_exists(&c, &req.database)
                .await
                .map_err(|e| e.0)
        }
        .await
        .map_err(|e| AgentError::Internal {
            agent: cfg.name.clone(),
            reason: e,
        })?;
        if !exists {
            return Err(AgentError::FailedPrecondition {
                agent: cfg.name.clone(),
                reason: format!("database {:?} does not exist here", req.database),
            });
        }
        // Parallel mode lands the dump here; a split stream lands its
        // post-data section.
        // Apart from the destination's, should one agent be both sides.
        let work_dir = (mode == pb::Mode::Parallel || req.split_post_data).then(|| {
            cfg.work_dir
                .join("jobs")
                .join(format!("source-{}", req.job_id))
        });
        let job = Job::new(
            &cfg.name,
            &req.job_id,
            Side::Source,
            &req.database,
            String::new(),
            work_dir,
            None,
        );
        self.insert(job.clone())
            .map_err(|r| AgentError::FailedPrecondition {
                agent: cfg.name.clone(),
                reason: r,
            })?;
        self.spawn_supervisor(job.clone());
        let jobs = self.clone();
        let target = AgentTarget {
            address: req.dest_address.clone(),
            expected: Some(dest),
        };
        tokio::spawn(async move {
            let _pipeline = job.pipeline.lock().await;
            match jobs.push(&job, &req, mode, &dump, target, client_tls).await {
                Ok(()) => {
                    job.advance(pb::Phase::Sent);
                    tracing::info!(job = %job.id, bytes = job.dumped.load(Ordering::Relaxed), "dump sent");
                }
                Err(e) => job.fail(e.step, e.message, e.stderr),
            }
            remove_work_dir(job.work_dir.as_deref()).await;
        });
        Ok(pb::StartDumpResponse {})
    }

    async fn push(
        &self,
        job: &Arc<Job>,
        req: &pb::StartDumpRequest,
        mode: pb::Mode,
        dump: &pb::DumpOptions,
        target: AgentTarget,
        tls: Arc<ReloadingClientConfig>,
    ) -> Result<(), StepError> {
        let channel = stagesync_certs::channel::channel(tls, &target).map_err(|e| StepError {
            step: "connect",
            message: e.to_string(),
            stderr: String::new(),
        })?;
        let mut client = AgentClient::new(channel)
            .max_encoding_message_size(MAX_MESSAGE)
            .max_decoding_message_size(MAX_MESSAGE);
        let compression = match pb::Compression::try_from(req.compression) {
            Ok(pb::Compression::None) => pb::Compression::None,
            _ => pb::Compression::Zstd,
        };
        // A split stream needs one snapshot for both of its pg_dumps; the
        // transaction that exported it stays open until both are done.
        let snapshot = if mode == pb::Mode::Stream && req.split_post_data {
            match export_snapshot(&self.config.postgres, &req.database).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot export a snapshot; indexes and constraints travel with the data");
                    None
                }
            }
        } else {
            None
        };
        // The largest tables get data lanes of their own (on the snapshot's
        // own session, so they are the tables the dumps will see).
        let lanes = match &snapshot {
            Some((client, _)) if req.data_lanes > 1 => {
                let max = req.data_lanes.min(stagesync_proto::MAX_DATA_LANES) as usize - 1;
                match lane_tables(client, dump, max, self.config.jobs.lane_min_table_bytes).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(job = %job.id, error = %e, "cannot pick tables for data lanes; the data travels in one stream");
                        Vec::new()
                    }
                }
            }
            _ => Vec::new(),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tx.send(frame(pb::dump_frame::Kind::Header(pb::DumpHeader {
            job_id: req.job_id.clone(),
            ticket: req.ticket.clone(),
            mode: mode as i32,
            compression: compression as i32,
            source_database: req.database.clone(),
            post_data_file: snapshot.is_some(),
            data_lanes: if lanes.is_empty() {
                0
            } else {
                lanes.len() as u32 + 1
            },
        })))
        .await
        .map_err(|_| step("stream", "the stream closed before it started"))?;
        let push = tokio::spawn(async move { client.push_dump(ReceiverStream::new(rx)).await });
        let faults = &self.config.faults;
        let mut enc = Encoder::new(
            compression,
            faults.corrupt_frame.filter(|_| faults.corrupt_lane == 0),
        );
        let heartbeat = tokio::spawn(heartbeats(tx.clone(), job.id.clone()));
        let produced = match mode {
            pb::Mode::Parallel => self.produce_parallel(job, req, dump, &mut enc, &tx).await,
            _ => match snapshot.as_ref().map(|(_, id)| id.as_str()) {
                Some(id) if !lanes.is_empty() => {
                    self.produce_lanes(job, req, dump, &mut enc, &tx, id, &lanes)
                        .await
                }
                id => self.produce_stream(job, req, dump, &mut enc, &tx, id).await,
            },
        };
        drop(snapshot);
        // Stop the heartbeats before the trailer, and before the stream may end.
        heartbeat.abort();
        let _ = heartbeat.await;
        if produced.is_ok() {
            let _ = tx
                .send(frame(pb::dump_frame::Kind::Trailer(enc.trailer())))
                .await;
        }
        drop(tx);
        let answer = tokio::select! {
            _ = job.cancel.cancelled() => return Err(step("stream", "the job was cancelled")),
            a = push => a,
        };
        let answer = answer.map_err(|e| step("stream", format!("the push task failed: {e}")))?;
        // The destination's verdict explains a refused or broken stream
        // better than our side's view of it.
        match (answer, produced) {
            (Ok(_), Ok(())) => Ok(()),
            (Ok(_), Err(e)) => Err(e),
            (Err(status), Err(e)) if e.step == "pg_dump" => Err(e.with_note(status.message())),
            (Err(status), _) => Err(step(
                "stream",
                format!(
                    "the destination agent {} refused or lost the stream: {}",
                    target.address,
                    status.message()
                ),
            )),
        }
    }

    /// Stream mode: `pg_dump -Fc` stdout, chunked. Given a snapshot, the
    /// data goes without its post-data section, and a schema dump
    /// made meanwhile into the work directory follows it as a file.
    async fn produce_stream(
        &self,
        job: &Job,
        req: &pb::StartDumpRequest,
        dump: &pb::DumpOptions,
        enc: &mut Encoder,
        tx: &Frames,
        snapshot: Option<&str>,
    ) -> Result<(), StepError> {
        let pg = &self.config.postgres;
        let mut schema = match snapshot {
            None => None,
            Some(id) => {
                let id = if self.config.faults.bad_schema_snapshot {
                    "00000000-00000000-0"
                } else {
                    id
                };
                Some(self.start_schema_dump(job, req, dump, id).await?)
            }
        };
        let to = match snapshot {
            Some(id) => args::DumpTo::StdoutWithoutPostData { snapshot: id },
            None => args::DumpTo::Stdout,
        };
        let started = dump_to_stdout(pg, &req.database, dump, to);
        let (mut tool, mut out) = match started {
            Ok(t) => t,
            Err(e) => {
                if let Some((s, _)) = schema.as_mut() {
                    s.kill().await;
                }
                return Err(e);
            }
        };
        let sending = send_reader(job, Chunked::Tool(&mut out), enc, tx);
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
                            let e = finish_tool(job, side, true, &req.database)
                                .await
                                .err()
                                .unwrap_or_else(|| step("pg_dump", "it ended unexpectedly"));
                            return Err(schema_error(e));
                        }
                    },
                }
            }
        };
        let main = match sent {
            Ok(_) => finish_tool(job, &mut tool, true, &req.database).await,
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
        finish_tool(job, side, true, &req.database)
            .await
            .map_err(schema_error)?;
        send_file(job, dir, SCHEMA_FILE, enc, tx).await
    }

    /// Starts the schema dump (pre-data and post-data) into the job's work
    /// directory.
    async fn start_schema_dump(
        &self,
        job: &Job,
        req: &pb::StartDumpRequest,
        dump: &pb::DumpOptions,
        snapshot: &str,
    ) -> Result<(procs::Tool, PathBuf), StepError> {
        let pg = &self.config.postgres;
        let dir = job
            .work_dir
            .clone()
            .ok_or_else(|| step("pg_dump", "a split stream without a work directory"))?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| step("pg_dump", format!("cannot create {}: {e}", dir.display())))?;
        let file = dir.join(SCHEMA_FILE);
        let argv = args::pg_dump(
            pg,
            &req.database,
            dump,
            args::DumpTo::Schema {
                snapshot,
                file: &file,
            },
        )
        .map_err(|e| step("pg_dump", e))?;
        let tool = procs::spawn(
            &pg.bin_dir,
            "pg_dump",
            &argv,
            &[],
            Stdio::null(),
            Stdio::null(),
        )
        .map_err(|e| step("pg_dump", format!("cannot start pg_dump: {e}")))?;
        Ok((tool, dir))
    }

    /// Data lanes: the schema file first, then the data in `tables.len() +
    /// 1` concurrent data-only dumps of the snapshot, each framed by its own
    /// encoder on a task of its own (lane 0, every other table, on `enc`).
    #[allow(clippy::too_many_arguments)]
    async fn produce_lanes(
        &self,
        job: &Arc<Job>,
        req: &pb::StartDumpRequest,
        dump: &pb::DumpOptions,
        enc: &mut Encoder,
        tx: &Frames,
        snapshot: &str,
        tables: &[args::TableName],
    ) -> Result<(), StepError> {
        let pg = &self.config.postgres;
        let schema_snapshot = if self.config.faults.bad_schema_snapshot {
            "00000000-00000000-0"
        } else {
            snapshot
        };
        let (mut schema, dir) = self
            .start_schema_dump(job, req, dump, schema_snapshot)
            .await?;
        // The lanes' dumps start only once the schema dump is done: a lane
        // holds its tables' locks while it waits for its pipe to be read,
        // and a DDL statement queued behind it would hold the schema dump
        // (and so the pipe's reader) behind itself.
        finish_tool(job, &mut schema, true, &req.database)
            .await
            .map_err(schema_error)?;
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
            match dump_to_stdout(pg, &req.database, dump, to) {
                Ok(d) => dumps.push(d),
                Err(e) => {
                    for (mut t, _) in dumps {
                        t.kill().await;
                    }
                    return Err(e);
                }
            }
        }
        // Meanwhile the lanes read the catalogs; none holds a lock anything
        // here waits for.
        if let Err(e) = send_file(job, &dir, SCHEMA_FILE, enc, tx).await {
            for (mut t, _) in dumps {
                t.kill().await;
            }
            return Err(e);
        }
        let compression = enc.compression();
        // Lane 0 goes on with the encoder that framed the schema file: the
        // trailer covers both.
        let encoders = std::iter::once(std::mem::replace(enc, Encoder::new(compression, None)))
            .chain((1..=tables.len() as u32).map(|n| {
                let faults = &self.config.faults;
                let corrupt = faults.corrupt_frame.filter(|_| faults.corrupt_lane == n);
                Encoder::for_lane(compression, n, corrupt)
            }));
        let stop = job.cancel.child_token();
        let running: Vec<_> = dumps
            .into_iter()
            .zip(encoders)
            .enumerate()
            .map(|(lane, ((tool, out), encoder))| {
                let lane = LaneRun {
                    job: job.clone(),
                    lane: lane as u32,
                    tool,
                    out,
                    encoder,
                    tx: tx.clone(),
                    stop: stop.clone(),
                    database: req.database.clone(),
                };
                tokio::spawn(lane.run())
            })
            .collect();
        let mut failure: Option<StepError> = None;
        for (lane, handle) in running.into_iter().enumerate() {
            let (result, encoder) = match handle.await {
                Ok((r, e)) => (r, Some(e)),
                Err(e) => (
                    Err(step("pg_dump", format!("a data lane's task failed: {e}"))),
                    None,
                ),
            };
            if lane == 0
                && let Some(e) = encoder
            {
                *enc = e;
            }
            if let Err(e) = result {
                // The first lane to fail says why; the others were stopped.
                if failure.as_ref().is_none_or(|f| f.message == LANE_STOPPED) {
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Parallel mode: `pg_dump -Fd -j N`, each file shipped once pg_dump
    /// closes it, `toc.dat` last.
    async fn produce_parallel(
        &self,
        job: &Job,
        req: &pb::StartDumpRequest,
        dump: &pb::DumpOptions,
        enc: &mut Encoder,
        tx: &Frames,
    ) -> Result<(), StepError> {
        let dir = job
            .work_dir
            .as_ref()
            .map(|d| d.join("dump"))
            .ok_or_else(|| step("pg_dump", "parallel job without a work directory"))?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| step("pg_dump", format!("cannot create {}: {e}", dir.display())))?;
        let inotify =
            inotify::Inotify::init().map_err(|e| step("pg_dump", format!("inotify: {e}")))?;
        inotify
            .watches()
            .add(&dir, inotify::WatchMask::CLOSE_WRITE)
            .map_err(|e| step("pg_dump", format!("inotify on {}: {e}", dir.display())))?;
        let mut events = inotify
            .into_event_stream(vec![0u8; 4096])
            .map_err(|e| step("pg_dump", format!("inotify: {e}")))?;
        let pg = &self.config.postgres;
        let argv = args::pg_dump(
            pg,
            &req.database,
            dump,
            args::DumpTo::Directory(&dir, req.jobs),
        )
        .map_err(|e| step("pg_dump", e))?;
        let mut tool = procs::spawn(
            &pg.bin_dir,
            "pg_dump",
            &argv,
            &[],
            Stdio::null(),
            Stdio::null(),
        )
        .map_err(|e| step("pg_dump", format!("cannot start pg_dump: {e}")))?;
        let mut shipped: HashSet<String> = HashSet::new();
        let status = loop {
            tokio::select! {
                _ = job.cancel.cancelled() => {
                    tool.kill().await;
                    return Err(step("pg_dump", "the job was cancelled"));
                }
                ev = events.next() => {
                    if let Some(Ok(ev)) = ev
                        && let Some(name) = ev.name.and_then(|n| n.to_str().map(str::to_string))
                        && name != "toc.dat"
                        && !shipped.contains(&name)
                    {
                        if let Err(e) = send_file(job, &dir, &name, enc, tx).await {
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
                return Err(StepError {
                    step: "pg_dump",
                    message: format!("pg_dump on {:?} failed ({s})", req.database),
                    stderr: tool.stderr.text(),
                });
            }
            Err(e) => return Err(step("pg_dump", format!("waiting for pg_dump: {e}"))),
        }
        let mut rest: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| step("pg_dump", format!("reading {}: {e}", dir.display())))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !shipped.contains(n) && n != "toc.dat")
            .collect();
        rest.sort();
        rest.push("toc.dat".to_string());
        for name in rest {
            send_file(job, &dir, &name, enc, tx).await?;
        }
        Ok(())
    }
}

const LANE_STOPPED: &str = "stopped: another data lane failed";

/// Tables listed beyond the lanes wanted, to make up for those the plan
/// leaves out.
const EXCLUDED_ROOM: usize = 64;

/// The tables that get data lanes of their own: the largest ordinary tables
/// (heap and TOAST, not indexes), at most `max`, none below `min_bytes` and
/// none whose data the plan leaves out. Not when the plan filters schemas
/// (pg_dump applies those to no table named on its own).
async fn lane_tables(
    client: &tokio_postgres::Client,
    dump: &pb::DumpOptions,
    max: usize,
    min_bytes: u64,
) -> Result<Vec<args::TableName>, String> {
    if max == 0 || !dump.schemas.is_empty() || !dump.exclude_schemas.is_empty() {
        return Ok(Vec::new());
    }
    // A table whose data the plan leaves out would make an empty lane.
    let mut excluded = Vec::new();
    for p in dump.exclude_tables.iter().chain(&dump.exclude_table_data) {
        match args::TablePattern::parse(p) {
            Ok(p) => excluded.push(p),
            // A pattern read otherwise (regular expression syntax, or one
            // pg_dump will refuse): no lanes rather than a wrong guess.
            Err(_) => return Ok(Vec::new()),
        }
    }
    // pg_dump matches patterns in the database's encoding; names that are
    // not plain ASCII get lanes only where that is UTF-8, as ours.
    let utf8 = client
        .query_one("SELECT current_setting('server_encoding') = 'UTF8'", &[])
        .await
        .and_then(|r| r.try_get::<_, bool>(0))
        .map_err(|e| format!("reading the server encoding: {}", pg::error_chain(&e)))?;
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
               AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                   WHERE d.classid = 'pg_catalog.pg_class'::regclass \
                     AND d.objid = c.oid AND d.deptype = 'e') \
               AND pg_catalog.pg_table_size(c.oid) >= $1 \
             ORDER BY pg_catalog.pg_table_size(c.oid) DESC, c.oid \
             LIMIT $2",
            &[
                &(min_bytes.min(i64::MAX as u64) as i64),
                &((max + EXCLUDED_ROOM) as i64),
            ],
        )
        .await
        .map_err(|e| format!("listing the largest tables: {}", pg::error_chain(&e)))?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in rows {
        let name = args::TableName {
            schema: row.try_get(0).map_err(|e| e.to_string())?,
            table: row.try_get(1).map_err(|e| e.to_string())?,
        };
        // A name pg_dump cannot be given exactly stays in lane 0.
        let ascii = name.schema.is_ascii() && name.table.is_ascii();
        let left_out = excluded.iter().any(|p| p.matches(&name));
        if name.exact_pattern().is_ok() && (utf8 || ascii) && !left_out {
            tables.push(name);
        }
    }
    tables.truncate(max);
    Ok(tables)
}

/// One data lane on the source: its pg_dump's output, framed by its own
/// encoder; lanes 1 and up end with a LaneEnd frame.
struct LaneRun {
    job: Arc<Job>,
    lane: u32,
    tool: procs::Tool,
    out: procs::Chunks,
    encoder: Encoder,
    tx: Frames,
    /// Cancelled when any lane fails, so the others stop.
    stop: tokio_util::sync::CancellationToken,
    database: String,
}

impl LaneRun {
    /// The lane's result, and its encoder for the trailer (lane 0).
    async fn run(mut self) -> (Result<(), StepError>, Encoder) {
        let job = &self.job;
        let sent = tokio::select! {
            r = send_reader(job, Chunked::Tool(&mut self.out), &mut self.encoder, &self.tx) => r,
            _ = self.stop.cancelled() => Err(step("pg_dump", LANE_STOPPED)),
        };
        let mut result = match sent {
            Ok(_) => finish_tool(job, &mut self.tool, true, &self.database).await,
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
            result = send(job, &self.tx, frame(pb::dump_frame::Kind::LaneEnd(end))).await;
        }
        if result.is_err() {
            self.stop.cancel();
        }
        (result, self.encoder)
    }
}

/// Starts a `pg_dump` whose archive comes out on its stdout, read in chunks.
fn dump_to_stdout(
    pg: &crate::config::PostgresConfig,
    database: &str,
    dump: &pb::DumpOptions,
    to: args::DumpTo<'_>,
) -> Result<(procs::Tool, procs::Chunks), StepError> {
    let argv = args::pg_dump(pg, database, dump, to).map_err(|e| step("pg_dump", e))?;
    let cannot = |e| step("pg_dump", format!("cannot start pg_dump: {e}"));
    let (stdout, chunks) = procs::chunked_stdout().map_err(cannot)?;
    let tool =
        procs::spawn(&pg.bin_dir, "pg_dump", &argv, &[], Stdio::null(), stdout).map_err(cannot)?;
    Ok((tool, chunks))
}

/// The file in which a split stream's schema travels after the data; the
/// destination restores its post-data section.
pub const SCHEMA_FILE: &str = "schema.dump";

/// Names the schema dump in a failure, apart from the main one.
fn schema_error(mut e: StepError) -> StepError {
    e.message = format!(
        "the schema dump (for indexes and constraints): {}",
        e.message
    );
    e
}

/// Opens a read-only repeatable-read transaction on `database` and exports
/// its snapshot. The snapshot lives as long as the returned client.
async fn export_snapshot(
    pg: &crate::config::PostgresConfig,
    database: &str,
) -> Result<(tokio_postgres::Client, String), String> {
    let client = pg::connect(pg, database)
        .await
        .map_err(|e| format!("connecting to {database:?}: {}", pg::error_chain(&e)))?;
    let id: String = async {
        // The transaction stays idle while the dumps run: a server-wide
        // idle-in-transaction timeout must not end it (and the snapshot).
        client
            .batch_execute(
                "SET idle_in_transaction_session_timeout = 0; \
                 BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            )
            .await?;
        client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await?
            .try_get(0)
    }
    .await
    .map_err(|e| {
        format!(
            "exporting a snapshot of {database:?}: {}",
            pg::error_chain(&e)
        )
    })?;
    Ok((client, id))
}

/// How often the source says it is alive when it has nothing else to send.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

async fn heartbeats(tx: Frames, job: String) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.tick().await;
    loop {
        tick.tick().await;
        let beat = frame(pb::dump_frame::Kind::Heartbeat(pb::Heartbeat {}));
        if tx.send(beat).await.is_err() {
            tracing::debug!(%job, "heartbeats stop: the stream closed");
            return;
        }
    }
}

fn step(step: &'static str, message: impl Into<String>) -> StepError {
    StepError {
        step,
        message: message.into(),
        stderr: String::new(),
    }
}

impl StepError {
    fn with_note(mut self, note: &str) -> Self {
        self.message = format!("{} (destination: {note})", self.message);
        self
    }
}

async fn send(job: &Job, tx: &Frames, f: pb::DumpFrame) -> Result<(), StepError> {
    tokio::select! {
        _ = job.cancel.cancelled() => Err(step("stream", "the job was cancelled")),
        r = tx.send(f) => r.map_err(|_| step("stream", "the destination agent closed the stream")),
    }
}

/// Where [`send_reader`] takes its chunks from.
enum Chunked<'a> {
    /// pg_dump's stdout.
    Tool(&'a mut procs::Chunks),
    /// A file of a directory-format dump.
    File(&'a mut tokio::fs::File),
}

impl Chunked<'_> {
    async fn next(&mut self) -> std::io::Result<bytes::Bytes> {
        match self {
            Chunked::Tool(c) => c.next().await,
            Chunked::File(f) => read_chunk(f).await,
        }
    }
}

/// Reads `r` to the end in chunks and sends them as data frames.
async fn send_reader(
    job: &Job,
    mut r: Chunked<'_>,
    enc: &mut Encoder,
    tx: &Frames,
) -> Result<u64, StepError> {
    let mut total = 0u64;
    loop {
        let chunk = tokio::select! {
            _ = job.cancel.cancelled() => return Err(step("pg_dump", "the job was cancelled")),
            c = r.next() => c.map_err(|e| step("pg_dump", format!("reading the dump: {e}")))?,
        };
        let filled = chunk.len();
        if filled == 0 {
            return Ok(total);
        }
        let data = enc
            .data(chunk)
            .map_err(|e| step("stream", format!("compressing: {e}")))?;
        job.dumped.fetch_add(filled as u64, Ordering::Relaxed);
        job.sent
            .fetch_add(data.payload.len() as u64, Ordering::Relaxed);
        total += filled as u64;
        send(job, tx, frame(pb::dump_frame::Kind::Data(data))).await?;
        if filled < CHUNK {
            return Ok(total);
        }
    }
}

async fn send_file(
    job: &Job,
    dir: &Path,
    name: &str,
    enc: &mut Encoder,
    tx: &Frames,
) -> Result<(), StepError> {
    let path: PathBuf = dir.join(name);
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| step("pg_dump", format!("opening {}: {e}", path.display())))?;
    send(
        job,
        tx,
        frame(pb::dump_frame::Kind::FileStart(pb::FileStart {
            name: name.to_string(),
        })),
    )
    .await?;
    let size = send_reader(job, Chunked::File(&mut f), enc, tx).await?;
    send(
        job,
        tx,
        frame(pb::dump_frame::Kind::FileEnd(pb::FileEnd {
            name: name.to_string(),
            size,
        })),
    )
    .await?;
    drop(f);
    // Shipped: free the source's disk as we go.
    let _ = tokio::fs::remove_file(&path).await;
    Ok(())
}
