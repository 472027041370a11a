//! `stagesync sync`, `history` and `rollback` through the real binary, on
//! real clusters and agents; and malformed plans refused with file:line:key.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stagesync_controller::run::lock::RunLock;
use stagesync_harness::Fleet;
use stagesync_harness::fixtures::content_hashes;
use stagesync_harness::fleet::S3_PROFILE;

const STAGESYNC: &str = env!("CARGO_BIN_EXE_stagesync");

fn stagesync(args: &[&str]) -> Output {
    Command::new(STAGESYNC)
        .args(args)
        .env_remove("STAGESYNC_PLAN")
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

/// Four pairs on the standard fleet's agents: a chain through `stage` into
/// `dev`, and one through a pair that fails into one that is skipped.
const PAIRS: &str = r#"parallel = 2

[pairs.prod-to-stage]
source = { agent = "prod-db", database = "production" }
dest = { agent = "staging-db", database = "stage", owner = "stage" }

[pairs.stage-to-dev]
source = { agent = "staging-db", database = "stage" }
dest = { agent = "staging-db", database = "dev", owner = "dev" }
after = ["prod-to-stage"]

[pairs.prod-to-broken]
source = { agent = "prod-db", database = "production" }
dest = { agent = "staging-db", database = "broken", owner = "stage" }
post_restore_sql = "SELECT 1/0"

[pairs.broken-to-qa]
source = { agent = "staging-db", database = "broken" }
dest = { agent = "staging-db", database = "qa", owner = "stage" }
after = ["prod-to-broken"]
"#;

/// The standard pair, as a plan's table.
const PROD_TO_STAGE: &str = r#"
[pairs.prod-to-stage]
source = { agent = "prod-db", database = "production" }
dest = { agent = "staging-db", database = "stage", owner = "stage" }
"#;

/// Runs `stagesync` with `args` against the fleet.
async fn run(f: &Fleet, args: &[&str]) -> Output {
    f.command(STAGESYNC).args(args).output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_runs_the_plan_in_order_and_records_history() {
    let f = Fleet::builder()
        .source_sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
        .dest_unseeded()
        .staging(|s| {
            s.may_dump = vec!["stage".into(), "broken".into()];
            s.may_overwrite = vec!["stage".into(), "dev".into(), "broken".into(), "qa".into()];
            s.peers.push("staging-db".into());
        })
        .build()
        .await;
    let dst = f.dst();
    for sql in [
        "CREATE ROLE stage LOGIN",
        "CREATE ROLE dev LOGIN",
        "CREATE DATABASE stage OWNER stage",
        "CREATE DATABASE dev OWNER dev",
    ] {
        dst.exec("postgres", sql).await.unwrap();
    }
    dst.exec(
        "dev",
        "CREATE TABLE old (x int); INSERT INTO old VALUES (1)",
    )
    .await
    .unwrap();
    let old_dev = content_hashes(dst, "dev").await.unwrap();

    let plan = f.write_plan(PAIRS).display().to_string();
    let state = f.state_dir().display().to_string();
    let out = run(
        &f,
        &[
            "sync",
            "--all",
            "--plan",
            &plan,
            "--state-dir",
            &state,
            "--json",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "partial failure: {}",
        text(&out)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "summary");
    assert_eq!(last["exit_code"], 3);
    let outcome = |pair: &str| {
        last["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pair"] == pair)
            .map(|p| p["outcome"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(outcome("prod-to-stage"), "ok");
    assert_eq!(
        outcome("stage-to-dev"),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(outcome("prod-to-broken"), "failed");
    assert_eq!(outcome("broken-to-qa"), "skipped");
    // DAG order: stage-to-dev started only after prod-to-stage finished.
    let pos = |ev: &str, pair: &str| {
        events
            .iter()
            .position(|e| e["event"] == ev && e["pair"] == pair)
    };
    assert!(pos("committed", "prod-to-stage") < pos("pair_started", "stage-to-dev"));
    assert_eq!(pos("pair_started", "broken-to-qa"), None);
    // The chain carried production's data through stage into dev.
    assert_eq!(
        content_hashes(dst, "dev").await.unwrap(),
        content_hashes(f.src(), "production").await.unwrap()
    );

    let hist = run(&f, &["history", "--plan", &plan, "--state-dir", &state]).await;
    let back = run(&f, &["rollback", "stage-to-dev", "--plan", &plan]).await;
    assert!(hist.status.success(), "{}", text(&hist));
    let h = text(&hist);
    for needle in [
        "prod-to-stage",
        "stage-to-dev",
        "prod-to-broken",
        "broken-to-qa",
        "failed",
        "skipped",
        "division by zero",
    ] {
        assert!(h.contains(needle), "history lacks {needle}: {h}");
    }
    assert!(back.status.success(), "{}", text(&back));
    assert_eq!(
        content_hashes(dst, "dev").await.unwrap(),
        old_dev,
        "rollback restored dev"
    );
}

const BASE: &str = r#"[controller]
name = "ops"
certs_dir = "certs"

[agents]
prod-db = { endpoint = "127.0.0.1:7443" }
staging-db = { endpoint = "127.0.0.1:7444" }

[pairs.prod-to-stage]
source = { agent = "prod-db", database = "production" }
dest = { agent = "staging-db", database = "stage", owner = "stage" }
mode = "stream"
jobs = 2

[pairs.stage-to-dev]
source = { agent = "staging-db", database = "stage" }
dest = { agent = "staging-db", database = "dev", owner = "dev" }
after = ["prod-to-stage"]
"#;

#[test]
fn malformed_plans_are_refused_with_file_line_and_key() {
    // (find, replace with, marker on the reported line, key)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("[agents]", "[agentz]", "[agentz]", "agentz"),
        ("jobs = 2", "jobz = 2", "jobz", "pairs.prod-to-stage.jobz"),
        (
            "jobs = 2",
            "jobs = \"two\"",
            "jobs",
            "pairs.prod-to-stage.jobs",
        ),
        ("jobs = 2", "jobs = 0", "jobs", "pairs.prod-to-stage.jobs"),
        (
            "jobs = 2\n",
            "jobs = 2\nlanes = 17\n",
            "lanes",
            "pairs.prod-to-stage.lanes",
        ),
        (
            "mode = \"stream\"",
            "mode = \"fast\"",
            "mode",
            "pairs.prod-to-stage.mode",
        ),
        (
            "agent = \"prod-db\", database = \"production\"",
            "agent = \"prd-db\", database = \"production\"",
            "prd-db",
            "pairs.prod-to-stage.source.agent",
        ),
        (
            "agent = \"staging-db\", database = \"dev\"",
            "agent = \"dev-db\", database = \"dev\"",
            "dev-db",
            "pairs.stage-to-dev.dest.agent",
        ),
        (
            "after = [\"prod-to-stage\"]",
            "after = [\"prod-to-stag\"]",
            "prod-to-stag\"",
            "pairs.stage-to-dev.after",
        ),
        (
            "jobs = 2\n",
            "jobs = 2\nafter = [\"stage-to-dev\"]\n",
            "after = [\"stage-to-dev\"]",
            "pairs.prod-to-stage.after",
        ),
        (
            "database = \"dev\", owner = \"dev\"",
            "database = \"stage\", owner = \"dev\"",
            "database = \"stage\", owner = \"dev\"",
            "pairs.stage-to-dev.dest",
        ),
        (
            ", owner = \"dev\" }",
            " }",
            "database = \"dev\" }",
            "pairs.stage-to-dev.dest.owner",
        ),
        (
            "endpoint = \"127.0.0.1:7443\"",
            "endpoint = \"127.0.0.1\"",
            "127.0.0.1\"",
            "agents.prod-db.endpoint",
        ),
        (
            "name = \"ops\"",
            "name = \"Ops Team\"",
            "Ops Team",
            "controller.name",
        ),
        (
            "jobs = 2\n",
            "jobs = 2\npost_restore_sql = \"UPDATE t SET s = ${SECRET}\"\n",
            "post_restore_sql",
            "pairs.prod-to-stage.post_restore_sql",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (find, replace, marker, key) in cases {
        let text_s = BASE.replacen(find, replace, 1);
        assert_ne!(text_s, BASE, "{find:?}");
        let path: PathBuf = dir.path().join("stagesync.toml");
        std::fs::write(&path, &text_s).unwrap();
        let line = text_s.lines().position(|l| l.contains(marker)).unwrap() + 1;
        let out = stagesync(&["sync", "--all", "--plan", path.to_str().unwrap()]);
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(5), "{key}: {msg}");
        let want = format!("{}:{line}: {key}: ", path.display());
        assert!(msg.contains(&want), "expected {want:?} in {msg:?}");
    }
    let out = stagesync(&["sync", "--all", "--plan", "/nonexistent/stagesync.toml"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(text(&out).contains("/nonexistent/stagesync.toml: cannot read the plan"));
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.org",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preflight_checks_refuse_before_anything_changes() {
    let f = Fleet::builder()
        .source_sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .build()
        .await;

    // The web app's repository: production's branch ahead of staging's.
    let repo = f.dir().join("app");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "one"]);
    git(&repo, &["branch", "staging"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "two"]);

    let write_plan = |preflight: &str| {
        let plan = f.write_plan(&format!("{PROD_TO_STAGE}{preflight}\n"));
        plan.display().to_string()
    };
    let git_check = format!(
        "preflight.git = {{ repo = {:?}, source_ref = \"refs/heads/main\", dest_ref = \"refs/heads/staging\" }}",
        repo.display().to_string()
    );
    let state = f.state_dir().display().to_string();
    let sync = async |plan: String, extra: &[&str]| {
        let args = ["sync", "--all", "--plan", &plan, "--state-dir", &state];
        run(&f, &[&args[..], extra].concat()).await
    };

    let out = sync(write_plan(&git_check), &[]).await;
    assert_eq!(out.status.code(), Some(4), "refused: {}", text(&out));
    assert!(
        text(&out).contains("refs/heads/main is at"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("deploy the same code"),
        "{}",
        text(&out)
    );
    f.assert_untouched().await;

    let out = sync(
        write_plan("preflight.commands = [\"test -e /nonexistent/maintenance-ok\"]"),
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("preflight command"), "{}", text(&out));
    f.assert_untouched().await;

    // An owner role the destination does not have.
    let path = write_plan("");
    let text_with_owner = std::fs::read_to_string(&path)
        .unwrap()
        .replace("owner = \"stage\"", "owner = \"no_such_role\"");
    std::fs::write(&path, text_with_owner).unwrap();
    let out = sync(path, &[]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out)
            .contains("the owner role \"no_such_role\" does not exist on the destination agent"),
        "{}",
        text(&out)
    );
    f.assert_untouched().await;
    let leftovers = f.stagesync_databases().await;
    assert!(
        leftovers.is_empty(),
        "a refused run created a database: {leftovers:?}"
    );

    // The operator may skip a named check; the refresh then runs.
    let out = sync(write_plan(&git_check), &["--skip-preflight", "git"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        content_hashes(f.dst(), "stage").await.unwrap(),
        content_hashes(f.src(), "production").await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_changes_nothing_and_sync_then_does_what_it_listed() {
    let f = Fleet::builder()
        .source_sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
        .s3()
        .build()
        .await;
    let s3 = f.s3();
    s3.put("prod-media", "files/a.jpg", b"photo a").unwrap();
    s3.put("prod-media", "files/deep/b c+d.png", b"photo b, new")
        .unwrap();
    s3.put("stage-media", "files/deep/b c+d.png", b"photo b, old")
        .unwrap();
    s3.put("stage-media", "files/gone.txt", b"only on staging")
        .unwrap();
    let plan = f.write_plan(&format!(
        r#"{PROD_TO_STAGE}
[[pairs.prod-to-stage.copies]]
name = "media"
source = "s3://prod-media/files/"
dest = "s3://stage-media/files/"
profile = "{S3_PROFILE}"
endpoint = "{endpoint}"
"#,
        endpoint = s3.endpoint(),
    ));
    let plan_s = plan.display().to_string();
    let state = f.state_dir().display().to_string();

    let db_before = content_hashes(f.dst(), "stage").await.unwrap();
    let src_before = s3.objects("prod-media");
    let dst_before = s3.objects("stage-media");
    let out = run(&f, &["plan", "--plan", &plan_s]).await;
    assert!(out.status.success(), "{}", text(&out));
    let listed = text(&out);
    assert!(listed.contains("would copy 2 objects"), "{listed}");
    assert!(listed.contains("would delete 1 objects"), "{listed}");
    assert!(listed.contains("nothing was changed"), "{listed}");
    assert_eq!(
        content_hashes(f.dst(), "stage").await.unwrap(),
        db_before,
        "plan changed the database"
    );
    assert_eq!(
        s3.objects("prod-media"),
        src_before,
        "plan changed the source bucket"
    );
    assert_eq!(
        s3.objects("stage-media"),
        dst_before,
        "plan changed the destination bucket"
    );

    let sync = ["sync", "--all", "--plan", &plan_s, "--state-dir", &state];
    let out = run(&f, &sync).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("copied 2 objects"), "{}", text(&out));
    assert!(text(&out).contains("deleted 1 objects"), "{}", text(&out));
    assert_eq!(
        s3.objects("stage-media"),
        s3.objects("prod-media"),
        "the media bucket mirrors production"
    );
    assert_eq!(
        content_hashes(f.dst(), "stage").await.unwrap(),
        content_hashes(f.src(), "production").await.unwrap()
    );

    // Again with --json, after one object changed on production: one event
    // for that object, a finished event per copy, the summary last.
    s3.put("prod-media", "files/a.jpg", b"photo a, edited")
        .unwrap();
    let out = run(&f, &[&sync[..], &["--json"]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let copied: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "s3_copied")
        .collect();
    assert_eq!(copied.len(), 1, "{events:#?}");
    assert_eq!(copied[0]["key"], "a.jpg");
    assert_eq!(copied[0]["reason"], "size_differs");
    let finished = events
        .iter()
        .find(|e| e["event"] == "s3_finished")
        .unwrap_or_else(|| panic!("no s3_finished in {events:#?}"));
    assert_eq!(finished["copy"], "media");
    assert_eq!(finished["objects_copied"], 1);
    assert_eq!(finished["objects_unchanged"], 1);
    assert_eq!(finished["objects_deleted"], 0);
    assert_eq!(events.last().unwrap()["event"], "summary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_sync_of_a_plan_that_is_running_exits_with_its_own_code() {
    let f = Fleet::builder().build().await;
    let plan = f.write_plan(PROD_TO_STAGE);
    let state = f.dir().join("state");
    let args = [
        "sync",
        "--all",
        "--plan",
        plan.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    // The lock a running sync of this plan holds, held here.
    let running = RunLock::acquire(&state, &plan).unwrap();
    let o = run(&f, &args).await;
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("another run of"), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("process {}", std::process::id())),
        "{}",
        text(&o)
    );
    f.assert_untouched().await;
    // Once it ended, the plan runs.
    drop(running);
    let o = run(&f, &args).await;
    assert!(o.status.success(), "{}", text(&o));
}
