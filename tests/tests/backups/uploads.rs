//! An upload cut short: a killed agent leaves no backup and aborts the
//! upload when it starts again; a controller that goes away cancels both.

use super::*;

/// A production database of 24 MiB pg_dump cannot compress (more than one
/// upload part), and S3 behind a slow link, so faults land mid-upload.
/// The proxy and the endpoint through it.
async fn slow_upload(prod: AgentRun) -> (Fleet, FaultProxy, String) {
    let f = fleet()
        .no_dest()
        .source_sql(
            "CREATE EXTENSION pgcrypto; CREATE TABLE blob (id int PRIMARY KEY, data bytea); INSERT INTO blob SELECT g, gen_random_bytes(1024) FROM generate_series(1, 24576) g",
        )
        .prod_runs(prod)
        .build()
        .await;
    let proxy = FaultProxy::start(f.s3().addr).await.unwrap();
    proxy.throttle(4 * 1024 * 1024);
    let endpoint = format!("http://{}", proxy.addr);
    (f, proxy, endpoint)
}

/// Waits until upload parts are arriving at the server.
async fn wait_for_parts(proxy: &FaultProxy) {
    eventually("the upload to get going", async || {
        match proxy.forwarded() {
            n if n >= 6 * 1024 * 1024 => Ok(()),
            n => Err(n),
        }
    })
    .await
}

/// Waits until no upload is held open at the server and the source
/// agent's records of started uploads are gone.
async fn wait_uploads_gone(f: &Fleet, what: &str) {
    let records = f.prod().work_dir().join("uploads");
    eventually(what, async || {
        let parts = pending_parts(&f.s3().root);
        let recorded = std::fs::read_dir(&records).map_or(0, |d| d.count());
        match (parts, recorded) {
            (0, 0) => Ok(()),
            _ => Err(format!(
                "{parts} upload files at the server, {recorded} records; agent log: {}",
                f.prod().log_text()
            )),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_agent_leaves_no_backup_and_aborts_the_upload_when_it_starts_again() {
    let (mut f, proxy, endpoint) = slow_upload(AgentRun::Process).await;
    let (tls, target) = (f.tls(), f.prod().target());
    let req = backup::request(&plan(&endpoint, false), "production");
    let running = tokio::spawn(async move { backup::run(tls, &target, req, |_| {}).await });
    wait_for_parts(&proxy).await;
    let status = f.prod_mut().process().kill().unwrap();
    assert!(!status.success(), "the agent was not killed: {status}");
    let result = running.await.unwrap();
    assert!(result.is_err(), "a killed backup reported success");
    assert!(
        pending_parts(&f.s3().root) > 0,
        "the fault did not happen: no upload was in progress when the agent died"
    );
    let records = f.prod().work_dir().join("uploads");
    assert_eq!(
        std::fs::read_dir(&records).unwrap().count(),
        1,
        "the started upload was not recorded"
    );

    // Nothing that looks like a backup.
    let objects = f.s3().objects(BACKUP_BUCKET);
    assert!(
        objects.is_empty(),
        "objects after a killed upload: {:?}",
        objects.keys()
    );
    let found = store(&f, "daily/").await.list("production").await.unwrap();
    assert!(
        found.complete.is_empty() && found.incomplete.is_empty(),
        "{found:?}"
    );

    // The next start aborts the upload the crash left behind.
    proxy.throttle(0);
    f.prod_mut().process().start().await.unwrap();
    wait_uploads_gone(&f, "the left upload to be aborted").await;
    assert!(
        f.prod()
            .log_text()
            .contains("aborted an upload a crash left behind")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_that_goes_away_cancels_the_backup_and_its_upload() {
    let (f, proxy, endpoint) = slow_upload(AgentRun::InProcess).await;
    let (tls, target) = (f.tls(), f.prod().target());
    let req = backup::request(&plan(&endpoint, false), "production");
    let running = tokio::spawn(async move { backup::run(tls, &target, req, |_| {}).await });
    wait_for_parts(&proxy).await;
    assert!(
        pending_parts(&f.s3().root) > 0,
        "the fault did not happen: no upload in progress"
    );
    // The controller goes away (as on Ctrl-C): its stream closes.
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    proxy.throttle(0);
    wait_uploads_gone(&f, "the cancelled backup's upload to be aborted").await;
    assert!(f.s3().objects(BACKUP_BUCKET).is_empty());
    // The database's slot is free again: a new backup runs. The slot is
    // freed just after the cleanup seen above, so a backup started in
    // between is told to wait; it may take a moment.
    let req = backup::request(&plan(&f.s3().endpoint(), false), "production");
    let done = eventually(
        "the cancelled backup to free its slot",
        async || match backup::run(f.tls(), &f.prod().target(), req.clone(), |_| {}).await {
            Err(e) if e.to_string().contains("already running") => Err(e.to_string()),
            r => Ok(r),
        },
    )
    .await
    .unwrap();
    assert!(done.size > 20 * 1024 * 1024, "{done:?}");
}
