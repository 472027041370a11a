//! One refresh as seen by one agent (the source side dumping, or the
//! destination side restoring): its phase, byte counters, error and lease.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stagesync_certs::Identity;
use stagesync_proto::v1 as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::step::StepError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Source,
    Dest,
}

/// What the destination needs to know about its job.
pub struct DestSetup {
    pub owner: String,
    /// The role the restore's sessions log in as (a member of the owner).
    pub login: crate::db::JobLogin,
    /// What staging keeps of its own (checked against the protocol).
    pub staging: pb::StagingRules,
    /// The stream's shape, as the controller agreed it.
    pub shape: pb::Shape,
    pub jobs: u32,
    pub restore: pb::RestoreOptions,
    /// Post-restore SQL with parameters already substituted.
    pub post_sql: String,
    pub ticket: Mutex<Option<String>>,
    pub ticket_expires: Instant,
    /// The peer whose stream feeds the job; `None` when a backup does.
    pub source: Option<Identity>,
}

struct State {
    phase: pb::Phase,
    error: Option<pb::JobError>,
    finished: Option<Instant>,
    rate: f64,
    rate_sample: (Instant, u64),
}

pub struct Job {
    pub id: String,
    pub side: Side,
    pub database: String,
    /// Destination: the database restored into before the swap.
    pub new_database: String,
    /// Parallel mode scratch directory.
    pub work_dir: Option<PathBuf>,
    pub dest: Option<DestSetup>,
    pub cancel: CancellationToken,
    pub dumped: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub restored: AtomicU64,
    /// Destination: workers building the post-data section in its own pass.
    pub post_data_jobs: AtomicU32,
    /// Destination: concurrent data lanes the data arrived in (0: one stream).
    pub data_lanes: AtomicU32,
    /// Destination: indexes and keys built as their tables landed.
    pub indexes_built: AtomicU32,
    /// Destination: tables the copy lanes brought in whole.
    pub tables_copied: AtomicU32,
    /// Destination: of those, the tables that came in the binary format.
    pub tables_binary: AtomicU32,
    /// Destination: rows the copy lanes committed.
    pub rows_copied: AtomicU64,
    /// Destination: slices the copy lanes committed.
    pub slices_copied: AtomicU32,
    /// Destination: milliseconds from the lanes' start until every table
    /// and the indexes built as they landed were in.
    pub copy_ms: AtomicU64,
    /// Destination: milliseconds of the final post-data pass.
    pub rest_ms: AtomicU64,
    /// Destination: what each copy lane copies now (index: lane - 1).
    pub lanes: Mutex<Vec<pb::LaneProgress>>,
    /// Destination: rows of staging's own kept.
    pub rows_kept: AtomicU64,
    /// Destination: rows were to be kept, and there was no live database.
    pub nothing_to_keep: AtomicBool,
    /// Held by whatever runs the job's processes; cleanup waits for it.
    pub pipeline: tokio::sync::Mutex<()>,
    pub(super) started: Instant,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    watchers: AtomicUsize,
    last_watched: Mutex<Instant>,
    agent: String,
}

fn terminal(p: pb::Phase) -> bool {
    matches!(
        p,
        pb::Phase::Committed | pb::Phase::Failed | pb::Phase::Aborted | pb::Phase::Sent
    )
}

