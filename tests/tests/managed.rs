//! Agents that reach their databases over TCP with TLS and passwords, as
//! roles that are no superuser: clusters configured like a managed
//! service (see `FleetBuilder::managed`).

use stagesync_controller::refresh::refresh;
use stagesync_harness::Fleet;
use stagesync_harness::fixtures::assert_identical;

async fn managed() -> Fleet {
    Fleet::builder()
        .managed()
        .prod(|p| {
            p.jobs.insert("lane_min_table_mb".into(), 0);
        })
        .build()
        .await
}

/// The whole refresh over TCP: the rich fixture arrives identical, copy
/// lanes and all, restored by a login that is no superuser.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_over_tls_without_superuser_arrives_identical() {
    let f = managed().await;
    // Both agents reach their servers over TCP with TLS, as logins
    // without superuser.
    for (agent, role) in [(f.prod(), "stagesync_src"), (f.staging(), "stagesync_dst")] {
        let pg = f.info(agent).await.expect("info").postgres.expect("postgres info");
        assert!(pg.reachable, "{pg:?}");
        assert!(pg.tls && pg.endpoint.starts_with("localhost:"), "{pg:?}");
        assert_eq!(pg.login_role, role);
        assert!(!pg.rights.contains(&"superuser".to_string()), "{pg:?}");
        assert!(pg.disk_check.contains("skipped"), "{pg:?}");
    }
    let mut spec = f.pair();
    spec.jobs = 2;
    let report = refresh(f.tls(), &spec, |_| {})
        .await
        .expect("refresh succeeds");
    assert!(report.tables_copied >= 8, "{report:?}");
    assert_identical(&f).await;
    // No role was made for the job: the agent's own login restored.
    let made = f
        .dst()
        .strings("postgres", "SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'stagesync_job%'")
        .await
        .unwrap();
    assert!(made.is_empty(), "{made:?}");
}
