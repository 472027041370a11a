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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_agent_killed_mid_stream() {
    source_agent_killed(false, Fleet::builder()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_agent_killed_mid_lanes() {
    source_agent_killed(true, Fleet::builder()).await;
}

/// The same on managed-like servers, both agents over TCP with TLS as
/// logins that are no superuser.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_agent_killed_mid_lanes_over_tcp() {
    source_agent_killed(true, Fleet::builder().managed()).await;
}

async fn source_agent_killed(with_lanes: bool, fleet: FleetBuilder) {
    let mut s = setup(fleet.prod_runs(AgentRun::Process).prod(lanes(with_lanes))).await;
    let run = s.start(s.spec());
    if with_lanes {
        s.wait_lanes().await;
    } else {
        s.wait_restoring().await;
    }
    let status = s.prod_mut().process().kill().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the source agent was killed"
    );
    let err = run.await.unwrap().unwrap_err();
    assert!(err.contains("lost contact with the source agent"), "{err}");
    assert!(err.contains("stopped or crashed"), "{err}");
    // The killed agent could not remove its job's work directory (the
    // post-data section dumped apart); restarted, it does so before serving.
    let jobs_dir = s.prod().work_dir().join("jobs");
    assert!(
        std::fs::read_dir(&jobs_dir).is_ok_and(|mut d| d.next().is_some()),
        "the killed source left its job directory"
    );
    s.prod_mut().process().start().await.unwrap();
    s.assert_untouched().await;
    assert!(
        s.prod_mut()
            .process()
            .log_text()
            .contains("removed leftover job directories")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destination_agent_killed_mid_restore_then_restarted() {
    destination_agent_killed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destination_agent_killed_mid_lanes_then_restarted() {
    destination_agent_killed(true).await;
}

async fn destination_agent_killed(with_lanes: bool) {
    let mut s = setup(
        Fleet::builder()
            .staging_runs(AgentRun::Process)
            .prod(lanes(with_lanes)),
    )
    .await;
    let run = s.start(s.spec());
    if with_lanes {
        s.wait_lanes().await;
    } else {
        s.wait_restoring().await;
    }
    let status = s.staging_mut().process().kill().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the destination agent was killed"
    );
    let err = run.await.unwrap().unwrap_err();
    assert!(!err.is_empty());
    // The crash left the half-restored database behind...
    let left = s.stagesync_databases().await;
    assert!(
        left.iter().any(|d| d.starts_with("stagesync_new_")),
        "{left:?}"
    );
    // ...and pg_restore died with its agent.
    s.wait_tools_gone().await;
    // A restarted agent cleans up before it serves.
    s.staging_mut().process().start().await.unwrap();
    s.assert_untouched().await;
    assert!(
        s.staging_mut()
            .process()
            .log_text()
            .contains("dropped databases left by interrupted jobs")
    );
}

/// The destination agent killed while a landed table's keys are built
/// early (lane 0's app.teams is in; its primary key waits on a lock this
/// test holds) and the copy lane still copies: the build dies with the
/// agent, and the restarted agent drops the half-made database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destination_agent_killed_while_building_a_landed_tables_keys() {
    let mut s = setup(
        Fleet::builder()
            .staging_runs(AgentRun::Process)
            .prod(lanes(true)),
    )
    .await;
    let run = s.start(s.spec());
    s.wait_lanes().await;
    let job = s.dest_jobs().await.last().unwrap().clone();
    let holder = s.dst().client(&job.new_database).await.unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE app.teams IN ACCESS SHARE MODE")
        .await
        .unwrap();
    s.wait_build_on_a_lock(&job.new_database).await;
    // The copy lane still copies: this is one of the builds as tables land.
    let now = s.dest_jobs().await;
    let now = now.iter().find(|j| j.job_id == job.job_id).unwrap();
    assert_eq!(now.phase, pb::Phase::Restoring as i32, "{now:?}");
    assert!(!s.copy_sessions().await.is_empty(), "a copy lane runs");
    let status = s.staging_mut().process().kill().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the destination agent was killed"
    );
    drop(holder);
    let err = run.await.unwrap().unwrap_err();
    assert!(!err.is_empty());
    s.wait_tools_gone().await;
    s.staging_mut().process().start().await.unwrap();
    s.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_restore_killed() {
    let s = setup(Fleet::builder()).await;
    let run = s.start(s.spec());
    s.wait_restoring().await;
    let pids = tool_processes(s.dst());
    assert_eq!(pids.len(), 1, "one pg_restore runs: {pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let err = run.await.unwrap().unwrap_err();
    assert!(err.contains("pg_restore"), "{err}");
    assert!(err.contains("signal: 9"), "the error shows the kill: {err}");
    s.assert_untouched().await;
}

/// One lane's pg_restore killed: the refresh fails naming a data lane and
/// the kill, and nothing is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lanes_pg_restore_killed() {
    let s = setup(Fleet::builder().prod(lanes(true))).await;
    let run = s.start(s.spec());
    s.wait_lanes().await;
    let pids = tool_processes(s.dst());
    let victim = *pids.iter().max().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let err = run.await.unwrap().unwrap_err();
    assert!(err.contains("data lane"), "{err}");
    assert!(err.contains("signal: 9"), "the error shows the kill: {err}");
    s.assert_untouched().await;
}

/// One lane's COPY fails on the destination (its session is ended there):
/// the refresh fails naming the lane and its table, the live database as
/// it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lanes_copy_failing_on_the_destination() {
    let s = setup(Fleet::builder().prod(lanes(true))).await;
    let run = s.start(s.spec());
    s.wait_lanes().await;
    let victims = s.copy_sessions().await;
    assert!(!victims.is_empty(), "{victims:?}");
    s.dst()
        .exec(
            "postgres",
            &format!("SELECT pg_terminate_backend({})", victims[0]),
        )
        .await
        .unwrap();
    let err = run.await.unwrap().unwrap_err();
    assert!(
        err.contains("data lane ") && err.contains(": copying into "),
        "{err}"
    );
    assert!(
        err.contains("connection closed") || err.contains("terminat"),
        "the error shows the session's end: {err}"
    );
    s.assert_untouched().await;
}

