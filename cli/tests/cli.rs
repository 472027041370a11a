//! The real `stagesync` binary: certificates and status.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use stagesync_harness::{AgentSpec, PgCluster, TestAgent, TestPki};

const STAGESYNC: &str = env!("CARGO_BIN_EXE_stagesync");

fn stagesync(args: &[&str], cwd: &Path) -> Output {
    Command::new(STAGESYNC)
        .args(args)
        .current_dir(cwd)
        .env_remove("STAGESYNC_CERTS_DIR")
        .env_remove("STAGESYNC_CONTROLLER")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn certs_init_and_issue() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = stagesync(
        &[
            "certs",
            "init",
            "--dir",
            "pki",
            "--trust-domain",
            "example.org",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(mode(&d.join("pki/ca.key")), 0o600);

    let o = stagesync(
        &[
            "certs",
            "issue",
            "agent",
            "prod-db",
            "--dir",
            "pki",
            "--dns",
            "db1.example.org",
            "--ip",
            "10.0.0.5",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("spiffe://example.org/agent/prod-db"),
        "{}",
        text(&o)
    );
    assert_eq!(mode(&d.join("pki/agent-prod-db.key")), 0o600);

    let o = stagesync(&["certs", "issue", "controller", "ops", "--dir", "pki"], d);
    assert!(o.status.success(), "{}", text(&o));
    let key = std::fs::read(d.join("pki/controller-ops.key")).unwrap();

    // An existing key is never replaced without --force.
    let o = stagesync(&["certs", "issue", "controller", "ops", "--dir", "pki"], d);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("already exists; pass --force"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(d.join("pki/controller-ops.key")).unwrap(),
        key
    );
    let o = stagesync(&["certs", "init", "--dir", "pki"], d);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("ca.key already exists"), "{}", text(&o));

    let o = stagesync(
        &[
            "certs",
            "issue",
            "controller",
            "ops",
            "--dir",
            "pki",
            "--force",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(
        std::fs::read(d.join("pki/controller-ops.key")).unwrap(),
        key
    );
    assert_eq!(mode(&d.join("pki/controller-ops.key")), 0o600);

    // Mistakes get clear errors.
    let o = stagesync(&["certs", "issue", "agent", "db2", "--dir", "pki"], d);
    assert!(
        text(&o).contains("add --dns HOST and/or --ip ADDRESS"),
        "{}",
        text(&o)
    );
    let o = stagesync(
        &["certs", "issue", "controller", "Bad Name", "--dir", "pki"],
        d,
    );
    assert!(
        text(&o).contains("invalid name \"Bad Name\""),
        "{}",
        text(&o)
    );
    let o = stagesync(
        &["certs", "issue", "controller", "ops", "--dir", "nowhere"],
        d,
    );
    assert!(
        text(&o).contains("stagesync certs init --dir nowhere"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_prints_a_table_and_reports_problems() {
    let pg = PgCluster::start().unwrap();
    let pki = TestPki::new().unwrap();
    pki.controller("ops").unwrap();
    let mut spec = AgentSpec::new("staging-db");
    spec.may_overwrite = vec!["stage".into()];
    let agent = TestAgent::start(&pki, Some(&pg), spec).await.unwrap();
    let certs = pki.dir();
    let good = format!("staging-db={}", agent.addr);
    let wrong = format!("prod-db={}", agent.addr);

    let (o1, o2) = {
        let certs = certs.clone();
        tokio::task::spawn_blocking(move || {
            let certs = certs.to_str().unwrap();
            let ok = stagesync(
                &["status", "--certs-dir", certs, "--agent", &good],
                Path::new("/"),
            );
            let mixed = stagesync(
                &[
                    "status",
                    "--certs-dir",
                    certs,
                    "--agent",
                    &good,
                    "--agent",
                    &wrong,
                ],
                Path::new("/"),
            );
            (ok, mixed)
        })
        .await
        .unwrap()
    };
    assert!(o1.status.success(), "{}", text(&o1));
    let out = String::from_utf8_lossy(&o1.stdout);
    assert!(out.contains("staging-db") && out.contains("ok"), "{out}");
    assert!(out.contains("(none)"), "may_dump is empty: {out}");
    // How the agent reaches its server, as whom and with what rights.
    assert!(
        out.contains("staging-db: postgres at ")
            && out.contains(".s.PGSQL.")
            && out.contains("as \"postgres\"")
            && out.contains("rights: superuser"),
        "{out}"
    );

    assert_eq!(o2.status.code(), Some(3), "partial failure: {}", text(&o2));
    assert!(
        text(&o2).contains("answered as spiffe://stagesync/agent/staging-db, not the expected spiffe://stagesync/agent/prod-db"),
        "{}",
        text(&o2)
    );
    agent.stop().await;
}

#[test]
fn status_without_certificates_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let o = stagesync(&["status", "--agent", "127.0.0.1:1"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("cannot read the certs directory certs"),
        "{}",
        text(&o)
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let dir = tempfile::tempdir().unwrap();
    let o = stagesync(&["completions", "bash"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let script = String::from_utf8_lossy(&o.stdout);
    assert!(script.contains("stagesync") && script.contains("sync") && script.contains("rollback"));
    let o = stagesync(&["man"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("stagesync"));
}

/// A copy of the `stagesync` binary alone in a fresh directory, so that no
/// `stagesync-demo` sits beside it.
fn lone_stagesync(dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("stagesync");
    std::fs::copy(STAGESYNC, &copy).unwrap();
    copy
}

/// Runs a program this test process just wrote. Another test's child,
/// forked while the file was open for writing, holds it open until that
/// child runs its own program, and until then Linux refuses to run the file
/// ("Text file busy"): try again once that has passed.
fn output_of_fresh(cmd: &mut Command) -> std::process::Output {
    for _ in 0..200 {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {}
            Ok(o) if String::from_utf8_lossy(&o.stderr).contains("Text file busy") => {}
            other => return other.unwrap(),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{cmd:?} stayed busy");
}

#[test]
fn demo_without_stagesync_demo_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = output_of_fresh(
        Command::new(lone_stagesync(dir.path()))
            .arg("demo")
            .env("PATH", dir.path()),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot find the stagesync-demo binary"),
        "{err}"
    );
    assert!(
        err.contains("cargo run -q -p stagesync-harness --bin stagesync-demo"),
        "{err}"
    );
}

#[test]
fn demo_runs_the_stagesync_demo_beside_it_with_its_arguments_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let exe = lone_stagesync(dir.path());
    // A stand-in that reports what it was given and fails in its own way.
    let fake = dir.path().join("stagesync-demo");
    std::fs::write(&fake, "#!/bin/sh\necho \"demo args: $*\"\nexit 7\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = output_of_fresh(Command::new(exe).args(["demo", "--keep"]).env("PATH", ""));
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(text(&o).contains("demo args: --keep"), "{}", text(&o));
}

/// Parallel mode was retired: asking for it says why and what to do, and
/// nothing is contacted.
#[test]
fn parallel_mode_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = stagesync(
        &[
            "refresh",
            "--source",
            "prod-db=127.0.0.1:1",
            "--source-db",
            "production",
            "--dest",
            "staging-db=127.0.0.1:1",
            "--dest-db",
            "stage",
            "--owner",
            "stage",
            "--mode",
            "parallel",
        ],
        dir.path(),
    );
    let msg = text(&out);
    assert_ne!(out.status.code(), Some(0), "{msg}");
    assert!(
        msg.contains("parallel mode (pg_dump -Fd) was retired"),
        "{msg}"
    );
    assert!(msg.contains("copy lanes"), "{msg}");
}
