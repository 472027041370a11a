//! What agents leave behind, and what they may not remove.

use super::*;

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
