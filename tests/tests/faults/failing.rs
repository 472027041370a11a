//! Steps that fail on a server: a lane's COPY, the keys after the data, the post-restore SQL; and what their errors may not quote.

use super::*;

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