/// A copy lane's session on the source ended mid-COPY (the session that
/// reads the rows off the socket itself): the refresh fails naming the
/// table and the server's reason, the live database as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lanes_copy_failing_on_the_source() {
    let s = setup(Fleet::builder().prod(lanes(true))).await;
    let run = s.start(s.spec());
    s.wait_lanes().await;
    // app.posts's lane (audit.log, the other large table, may have one too).
    let sql = "SELECT pid FROM pg_stat_activity \
               WHERE query LIKE 'COPY \"app\".\"posts\" % TO STDOUT%' AND state = 'active'";
    let src = s.src().client("postgres").await.unwrap();
    let victims: Vec<i32> = src
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!victims.is_empty(), "a copy lane reads on the source");
    src.execute("SELECT pg_terminate_backend($1)", &[&victims[0]])
        .await
        .unwrap();
    let err = run.await.unwrap().unwrap_err();
    assert!(err.contains("copying app."), "{err}");
    assert!(
        err.contains("terminating connection") || err.contains("closed the connection"),
        "the error shows the session's end: {err}"
    );
    s.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn indexes_and_constraints_failing_after_the_data() {
    let s = setup(Fleet::builder()).await;
    s.proxy.throttle(0);
    let mut spec = s.spec();
    // Without app.users' rows, app.posts' (and the invoices') rows
    // restore, and then their foreign keys cannot be built: the final
    // post-data pass fails.
    spec.dump.exclude_table_data = vec!["app.users".into()];
    let err = s.start(spec).await.unwrap().unwrap_err();
    assert!(
        err.contains("building indexes, constraints and triggers (2 workers)"),
        "the failure is in the post-data pass: {err}"
    );
    assert!(
        err.contains("posts_user_id_fkey") || err.contains("Invoices_user_id_fkey"),
        "{err}"
    );
    s.assert_untouched().await;
}

/// An abort while indexes and constraints are being built (the parallel
/// post-data pass, held up by a lock this test takes) stops its workers
/// and drops the new database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborted_while_indexing() {
    let s = setup(Fleet::builder()).await;
    let run = s.start(s.spec());
    s.wait_restoring().await;
    // A share lock lets app.teams' rows in but keeps its primary key
    // (post-data) waiting; taken once the schema created the table.
    let job = s.dest_jobs().await.last().unwrap().clone();
    let holder = s.dst().client(&job.new_database).await.unwrap();
    eventually("the schema to create app.teams", async || {
        let row = holder
            .query_one("SELECT to_regclass('app.teams') IS NOT NULL", &[])
            .await;
        match row.map(|r| r.get::<_, bool>(0)) {
            Ok(true) => Ok(()),
            other => Err(other.map_err(|e| e.to_string())),
        }
    })
    .await;
    holder
        .batch_execute("BEGIN; LOCK TABLE app.teams IN ACCESS SHARE MODE")
        .await
        .unwrap();
    s.proxy.throttle(0);
    let now = eventually("the job to build indexes", async || {
        let jobs = s.dest_jobs().await;
        let now = jobs.into_iter().find(|j| j.job_id == job.job_id).unwrap();
        match now.phase == pb::Phase::Indexing as i32 {
            true => Ok(now),
            false => Err(now),
        }
    })
    .await;
    assert_eq!(now.post_data_jobs, 2);
    // Held: a post-data worker waits on the lock.
    s.wait_build_on_a_lock(&job.new_database).await;
    assert!(
        !tool_processes(s.dst()).is_empty(),
        "pg_restore is running its post-data pass"
    );
    let mut dest = stagesync_controller::client::connect(s.tls(), &s.staging().target())
        .await
        .unwrap();
    dest.abort(pb::AbortRequest {
        job_id: job.job_id.clone(),
        reason: "operator pressed Ctrl-C".into(),
        side: pb::Side::Dest as i32,
    })
    .await
    .unwrap();
    let err = run.await.unwrap().unwrap_err();
    assert!(
        err.contains(
            "aborted by spiffe://stagesync/controller/ops: operator pressed Ctrl-C (the job was at step pg_restore)"
        ),
        "the abort's reason, not just 'cancelled': {err}"
    );
    drop(holder);
    s.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_schema_dump_stops_the_data_at_once() {
    a_failing_schema_dump(false).await;
}

