//! `stagesync-demo`, the README's first command, through the real binary:
//! it refreshes a throwaway fleet, checks the result itself, shows the
//! direction guard, and leaves nothing behind; `--keep` leaves a fleet that
//! `stagesync status` can reach; missing PostgreSQL gets install advice.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use stagesync_harness::wait::PATIENCE;
use tokio::io::{AsyncBufReadExt, BufReader};

const DEMO: &str = env!("CARGO_BIN_EXE_stagesync-demo");

/// The `stagesync` command, as the demo binary runs it for itself.
fn stagesync() -> Command {
    let mut cmd = Command::new(DEMO);
    cmd.env(stagesync_harness::demo::AS_CLI_ENV, "1");
    cmd
}

fn demo_dir(output: &str) -> PathBuf {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("demo directory: "))
        .unwrap_or_else(|| panic!("no demo directory in:\n{output}"));
    PathBuf::from(line.trim())
}

#[test]
fn demo_refreshes_shows_the_guard_and_cleans_up() {
    demo_with(&[]);
}

/// `--tcp`: the same demo on clusters served like a managed service, the
/// agents over TLS as logins that are no superuser.
#[test]
fn demo_over_tcp_without_superuser() {
    let text = demo_with(&["--tcp"]);
    assert!(
        text.contains("cluster: localhost:") && text.contains("stagesync_dst"),
        "{text}"
    );
}

/// Runs the demo with `args`; checks what every run shows; its output.
fn demo_with(args: &[&str]) -> String {
    let out = Command::new(DEMO)
        .args(args)
        .env_remove("STAGESYNC_PLAN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    // The demo compares staging with production itself and fails otherwise;
    // these lines only appear once its checks passed.
    assert!(
        text.contains("checked: users and posts equal production's, emails and usernames masked"),
        "{text}"
    );
    assert!(text.contains("copied 35 objects"), "{text}");
    assert!(text.contains("deleted 1 objects"), "{text}");
    assert!(
        text.contains(
            "direction guard: the destination agent prod-db may not overwrite \"production\""
        ),
        "{text}"
    );
    assert!(text.contains("exit code 4 (refused)"), "{text}");
    let dir = demo_dir(&text);
    assert!(!dir.exists(), "{} was left behind", dir.display());
    text
}

#[tokio::test]
async fn demo_keep_leaves_a_fleet_to_look_at_until_ctrl_c() {
    let mut child = tokio::process::Command::new(DEMO)
        .arg("--keep")
        .env_remove("STAGESYNC_PLAN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    // The demo builds its fleet and refreshes it before it says so.
    let ready = tokio::time::timeout(PATIENCE, async {
        while !seen.contains("Press Ctrl-C") {
            match lines.next_line().await {
                Ok(Some(l)) => {
                    seen.push_str(&l);
                    seen.push('\n');
                }
                _ => return false,
            }
        }
        true
    })
    .await;
    match ready {
        Ok(true) => {}
        Ok(false) => panic!("demo ended early:\n{seen}"),
        Err(_) => panic!("demo did not get ready:\n{seen}"),
    }
    let dir = demo_dir(&seen);
    let plan = dir.join("stagesync.toml");
    assert!(plan.is_file(), "{seen}");
    let export = seen
        .lines()
        .find(|l| l.trim().starts_with("export STAGESYNC_PLAN="))
        .unwrap_or_else(|| panic!("no export line in:\n{seen}"));
    assert!(export.contains(&plan.display().to_string()), "{export}");

    // The fleet is still there: the agents answer `stagesync status`.
    let status = stagesync()
        .args(["status", "--plan"])
        .arg(&plan)
        .output()
        .unwrap();
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(
        status.status.code(),
        Some(0),
        "{status_text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(status_text.contains("prod-db"), "{status_text}");
    assert!(status_text.contains("staging-db"), "{status_text}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = Vec::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest.push(l);
    }
    let code = child.wait().await.unwrap().code();
    assert_eq!(code, Some(0), "{}", rest.join("\n"));
    assert!(
        rest.iter()
            .any(|l| l.contains("temporary directories removed"))
    );
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[test]
fn demo_without_postgresql_says_how_to_install_it() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(DEMO)
        .env("STAGESYNC_PG_BINDIR", empty.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs the PostgreSQL server binaries"),
        "{err}"
    );
    assert!(err.contains("apt-get install postgresql"), "{err}");
    assert!(err.contains(&empty.path().display().to_string()), "{err}");
}
