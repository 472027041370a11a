//! Rollbacks one at a time: two at once, or one during a refresh of the
//! same database, and one wins while the other is refused naming it; the
//! database accepts connections afterwards.

use stagesync_controller::refresh::{refresh, rollback};
use stagesync_harness::wait::PATIENCE;
use stagesync_harness::{Fleet, eventually};
use stagesync_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollbacks_and_refreshes_of_one_database_take_turns() {
    let f = Fleet::builder().build().await;
    let (tls, staging, dst) = (f.tls(), f.staging(), f.dst());
    let spec = f.pair();
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
    eventually(
        "the first rollback to wait for the catalog row",
        async || {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE '%ALLOW_CONNECTIONS false%' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if waiting == 1 {
                Ok(())
            } else {
                Err(format!("{waiting} waiting"))
            }
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
