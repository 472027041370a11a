//! `stagesync backup`, `backups list|verify` and a pair whose source is a
//! backup, through the real binary against real agents, clusters and an
//! S3-API server.

use std::path::Path;
use std::process::{Command, Output};

use stagesync_harness::fixtures::{content_hashes, seed_rich, seed_stage};
use stagesync_harness::s3::{S3Server, profile_files};
use stagesync_harness::{AgentSpec, PgCluster, TestAgent, TestPki};

const STAGESYNC: &str = env!("CARGO_BIN_EXE_stagesync");
const KEY: &str = "AKIACLIBACKUP";
const SECRET: &str = "cli-backup-secret-0123";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_list_verify_and_refresh_from_a_backup() {
    let src = PgCluster::start().unwrap();
    let dst = PgCluster::start().unwrap();
    seed_rich(&src, "production").await.unwrap();
    seed_stage(&dst).await.unwrap();
    let s3 = S3Server::start(KEY, SECRET).await.unwrap();
    std::fs::create_dir_all(s3.root.join("backups")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (aws_config, aws_credentials) = profile_files(dir.path(), "backup", KEY, SECRET).unwrap();
    let agent_s3 = format!(
        "may_backup_to = [\"http://127.0.0.1:*/backups/*\"]\nmay_restore_from = [\"http://127.0.0.1:*/backups/*\"]\n\n[s3]\nconfig_file = {aws_config:?}\ncredentials_file = {aws_credentials:?}\n"
    );

    let pki = TestPki::new().unwrap();
    pki.controller("ops").unwrap();
    let mut p = AgentSpec::new("prod-db");
    p.may_dump = vec!["production".into()];
    p.extra_toml = agent_s3.clone();
    let prod = TestAgent::start(&pki, Some(&src), p).await.unwrap();
    let mut s = AgentSpec::new("staging-db");
    s.may_overwrite = vec!["stage".into()];
    s.extra_toml = agent_s3;
    let staging = TestAgent::start(&pki, Some(&dst), s).await.unwrap();

    let plan = dir.path().join("stagesync.toml");
    std::fs::write(
        &plan,
        format!(
            r#"[controller]
name = "ops"
certs_dir = {certs:?}

[agents]
prod-db = {{ endpoint = "{prod}" }}
staging-db = {{ endpoint = "{staging}" }}

[backups]
daily = "s3://backups/daily/"
keep_daily = 3
profile = "backup"
endpoint = "{endpoint}"

[pairs.backup-to-stage]
source = {{ backup = "s3://backups/daily/", database = "production" }}
dest = {{ agent = "staging-db", database = "stage", owner = "stage" }}
"#,
            certs = pki.dir(),
            prod = prod.addr,
            staging = staging.addr,
            endpoint = s3.endpoint(),
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let run = |args: Vec<String>| {
        let (c, k) = (aws_config.clone(), aws_credentials.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(STAGESYNC)
                .args(&args)
                .env("AWS_CONFIG_FILE", c)
                .env("AWS_SHARED_CREDENTIALS_FILE", k)
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env_remove("AWS_PROFILE")
                .env_remove("STAGESYNC_PLAN")
                .output()
                .unwrap()
        })
    };
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
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("s3://backups/daily/production/"),
        "{}",
        text(&out)
    );

    let out = run(args(&["backups", "list"])).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("production"), "{}", text(&out));
    assert!(text(&out).contains("prod-db"), "{}", text(&out));

    let out = run(args(&["backups", "verify"])).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("ok "), "{}", text(&out));

    // The dry run names the backup it would restore and checks the destination.
    let out = run(args(&["plan"])).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("backup 20"), "{}", text(&out));
    assert!(
        text(&out).contains("s3://backups/daily/production/"),
        "{}",
        text(&out)
    );

    // The pair restores staging from the backup, without the production agent.
    let out = run(with_state(args(&["sync", "backup-to-stage"])))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        content_hashes(&dst, "stage").await.unwrap(),
        content_hashes(&src, "production").await.unwrap()
    );

    let out = run(vec![
        "history".into(),
        "--state-dir".into(),
        state.display().to_string(),
    ])
    .await
    .unwrap();
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
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("may not dump"), "{}", text(&out));

    // A tampered dump: verify fails and says which.
    tamper(&s3.root.join("backups/daily/production"));
    let out = run(args(&["backups", "verify"])).await.unwrap();
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
