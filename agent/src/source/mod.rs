//! The source side of a refresh: `pg_dump` on the database, framed and
//! pushed to the destination agent over its own mutual-TLS connection.
//!
//! - this file: `StartDump` (the checks, the job) and the push: header,
//!   the data, trailer, and the destination's verdict.
//! - [`layout`]: how much of the agreed shape this dump uses (a snapshot
//!   for a separate schema file, the tables that get lanes of their own).
//! - [`stream`]: one archive, and the schema file after it.
//! - [`lanes`]: the schema file, then several data-only dumps at once.
//! - [`outbound`]: frames into the stream, with backpressure.

mod copy;
pub use copy::COPY_SETTINGS;
pub use layout::MAX_SLICES;
mod lanes;
mod layout;
mod masked;
mod outbound;
mod push_call;
mod stream;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use stagesync_certs::channel::AgentTarget;
use stagesync_certs::{Identity, ReloadingClientConfig};
use stagesync_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::frames::{Encoder, frame};
use crate::jobs::{Job, Jobs, Side, StepError, supervisor};
use crate::{args, db, pg, policy};
use layout::Layout;
use outbound::Outbound;

/// Starts and runs the dumps of this agent.
pub struct Dumper {
    config: Arc<AgentConfig>,
    jobs: Arc<Jobs>,
    client_tls: Arc<ReloadingClientConfig>,
}

/// A checked `StartDump` request.
struct DumpRequest {
    job_id: String,
    database: String,
    agreed: pb::Shape,
    dump: pb::DumpOptions,
    compression: pb::Compression,
    ticket: String,
    target: AgentTarget,
    /// The rows leave unmasked though the database has masking rules (the
    /// plan asked, and the destination is a listed peer).
    unmasked: bool,
}

/// One dump being pushed: what every way of producing it needs.
struct DumpRun {
    config: Arc<AgentConfig>,
    job: Arc<Job>,
    database: String,
    dump: pb::DumpOptions,
    out: Outbound,
}

impl Dumper {
    pub fn new(
        config: Arc<AgentConfig>,
        jobs: Arc<Jobs>,
        client_tls: Arc<ReloadingClientConfig>,
    ) -> Self {
        Dumper {
            config,
            jobs,
            client_tls,
        }
    }

