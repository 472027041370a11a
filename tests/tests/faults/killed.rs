//! Agents, tools and the controller killed or gone mid-refresh.

use super::*;

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
