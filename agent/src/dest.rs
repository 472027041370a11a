//! The destination side of a refresh: a fresh database, the incoming dump
//! stream fed to `pg_restore`, post-restore SQL, and the swap on commit.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{Stream, StreamExt};
use stagesync_certs::Identity;
use stagesync_proto::v1 as pb;
use tokio::io::AsyncWriteExt;
use tonic::{Status, Streaming};

use crate::error::AgentError;
use crate::frames::{Decoder, FrameError};
use crate::jobs::{DestSetup, Job, Jobs, Side};
use crate::source::SCHEMA_FILE;
use crate::{args, db, procs, sql};

/// A pipeline failure: the step, what happened, and the tool's stderr.
pub struct StepError {
    pub step: &'static str,
    pub message: String,
    pub stderr: String,
}

impl StepError {
    fn new(step: &'static str, message: impl Into<String>) -> Self {
        StepError {
            step,
            message: message.into(),
            stderr: String::new(),
        }
    }
}

impl From<FrameError> for StepError {
    fn from(e: FrameError) -> Self {
        StepError::new("stream", e.to_string())
    }
}

fn valid_job_id(id: &str) -> bool {
    (8..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Jobs {
    fn agent_error(
        &self,
        f: fn(String, String) -> AgentError,
        reason: impl Into<String>,
    ) -> AgentError {
        f(self.config.name.clone(), reason.into())
    }

    /// Checks the direction guard for overwriting `database`.
    pub fn guard_overwrite(&self, database: &str) -> Result<(), AgentError> {
        let policy = &self.config.policy;
        if database.starts_with("stagesync_")
            || ["template0", "template1"].contains(&database)
            || database.is_empty()
        {
            return Err(self.agent_error(
                |agent, reason| AgentError::PermissionDenied { agent, reason },
                format!("database {database:?} cannot be a refresh destination"),
            ));
        }
        if !policy.may_overwrite.matches(database) {
            return Err(self.agent_error(
                |agent, reason| AgentError::PermissionDenied { agent, reason },
                format!(
                    "direction guard: this agent may not overwrite database {database:?} (policy.may_overwrite = {:?} in {})",
                    policy.may_overwrite.patterns,
                    self.config.source.display()
                ),
            ));
        }
        Ok(())
    }

    /// `PrepareRestore`: checks everything, creates the fresh database.
    pub async fn prepare_restore(
        self: &Arc<Self>,
        req: pb::PrepareRestoreRequest,
    ) -> Result<pb::PrepareRestoreResponse, AgentError> {
        let invalid = |r: String| AgentError::InvalidArgument {
            agent: self.config.name.clone(),
            reason: r,
        };
        let precondition = |r: String| AgentError::FailedPrecondition {
            agent: self.config.name.clone(),
            reason: r,
        };
        if !valid_job_id(&req.job_id) {
            return Err(invalid(format!(
                "job id {:?} is not 8-32 lowercase hex digits",
                req.job_id
            )));
        }
        self.guard_overwrite(&req.database)?;
        if req.owner.is_empty() {
            return Err(invalid("the owner role is empty".into()));
        }
        let mode = pb::Mode::try_from(req.mode).unwrap_or(pb::Mode::Unspecified);
        if mode == pb::Mode::Unspecified {
            return Err(invalid("mode must be stream or parallel".into()));
        }
        if !(1..=64).contains(&req.jobs) {
            return Err(invalid(format!("jobs must be 1 to 64, not {}", req.jobs)));
        }
        let restore = req.restore.clone().unwrap_or_default();
        args::pg_restore(
            &self.config.postgres,
            "x",
            &req.owner,
            &restore,
            args::RestoreFrom::Stdin,
        )
        .map_err(&invalid)?;
        let post_sql = sql::substitute(&req.post_restore_sql, &req.params).map_err(&invalid)?;
        if req.ticket.len() < 32 {
            return Err(invalid("the ticket is too short".into()));
        }
        // No source identity: the job is fed from a backup by the
        // controller (RestoreBackup), never by a peer's stream.
        let source: Option<Identity> = if req.source_identity.is_empty() {
            None
        } else {
            let source: Identity = req
                .source_identity
                .parse()
                .map_err(|e| invalid(format!("source identity: {e}")))?;
            if !self.config.policy.peers.contains(&source) {
                return Err(AgentError::PermissionDenied {
                    agent: self.config.name.clone(),
                    reason: format!(
                        "{source} may not stream into this agent; add {:?} to policy.peers in {}",
                        source.name,
                        self.config.source.display()
                    ),
                });
            }
            Some(source)
        };
        if let Some(other) = self.busy(&req.database) {
            return Err(precondition(format!(
                "a refresh of database {:?} is already running here as job {other}; wait for it or abort it",
                req.database
            )));
        }
        let new_db = sql::new_database(&req.job_id);
        // Parallel mode lands the whole dump here; a peer's stream may land
        // its post-data section.
        let work_dir = (mode == pb::Mode::Parallel || source.is_some())
            .then(|| self.config.work_dir.join("jobs").join(&req.job_id));
        let job = Job::new(
            &self.config.name,
            &req.job_id,
            Side::Dest,
            &req.database,
            new_db.clone(),
            work_dir.clone(),
            Some(DestSetup {
                owner: req.owner.clone(),
                mode,
                jobs: req.jobs,
                restore,
                post_sql,
                ticket: std::sync::Mutex::new(Some(req.ticket.clone())),
                ticket_expires: std::time::Instant::now() + self.config.jobs.ticket_ttl,
                source,
            }),
        );
        self.insert(job.clone()).map_err(&precondition)?;
        // Supervised from now on: if this call is cancelled half-way, the
        // lease still ends the job and the cleanup still runs.
        self.spawn_supervisor(job.clone());
        let jobs = self.clone();
        let j = job.clone();
        let (database, owner) = (req.database.clone(), req.owner.clone());
        let made = tokio::spawn(async move {
            let _pipeline = j.pipeline.lock().await;
            // Leftovers of crashed jobs go first: they hold disk we may need.
            let keep = jobs.live_new_databases();
            match db::drop_orphans(&jobs.config.postgres, &keep).await {
                Ok(dropped) if !dropped.is_empty() => {
                    tracing::info!(?dropped, "dropped leftover databases")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not clean leftover databases"),
            }
            db::create_new(&jobs.config.postgres, &j.new_database, &database, &owner)
                .await
                .map_err(|e| e.0)?;
            if let Some(dir) = &j.work_dir {
                tokio::fs::create_dir_all(dir.join("dump"))
                    .await
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            Ok::<(), String>(())
        })
        .await
        .unwrap_or_else(|e| Err(format!("preparing failed: {e}")));
        if let Err(e) = made {
            job.fail("prepare", e.clone(), String::new());
            return Err(precondition(e));
        }
        tracing::info!(job = %job.id, database = %req.database, new = %new_db, "prepared");
        Ok(pb::PrepareRestoreResponse {
            new_database: new_db,
            previous_database: sql::previous_database(&req.database),
        })
    }

    /// Watches a job's lease, then cleans up after a failure or abort.
    pub fn spawn_supervisor(self: &Arc<Self>, job: Arc<Job>) {
        let jobs = self.clone();
        tokio::spawn(async move {
            let limits = jobs.config.jobs.clone();
            loop {
                tokio::select! {
                    _ = job.cancel.cancelled() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                }
                if job.is_terminal() {
                    break;
                }
                let unwatched = job.unwatched_for();
                // A job that is committing cannot be aborted; keep watching it.
                if unwatched > limits.controller_timeout
                    && job
                        .abort(&format!(
                            "no controller has watched this job for {} s (jobs.controller_timeout_secs): the controller is gone",
                            unwatched.as_secs()
                        ))
                        .is_ok()
                {
                    break;
                }
                if let Some(d) = &job.dest
                    && job.phase() == pb::Phase::Waiting
                    && std::time::Instant::now() > d.ticket_expires
                {
                    let _ = job.abort(
                        "the source agent did not start streaming before the ticket expired",
                    );
                    break;
                }
            }
            if matches!(job.phase(), pb::Phase::Failed | pb::Phase::Aborted) {
                // Wait until the pipeline has killed and reaped its tools.
                let _running = job.pipeline.lock().await;
                jobs.clean_up(&job).await;
            }
        });
    }

    async fn clean_up(&self, job: &Job) {
        if job.side == Side::Dest {
            match db::drop_database(&self.config.postgres, &job.new_database).await {
                Ok(()) => {
                    tracing::info!(job = %job.id, database = %job.new_database, "dropped the unfinished database")
                }
                Err(e) => {
                    tracing::error!(job = %job.id, error = %e, "could not drop the unfinished database; it is dropped when the agent next starts")
                }
            }
        }
        remove_work_dir(job.work_dir.as_deref()).await;
    }

    /// `PushDump`: the stream from the source agent.
    pub async fn push_dump(
        self: &Arc<Self>,
        caller: Identity,
        mut stream: Streaming<pb::DumpFrame>,
    ) -> Result<pb::PushDumpResponse, AgentError> {
        let denied = |r: String| AgentError::PermissionDenied {
            agent: self.config.name.clone(),
            reason: r,
        };
        let first = stream
            .message()
            .await
            .map_err(|e| AgentError::InvalidArgument {
                agent: self.config.name.clone(),
                reason: format!("reading the stream header: {}", e.message()),
            })?;
        let Some(pb::DumpFrame {
            kind: Some(pb::dump_frame::Kind::Header(header)),
        }) = first
        else {
            return Err(AgentError::InvalidArgument {
                agent: self.config.name.clone(),
                reason: "the stream must start with a header".into(),
            });
        };
        let job = self.get(&header.job_id, Side::Dest).ok_or_else(|| {
            denied(format!(
                "no job {:?} is waiting for a stream here",
                header.job_id
            ))
        })?;
        let setup = job
            .dest
            .as_ref()
            .ok_or_else(|| denied("not a destination job".into()))?;
        match &setup.source {
            Some(expected) if *expected == caller => {}
            Some(expected) => {
                return Err(denied(format!(
                    "job {} expects its stream from {expected}, not from {caller}",
                    job.id
                )));
            }
            None => {
                return Err(denied(format!(
                    "job {} is restored from a backup, not from a peer's stream",
                    job.id
                )));
            }
        }
        take_ticket(&job, setup, &header.ticket).map_err(denied)?;
        let mode = pb::Mode::try_from(header.mode).unwrap_or(pb::Mode::Unspecified);
        if mode != setup.mode {
            job.fail(
                "stream",
                "the stream's mode differs from the prepared job's",
                String::new(),
            );
            return Err(denied("mode mismatch".into()));
        }
        let compression =
            pb::Compression::try_from(header.compression).unwrap_or(pb::Compression::None);
        if header.post_data_file && (mode != pb::Mode::Stream || job.work_dir.is_none()) {
            job.fail(
                "stream",
                "a separate post-data section was announced for a job that cannot land it",
                String::new(),
            );
            return Err(denied("post-data file not expected".into()));
        }
        let lanes = header.data_lanes;
        if lanes > 1
            && (!header.post_data_file
                || lanes > stagesync_proto::MAX_DATA_LANES
                || lanes > setup.jobs.max(2))
        {
            let reason = format!(
                "the stream announced {lanes} data lanes; this job takes at most {} (and only with a post-data file)",
                setup.jobs.clamp(2, stagesync_proto::MAX_DATA_LANES)
            );
            job.fail("stream", reason.clone(), String::new());
            return Err(denied(reason));
        }
        let _pipeline = job.pipeline.lock().await;
        if !job.advance(pb::Phase::Restoring) {
            return Err(denied(format!(
                "job {} has ended ({:?})",
                job.id,
                job.phase()
            )));
        }
        tracing::info!(job = %job.id, source = %caller, ?mode, "stream started");
        let result = match mode {
            pb::Mode::Parallel => {
                self.restore_parallel(&job, setup, compression, &mut stream)
                    .await
            }
            _ if lanes > 1 => {
                self.restore_lanes(&job, setup, compression, lanes, &mut stream)
                    .await
            }
            _ => {
                self.restore_stream(&job, setup, compression, header.post_data_file, &mut stream)
                    .await
            }
        };
        let result = match result {
            Ok(()) => self.post_restore(&job, setup).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                job.advance(pb::Phase::Ready);
                tracing::info!(job = %job.id, bytes = job.restored.load(Ordering::Relaxed), "restored; ready to commit");
                Ok(pb::PushDumpResponse {
                    bytes_received: job.received.load(Ordering::Relaxed),
                })
            }
            Err(e) => {
                job.fail(e.step, e.message.clone(), e.stderr.clone());
                // An abort explains the cancellation it caused: pass its
                // reason on to the source rather than "cancelled".
                let reason = match job.abort_reason() {
                    Some(why) => format!("{why} (the job was at step {})", e.step),
                    None => format!("{} failed: {}", e.step, e.message),
                };
                Err(AgentError::FailedPrecondition {
                    agent: self.config.name.clone(),
                    reason,
                })
            }
        }
    }

    /// Waits for the next frame, giving up on a stall or cancellation.
    async fn next_frame(
        &self,
        job: &Job,
        stream: &mut (impl Stream<Item = Result<pb::DumpFrame, Status>> + Unpin),
    ) -> Result<pb::dump_frame::Kind, StepError> {
        let stall = self.config.jobs.stall_timeout;
        // Where the frames come from, for messages: a peer agent, or S3.
        let from_backup = job.dest.as_ref().is_some_and(|d| d.source.is_none());
        let origin = if from_backup {
            "the backup in S3"
        } else {
            "the source agent"
        };
        loop {
            let msg = tokio::select! {
                _ = job.cancel.cancelled() => return Err(StepError::new("stream", "the job was cancelled")),
                r = tokio::time::timeout(stall, stream.next()) => r.map(Option::transpose),
            };
            let msg = msg.map_err(|_| {
                StepError::new(
                    "stream",
                    format!("no data from {origin} for {} s (jobs.stall_timeout_secs): the link or the source is down", stall.as_secs()),
                )
            })?;
            let msg = msg.map_err(|s| {
                StepError::new(
                    "stream",
                    format!("the stream from {origin} broke: {}", s.message()),
                )
            })?;
            return match msg {
                // Alive but quiet: wait for the next frame with a fresh timer.
                Some(pb::DumpFrame {
                    kind: Some(pb::dump_frame::Kind::Heartbeat(_)),
                }) => continue,
                Some(pb::DumpFrame { kind: Some(k) }) => {
                    if let pb::dump_frame::Kind::Data(d) = &k {
                        job.received
                            .fetch_add(d.payload.len() as u64, Ordering::Relaxed);
                    }
                    Ok(k)
                }
                Some(_) => Err(StepError::new("stream", "an empty frame arrived")),
                None => Err(StepError::new(
                    "stream",
                    format!("the stream ended before its trailer: {origin} stopped or failed"),
                )),
            };
        }
    }

    /// Stream mode: the frames go straight into `pg_restore`. With
    /// `post_data`, the main archive (without its post-data section) ends
    /// where the file [`SCHEMA_FILE`] starts; that is landed, and its
    /// post-data section restored by `setup.jobs` workers once the data is in.
    async fn restore_stream(
        &self,
        job: &Job,
        setup: &DestSetup,
        compression: pb::Compression,
        post_data: bool,
        stream: &mut (impl Stream<Item = Result<pb::DumpFrame, Status>> + Unpin),
    ) -> Result<(), StepError> {
        let mut tool = self.restore_from_stdin(job, setup)?;
        let mut stdin = tool.take_stdin();
        let mut decoder = Decoder::new(compression);
        let mut landing: Option<Landing> = None;
        let mut landed: Option<PathBuf> = None;
        let fed = async {
            loop {
                match self.next_frame(job, stream).await? {
                    pb::dump_frame::Kind::Data(d) => {
                        let raw = decoder.data(&d)?;
                        if let Some(l) = landing.as_mut() {
                            if l.written + raw.len() as u64 > self.max_schema_file() {
                                return Err(self.schema_too_big());
                            }
                            l.write(&raw).await?;
                            job.restored.fetch_add(raw.len() as u64, Ordering::Relaxed);
                            continue;
                        }
                        if landed.is_some() {
                            return Err(StepError::new(
                                "stream",
                                "data arrived after the post-data section",
                            ));
                        }
                        let Some(w) = stdin.as_mut() else {
                            return Ok(false);
                        };
                        let wrote = tokio::select! {
                            _ = job.cancel.cancelled() => {
                                return Err(StepError::new("stream", "the job was cancelled"));
                            }
                            r = w.write(&raw) => r,
                        };
                        if wrote.is_err() {
                            // pg_restore stopped reading: its exit status says why.
                            return Ok(false);
                        }
                        job.restored.fetch_add(raw.len() as u64, Ordering::Relaxed);
                    }
                    pb::dump_frame::Kind::FileStart(f)
                        if post_data
                            && landing.is_none()
                            && landed.is_none()
                            && f.name == SCHEMA_FILE =>
                    {
                        // The main archive is complete: pg_restore may see its end.
                        stdin = None;
                        let dir = job.work_dir.as_deref().ok_or_else(|| {
                            StepError::new(
                                "stream",
                                "no work directory to land the post-data section in",
                            )
                        })?;
                        landing = Some(Landing::start(dir, &f).await?);
                    }
                    pb::dump_frame::Kind::FileEnd(end) if landing.is_some() => {
                        if let Some(l) = landing.take() {
                            landed = Some(l.end(&end).await?);
                        }
                    }
                    pb::dump_frame::Kind::Trailer(t) => {
                        if landing.is_some() {
                            return Err(StepError::new("stream", "the stream ended inside a file"));
                        }
                        if post_data && landed.is_none() {
                            return Err(StepError::new(
                                "stream",
                                "the stream ended without the post-data section it announced",
                            ));
                        }
                        decoder.finish(&t)?;
                        return Ok(true);
                    }
                    other => {
                        return Err(unexpected(&other, "in a stream-mode job"));
                    }
                }
            }
        }
        .await;
        drop(stdin);
        let fed = match fed {
            Ok(fed) => fed,
            Err(e) => {
                tool.kill().await;
                return Err(e);
            }
        };
        finish_tool(job, &mut tool, fed, &job.new_database).await?;
        match landed {
            Some(file) => self.restore_post_data(job, setup, &file).await,
            None => Ok(()),
        }
    }

    /// Data lanes: the schema file first, whose pre-data section creates the
    /// tables; then `lanes` data-only archives at once, each checked by its
    /// own decoder and fed to a `pg_restore` of its own; then the post-data
    /// section by `setup.jobs` workers.
    async fn restore_lanes(
        &self,
        job: &Arc<Job>,
        setup: &DestSetup,
        compression: pb::Compression,
        lanes: u32,
        stream: &mut (impl Stream<Item = Result<pb::DumpFrame, Status>> + Unpin),
    ) -> Result<(), StepError> {
        let mut first = Decoder::new(compression);
        let schema = self.land_schema(job, &mut first, stream).await?;
        self.restore_from(job, setup, args::RestoreFrom::PreDataOf(&schema))
            .await
            .map_err(|mut e| {
                e.message = format!("creating the tables: {}", e.message);
                e
            })?;
        job.data_lanes.store(lanes, Ordering::Relaxed);
        tracing::info!(job = %job.id, lanes, "tables created; restoring the data in lanes");
        let mut feeds = Vec::with_capacity(lanes as usize);
        for lane in 0..lanes {
            let decoder = match lane {
                0 => std::mem::replace(&mut first, Decoder::new(compression)),
                n => Decoder::for_lane(compression, n),
            };
            match self.start_lane(job, setup, decoder) {
                Ok(f) => feeds.push(f),
                Err(e) => {
                    stop_lanes(feeds).await;
                    return Err(e);
                }
            }
        }
        // Some(lane) when that lane's pg_restore stopped reading early.
        let fed: Result<Option<usize>, StepError> = async {
            loop {
                match self.next_frame(job, stream).await? {
                    pb::dump_frame::Kind::Data(d) => {
                        let lane = d.lane as usize;
                        let feed = feeds.get_mut(lane).ok_or_else(|| {
                            StepError::new(
                                "stream",
                                format!("a frame for data lane {lane} arrived; the stream has {lanes}"),
                            )
                        })?;
                        let Some(tx) = feed.tx.as_ref() else {
                            return Err(StepError::new(
                                "stream",
                                format!("data arrived on lane {lane} after its end"),
                            ));
                        };
                        let raw = feed.decoder.data(&d).map_err(|e| {
                            StepError::new("stream", format!("data lane {lane}: {e}"))
                        })?;
                        let taken = tokio::select! {
                            _ = job.cancel.cancelled() => {
                                return Err(StepError::new("stream", "the job was cancelled"));
                            }
                            r = tx.send(raw) => r,
                        };
                        if taken.is_err() {
                            return Ok(Some(lane));
                        }
                    }
                    pb::dump_frame::Kind::LaneEnd(end) => {
                        let lane = end.lane as usize;
                        let feed = feeds.get_mut(lane).filter(|_| lane > 0).ok_or_else(|| {
                            StepError::new("stream", format!("an end of data lane {lane} arrived; the stream has lanes 1 to {}", lanes - 1))
                        })?;
                        if feed.tx.is_none() {
                            return Err(StepError::new("stream", format!("data lane {lane} ended twice")));
                        }
                        // Verified before pg_restore sees the end of its input.
                        feed.decoder
                            .finish(&end.trailer.unwrap_or_default())
                            .map_err(|e| StepError::new("stream", format!("data lane {lane}: {e}")))?;
                        feed.tx = None;
                    }
                    pb::dump_frame::Kind::Trailer(t) => {
                        if let Some(open) = feeds.iter().skip(1).position(|f| f.tx.is_some()) {
                            return Err(StepError::new(
                                "stream",
                                format!("the stream ended with data lane {} still open", open + 1),
                            ));
                        }
                        feeds[0].decoder.finish(&t)?;
                        feeds[0].tx = None;
                        return Ok(None);
                    }
                    other => {
                        return Err(unexpected(&other, "among the data lanes"));
                    }
                }
            }
        }
        .await;
        let broken = match fed {
            Ok(b) => b,
            Err(e) => {
                stop_lanes(feeds).await;
                return Err(e);
            }
        };
        match broken {
            // A lane whose pg_restore stopped early says why; then the
            // others are of no use.
            Some(b) => {
                let mut feed = feeds.swap_remove(b);
                stop_lanes(feeds).await;
                feed.tx = None;
                let complete = feed.writer.await.unwrap_or(false);
                let e = finish_tool(job, &mut feed.tool, complete, &job.new_database)
                    .await
                    .err()
                    .unwrap_or_else(|| StepError::new("pg_restore", "it stopped reading early"));
                return Err(lane_error(b, e));
            }
            None => finish_lanes(job, feeds).await?,
        }
        self.restore_post_data(job, setup, &schema).await
    }

    /// Lands a lane stream's leading schema file (on lane 0's decoder).
    async fn land_schema(
        &self,
        job: &Job,
        decoder: &mut Decoder,
        stream: &mut (impl Stream<Item = Result<pb::DumpFrame, Status>> + Unpin),
    ) -> Result<PathBuf, StepError> {
        let dir = job.work_dir.as_deref().ok_or_else(|| {
            StepError::new("stream", "no work directory to land the schema file in")
        })?;
        let mut landing = match self.next_frame(job, stream).await? {
            pb::dump_frame::Kind::FileStart(f) if f.name == SCHEMA_FILE => {
                Landing::start(dir, &f).await?
            }
            other => {
                return Err(StepError::new(
                    "stream",
                    format!(
                        "a stream with data lanes must start with the file {SCHEMA_FILE}, not a {} frame",
                        frame_kind(&other)
                    ),
                ));
            }
        };
        loop {
            match self.next_frame(job, stream).await? {
                pb::dump_frame::Kind::Data(d) => {
                    let raw = decoder.data(&d)?;
                    if landing.written + raw.len() as u64 > self.max_schema_file() {
                        return Err(self.schema_too_big());
                    }
                    landing.write(&raw).await?;
                    job.restored.fetch_add(raw.len() as u64, Ordering::Relaxed);
                }
                pb::dump_frame::Kind::FileEnd(end) => return landing.end(&end).await,
                other => {
                    return Err(unexpected(
                        &other,
                        &format!("inside the file {SCHEMA_FILE}"),
                    ));
                }
            }
        }
    }

    /// Starts a `pg_restore` into the job's new database that reads a
    /// custom-format archive on its stdin.
    fn restore_from_stdin(&self, job: &Job, setup: &DestSetup) -> Result<procs::Tool, StepError> {
        let pg = &self.config.postgres;
        let argv = args::pg_restore(
            pg,
            &job.new_database,
            &setup.owner,
            &setup.restore,
            args::RestoreFrom::Stdin,
        )
        .map_err(|e| StepError::new("pg_restore", e))?;
        procs::spawn(
            &pg.bin_dir,
            "pg_restore",
            &argv,
            &pg.restore_settings,
            Stdio::piped(),
            Stdio::null(),
        )
        .map_err(|e| StepError::new("pg_restore", format!("cannot start pg_restore: {e}")))
    }

    /// Starts one lane's `pg_restore` and the task that writes into it.
    fn start_lane(
        &self,
        job: &Arc<Job>,
        setup: &DestSetup,
        decoder: Decoder,
    ) -> Result<LaneFeed, StepError> {
        let mut tool = self.restore_from_stdin(job, setup)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(LANE_QUEUE);
        let stdin = tool.take_stdin();
        let j = job.clone();
        // True when everything sent was written and the input then closed.
        let writer = tokio::spawn(async move {
            let Some(mut stdin) = stdin else {
                return false;
            };
            while let Some(raw) = rx.recv().await {
                if stdin.write(&raw).await.is_err() {
                    return false;
                }
                j.restored.fetch_add(raw.len() as u64, Ordering::Relaxed);
            }
            true
        });
        Ok(LaneFeed {
            decoder,
            tx: Some(tx),
            writer,
            tool,
        })
    }

    /// Indexes, constraints and triggers: the post-data section of a landed
    /// schema archive, built by `setup.jobs` workers.
    async fn restore_post_data(
        &self,
        job: &Job,
        setup: &DestSetup,
        file: &Path,
    ) -> Result<(), StepError> {
        let workers = setup.jobs.max(1);
        job.post_data_jobs.store(workers, Ordering::Relaxed);
        if !job.advance(pb::Phase::Indexing) {
            return Err(StepError::new("pg_restore", "the job was cancelled"));
        }
        tracing::info!(job = %job.id, workers, "data restored; building indexes, constraints and triggers");
        self.restore_from(job, setup, args::RestoreFrom::PostDataOf(file, workers))
            .await
            .map_err(|mut e| {
                e.message = format!(
                    "building indexes, constraints and triggers ({workers} workers): {}",
                    e.message
                );
                e
            })?;
        let _ = tokio::fs::remove_file(file).await;
        Ok(())
    }

    async fn restore_parallel(
        &self,
        job: &Job,
        setup: &DestSetup,
        compression: pb::Compression,
        stream: &mut (impl Stream<Item = Result<pb::DumpFrame, Status>> + Unpin),
    ) -> Result<(), StepError> {
        let dir = job
            .work_dir
            .as_ref()
            .map(|d| d.join("dump"))
            .ok_or_else(|| StepError::new("stream", "parallel job without a work directory"))?;
        let mut decoder = Decoder::new(compression);
        let mut file: Option<Landing> = None;
        loop {
            match self.next_frame(job, stream).await? {
                pb::dump_frame::Kind::FileStart(f) => {
                    if file.is_some() {
                        return Err(StepError::new(
                            "stream",
                            "a file started before the previous one ended",
                        ));
                    }
                    file = Some(Landing::start(&dir, &f).await?);
                }
                pb::dump_frame::Kind::Data(d) => {
                    let raw = decoder.data(&d)?;
                    let Some(l) = file.as_mut() else {
                        return Err(StepError::new("stream", "data arrived outside a file"));
                    };
                    l.write(&raw).await?;
                    job.restored.fetch_add(raw.len() as u64, Ordering::Relaxed);
                }
                pb::dump_frame::Kind::FileEnd(end) => {
                    let Some(l) = file.take() else {
                        return Err(StepError::new("stream", "a file ended that never started"));
                    };
                    l.end(&end).await?;
                }
                pb::dump_frame::Kind::Trailer(t) => {
                    if file.is_some() {
                        return Err(StepError::new("stream", "the stream ended inside a file"));
                    }
                    decoder.finish(&t)?;
                    break;
                }
                other => {
                    return Err(unexpected(&other, "in a parallel-mode job"));
                }
            }
        }
        self.restore_from(job, setup, args::RestoreFrom::Directory(&dir, setup.jobs))
            .await
    }

    /// The largest schema file this agent lands (lowered only by a test fault).
    fn max_schema_file(&self) -> u64 {
        self.config
            .faults
            .max_schema_file
            .unwrap_or(MAX_SCHEMA_FILE)
    }

    fn schema_too_big(&self) -> StepError {
        let max = self.max_schema_file();
        let size = if max >= 1 << 20 {
            format!("{} MiB", max >> 20)
        } else {
            format!("{max} bytes")
        };
        StepError::new(
            "stream",
            format!(
                "the schema file from the source exceeds {size}; refresh with --jobs 1 to restore in one pass"
            ),
        )
    }

    /// Runs `pg_restore` on a landed archive to its end.
    async fn restore_from(
        &self,
        job: &Job,
        setup: &DestSetup,
        from: args::RestoreFrom<'_>,
    ) -> Result<(), StepError> {
        let pg = &self.config.postgres;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let settings = args::restore_settings(&pg.restore_settings, from.workers(), cores);
        let argv = args::pg_restore(pg, &job.new_database, &setup.owner, &setup.restore, from)
            .map_err(|e| StepError::new("pg_restore", e))?;
        let mut tool = procs::spawn(
            &pg.bin_dir,
            "pg_restore",
            &argv,
            &settings,
            Stdio::null(),
            Stdio::null(),
        )
        .map_err(|e| StepError::new("pg_restore", format!("cannot start pg_restore: {e}")))?;
        finish_tool(job, &mut tool, true, &job.new_database).await
    }

    async fn post_restore(&self, job: &Job, setup: &DestSetup) -> Result<(), StepError> {
        if setup.post_sql.trim().is_empty() {
            return Ok(());
        }
        job.advance(pb::Phase::PostRestore);
        db::post_restore(
            &self.config.postgres,
            &job.new_database,
            &setup.owner,
            &setup.post_sql,
        )
        .await
        .map_err(|e| StepError::new("post-restore SQL", e.0))
    }

    /// `Commit`: swap the restored database in. The swap runs in its own
    /// task, so a caller that goes away mid-commit cannot leave it half done.
    pub async fn commit(self: &Arc<Self>, job_id: &str) -> Result<pb::CommitResponse, AgentError> {
        let job = self
            .get(job_id, Side::Dest)
            .ok_or_else(|| AgentError::NotFound {
                agent: self.config.name.clone(),
                reason: format!("no destination job {job_id:?} here"),
            })?;
        if job.phase() != pb::Phase::Ready || !job.advance(pb::Phase::Committing) {
            return Err(AgentError::FailedPrecondition {
                agent: self.config.name.clone(),
                reason: format!("job {job_id} is {:?}, not ready to commit", job.phase()),
            });
        }
        let jobs = self.clone();
        tokio::spawn(async move { jobs.swap(&job).await })
            .await
            .unwrap_or_else(|e| {
                Err(AgentError::Internal {
                    agent: self.config.name.clone(),
                    reason: format!("the swap task failed: {e}"),
                })
            })
    }

    async fn swap(&self, job: &Job) -> Result<pb::CommitResponse, AgentError> {
        let closed = self.config.work_dir.join("closed");
        match db::swap_in(
            &self.config.postgres,
            &closed,
            &job.new_database,
            &job.database,
        )
        .await
        {
            Ok(previous) => {
                job.advance(pb::Phase::Committed);
                tracing::info!(job = %job.id, database = %job.database, %previous, "committed");
                remove_work_dir(job.work_dir.as_deref()).await;
                Ok(pb::CommitResponse {
                    database: job.database.clone(),
                    previous_database: previous,
                })
            }
            Err(e) => {
                let message = format!("swap failed, the live database is unchanged: {e}");
                job.commit_failed(message.clone());
                Err(AgentError::Internal {
                    agent: self.config.name.clone(),
                    reason: message,
                })
            }
        }
    }

    /// `Rollback`: the previous copy of `database` back in.
    pub async fn rollback(&self, database: &str) -> Result<pb::RollbackResponse, AgentError> {
        self.guard_overwrite(database)?;
        if let Some(job) = self.busy(database) {
            return Err(AgentError::FailedPrecondition {
                agent: self.config.name.clone(),
                reason: format!(
                    "a refresh of {database:?} is running as job {job}; wait for it first"
                ),
            });
        }
        let closed = self.config.work_dir.join("closed");
        let previous = db::rollback(&self.config.postgres, &closed, database)
            .await
            .map_err(|e| AgentError::FailedPrecondition {
                agent: self.config.name.clone(),
                reason: e.0,
            })?;
        tracing::info!(database, %previous, "rolled back");
        Ok(pb::RollbackResponse {
            database: database.to_string(),
            previous_database: previous,
        })
    }
}

/// Waits for a tool to exit (killing it if the job is cancelled) and turns
/// a failure into a step error carrying its stderr. `complete` is false when
/// the tool stopped taking input early: then even a clean exit is a failure.
pub(crate) async fn finish_tool(
    job: &Job,
    tool: &mut procs::Tool,
    complete: bool,
    database: &str,
) -> Result<(), StepError> {
    let name = tool.name;
    let status = tokio::select! {
        _ = job.cancel.cancelled() => {
            tool.kill().await;
            return Err(StepError::new(name, "the job was cancelled"));
        }
        s = tool.child.wait() => s,
    };
    tool.drain().await;
    match status {
        Ok(s) if s.success() && complete => Ok(()),
        Ok(s) if s.success() => Err(StepError {
            step: name,
            message: format!("{name} on {database:?} stopped reading before the dump ended"),
            stderr: tool.stderr.text(),
        }),
        Ok(s) => Err(StepError {
            step: name,
            message: format!("{name} on {database:?} failed ({s})"),
            stderr: tool.stderr.text(),
        }),
        Err(e) => Err(StepError::new(name, format!("waiting for {name}: {e}"))),
    }
}

/// A split stream's schema file is DDL, not data: anything near this size
/// is a broken or hostile peer filling the disk.
const MAX_SCHEMA_FILE: u64 = 2 << 30;

/// A frame that has no place where it arrived (`place`: "in a stream-mode
/// job", "among the data lanes", ...).
fn unexpected(k: &pb::dump_frame::Kind, place: &str) -> StepError {
    StepError::new(
        "stream",
        format!("an unexpected {} frame arrived {place}", frame_kind(k)),
    )
}

fn frame_kind(k: &pb::dump_frame::Kind) -> &'static str {
    match k {
        pb::dump_frame::Kind::Header(_) => "header",
        pb::dump_frame::Kind::Data(_) => "data",
        pb::dump_frame::Kind::FileStart(_) => "file start",
        pb::dump_frame::Kind::FileEnd(_) => "file end",
        pb::dump_frame::Kind::Trailer(_) => "trailer",
        pb::dump_frame::Kind::Heartbeat(_) => "heartbeat",
        pb::dump_frame::Kind::LaneEnd(_) => "lane end",
    }
}

/// Chunks queued for one lane's `pg_restore`.
const LANE_QUEUE: usize = 4;

/// One data lane on the destination.
struct LaneFeed {
    decoder: Decoder,
    /// Dropped at the lane's end, which closes pg_restore's input.
    tx: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    writer: tokio::task::JoinHandle<bool>,
    tool: procs::Tool,
}

const LANE_STOPPED: &str = "stopped: another data lane failed";

fn lane_error(lane: usize, mut e: StepError) -> StepError {
    e.message = format!("data lane {lane}: {}", e.message);
    e
}

/// Waits for every lane's writer and pg_restore at once; the first to fail
/// stops the others, and is the one reported.
async fn finish_lanes(job: &Arc<Job>, feeds: Vec<LaneFeed>) -> Result<(), StepError> {
    let stop = job.cancel.child_token();
    let mut running: futures::stream::FuturesUnordered<_> = feeds
        .into_iter()
        .enumerate()
        .map(|(lane, mut feed)| {
            let (job, stop) = (job.clone(), stop.clone());
            tokio::spawn(async move {
                // Closes the lane's input (its trailer was checked).
                drop(feed.tx.take());
                let done = async {
                    let complete = (&mut feed.writer).await.unwrap_or(false);
                    finish_tool(&job, &mut feed.tool, complete, &job.new_database).await
                };
                let result = tokio::select! {
                    r = done => r,
                    _ = stop.cancelled() => Err(StepError::new("pg_restore", LANE_STOPPED)),
                };
                if result.is_err() {
                    // Its input closes with the kill, so the writer ends too.
                    feed.tool.kill().await;
                    feed.writer.abort();
                    stop.cancel();
                }
                (lane, result)
            })
        })
        .collect();
    let mut failure: Option<StepError> = None;
    while let Some(done) = running.next().await {
        let (lane, result) = match done {
            Ok(d) => d,
            Err(e) => {
                stop.cancel();
                (
                    0,
                    Err(StepError::new(
                        "pg_restore",
                        format!("a lane's task failed: {e}"),
                    )),
                )
            }
        };
        if let Err(e) = result
            && failure
                .as_ref()
                .is_none_or(|f| f.message.ends_with(LANE_STOPPED))
        {
            failure = Some(lane_error(lane, e));
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Stops every lane's pg_restore and its writer.
async fn stop_lanes(feeds: Vec<LaneFeed>) {
    for mut f in feeds {
        f.tx = None;
        f.tool.kill().await;
        let _ = f.writer.await;
    }
}

/// A file from the peer being written into a work directory.
struct Landing {
    name: String,
    path: PathBuf,
    file: tokio::fs::File,
    written: u64,
}

impl Landing {
    async fn start(dir: &Path, f: &pb::FileStart) -> Result<Self, StepError> {
        let name = check_file_name(&f.name)?;
        let path = dir.join(&name);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| StepError::new("stream", format!("creating {}: {e}", path.display())))?;
        Ok(Landing {
            name,
            path,
            file,
            written: 0,
        })
    }

    async fn write(&mut self, raw: &[u8]) -> Result<(), StepError> {
        self.file.write_all(raw).await.map_err(|e| {
            StepError::new("stream", format!("writing {}: {e}", self.path.display()))
        })?;
        self.written += raw.len() as u64;
        Ok(())
    }

    /// Checks the source's account of the file and closes it.
    async fn end(mut self, end: &pb::FileEnd) -> Result<PathBuf, StepError> {
        if end.name != self.name || end.size != self.written {
            return Err(StepError::new(
                "stream",
                format!(
                    "file {} ended with {} bytes, the source says {} bytes of {}",
                    self.name, self.written, end.size, end.name
                ),
            ));
        }
        self.file.flush().await.map_err(|e| {
            StepError::new("stream", format!("writing {}: {e}", self.path.display()))
        })?;
        Ok(self.path)
    }
}

/// A file name from the peer: one plain path component, nothing else.
pub fn check_file_name(name: &str) -> Result<String, StepError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(name.to_string())
    } else {
        Err(StepError::new(
            "stream",
            format!("the source sent an unacceptable file name {name:?}"),
        ))
    }
}

pub async fn remove_work_dir(dir: Option<&Path>) {
    if let Some(dir) = dir
        && let Err(e) = tokio::fs::remove_dir_all(dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove the job's work directory");
    }
}

/// Uses up a job's one-time ticket, if `given` is it and still valid.
fn take_ticket(job: &Job, setup: &DestSetup, given: &str) -> Result<(), String> {
    let mut ticket = setup.ticket.lock().unwrap_or_else(|p| p.into_inner());
    let valid = match ticket.as_deref() {
        None => return Err(format!("the ticket of job {} was already used", job.id)),
        Some(t) => constant_time_eq(t.as_bytes(), given.as_bytes()),
    };
    if !valid {
        return Err(format!("wrong ticket for job {}", job.id));
    }
    if std::time::Instant::now() > setup.ticket_expires {
        return Err(format!("the ticket of job {} has expired", job.id));
    }
    *ticket = None;
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Removes what crashed jobs left in the work directory.
pub async fn clean_work_dir(work_dir: &Path) {
    let jobs: PathBuf = work_dir.join("jobs");
    match tokio::fs::remove_dir_all(&jobs).await {
        Ok(()) => tracing::info!(dir = %jobs.display(), "removed leftover job directories"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %jobs.display(), error = %e, "could not remove leftover job directories")
        }
    }
}

impl Jobs {
    /// `RestoreBackup`: feeds a prepared stream-mode job from a backup in
    /// S3 (credentials from this host's AWS chain). The object is framed
    /// like a peer's stream, and its trailer carries the manifest's size and
    /// SHA-256, so a corrupted or swapped object fails the job before
    /// anything is swapped in.
    pub async fn restore_backup(
        self: &Arc<Self>,
        req: pb::RestoreBackupRequest,
    ) -> Result<pb::RestoreBackupResponse, AgentError> {
        let cfg = &self.config;
        let denied = |r: String| AgentError::PermissionDenied {
            agent: cfg.name.clone(),
            reason: r,
        };
        let invalid = |r: String| AgentError::InvalidArgument {
            agent: cfg.name.clone(),
            reason: r,
        };
        let job = self
            .get(&req.job_id, Side::Dest)
            .ok_or_else(|| denied(format!("no job {:?} is waiting here", req.job_id)))?;
        let setup = job
            .dest
            .as_ref()
            .ok_or_else(|| denied("not a destination job".into()))?;
        if setup.mode != pb::Mode::Stream {
            return Err(invalid("a backup is restored in stream mode".into()));
        }
        if setup.source.is_some() {
            return Err(denied(format!(
                "job {} waits for a stream from {}, not for a backup",
                job.id,
                setup
                    .source
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            )));
        }
        let place = req
            .place
            .clone()
            .ok_or_else(|| invalid("no S3 place given".into()))?;
        let sha = hex::decode(&req.sha256)
            .ok()
            .filter(|d| d.len() == 32)
            .ok_or_else(|| invalid(format!("{:?} is not a SHA-256", req.sha256)))?;
        let url = crate::backup::place_url(&place);
        if !cfg.policy.may_restore_from.matches(&url) {
            return Err(denied(format!(
                "this agent may not restore from {url} (policy.may_restore_from = {:?} in {})",
                cfg.policy.may_restore_from.patterns,
                cfg.source.display()
            )));
        }
        take_ticket(&job, setup, &req.ticket).map_err(denied)?;
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
                job.fail("s3", e.to_string(), String::new());
                return Err(AgentError::FailedPrecondition {
                    agent: cfg.name.clone(),
                    reason: e.to_string(),
                });
            }
        };
        let jobs = self.clone();
        tokio::spawn(async move {
            let Some(setup) = job.dest.as_ref() else {
                return;
            };
            let _pipeline = job.pipeline.lock().await;
            if !job.advance(pb::Phase::Restoring) {
                return;
            }
            tracing::info!(job = %job.id, key = %req.dump_key, "restoring from a backup");
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let reader = tokio::spawn(frame_object(store, req.dump_key.clone(), req.size, sha, tx));
            let mut frames = tokio_stream::wrappers::ReceiverStream::new(rx);
            let result = jobs
                .restore_stream(&job, setup, pb::Compression::None, false, &mut frames)
                .await;
            reader.abort();
            let result = match result {
                Ok(()) => jobs.post_restore(&job, setup).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    job.advance(pb::Phase::Ready);
                    tracing::info!(job = %job.id, "restored from a backup; ready to commit");
                }
                Err(e) => job.fail(e.step, e.message, e.stderr),
            }
        });
        Ok(pb::RestoreBackupResponse {})
    }
}

