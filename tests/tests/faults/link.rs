//! The stream between the agents damaged or stalled on its way.

use super::*;

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
