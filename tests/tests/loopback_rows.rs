//! `postgres.copy_over_tcp`: a source agent whose server is on its host
//! reads the copy lanes' rows over plain TCP to a loopback address, where
//! the kernel gathers them before it wakes the agent; every other session
//! still uses the unix socket.

use stagesync_controller::refresh::refresh;
use stagesync_harness::Fleet;
use stagesync_harness::fixtures::assert_identical;

/// Each of the source server's logged connections from 127.0.0.1.
const OVER_TCP: &str = "connection received: host=127.0.0.1";

async fn fleet() -> Fleet {
    Fleet::builder()
        .source_rows_over_loopback()
        // Every table in a lane of its own: app.posts (about 15 MiB) is
        // past the point where its socket gathers rows, so its lane also
        // takes its last rows (less than the mark) after the short wait.
        .prod(|p| {
            p.jobs.insert("lane_min_table_mb".into(), 0);
        })
        .build()
        .await
}

/// The lanes log in over TCP with a SCRAM password and the copy arrives
/// identical; the agent's other sessions came by the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_read_over_loopback_tcp_arrive_identical() {
    let f = fleet().await;
    let spec = f.pair();
    let report = refresh(f.tls(), &spec, |_| {})
        .await
        .expect("refresh succeeds");
    assert!(report.tables_copied >= 8, "{report:?}");
    assert!(report.rows_copied > 120_000, "{report:?}");
    assert_identical(&f).await;
    let log = f.src().server_log();
    let tcp = log.matches(OVER_TCP).count();
    assert!(
        tcp >= spec.jobs as usize,
        "{tcp} sessions over TCP for {} lanes:\n{log}",
        spec.jobs
    );
    assert!(
        log.contains("connection received: host=[local]"),
        "no session by the socket:\n{log}"
    );
}

/// A server that lets no one in over TCP: the refresh fails before the
/// swap, saying which address and which key, and staging is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_refuses_tcp_fails_the_refresh_clearly() {
    let mut f = fleet().await;
    f.remember_stage().await;
    f.src()
        .set_hba(stagesync_harness::pg::HBA)
        .await
        .expect("the socket-only pg_hba.conf");
    let before = f.src().server_log().matches(OVER_TCP).count();
    let err = refresh(f.tls(), &f.pair(), |_| {})
        .await
        .expect_err("no lane can log in");
    // The fault happened: a lane tried 127.0.0.1 and was turned away.
    assert!(
        f.src().server_log().matches(OVER_TCP).count() > before,
        "no lane tried TCP"
    );
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:"), "{text}");
    assert!(text.contains("postgres.copy_over_tcp"), "{text}");
    assert!(text.contains("pg_hba.conf"), "{text}");
    f.assert_untouched().await;
}
