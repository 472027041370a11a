//! Rollbacks one at a time: two at once, or one during a refresh of the
//! same database, and one wins while the other is refused naming it; the
//! database accepts connections afterwards.

use std::time::{Duration, Instant};

use stagesync_controller::refresh::{PairSpec, refresh, rollback};
use stagesync_harness::fixtures::{seed_rich, seed_stage};
use stagesync_harness::{AgentSpec, PgCluster, TestAgent, TestPki};
use stagesync_proto::v1 as pb;

/// How long anything here may take, far beyond what it needs.
const PATIENCE: Duration = Duration::from_secs(120);

/// Polls `check` until it holds, or fails after a generous deadline.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollbacks_and_refreshes_of_one_database_take_turns() {
    let src = PgCluster::start().unwrap();
    let dst = PgCluster::start().unwrap();
    seed_rich(&src, "production").await.unwrap();
    seed_stage(&dst).await.unwrap();
    let pki = TestPki::new().unwrap();
    let mut p = AgentSpec::new("prod-db");
    p.may_dump = vec!["production".into()];
    let prod = TestAgent::start(&pki, Some(&src), p).await.unwrap();
    let mut s = AgentSpec::new("staging-db");
    s.may_overwrite = vec!["stage".into()];
    s.peers = vec!["prod-db".into()];
    let staging = TestAgent::start(&pki, Some(&dst), s).await.unwrap();
    let tls = pki.controller_tls("ops").unwrap();
    let spec = PairSpec::new(
        prod.target(),
        "production",
        staging.target(),
        "stage",
        "stage",
    );
    // A refresh leaves a previous copy to roll back to.
    refresh(tls.clone(), &spec, |_| {}).await.unwrap();

    // A transaction holding `stage`'s catalog row makes the first rollback
    // wait in the middle, where a second one would meet it.
    let holder = dst.client("postgres").await.unwrap();
    holder
        .batch_execute("BEGIN; ALTER DATABASE stage CONNECTION LIMIT 100")
        .await
        .unwrap();
    let first = {
        let (tls, target) = (tls.clone(), staging.target());
        tokio::spawn(async move { rollback(tls, &target, "stage").await })
    };
    let watcher = dst.client("postgres").await.unwrap();
    until(
        "the first rollback to wait for the catalog row",
        async || {
            watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE '%ALLOW_CONNECTIONS false%' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        },
    )
    .await;
    // Refused at once; were it let in, it would wait behind the first.
    let second = tokio::time::timeout(PATIENCE, rollback(tls.clone(), &staging.target(), "stage"))
        .await
        .expect("the second rollback is answered, not queued")
        .unwrap_err()
        .to_string();
    assert!(
        second.contains("a rollback of database \"stage\" is running"),
        "{second}"
    );
    // Nor can a refresh start meanwhile.
    let during = tokio::time::timeout(PATIENCE, refresh(tls.clone(), &spec, |_| {}))
        .await
        .expect("the refresh is answered, not queued")
        .unwrap_err()
        .to_string();
    assert!(
        during.contains("a rollback of database \"stage\" is running"),
        "{during}"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    first.await.unwrap().expect("the first rollback completes");

    // A rollback while a refresh of the database is prepared is refused,
    // naming the refresh's job.
    let mut dest = stagesync_controller::client::connect(tls.clone(), &staging.target())
        .await
        .unwrap();
    dest.prepare_restore(pb::PrepareRestoreRequest {
        job_id: "00000000feedbeef".into(),
        database: "stage".into(),
        owner: "stage".into(),
        shape: Some(pb::Shape::one_pass(pb::Mode::Stream)),
        jobs: 1,
        ticket: "t".repeat(64),
        source_identity: "spiffe://stagesync/agent/prod-db".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let refused = rollback(tls.clone(), &staging.target(), "stage")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("job 00000000feedbeef"), "{refused}");
    dest.abort(pb::AbortRequest {
        job_id: "00000000feedbeef".into(),
        reason: "test over".into(),
        side: pb::Side::Dest as i32,
    })
    .await
    .unwrap();

    // The database took both turns and accepts connections.
    let c = dst.client("stage").await.unwrap();
    c.query_one("SELECT 1", &[]).await.unwrap();
    let allowed: bool = watcher
        .query_one(
            "SELECT datallowconn FROM pg_database WHERE datname = 'stage'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(allowed);
}
