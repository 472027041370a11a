//! Jobs: one refresh as seen by one agent (the source side dumping, or the
//! destination side restoring), their state, progress and lease.
//!
//! A job lives while a controller watches it. Its supervisor task aborts it
//! when nobody has watched for the controller timeout (or, on the
//! destination, when the stream never came), and after any failure or abort
//! waits for the pipeline to stop its processes, then removes what the job
//! made: the new database and the work directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stagesync_certs::Identity;
use stagesync_proto::v1 as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Source,
    Dest,
}

/// What the destination needs to know about its job.
pub struct DestSetup {
    pub owner: String,
    pub mode: pb::Mode,
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
    /// Held by whatever runs the job's processes; cleanup waits for it.
    pub pipeline: tokio::sync::Mutex<()>,
    started: Instant,
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
    pub fn fail(&self, step: &str, message: impl Into<String>, stderr_tail: String) {
        let message = message.into();
        {
            let mut s = self.state();
            if terminal(s.phase) || s.phase == pb::Phase::Committing {
                return;
            }
            tracing::warn!(job = %self.id, step, error = %message, "job failed");
            s.phase = pb::Phase::Failed;
            s.finished = Some(Instant::now());
            s.error = Some(pb::JobError {
                step: step.to_string(),
                host: host_label(&self.agent),
                message,
                stderr_tail,
            });
        }
        self.cancel.cancel();
        self.bump();
    }

    /// Marks a job whose commit failed (the swap is one transaction, so the
    /// live database is unchanged) and lets the supervisor clean up.
    pub fn commit_failed(&self, message: String) {
        {
            let mut s = self.state();
            s.phase = pb::Phase::Failed;
            s.finished = Some(Instant::now());
            s.error = Some(pb::JobError {
                step: "swap".to_string(),
                host: host_label(&self.agent),
                message,
                stderr_tail: String::new(),
            });
        }
        self.cancel.cancel();
        self.bump();
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
            s.phase = pb::Phase::Aborted;
            s.finished = Some(Instant::now());
            s.error = Some(pb::JobError {
                step: "abort".to_string(),
                host: host_label(&self.agent),
                message: reason.to_string(),
                stderr_tail: String::new(),
            });
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

    fn finished_for(&self) -> Option<Duration> {
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

/// All jobs of this agent.
pub struct Jobs {
    map: Mutex<HashMap<(String, Side), Arc<Job>>>,
    pub config: Arc<AgentConfig>,
}

/// How long finished jobs stay visible to `WatchJob` and `Info`.
const KEEP_FINISHED: Duration = Duration::from_secs(600);

impl Jobs {
    pub fn new(config: Arc<AgentConfig>) -> Self {
        Jobs {
            map: Mutex::new(HashMap::new()),
            config,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Side), Arc<Job>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str, side: Side) -> Option<Arc<Job>> {
        self.map().get(&(id.to_string(), side)).cloned()
    }

    /// The job `id` on the side asked for, or on either side if unspecified.
    pub fn find(&self, id: &str, side: pb::Side) -> Vec<Arc<Job>> {
        let sides: &[Side] = match side {
            pb::Side::Source => &[Side::Source],
            pb::Side::Dest => &[Side::Dest],
            pb::Side::Unspecified => &[Side::Source, Side::Dest],
        };
        sides.iter().filter_map(|s| self.get(id, *s)).collect()
    }

    pub fn all(&self) -> Vec<Arc<Job>> {
        let mut v: Vec<_> = self.map().values().cloned().collect();
        v.sort_by_key(|j| j.started);
        v
    }

    /// Registers a job unless its id is taken or (destination) another job
    /// is refreshing the same database.
    pub fn insert(&self, job: Arc<Job>) -> Result<(), String> {
        let mut map = self.map();
        map.retain(|_, j| j.finished_for().is_none_or(|d| d < KEEP_FINISHED));
        if map.contains_key(&(job.id.clone(), job.side)) {
            return Err(format!("job {} already exists on this agent", job.id));
        }
        if job.side == Side::Dest
            && let Some(other) = map
                .values()
                .find(|j| j.side == Side::Dest && j.database == job.database && !j.is_terminal())
        {
            return Err(format!(
                "a refresh of database {:?} is already running here as job {} ({:?}); wait for it or abort it",
                job.database,
                other.id,
                other.phase()
            ));
        }
        map.insert((job.id.clone(), job.side), job);
        Ok(())
    }

    /// Whether a destination job for `database` is running.
    pub fn busy(&self, database: &str) -> Option<String> {
        self.map()
            .values()
            .find(|j| j.side == Side::Dest && j.database == database && !j.is_terminal())
            .map(|j| j.id.clone())
    }

    /// New databases that belong to jobs still here (not to be cleaned).
    pub fn live_new_databases(&self) -> Vec<String> {
        self.map()
            .values()
            .filter(|j| j.side == Side::Dest)
            .map(|j| j.new_database.clone())
            .collect()
    }

    /// Aborts every running job (agent shutdown).
    pub fn abort_all(&self, reason: &str) {
        for job in self.all() {
            let _ = job.abort(reason);
        }
    }
}
