//! The schema's dump failing, and the schema file landed under a cap.

use super::*;

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
