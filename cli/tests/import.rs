//! `stagesync import-ansible` through the real binary: the role's vars files
//! become pairs that a real `sync` runs, with the social-app credentials
//! taken from the environment; bad files are refused with file and line.

use std::path::Path;
use std::process::{Command, Output};

use stagesync_harness::Fleet;

const STAGESYNC: &str = env!("CARGO_BIN_EXE_stagesync");

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn import(dir: &Path, args: &[&str]) -> Output {
    Command::new(STAGESYNC)
        .arg("import-ansible")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn imported_pairs_run_with_secrets_from_the_environment() {
    let f = Fleet::builder().build().await;
    let dir = f.dir();
    std::fs::create_dir_all(dir.join("vars")).unwrap();
    std::fs::write(
        dir.join("group_vars.yml"),
        "---\nstagesync_compare_git_commits: false\nstagesync_backup_script: /var/lib/postgresql/scripts/postgresbackup.sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("vars/prod-to-stage.yml"),
        r#"stagesync_sourcedb: "production"
stagesync_destdb: "stage"
stagesync_destdb_role: "stage"
stagesync_post_restore_update_db: true
stagesync_social_client_id: "literal-id-from-vars"
stagesync_social_secret: "literal-secret-from-vars"
stagesync_exclude_table_data:
  - audit.log
"#,
    )
    .unwrap();
    let out = import(
        dir,
        &["vars/prod-to-stage.yml", "--group-vars", "group_vars.yml"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let snippet = String::from_utf8_lossy(&out.stdout).into_owned();
    let warnings = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !snippet.contains("literal-"),
        "a secret reached the plan:\n{snippet}"
    );
    assert!(
        warnings.contains("group_vars.yml:3: stagesync_backup_script: no equivalent"),
        "{warnings}"
    );
    assert!(
        warnings.contains("vars/prod-to-stage.yml:6: stagesync_social_secret: the value is not copied into the plan"),
        "{warnings}"
    );

    // The snippet appended to a plan drives a real refresh.
    let plan = f.write_plan(&format!("\n{snippet}"));
    let out = f
        .command(STAGESYNC)
        .args(["sync", "--all", "--plan"])
        .arg(&plan)
        .arg("--state-dir")
        .arg(f.state_dir())
        .env("PROD_TO_STAGE_SOCIAL_CLIENT_ID", "staging-id-from-env")
        .env("PROD_TO_STAGE_SOCIAL_SECRET", "staging-secret-from-env")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let c = f.dst().client("stage").await.unwrap();
    let row = c
        .query_one(
            "SELECT client_id, secret FROM socialaccount_socialapp WHERE provider = 'github'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        (
            "staging-id-from-env".to_string(),
            "staging-secret-from-env".to_string()
        )
    );
    let audit: i64 = c
        .query_one("SELECT count(*) FROM audit.log", &[])
        .await
        .unwrap()
        .get(0);
    let src_audit: i64 = f
        .src()
        .client("production")
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM audit.log", &[])
        .await
        .unwrap()
        .get(0);
    assert!(src_audit > 0, "the fixture has audit rows to leave out");
    assert_eq!(audit, 0, "excluded table data arrived");
}

#[test]
fn bad_vars_files_are_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yml"),
        "stagesync_sourcedb: production\nstagesync_copies:\n  - source_bucket: media\n    aws_profile: stage\n",
    )
    .unwrap();
    let out = import(dir.path(), &["bad.yml"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("bad.yml:3: stagesync_copies[0]: dest_bucket is missing"),
        "{}",
        text(&out)
    );
    assert!(out.stdout.is_empty(), "printed a plan for a bad file");

    let out = import(dir.path(), &["missing.yml"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("missing.yml: cannot read"),
        "{}",
        text(&out)
    );

    std::fs::write(dir.path().join("ok.yml"), "stagesync_destdb: stage\n").unwrap();
    let out = import(dir.path(), &["ok.yml", "--dest-agent", "Not A Name"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
