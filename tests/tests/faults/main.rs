//! Faults during a refresh. Each test first proves the fault happened,
//! then that the live destination database is exactly as it was and that
//! no stagesync database, work directory or child process is left behind.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use stagesync_certs::ReloadingClientConfig;
use stagesync_controller::refresh::{PairSpec, refresh};
use stagesync_harness::fixtures::content_hashes;
use stagesync_harness::fleet::FleetBuilder;
use stagesync_harness::proxy::{FaultProxy, tool_processes};
use stagesync_harness::{AgentRun, AgentSpec, Fleet, eventually};
use stagesync_proto::v1 as pb;

mod failing;
mod killed;
mod leftovers;
mod link;
mod refusals;
mod schema;

/// The standard fleet, with the stream between the agents going through a
/// fault proxy.
struct Setup {
    fleet: Fleet,
    proxy: FaultProxy,
}

impl Deref for Setup {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

impl DerefMut for Setup {
    fn deref_mut(&mut self) -> &mut Fleet {
        &mut self.fleet
    }
}

/// The source copies the fixture's one large table (app.posts) on a copy
/// lane and sends the others in lane 0's pg_dump, so a stream with several
/// workers has a lane of each kind running at once.
fn lanes(on: bool) -> impl FnOnce(&mut AgentSpec) {
    move |p| {
        if on {
            p.jobs.insert("lane_min_table_mb".into(), 2);
        }
    }
}

async fn setup(fleet: FleetBuilder) -> Setup {
    // Without `lanes(true)` no table is large enough for a copy lane: the
    // data travels in pg_dump's one stream.
    let fleet = fleet
        .prod(|p| {
            p.jobs.entry("lane_min_table_mb".into()).or_insert(1024);
        })
        .build()
        .await;
    let proxy = FaultProxy::start(fleet.staging().addr()).await.unwrap();
    // Slow the dump down so there is time to break things mid-stream.
    proxy.throttle(400 * 1024);
    Setup { fleet, proxy }
}

impl Setup {
    fn spec(&self) -> PairSpec {
        let mut spec = self.pair();
        spec.dest_peer_address = Some(self.proxy.addr.to_string());
        spec
    }

    fn start(
        &self,
        spec: PairSpec,
    ) -> tokio::task::JoinHandle<Result<stagesync_controller::refresh::Report, String>> {
        let tls = self.tls();
        tokio::spawn(async move { refresh(tls, &spec, |_| {}).await.map_err(|e| e.to_string()) })
    }

    /// The destination's jobs, as its `Info` lists them.
    async fn dest_jobs(&self) -> Vec<pb::JobStatus> {
        self.info(self.staging()).await.unwrap().jobs
    }

    /// Waits until the destination has restored some bytes of job data.
    async fn wait_restoring(&self) {
        eventually("the refresh to restore data", async || {
            let jobs = self.info(self.staging()).await.map(|i| i.jobs);
            match &jobs {
                Ok(jobs)
                    if jobs.iter().any(|j| {
                        j.phase == pb::Phase::Restoring as i32 && j.bytes_restored > 0
                    }) =>
                {
                    Ok(())
                }
                _ => Err(jobs),
            }
        })
        .await
    }

    /// Waits until the destination restores data in lanes: lane 0's
    /// pg_restore runs, and a copy lane's COPY.
    async fn wait_lanes(&self) {
        eventually("the refresh to restore in lanes", async || {
            // Restoring in lanes, not yet indexing: the process is lane 0's.
            let jobs = self.info(self.staging()).await.map(|i| i.jobs);
            let lanes = jobs.as_ref().is_ok_and(|jobs| {
                jobs.iter()
                    .any(|j| j.phase == pb::Phase::Restoring as i32 && j.data_lanes > 1)
            });
            let procs = tool_processes(self.dst());
            let copies = self.copy_sessions().await.len();
            match lanes && procs.len() == 1 && copies > 0 {
                true => Ok(()),
                false => Err((jobs, procs, copies)),
            }
        })
        .await
    }

    /// Waits until a `pg_restore` in `database` (a post-data build) waits
    /// on a lock.
    async fn wait_build_on_a_lock(&self, database: &str) {
        let watcher = self.dst().client("postgres").await.unwrap();
        eventually("a post-data build to wait on a lock", async || {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND application_name = 'stagesync-pg_restore' AND wait_event_type = 'Lock'",
                    &[&database],
                )
                .await
                .unwrap()
                .get(0);
            if waiting > 0 { Ok(()) } else { Err(waiting) }
        })
        .await;
    }

    /// Waits until no pg_dump or pg_restore runs on the destination (they
    /// die with a killed agent).
    async fn wait_tools_gone(&self) {
        eventually("pg_restore to die with its agent", async || {
            let left = tool_processes(self.dst());
            if left.is_empty() { Ok(()) } else { Err(left) }
        })
        .await;
    }

    /// The destination's backends running a lane's `COPY … FROM STDIN`.
    async fn copy_sessions(&self) -> Vec<i32> {
        let sql = "SELECT pid FROM pg_stat_activity \
                   WHERE query LIKE 'COPY % FROM STDIN WITH (FREEZE%' AND state = 'active' \
                     AND (usename LIKE 'stagesync\\_job\\_%' OR usename = 'stagesync_dst')";
        match self.dst().client("postgres").await {
            Ok(c) => c
                .query(sql, &[])
                .await
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}