/// With data lanes the schema goes first: its failure starts no lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_schema_dump_starts_no_data_lane() {
    a_failing_schema_dump(true).await;
}

async fn a_failing_schema_dump(with_lanes: bool) {
    let s = setup(
        Fleet::builder()
            .prod(|p| p.faults.bad_schema_snapshot = true)
            .prod(lanes(with_lanes)),
    )
    .await;
    // Throttled to 400 KiB/s, the whole dump would take many seconds.
    let err = s.start(s.spec()).await.unwrap().unwrap_err();
    assert!(err.contains("the schema dump"), "{err}");
    assert!(err.contains("snapshot"), "pg_dump's own words: {err}");
    let info = s.info(s.prod()).await.unwrap();
    let dumped = info.jobs.iter().map(|j| j.bytes_dumped).max().unwrap_or(0);
    let c = s.src().client("production").await.unwrap();
    let posts: i64 = c
        .query_one("SELECT pg_table_size('app.posts')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        dumped < posts as u64 / 2,
        "the data kept streaming: {dumped} bytes dumped, app.posts alone is {posts}"
    );
    if with_lanes {
        assert_eq!(dumped, 0, "a data lane ran");
    }
    s.assert_untouched().await;
}

/// The destination lands the schema file (pre-data and post-data) on disk
/// and caps its size; here the cap is lowered below the fixture's schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schema_file_over_the_cap_is_refused() {
    schema_over_the_cap(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schema_file_over_the_cap_is_refused_with_lanes() {
    schema_over_the_cap(true).await;
}

async fn schema_over_the_cap(with_lanes: bool) {
    let s = setup(
        Fleet::builder()
            .prod(lanes(with_lanes))
            .staging(|s| s.faults.max_schema_file = Some(4096)),
    )
    .await;
    s.proxy.throttle(0);
    let err = s.start(s.spec()).await.unwrap().unwrap_err();
    assert!(
        err.contains("the schema file from the source exceeds 4096 bytes; refresh with --jobs 1"),
        "{err}"
    );
    s.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_schema_file_stops_landing_before_the_disk_fills() {
    // The destination must keep more free than any disk has: the schema
    // file's first bytes are refused.
    let s = setup(Fleet::builder().staging(|s| s.faults.keep_free = Some(u64::MAX / 2))).await;
    s.proxy.throttle(0);
    let err = s.start(s.spec()).await.unwrap().unwrap_err();
    assert!(
        err.contains("would leave less than") && err.contains("free on the file system of"),
        "{err}"
    );
    s.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_frame_is_caught_by_its_checksum() {
    let s = setup(Fleet::builder().prod(|p| p.faults.corrupt_frame = Some(2))).await;
    s.proxy.throttle(0);
    let err = s.start(s.spec()).await.unwrap().unwrap_err();
    assert!(err.contains("frame 2 failed its CRC32C check"), "{err}");
    s.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_frame_in_a_lane_is_caught_by_its_checksum() {
    let s = setup(Fleet::builder().prod(lanes(true)).prod(|p| {
        p.faults.corrupt_frame = Some(2);
        p.faults.corrupt_lane = 1;
    }))
    .await;
    s.proxy.throttle(0);
    let err = s.start(s.spec()).await.unwrap().unwrap_err();
    assert!(
        err.contains("data lane 1: frame 2 failed its CRC32C check"),
        "{err}"
    );
    s.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_restore_sql_failing() {
    let s = setup(Fleet::builder()).await;
    s.proxy.throttle(0);
    let mut spec = s.spec();
    spec.post_restore_sql =
        "UPDATE public.socialaccount_socialapp SET client_id = 'x'; SELECT 1/0".into();
    let err = s.start(spec).await.unwrap().unwrap_err();
    assert!(err.contains("post-restore SQL failed"), "{err}");
    assert!(err.contains("division by zero"), "{err}");
    s.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_vanishing_mid_job() {
    let limit = |a: &mut AgentSpec| {
        a.jobs.insert("controller_timeout_secs".into(), 2);
    };
    // Copy lanes too: their sessions must end with the job.
    let s = setup(
        Fleet::builder()
            .prod(limit)
            .prod(lanes(true))
            .staging(limit),
    )
    .await;
    let run = s.start(s.spec());
    s.wait_lanes().await;
    run.abort();
    assert!(
        run.await.unwrap_err().is_cancelled(),
        "the controller is gone"
    );
    // The destination aborts the job on its own once nobody watches.
    let why = eventually("the unwatched job to be aborted", async || {
        let job = s.dest_jobs().await.pop().unwrap();
        match job.phase == pb::Phase::Aborted as i32 {
            true => Ok(job.error.unwrap_or_default().message),
            false => Err(job.phase()),
        }
    })
    .await;
    assert!(why.contains("no controller has watched"), "{why}");
    s.assert_untouched().await;
    assert!(
        s.copy_sessions().await.is_empty(),
        "no COPY is left running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_restore_sql_cannot_leave_the_owner_role() {
    let s = setup(Fleet::builder()).await;
    s.proxy.throttle(0);
    let mut spec = s.spec();
    spec.post_restore_sql = "RESET ROLE; DROP DATABASE postgres".into();
    let err = s.start(spec).await.unwrap().unwrap_err();
    assert!(err.contains("cannot set parameter \"role\""), "{err}");
    let mut spec = s.spec();
    spec.post_restore_sql = "DROP TABLE pg_catalog.pg_class".into();
    let err = s.start(spec).await.unwrap().unwrap_err();
    assert!(err.contains("must be owner"), "{err}");
    s.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_mid_swap_is_repaired_at_start() {
    let s = setup(Fleet::builder()).await;
    // What a crash between closing the live database and the swap leaves:
    // the database closed to connections, and the agent's note of it.
    let closed = s.staging().work_dir().join("closed");
    std::fs::create_dir_all(&closed).unwrap();
    std::fs::write(closed.join(hex::encode("stage")), "true\nstage").unwrap();
    s.dst()
        .exec("postgres", "ALTER DATABASE stage ALLOW_CONNECTIONS false")
        .await
        .unwrap();
    assert!(
        s.dst().client("stage").await.is_err(),
        "the database is really closed"
    );
    let config = stagesync_agent::config::load(s.staging().config_path()).unwrap();
    stagesync_agent::recover(&config).await;
    s.dst().client("stage").await.expect("reopened at start");
    assert!(
        std::fs::read_dir(&closed).unwrap().next().is_none(),
        "the note is gone"
    );
    s.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_stalls_mid_stream() {
    let s = setup(Fleet::builder().staging(|s| {
        s.jobs.insert("stall_timeout_secs".into(), 3);
    }))
    .await;
    let run = s.start(s.spec());
    s.wait_restoring().await;
    s.proxy.stall();
    // The chunks already let through are written; then nothing moves.
    let frozen = eventually("the stalled link to go quiet", async || {
        match s.proxy.quiet() {
            true => Ok(s.proxy.forwarded()),
            false => Err(s.proxy.forwarded()),
        }
    })
    .await;
    let err = run.await.unwrap().unwrap_err();
    // Dead from the stall until the refresh gave up on it.
    assert_eq!(s.proxy.forwarded(), frozen, "the link is really dead");
    assert!(
        err.contains("no data from the source agent for 3 s"),
        "{err}"
    );
    s.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_refresh_of_the_same_destination_is_refused() {
    let s = setup(Fleet::builder()).await;
    let first = s.start(s.spec());
    s.wait_restoring().await;
    let err = s.start(s.spec()).await.unwrap().unwrap_err();
    assert!(
        err.contains("a refresh of database \"stage\" is already running here as job"),
        "{err}"
    );
    s.proxy.throttle(0);
    first
        .await
        .unwrap()
        .expect("the first refresh still succeeds");
    assert_eq!(
        content_hashes(s.dst(), "stage").await.unwrap(),
        content_hashes(s.src(), "production").await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_ticket_is_refused() {
    let s = setup(Fleet::builder().staging(|s| {
        s.jobs.insert("ticket_ttl_secs".into(), 1);
    }))
    .await;
    let ticket = "c".repeat(64);
    prepare(&s, &ticket).await;
    // Once the ticket has expired, the destination gives up on the job.
    eventually("the job to end with its ticket unused", async || {
        let jobs = s.dest_jobs().await;
        match jobs.iter().find(|j| j.job_id == "0123456789abcdef") {
            Some(j) if j.phase == pb::Phase::Aborted as i32 => Ok(()),
            _ => Err(jobs),
        }
    })
    .await;
    let late = push_header(&s, "prod-db", "0123456789abcdef", &ticket).await;
    assert_eq!(late.code(), tonic::Code::PermissionDenied);
    assert!(
        late.message().contains("expired") || late.message().contains("no job"),
        "{}",
        late.message()
    );
    s.assert_untouched().await;
}

async fn prepare(s: &Setup, ticket: &str) {
    prepare_job(s, "0123456789abcdef", ticket).await
}

async fn prepare_job(s: &Setup, job_id: &str, ticket: &str) {
    let mut dest = stagesync_controller::client::connect(s.tls(), &s.staging().target())
        .await
        .unwrap();
    // The widest shape, so every header a test sends fits it.
    let widest = pb::Shape {
        mode: pb::Mode::Stream as i32,
        post_data_file: true,
        data_lanes: stagesync_proto::MAX_DATA_LANES,
        digest: pb::Digest::Sha256 as i32,
        binary_rows: true,
    };
    dest.prepare_restore(pb::PrepareRestoreRequest {
        job_id: job_id.into(),
        database: "stage".into(),
        owner: "stage".into(),
        shape: Some(widest),
        jobs: 1,
        restore: None,
        post_restore_sql: String::new(),
        params: Default::default(),
        ticket: ticket.into(),
        source_identity: "spiffe://stagesync/agent/prod-db".into(),
        staging: None,
        unmasked: false,
    })
    .await
    .unwrap();
}

/// Pushes a stream header straight to the destination as `as_agent`.
async fn push_header(s: &Setup, as_agent: &str, job_id: &str, ticket: &str) -> tonic::Status {
    let tls = Arc::new(ReloadingClientConfig::load(s.pki().agent(as_agent).unwrap()).unwrap());
    let mut c = stagesync_controller::client::connect(tls, &s.staging().target())
        .await
        .unwrap();
    let header = pb::DumpFrame {
        kind: Some(pb::dump_frame::Kind::Header(pb::DumpHeader {
            job_id: job_id.into(),
            ticket: ticket.into(),
            shape: Some(pb::Shape::one_pass(pb::Mode::Stream)),
            compression: pb::Compression::None as i32,
            source_database: "production".into(),
            lane_tables: Vec::new(),
            unmasked_personal_data: false,
        })),
    };
    c.push_dump(futures::stream::iter(vec![header]))
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_with_bad_tickets_or_from_strangers_are_refused() {
    let s = setup(Fleet::builder()).await;
    let ticket = "a".repeat(64);
    let mut dest = stagesync_controller::client::connect(s.tls(), &s.staging().target())
        .await
        .unwrap();
    dest.prepare_restore(pb::PrepareRestoreRequest {
        job_id: "0123456789abcdef".into(),
        database: "stage".into(),
        owner: "stage".into(),
        shape: Some(pb::Shape::one_pass(pb::Mode::Stream)),
        jobs: 1,
        restore: None,
        post_restore_sql: String::new(),
        params: Default::default(),
        ticket: ticket.clone(),
        source_identity: "spiffe://stagesync/agent/prod-db".into(),
        staging: None,
        unmasked: false,
    })
    .await
    .unwrap();
    let wrong = push_header(&s, "prod-db", "0123456789abcdef", &"b".repeat(64)).await;
    assert_eq!(wrong.code(), tonic::Code::PermissionDenied);
    assert!(
        wrong.message().contains("wrong ticket"),
        "{}",
        wrong.message()
    );
    let stranger = push_header(&s, "rogue-db", "0123456789abcdef", &ticket).await;
    assert_eq!(stranger.code(), tonic::Code::PermissionDenied);
    assert!(
        stranger.message().contains("policy.peers"),
        "{}",
        stranger.message()
    );
    // The right ticket is accepted once (the stream then fails: it has no
    // data), and a replay is refused.
    let first = push_header(&s, "prod-db", "0123456789abcdef", &ticket).await;
    assert!(!first.message().contains("ticket"), "{}", first.message());
    let replay = push_header(&s, "prod-db", "0123456789abcdef", &ticket).await;
    assert_eq!(replay.code(), tonic::Code::PermissionDenied);
    assert!(
        replay.message().contains("already used") || replay.message().contains("has ended"),
        "{}",
        replay.message()
    );
    s.assert_untouched().await;
}

/// Prepares job `n` and pushes `header` (given its job id, ticket, mode and
/// compression) and `frames` to it as the source agent; the refusal's message.
async fn push_prepared(
    s: &Setup,
    n: usize,
    header: pb::DumpHeader,
    frames: Vec<pb::dump_frame::Kind>,
) -> String {
    let job_id = format!("{n:016x}");
    let ticket = format!("{n:x}").repeat(64);
    prepare_job(s, &job_id, &ticket).await;
    let header = pb::DumpHeader {
        job_id,
        ticket,
        compression: pb::Compression::None as i32,
        source_database: "production".into(),
        ..header
    };
    let all = std::iter::once(pb::dump_frame::Kind::Header(header))
        .chain(frames)
        .map(|k| pb::DumpFrame { kind: Some(k) })
        .collect::<Vec<_>>();
    let tls = Arc::new(ReloadingClientConfig::load(s.pki().agent("prod-db").unwrap()).unwrap());
    let mut c = stagesync_controller::client::connect(tls, &s.staging().target())
        .await
        .unwrap();
    c.push_dump(futures::stream::iter(all))
        .await
        .expect_err("a malformed stream is refused")
        .message()
        .to_string()
}

/// Frames of a split stream out of order or incomplete: each refused with
/// what was wrong, and nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_split_streams_are_refused() {
    use pb::dump_frame::Kind;
    let s = setup(Fleet::builder()).await;
    let start = |name: &str| Kind::FileStart(pb::FileStart { name: name.into() });
    let trailer = || {
        Kind::Trailer(stagesync_agent::frames::Encoder::new(pb::Compression::None, None).trailer())
    };
    let cases: Vec<(bool, Vec<Kind>, &str)> = vec![
        (
            true,
            vec![trailer()],
            "ended without the post-data section it announced",
        ),
        (
            true,
            vec![start("other.dump")],
            "unexpected file start frame",
        ),
        (
            false,
            vec![start("schema.dump")],
            "unexpected file start frame",
        ),
        (
            true,
            vec![start("schema.dump"), trailer()],
            "the stream ended inside a file",
        ),
        (
            true,
            vec![
                start("schema.dump"),
                Kind::FileEnd(pb::FileEnd {
                    name: "schema.dump".into(),
                    size: 5,
                }),
            ],
            "ended with 0 bytes, the source says 5 bytes",
        ),
        (
            true,
            vec![start("../schema.dump")],
            "unexpected file start frame",
        ),
    ];
    for (i, (announced, frames, want)) in cases.into_iter().enumerate() {
        let header = pb::DumpHeader {
            shape: Some(pb::Shape {
                mode: pb::Mode::Stream as i32,
                post_data_file: announced,
                data_lanes: 0,
                digest: pb::Digest::Sha256 as i32,
                binary_rows: false,
            }),
            ..Default::default()
        };
        let refused = push_prepared(&s, 0xa0 + i, header, frames).await;
        assert!(
            refused.contains(want),
            "case {i}: want {want:?}, got {refused:?}"
        );
    }
    s.assert_untouched().await;
}

/// Frames of a stream with data lanes out of order, unannounced or
/// incomplete: each refused with what was wrong, its pg_restores stopped,
/// and nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_lane_streams_are_refused() {
    use bytes::Bytes;
    use pb::dump_frame::Kind;
    use stagesync_agent::frames::Encoder;
    let s = setup(Fleet::builder()).await;
    // A real schema archive, so that the tables get made and the lanes'
    // pg_restores start before the broken part.
    let out = std::process::Command::new(s.src().bin_dir.join("pg_dump"))
        .arg(format!("--host={}", s.src().socket_dir.display()))
        .arg(format!("--port={}", s.src().port))
        .args([
            "--username=postgres",
            "--format=custom",
            "--compress=0",
            "--section=pre-data",
            "--section=post-data",
            "--dbname=production",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let schema = Bytes::from(out.stdout);
    let none = pb::Compression::None;
    // The schema file on lane 0's encoder, as a source sends it first.
    let with_schema = |lane0: &mut Encoder, rest: Vec<Kind>| {
        let mut k = vec![Kind::FileStart(pb::FileStart {
            name: "schema.dump".into(),
        })];
        for chunk in schema.chunks(stagesync_agent::frames::CHUNK) {
            k.push(Kind::Data(lane0.data(schema.slice_ref(chunk)).unwrap()));
        }
        k.push(Kind::FileEnd(pb::FileEnd {
            name: "schema.dump".into(),
            size: schema.len() as u64,
        }));
        k.extend(rest);
        k
    };
    let lane_end = |lane: u32, trailer: pb::DumpTrailer| {
        Kind::LaneEnd(pb::LaneEnd {
            lane,
            trailer: Some(trailer),
        })
    };
    let empty = || Encoder::for_lane(none, 1, None).trailer();
    let start = |lane: u32, table: u32| {
        Kind::TableStart(pb::TableStart {
            lane,
            table,
            slice: 0,
        })
    };
    let table_end = |so_far: pb::DumpTrailer| {
        Kind::TableEnd(pb::TableEnd {
            lane: 1,
            so_far: Some(so_far),
            rows: 0,
        })
    };
    let mut cases: Vec<(u32, bool, Vec<Kind>, &str)> = vec![
        (2, false, vec![], "announced 2 data lanes"),
        (18, true, vec![], "announced 18 data lanes"),
        (
            2,
            true,
            vec![Kind::Data(
                Encoder::new(none, None)
                    .data(Bytes::from_static(b"x"))
                    .unwrap(),
            )],
            "must start with the file schema.dump, not a data frame",
        ),
    ];
    let mut lane0 = Encoder::new(none, None);
    let stray = Encoder::for_lane(none, 5, None)
        .data(Bytes::from_static(b"x"))
        .unwrap();
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![Kind::Data(stray)]),
        "a frame for data lane 5 arrived; the stream has 2",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![lane_end(0, empty())]),
        "data lane 0: the stream carried",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![lane_end(1, empty()), lane_end(1, empty())]),
        "data lane 1 ended twice",
    ));
    let mut lane0 = Encoder::new(none, None);
    let late = Encoder::for_lane(none, 1, None)
        .data(Bytes::from_static(b"x"))
        .unwrap();
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![lane_end(1, empty()), Kind::Data(late)]),
        "data arrived on lane 1 after its end",
    ));
    let mut lane0 = Encoder::new(none, None);
    let rest = vec![Kind::Trailer(lane0.trailer())];
    cases.push((
        2,
        true,
        with_schema(&mut lane0, rest),
        "the stream ended with data lane 1 still open",
    ));
    let mut lane0 = Encoder::new(none, None);
    let mut lane1 = Encoder::for_lane(none, 1, None);
    let _skipped = lane1.data(Bytes::from_static(b"a")).unwrap();
    let second = lane1.data(Bytes::from_static(b"b")).unwrap();
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(1, 0), Kind::Data(second.clone())]),
        "data lane 1: frame 1 arrived where frame 0 was expected",
    ));
    // The copy lanes' tables: data only inside one, each slice once, each
    // checked at its end, all of them before the trailer.
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![Kind::Data(second)]),
        "data arrived on copy lane 1 outside a table",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(0, 0)]),
        "a table started on lane 0, which is not an open copy lane",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(1, 7)]),
        "started slice 0 of lane table 7, which the header does not name",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(1, 0), start(1, 0)]),
        "a table started on copy lane 1 before the previous one ended",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(
            &mut lane0,
            vec![start(1, 0), table_end(empty()), start(1, 0)],
        ),
        "slice 0 of app.images arrived twice",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(1, 0), lane_end(1, empty())]),
        "copy lane 1 ended inside a table",
    ));
    let mut lane0 = Encoder::new(none, None);
    let mut short = empty();
    short.total_len = 3;
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![start(1, 0), table_end(short)]),
        "data lane 1: the stream carried 0 bytes but its trailer says 3",
    ));
    let mut lane0 = Encoder::new(none, None);
    let rest = vec![lane_end(1, empty()), lane_end(0, lane0.trailer())];
    let mut frames = with_schema(&mut lane0, rest);
    // lane 0's digest after the schema file: rebuilt for its end and the
    // trailer.
    let lane0_end = lane0.trailer();
    frames.pop();
    frames.push(lane_end(0, lane0_end.clone()));
    frames.push(Kind::Trailer(lane0_end));
    cases.push((
        2,
        true,
        frames,
        "the stream ended without all the rows of app.images",
    ));
    let mut lane0 = Encoder::new(none, None);
    let mut short = empty();
    short.total_len = 5;
    cases.push((
        2,
        true,
        with_schema(&mut lane0, vec![lane_end(1, short)]),
        "data lane 1: the stream carried 0 bytes but its trailer says 5",
    ));
    let mut lane0 = Encoder::new(none, None);
    cases.push((
        2,
        true,
        with_schema(
            &mut lane0,
            vec![Kind::FileStart(pb::FileStart { name: "x".into() })],
        ),
        "an unexpected file start frame arrived among the data lanes",
    ));
    for (i, (lanes, post_data_file, frames, want)) in cases.into_iter().enumerate() {
        let header = pb::DumpHeader {
            shape: Some(pb::Shape {
                mode: pb::Mode::Stream as i32,
                post_data_file,
                data_lanes: lanes,
                digest: pb::Digest::Sha256 as i32,
                binary_rows: false,
            }),
            // The copy lane carries a table of the fixture.
            lane_tables: (1..lanes.min(2))
                .map(|_| pb::LaneTable {
                    schema: "app".into(),
                    table: "images".into(),
                    columns: vec!["id".into()],
                    indexes: Vec::new(),
                    slices: 1,
                    binary: false,
                })
                .collect(),
            ..Default::default()
        };
        let refused = push_prepared(&s, 0xb0 + i, header, frames).await;
        assert!(
            refused.contains(want),
            "case {i}: want {want:?}, got {refused:?}"
        );
    }
    // Lanes whose tables the header does not name.
    let header = pb::DumpHeader {
        shape: Some(pb::Shape {
            mode: pb::Mode::Stream as i32,
            post_data_file: true,
            data_lanes: 2,
            digest: pb::Digest::Sha256 as i32,
            binary_rows: false,
        }),
        ..Default::default()
    };
    let refused = push_prepared(&s, 0xef, header, Vec::new()).await;
    assert!(
        refused.contains("the stream has 2 data lanes and names 0 tables for them"),
        "{refused}"
    );
    // A stream saying it carries personal data unmasked, to a destination
    // whose policy does not take it.
    let header = pb::DumpHeader {
        shape: Some(pb::Shape::one_pass(pb::Mode::Stream)),
        unmasked_personal_data: true,
        ..Default::default()
    };
    let refused = push_prepared(&s, 0xee, header, Vec::new()).await;
    assert!(
        refused.contains("privacy guard") && refused.contains("policy.may_receive_unmasked"),
        "{refused}"
    );
    s.assert_untouched().await;
}

