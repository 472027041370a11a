//! A refresh that ends before any progress reaches the controller still
//! reports its true byte counts: in the `--json` summary and the history
//! line (through the real binary), and in the controller's `Report`.

use std::process::Command;

use stagesync_controller::refresh::{Event, PairSpec, refresh};
use stagesync_harness::{AgentSpec, PgCluster, TestAgent, TestPki};
use stagesync_proto::v1 as pb;

const STAGESYNC: &str = env!("CARGO_BIN_EXE_stagesync");

/// Agents that send a job's status only when its phase changes: no
/// progress sample ever carries the counters, only the final statuses.
const NO_PROGRESS: &str = "\n[jobs]\nstatus_interval_ms = 3600000\n";

struct Fleet {
    src: PgCluster,
    _dst: PgCluster,
    pki: TestPki,
    prod: TestAgent,
    staging: TestAgent,
}

async fn fleet() -> Fleet {
    let src = PgCluster::start().unwrap();
    let dst = PgCluster::start().unwrap();
    src.exec("postgres", "CREATE DATABASE production")
        .await
        .unwrap();
    src.exec(
        "production",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    dst.exec("postgres", "CREATE ROLE stage LOGIN")
        .await
        .unwrap();
    let pki = TestPki::new().unwrap();
    pki.controller("ops").unwrap();
    let mut p = AgentSpec::new("prod-db");
    p.may_dump = vec!["production".into()];
    p.extra_toml = NO_PROGRESS.into();
    let prod = TestAgent::start(&pki, Some(&src), p).await.unwrap();
    let mut s = AgentSpec::new("staging-db");
    s.may_overwrite = vec!["stage".into()];
    s.peers = vec!["prod-db".into()];
    s.extra_toml = NO_PROGRESS.into();
    let staging = TestAgent::start(&pki, Some(&dst), s).await.unwrap();
    Fleet {
        src,
        _dst: dst,
        pki,
        prod,
        staging,
    }
}

/// The size of the database's dump as pg_dump writes it: what "dumped"
/// must count (the stream is not compressed between agents on one host).
fn dump_size(f: &Fleet, args: &[&str]) -> u64 {
    let out = Command::new(f.src.bin_dir.join("pg_dump"))
        .arg(format!("--host={}", f.src.socket_dir.display()))
        .arg(format!("--port={}", f.src.port))
        .args([
            "--username=postgres",
            "--format=custom",
            "--dbname=production",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quick_refresh_reports_its_final_counters() {
    let f = fleet().await;
    let tls = f.pki.controller_tls("ops").unwrap();
    let mut spec = PairSpec::new(
        f.prod.target(),
        "production",
        f.staging.target(),
        "stage",
        "stage",
    );
    // One pass: the dump is one pg_dump archive, as measured below.
    spec.jobs = 1;
    // Progress samples of the source taken while it was still dumping
    // with bytes counted: the agents' setting leaves none.
    let mut mid_dump_samples = 0;
    let report = refresh(tls, &spec, |e| {
        if let Event::Progress {
            source: Some(s), ..
        } = e
            && s.phase == pb::Phase::Dumping as i32
            && s.bytes_dumped > 0
        {
            mid_dump_samples += 1;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        mid_dump_samples, 0,
        "a progress sample carried the counters"
    );
    // pg_dump's archive differs by a few bytes between runs (time stamps).
    let expected = dump_size(&f, &["--compress=0"]);
    let near = |n: u64| n.abs_diff(expected) < expected / 100;
    assert!(near(report.bytes_dumped), "{report:?} vs {expected}");
    assert_eq!(
        report.bytes_sent, report.bytes_dumped,
        "no compression on one host"
    );
    assert_eq!(report.bytes_restored, report.bytes_dumped, "{report:?}");

    // The same through the binary: the summary and the history line.
    let dir = tempfile::tempdir().unwrap();
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

[pairs.prod-to-stage]
source = {{ agent = "prod-db", database = "production" }}
dest = {{ agent = "staging-db", database = "stage", owner = "stage" }}
jobs = 1
"#,
            certs = f.pki.dir(),
            prod = f.prod.addr,
            staging = f.staging.addr,
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let (p, st) = (plan.display().to_string(), state.display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(STAGESYNC)
            .args([
                "sync",
                "prod-to-stage",
                "--plan",
                &p,
                "--state-dir",
                &st,
                "--json",
            ])
            .env_remove("STAGESYNC_PLAN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .expect("a summary event");
    let pair = &summary["pairs"][0];
    let history = std::fs::read_to_string(state.join("history.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    for (what, v) in [("summary", pair), ("history", &line)] {
        let n = |k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| panic!("{what}: {k} in {v}"))
        };
        assert!(near(n("bytes_dumped")), "{what}: {v} vs {expected}");
        assert_eq!(n("bytes_sent"), n("bytes_dumped"), "{what}: {v}");
        assert_eq!(n("bytes_restored"), n("bytes_dumped"), "{what}: {v}");
    }
}