    /// `StartDump`: checks the request, registers the job and starts
    /// pushing.
    pub async fn start_dump(
        self: &Arc<Self>,
        req: pb::StartDumpRequest,
    ) -> Result<pb::StartDumpResponse, AgentError> {
        let req = self.check(req)?;
        self.check_exists(&req.database).await?;
        let cfg = &self.config;
        // A split stream lands its schema file here; apart from the
        // destination's, should one agent be both sides.
        let work_dir = req
            .agreed
            .post_data_file
            .then(|| supervisor::jobs_dir(&cfg.work_dir).join(format!("source-{}", req.job_id)));
        let job = Job::new(
            &cfg.name,
            &req.job_id,
            Side::Source,
            &req.database,
            String::new(),
            work_dir,
            None,
        );
        self.jobs
            .insert(job.clone())
            .map_err(|r| AgentError::precondition(&cfg.name, r))?;
        supervisor::spawn(cfg.clone(), job.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let _pipeline = job.pipeline.lock().await;
            match this.push(&job, req).await {
                Ok(()) => {
                    job.advance(pb::Phase::Sent);
                    tracing::info!(job = %job.id, bytes = job.dumped.load(Ordering::Relaxed), "dump sent");
                }
                Err(e) => job.fail(e),
            }
            supervisor::remove_work_dir(job.work_dir.as_deref()).await;
        });
        Ok(pb::StartDumpResponse {})
    }

    /// Checks a request against the policy and the protocol.
    fn check(&self, req: pb::StartDumpRequest) -> Result<DumpRequest, AgentError> {
        let cfg = &self.config;
        policy::job_id(cfg, &req.job_id)?;
        policy::may_dump(cfg, &req.database)?;
        let agreed = policy::shape(cfg, req.shape.as_ref())?;
        policy::jobs(cfg, req.jobs)?;
        let dump = req.dump.unwrap_or_default();
        args::pg_dump(&cfg.postgres, &req.database, &dump, args::DumpTo::Stdout)
            .map_err(|r| AgentError::invalid(&cfg.name, r))?;
        let dest: Identity = req
            .dest_identity
            .parse()
            .map_err(|e| AgentError::invalid(&cfg.name, format!("destination identity: {e}")))?;
        let unmasked = req.unmasked && policy::may_send_unmasked(cfg, &req.database, &dest)?;
        let compression = match pb::Compression::try_from(req.compression) {
            Ok(pb::Compression::None) => pb::Compression::None,
            _ => pb::Compression::Zstd,
        };
        Ok(DumpRequest {
            job_id: req.job_id,
            database: req.database,
            agreed,
            dump,
            compression,
            ticket: req.ticket,
            target: AgentTarget {
                address: req.dest_address,
                expected: Some(dest),
            },
            unmasked,
        })
    }

    /// The database exists and the agent's login may read all of it.
    async fn check_exists(&self, database: &str) -> Result<(), AgentError> {
        let cfg = &self.config;
        let exists = async {
            let c = pg::connect(&cfg.postgres, "postgres")
                .await
                .map_err(|e| e.to_string())?;
            db::database_exists(&c, database).await.map_err(|e| e.0)
        }
        .await
        .map_err(|e| AgentError::internal(&cfg.name, e))?;
        if !exists {
            return Err(AgentError::precondition(
                &cfg.name,
                format!("database {database:?} does not exist here"),
            ));
        }
        self.check_readable(database).await
    }

    /// A login that is no superuser may lack rights pg_dump needs: name the
    /// tables before anything starts.
    async fn check_readable(&self, database: &str) -> Result<(), AgentError> {
        const SHOWN: i64 = 10;
        let cfg = &self.config;
        let internal = |e: String| AgentError::internal(&cfg.name, e);
        let c = pg::connect(&cfg.postgres, database)
            .await
            .map_err(|e| internal(e.to_string()))?;
        let reading = |e: tokio_postgres::Error| {
            internal(format!(
                "reading the rights of the agent's login: {}",
                pg::error_chain(&e)
            ))
        };
        if pg::rights::of_login(&c).await.map_err(reading)?.superuser {
            return Ok(());
        }
        let unreadable = pg::rights::unreadable(&c, SHOWN).await.map_err(reading)?;
        if unreadable.is_empty() {
            return Ok(());
        }
        Err(AgentError::precondition(
            &cfg.name,
            format!(
                "the agent's login {:?} on PostgreSQL at {} cannot dump all of {database:?}: {}{}. Grant it pg_read_all_data (PostgreSQL 14+) or SELECT on them, and BYPASSRLS where a table has row-level security; nothing was changed",
                cfg.postgres.user,
                cfg.postgres.endpoint.describe(),
                unreadable.join(", "),
                if unreadable.len() as i64 == SHOWN {
                    ", …"
                } else {
                    ""
                }
            ),
        ))
    }

    /// Dials the destination, sends the header, the data in the layout this
    /// dump can use and the trailer, and waits for the destination's verdict.
    async fn push(&self, job: &Arc<Job>, req: DumpRequest) -> Result<(), StepError> {
        let channel = stagesync_certs::channel::channel(self.client_tls.clone(), &req.target)
            .map_err(|e| StepError::new(pb::Step::Connect, e.to_string()))?;
        let mut layout =
            Layout::choose(&self.config, job, &req.database, &req.dump, &req.agreed).await;
        if req.unmasked {
            tracing::warn!(job = %job.id, database = %req.database, peer = ?req.target.expected, "rows leave unmasked, to a peer masking.unmasked_peers lists");
        } else {
            masked::apply(&self.config, &mut layout, &req.database).await?;
        }
        let (tx, rx) = mpsc::channel(outbound::QUEUE);
        let run = DumpRun {
            config: self.config.clone(),
            job: job.clone(),
            database: req.database.clone(),
            dump: req.dump.clone(),
            out: Outbound::new(job.clone(), tx),
        };
        run.out
            .send(frame(pb::dump_frame::Kind::Header(header(&req, &layout))))
            .await
            .map_err(|_| StepError::new(pb::Step::Stream, "the stream closed before it started"))?;
        let push = tokio::spawn(push_call::push_dump(channel, rx));
        let produced = run.produce_all(&layout, req.compression).await;
        drop(run);
        drop(layout);
        let answer = tokio::select! {
            _ = job.cancel.cancelled() => return Err(StepError::cancelled(pb::Step::Stream)),
            a = push => a,
        };
        let answer = answer
            .map_err(|e| StepError::new(pb::Step::Stream, format!("the push task failed: {e}")))?;
        verdict(answer.map(|_| ()), produced, &req.target)
    }
}