/// Values that cannot occur by chance, to search errors for.
const SENTINEL: &str = "zq7-sentinel";

/// A post-restore statement whose failure quotes a value in its DETAIL:
/// the error names the step and the constraint, never the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_post_restore_statement_quotes_no_value() {
    let s = setup(Fleet::builder()).await;
    s.proxy.throttle(0);
    let mut spec = s.spec();
    spec.post_restore_sql = format!(
        "CREATE TABLE kept (k text PRIMARY KEY); \
         INSERT INTO kept VALUES ('{SENTINEL}-1'), ('{SENTINEL}-1')"
    );
    let err = s.start(spec).await.unwrap().unwrap_err();
    assert!(err.contains("post-restore SQL failed"), "{err}");
    assert!(err.contains("kept_pkey"), "the constraint is named: {err}");
    assert!(!err.contains(SENTINEL), "a value leaked: {err}");
    s.assert_untouched().await;
}

/// A row pg_restore fails to load (a CHECK that holds only in the source
/// database): the error names the table and the constraint, and neither it
/// nor the tool's output it carries quotes the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_that_fails_to_load_is_not_quoted() {
    let s = setup(Fleet::builder().source_sql(&format!(
        "CREATE TABLE guarded (id int PRIMARY KEY, secret text, \
           CONSTRAINT only_at_home CHECK (current_database() = 'production' OR secret NOT LIKE 'zq7%')); \
         INSERT INTO guarded VALUES (1, '{SENTINEL}-2')"
    )))
    .await;
    s.proxy.throttle(0);
    let mut spec = s.spec();
    // One pass, so the COPY runs inside the one pg_restore.
    spec.jobs = 1;
    let err = s.start(spec).await.unwrap().unwrap_err();
    assert!(err.contains("pg_restore"), "{err}");
    assert!(
        err.contains("only_at_home"),
        "the constraint is named: {err}"
    );
    assert!(err.contains("guarded"), "the table is named: {err}");
    assert!(!err.contains(SENTINEL), "a row leaked: {err}");
    s.assert_untouched().await;
}