impl Job {
    pub fn new(
        agent: &str,
        id: &str,
        side: Side,
        database: &str,
        new_database: String,
        work_dir: Option<PathBuf>,
        dest: Option<DestSetup>,
    ) -> Arc<Job> {
        let now = Instant::now();
        Arc::new(Job {
            id: id.to_string(),
            side,
            database: database.to_string(),
            new_database,
            work_dir,
            dest,
            cancel: CancellationToken::new(),
            dumped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            restored: AtomicU64::new(0),
            post_data_jobs: AtomicU32::new(0),
            data_lanes: AtomicU32::new(0),
            indexes_built: AtomicU32::new(0),
            tables_copied: AtomicU32::new(0),
            tables_binary: AtomicU32::new(0),
            rows_copied: AtomicU64::new(0),
            slices_copied: AtomicU32::new(0),
            copy_ms: AtomicU64::new(0),
            rest_ms: AtomicU64::new(0),
            lanes: Mutex::new(Vec::new()),
            rows_kept: AtomicU64::new(0),
            nothing_to_keep: AtomicBool::new(false),
            pipeline: tokio::sync::Mutex::new(()),
            started: now,
            state: Mutex::new(State {
                phase: match side {
                    Side::Source => pb::Phase::Dumping,
                    Side::Dest => pb::Phase::Waiting,
                },
                error: None,
                finished: None,
                rate: 0.0,
                rate_sample: (now, 0),
            }),
            changed: watch::channel(0).0,
            watchers: AtomicUsize::new(0),
            last_watched: Mutex::new(now),
            agent: agent.to_string(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn phase(&self) -> pb::Phase {
        self.state().phase
    }

    pub fn is_terminal(&self) -> bool {
        terminal(self.phase())
    }

    /// Moves to `next` unless the job already ended (or is committing).
    /// Returns whether the move happened.
    pub fn advance(&self, next: pb::Phase) -> bool {
        let mut s = self.state();
        if terminal(s.phase)
            || (s.phase == pb::Phase::Committing
                && next != pb::Phase::Committed
                && next != pb::Phase::Failed)
        {
            return false;
        }
        s.phase = next;
        if terminal(next) {
            s.finished = Some(Instant::now());
        }
        drop(s);
        self.bump();
        true
    }

    /// Marks the job failed (if it has not ended) and stops its processes.
    pub fn fail(&self, e: StepError) {
        {
            let mut s = self.state();
            if terminal(s.phase) || s.phase == pb::Phase::Committing {
                return;
            }
            tracing::warn!(job = %self.id, step = %e.step, error = %e.message, "job failed");
            self.end(&mut s, pb::Phase::Failed, e.step, e.message, e.stderr);
        }
        self.cancel.cancel();
        self.bump();
    }

    /// Marks a job whose commit failed (the swap is one transaction, so the
    /// live database is unchanged) and lets the supervisor clean up.
    pub fn commit_failed(&self, message: String) {
        {
            let mut s = self.state();
            self.end(
                &mut s,
                pb::Phase::Failed,
                pb::Step::Swap,
                message,
                String::new(),
            );
        }
        self.cancel.cancel();
        self.bump();
    }

    /// Ends the job in `phase` with an error.
    fn end(
        &self,
        s: &mut State,
        phase: pb::Phase,
        step: pb::Step,
        message: String,
        stderr_tail: String,
    ) {
        s.phase = phase;
        s.finished = Some(Instant::now());
        s.error = Some(pb::JobError {
            step: step as i32,
            host: host_label(&self.agent),
            message,
            stderr_tail,
        });
    }

    /// Aborts the job on request (controller, lease, shutdown).
    pub fn abort(&self, reason: &str) -> Result<(), String> {
        {
            let mut s = self.state();
            match s.phase {
                pb::Phase::Committing | pb::Phase::Committed => {
                    return Err("the job has already been committed".to_string());
                }
                p if terminal(p) => return Ok(()),
                _ => {}
            }
            tracing::warn!(job = %self.id, reason, "job aborted");
            self.end(
                &mut s,
                pb::Phase::Aborted,
                pb::Step::Abort,
                reason.to_string(),
                String::new(),
            );
        }
        self.cancel.cancel();
        self.bump();
        Ok(())
    }

    /// Why the job was aborted, if it was.
    pub fn abort_reason(&self) -> Option<String> {
        let s = self.state();
        match (&s.error, s.phase) {
            (Some(e), pb::Phase::Aborted) => Some(e.message.clone()),
            _ => None,
        }
    }

    pub fn status(&self) -> pb::JobStatus {
        let mut s = self.state();
        let progress = match self.side {
            Side::Source => self.dumped.load(Ordering::Relaxed),
            Side::Dest => self.restored.load(Ordering::Relaxed),
        };
        let now = Instant::now();
        let (at, bytes) = s.rate_sample;
        let dt = now.duration_since(at).as_secs_f64();
        if dt >= 0.5 {
            s.rate = progress.saturating_sub(bytes) as f64 / dt;
            s.rate_sample = (now, progress);
        }
        pb::JobStatus {
            job_id: self.id.clone(),
            agent: self.agent.clone(),
            phase: s.phase as i32,
            database: self.database.clone(),
            new_database: self.new_database.clone(),
            bytes_dumped: self.dumped.load(Ordering::Relaxed),
            bytes_sent: self.sent.load(Ordering::Relaxed),
            bytes_received: self.received.load(Ordering::Relaxed),
            bytes_restored: self.restored.load(Ordering::Relaxed),
            rate: if terminal(s.phase) { 0.0 } else { s.rate },
            error: s.error.clone(),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            side: match self.side {
                Side::Source => pb::Side::Source as i32,
                Side::Dest => pb::Side::Dest as i32,
            },
            post_data_jobs: self.post_data_jobs.load(Ordering::Relaxed),
            data_lanes: self.data_lanes.load(Ordering::Relaxed),
            rows_kept: self.rows_kept.load(Ordering::Relaxed),
            indexes_built: self.indexes_built.load(Ordering::Relaxed),
            tables_copied: self.tables_copied.load(Ordering::Relaxed),
            tables_binary: self.tables_binary.load(Ordering::Relaxed),
            slices_copied: self.slices_copied.load(Ordering::Relaxed),
            rows_copied: self.rows_copied.load(Ordering::Relaxed),
            copy_ms: self.copy_ms.load(Ordering::Relaxed),
            rest_ms: self.rest_ms.load(Ordering::Relaxed),
            lanes: self.lanes.lock().map(|l| l.clone()).unwrap_or_default(),
            nothing_to_keep: self.nothing_to_keep.load(Ordering::Relaxed),
        }
    }

    /// Updates copy lane `lane`'s entry in the status.
    pub fn lane_progress(&self, lane: u32, update: impl FnOnce(&mut pb::LaneProgress)) {
        if let Ok(mut lanes) = self.lanes.lock() {
            let i = lane.saturating_sub(1) as usize;
            if lanes.len() <= i {
                lanes.resize_with(i + 1, Default::default);
            }
            lanes[i].lane = lane;
            update(&mut lanes[i]);
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Counts a watcher for as long as the guard lives.
    pub fn watch_guard(self: &Arc<Self>) -> WatchGuard {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        WatchGuard(self.clone())
    }

    /// How long nobody has watched (zero while someone does).
    pub fn unwatched_for(&self) -> Duration {
        if self.watchers.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last_watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    pub(super) fn finished_for(&self) -> Option<Duration> {
        self.state().finished.map(|f| f.elapsed())
    }
}

pub struct WatchGuard(Arc<Job>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        *self
            .0
            .last_watched
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

fn host_label(agent: &str) -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("agent {agent} on {host}")
}
