//! Waiting in tests: for a condition to hold ([`eventually`]), for a child
//! process to exit ([`exit_of`]), and deciding whether a root-only test
//! runs ([`require_root`]).
//!
//! Tests wait for what they need to see, never for a fixed time: a deadline
//! only bounds how long a broken run takes to fail, so it is generous
//! enough for a machine ten times slower than a developer's.

use std::fmt::{Debug, Display};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// How long a test waits for something before it gives up.
pub const PATIENCE: Duration = Duration::from_secs(180);

/// The longest pause between two looks at a condition.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Calls `probe` until it returns `Ok`, and returns that value. `Err`
/// carries what the probe saw instead; if the condition still does not
/// hold after [`PATIENCE`], the test fails naming `what` it waited for and
/// the last thing seen.
///
/// ```no_run
/// # async fn f(n: std::sync::atomic::AtomicU64) {
/// use std::sync::atomic::Ordering;
/// use stagesync_harness::eventually;
/// let seen = eventually("three events", async || match n.load(Ordering::SeqCst) {
///     n if n >= 3 => Ok(n),
///     n => Err(n),
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<T, E: Debug>(
    what: impl Display,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    let mut pause = Duration::from_millis(10);
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!(
                "gave up after {} s waiting for {what}; last seen: {last:?}",
                PATIENCE.as_secs()
            ),
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Waits for `child` to exit by itself and returns its output. If it is
/// still running after [`PATIENCE`], kills it and returns what it wrote as
/// the error.
pub fn exit_of(child: Child) -> Result<Output, Output> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let waited = |r: std::io::Result<Output>| r.expect("waiting for a child process");
    match rx.recv_timeout(PATIENCE) {
        Ok(out) => Ok(waited(out)),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            Err(waited(rx.recv().expect("the waiting thread answers")))
        }
    }
}

/// Whether a test that needs root can run. As root: true. Otherwise the
/// test is skipped (false, with a note on stderr), unless the environment
/// variable `CI` is set: there a skipped test would pass without having
/// run, so this panics instead.
#[must_use]
#[track_caller]
pub fn require_root(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "this test needs root ({why}) and CI is set, so it may not be skipped: run it as root"
        );
    }
    eprintln!("skipped: this test needs root ({why}); CI runs it as root");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_first_value_that_holds() {
        let mut calls = 0;
        let got = eventually("the third call", async || {
            calls += 1;
            if calls == 3 {
                Ok(calls * 10)
            } else {
                Err(calls)
            }
        })
        .await;
        assert_eq!(got, 30);
    }

    #[test]
    fn exit_of_returns_the_output_of_a_process_that_ends() {
        let child = std::process::Command::new("sh")
            .args(["-c", "echo done; exit 3"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = exit_of(child).expect("it ends by itself");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"done\n");
    }
}