/// Whether `db` exists on `cluster`.
async fn exists(cluster: &stagesync_harness::PgCluster, db: &str) -> bool {
    let c = cluster.client("postgres").await.unwrap();
    c.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await
        .unwrap()
        .is_some()
}

/// An agent drops only the leftovers it made: a database merely named like
/// stagesync's survives the production agent's start and a refresh by
/// another agent of its cluster, and two agents on one cluster refresh two
/// databases at once without dropping each other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_leave_databases_they_did_not_make_alone() {
    use stagesync_harness::TestAgent;
    let mut s = setup(Fleet::builder().prod_runs(AgentRun::Process)).await;
    let src = s.src();
    src.exec("postgres", "CREATE DATABASE stagesync_new_keep")
        .await
        .unwrap();
    src.exec("postgres", "CREATE ROLE stage LOGIN")
        .await
        .unwrap();
    {
        let prod = s.prod_mut().process();
        assert!(!prod.kill().unwrap().success(), "the agent was killed");
        prod.start().await.unwrap();
    }
    assert!(
        exists(s.src(), "stagesync_new_keep").await,
        "dropped at start"
    );

    // Another agent of the production cluster refreshes a database there.
    let agent_on = |name: &str, db: &str| {
        let mut spec = AgentSpec::new(name);
        spec.may_overwrite = vec![db.into()];
        spec.peers = vec!["prod-db".into()];
        spec
    };
    let side = TestAgent::start(s.pki(), Some(s.src()), agent_on("side-db", "side"))
        .await
        .unwrap();
    let to = |agent: &TestAgent, db: &str| {
        PairSpec::new(s.prod().target(), "production", agent.target(), db, "stage")
    };
    refresh(s.tls(), &to(&side, "side"), |_| {}).await.unwrap();
    assert!(
        exists(s.src(), "stagesync_new_keep").await,
        "dropped by a refresh"
    );

    // Two agents of the staging cluster: one refresh held mid-stream while
    // the other agent prepares and completes its own.
    let dst = s.dst();
    let other = TestAgent::start(s.pki(), Some(dst), agent_on("other-db", "other"))
        .await
        .unwrap();
    let held = s.start(s.spec());
    s.wait_restoring().await;
    s.proxy.stall();
    let theirs = s.stagesync_databases().await;
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    refresh(s.tls(), &to(&other, "other"), |_| {})
        .await
        .unwrap();
    assert!(
        exists(dst, &theirs[0]).await,
        "the held refresh's database was dropped"
    );
    s.proxy.throttle(0);
    s.proxy.resume();
    held.await.unwrap().expect("the held refresh completes");
    let want = content_hashes(s.src(), "production").await.unwrap();
    for db in ["stage", "other"] {
        assert_eq!(content_hashes(dst, db).await.unwrap(), want, "{db}");
    }
    assert!(exists(s.src(), "stagesync_new_keep").await);
}