/// Reads a dump object and sends it as data frames, then a trailer with
/// the size and SHA-256 the manifest promised.
async fn frame_object(
    store: stagesync_s3::backups::Store,
    key: String,
    size: u64,
    sha256: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<pb::DumpFrame, Status>>,
) {
    let frame = |kind| Ok(pb::DumpFrame { kind: Some(kind) });
    let body = match store.open_dump(&key).await {
        Ok(b) => b,
        Err(e) => {
            let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
            return;
        }
    };
    let mut body = body.into_async_read();
    let mut enc = crate::frames::Encoder::new(pb::Compression::None, None);
    loop {
        let chunk = match crate::frames::read_chunk(&mut body).await {
            Ok(c) => c,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::unavailable(format!("reading {key}: {e}"))))
                    .await;
                return;
            }
        };
        let last = chunk.len() < crate::frames::CHUNK;
        if !chunk.is_empty() {
            let data = match enc.data(chunk) {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            };
            if tx
                .send(frame(pb::dump_frame::Kind::Data(data)))
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
    trailer.total_len = size;
    trailer.sha256 = sha256;
    let _ = tx.send(frame(pb::dump_frame::Kind::Trailer(trailer))).await;
}

#[cfg(test)]
mod tests {
    use super::check_file_name;

    #[test]
    fn file_names() {
        for ok in ["toc.dat", "3456.dat", "blobs.toc", "blob_1234.dat"] {
            assert!(check_file_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "/etc/passwd",
            "..",
            "a\0b",
            &"x".repeat(65),
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
    }
}
