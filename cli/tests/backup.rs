//! `stagesync backup`, `backups list|verify` and a pair whose source is a
//! backup, through the real binary against real agents, clusters and an
//! S3-API server.

use std::path::Path;
use std::process::Output;

use stagesync_harness::Fleet;
use stagesync_harness::fixtures::content_hashes;
use stagesync_harness::fleet::S3_PROFILE;

const STAGESYNC: &str = env!("CARGO_BIN_EXE_stagesync");

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_list_verify_and_refresh_from_a_backup() {
    // Staging restores from the backup, not from prod-db's stream.
    let f = Fleet::builder()
        .backups()
        .staging(|s| s.peers.clear())
        .build()
        .await;
    let plan = f.write_plan(&format!(
        r#"
[backups]
daily = "s3://backups/daily/"
keep_daily = 3
profile = "{S3_PROFILE}"
endpoint = "{endpoint}"

[pairs.backup-to-stage]
source = {{ backup = "s3://backups/daily/", database = "production" }}
dest = {{ agent = "staging-db", database = "stage", owner = "stage" }}
"#,
        endpoint = f.s3().endpoint(),
    ));
    let state = f.state_dir();
    let run = async |args: Vec<String>| f.command(STAGESYNC).args(args).output().await.unwrap();
    let args = |a: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        v.extend(["--plan".into(), plan.display().to_string()]);
        v
    };
    let with_state = |mut v: Vec<String>| {
        v.extend(["--state-dir".into(), state.display().to_string()]);
        v
    };

    let out = run(with_state(args(&[
        "backup",
        "prod-db",
        "--database",
        "production",
    ])))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("s3://backups/daily/production/"),
        "{}",
        text(&out)
    );

    let out = run(args(&["backups", "list"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("production"), "{}", text(&out));
    assert!(text(&out).contains("prod-db"), "{}", text(&out));

    let out = run(args(&["backups", "verify"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("ok "), "{}", text(&out));

    // The dry run names the backup it would restore and checks the destination.
    let out = run(args(&["plan"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("backup 20"), "{}", text(&out));
    assert!(
        text(&out).contains("s3://backups/daily/production/"),
        "{}",
        text(&out)
    );

    // The pair restores staging from the backup, without the production agent.
    let out = run(with_state(args(&["sync", "backup-to-stage"]))).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        content_hashes(f.dst(), "stage").await.unwrap(),
        content_hashes(f.src(), "production").await.unwrap()
    );

    let out = run(vec![
        "history".into(),
        "--state-dir".into(),
        state.display().to_string(),
    ])
    .await;
    assert!(
        text(&out).contains("backup:prod-db/production"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("backup-to-stage"), "{}", text(&out));

    // A database the agent may not dump is refused (exit 4).
    let out = run(with_state(args(&[
        "backup",
        "prod-db",
        "--database",
        "postgres",
    ])))
    .await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("may not dump"), "{}", text(&out));

    // A tampered dump: verify fails and says which.
    tamper(&f.s3().root.join("backups/daily/production"));
    let out = run(args(&["backups", "verify"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("MISMATCH production"), "{}", text(&out));
}

fn tamper(folder: &Path) {
    let dump = std::fs::read_dir(folder)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "dump"))
        .expect("a dump object");
    let mut bytes = std::fs::read(&dump).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&dump, bytes).unwrap();
}
