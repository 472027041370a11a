//! The registry of this agent's jobs: finds them by id and side, and
//! refuses a second refresh of a database while one runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stagesync_proto::v1 as pb;

use super::{Job, Side};

/// All jobs of this agent.
#[derive(Default)]
pub struct Jobs {
    map: Mutex<HashMap<(String, Side), Arc<Job>>>,
}

/// How long finished jobs stay visible to `WatchJob` and `Info`.
const KEEP_FINISHED: Duration = Duration::from_secs(600);

impl Jobs {
    pub fn new() -> Self {
        Jobs::default()
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
            && let Some(other) = running_dest(&map, &job.database)
        {
            return Err(busy_message(&job.database, other));
        }
        map.insert((job.id.clone(), job.side), job);
        Ok(())
    }

    /// Why a refresh of `database` cannot start now, if one is running.
    pub fn busy(&self, database: &str) -> Option<String> {
        running_dest(&self.map(), database).map(|j| busy_message(database, j))
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

/// The destination job refreshing `database`, if one is running.
fn running_dest<'a>(
    map: &'a HashMap<(String, Side), Arc<Job>>,
    database: &str,
) -> Option<&'a Arc<Job>> {
    map.values()
        .find(|j| j.side == Side::Dest && j.database == database && !j.is_terminal())
}

fn busy_message(database: &str, job: &Job) -> String {
    format!(
        "a refresh of database {database:?} is already running here as job {} ({:?}); wait for it or abort it",
        job.id,
        job.phase()
    )
}
