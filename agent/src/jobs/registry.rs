//! The registry of this agent's jobs: finds them by id and side, and lets
//! one thing at a time change a database: a refresh, or a rollback.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stagesync_proto::v1 as pb;

use super::{Job, Side};

type JobMap = HashMap<(String, Side), Arc<Job>>;

/// All jobs of this agent, and the rollbacks running.
#[derive(Default)]
pub struct Jobs {
    inner: Mutex<Inner>,
}

/// Under one lock, so a refresh and a rollback of one database cannot
/// both pass their checks.
#[derive(Default)]
struct Inner {
    map: JobMap,
    rollbacks: HashSet<String>,
}

/// A running rollback of a database; dropping it ends the claim.
pub struct RollbackClaim {
    jobs: Arc<Jobs>,
    database: String,
}

impl Drop for RollbackClaim {
    fn drop(&mut self) {
        self.jobs.inner().rollbacks.remove(&self.database);
    }
}

/// How long finished jobs stay visible to `WatchJob` and `Info`.
const KEEP_FINISHED: Duration = Duration::from_secs(600);

impl Jobs {
    pub fn new() -> Self {
        Jobs::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str, side: Side) -> Option<Arc<Job>> {
        self.inner().map.get(&(id.to_string(), side)).cloned()
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
        let mut v: Vec<_> = self.inner().map.values().cloned().collect();
        v.sort_by_key(|j| j.started);
        v
    }

    /// Registers a job unless its id is taken or (destination) another job
    /// is refreshing the same database.
    pub fn insert(&self, job: Arc<Job>) -> Result<(), String> {
        let mut inner = self.inner();
        inner
            .map
            .retain(|_, j| j.finished_for().is_none_or(|d| d < KEEP_FINISHED));
        if inner.map.contains_key(&(job.id.clone(), job.side)) {
            return Err(format!("job {} already exists on this agent", job.id));
        }
        if job.side == Side::Dest
            && let Some(busy) = inner.busy(&job.database)
        {
            return Err(busy);
        }
        inner.map.insert((job.id.clone(), job.side), job);
        Ok(())
    }

    /// Why `database` cannot be changed now, if a refresh or a rollback of
    /// it is running.
    pub fn busy(&self, database: &str) -> Option<String> {
        self.inner().busy(database)
    }

    /// Claims `database` for a rollback, unless a refresh or another
    /// rollback of it is running.
    pub fn claim_rollback(self: &Arc<Self>, database: &str) -> Result<RollbackClaim, String> {
        let mut inner = self.inner();
        if let Some(busy) = inner.busy(database) {
            return Err(busy);
        }
        inner.rollbacks.insert(database.to_string());
        Ok(RollbackClaim {
            jobs: self.clone(),
            database: database.to_string(),
        })
    }

    /// New databases that belong to jobs still here (not to be cleaned).
    pub fn live_new_databases(&self) -> Vec<String> {
        self.inner()
            .map
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

impl Inner {
    fn busy(&self, database: &str) -> Option<String> {
        if self.rollbacks.contains(database) {
            return Some(format!(
                "a rollback of database {database:?} is running here; wait for it"
            ));
        }
        let job = self
            .map
            .values()
            .find(|j| j.side == Side::Dest && j.database == database && !j.is_terminal())?;
        Some(format!(
            "a refresh of database {database:?} is already running here as job {} ({:?}); wait for it or abort it",
            job.id,
            job.phase()
        ))
    }
}