fn header(req: &DumpRequest, layout: &Layout) -> pb::DumpHeader {
    pb::DumpHeader {
        job_id: req.job_id.clone(),
        ticket: req.ticket.clone(),
        compression: req.compression as i32,
        source_database: req.database.clone(),
        shape: Some(layout.shape),
        lane_tables: layout.lane_tables(),
        unmasked_personal_data: req.unmasked,
    }
}

/// The push's result: the destination's verdict explains a refused or
/// broken stream better than this side's view of it.
fn verdict(
    answer: Result<(), tonic::Status>,
    produced: Result<(), StepError>,
    target: &AgentTarget,
) -> Result<(), StepError> {
    match (answer, produced) {
        (Ok(()), produced) => produced,
        (Err(status), Err(e)) if e.step == pb::Step::PgDump => {
            Err(e.note(format_args!("destination: {}", status.message())))
        }
        (Err(status), _) => Err(StepError::new(
            pb::Step::Stream,
            format!(
                "the destination agent {} refused or lost the stream: {}",
                target.address,
                status.message()
            ),
        )),
    }
}

impl DumpRun {
    /// Produces the data in `layout` with heartbeats alongside, then the
    /// trailer.
    async fn produce_all(
        &self,
        layout: &Layout,
        compression: pb::Compression,
    ) -> Result<(), StepError> {
        let faults = &self.config.faults;
        let mut enc = Encoder::new(
            compression,
            faults.corrupt_frame.filter(|_| faults.corrupt_lane == 0),
        )
        .with_digest(layout.shape.stream_digest().unwrap_or(pb::Digest::Sha256));
        let heartbeat = self.out.heartbeats();
        let produced = match (layout.shape.stream_mode(), &layout.snapshot) {
            (_, Some(snapshot)) if layout.shape.lanes() > 1 => {
                self.produce_lanes(&mut enc, &snapshot.id, layout).await
            }
            (_, snapshot) => {
                self.produce_stream(&mut enc, snapshot.as_ref().map(|s| s.id.as_str()))
                    .await
            }
        };
        // Stop the heartbeats before the trailer, and before the stream may end.
        heartbeat.abort();
        let _ = heartbeat.await;
        produced?;
        let trailer = frame(pb::dump_frame::Kind::Trailer(enc.trailer()));
        // A trailer the destination does not take: its verdict says why.
        let _ = self.out.send(trailer).await;
        Ok(())
    }

    /// The snapshot the schema dump uses (a test fault gives it one that
    /// does not exist, so it fails while the data streams).
    fn schema_snapshot<'a>(&self, snapshot: &'a str) -> &'a str {
        if self.config.faults.bad_schema_snapshot {
            "00000000-00000000-0"
        } else {
            snapshot
        }
    }
}

/// `dir` (the job's work directory, or a folder in it), created; the job
/// has none when `dir` is None, and `missing` says so.
async fn created_dir(dir: Option<PathBuf>, missing: &str) -> Result<PathBuf, StepError> {
    let dir = dir.ok_or_else(|| StepError::new(pb::Step::PgDump, missing))?;
    tokio::fs::create_dir_all(&dir).await.map_err(|e| {
        StepError::new(
            pb::Step::PgDump,
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    Ok(dir)
}
