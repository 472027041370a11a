//! A refresh that ends before any progress reaches the controller still
//! reports its true byte counts: in the controller's `Report`, and through
//! the real binary in the `--json` summary and the history line.

use stagesync_controller::refresh::{Event, refresh};
use stagesync_harness::Fleet;
use stagesync_proto::v1 as pb;

const STAGESYNC: &str = env!("CARGO_BIN_EXE_stagesync");

/// Agents that send a job's status only when its phase changes: no
/// progress sample ever carries the counters, only the final statuses.
async fn fleet() -> Fleet {
    let quiet = |s: &mut stagesync_harness::AgentSpec| {
        s.jobs.insert("status_interval_ms".into(), 3_600_000);
    };
    Fleet::builder()
        .source_sql(
            "CREATE TABLE t (id int PRIMARY KEY, v text); \
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
        )
        .prod(quiet)
        .staging(quiet)
        .build()
        .await
}

/// The size of `production`'s dump as the agent's pg_dump writes it (no
/// compression of its own): what "dumped" must count.
fn dump_size(f: &Fleet) -> u64 {
    let src = f.src();
    let out = std::process::Command::new(src.bin_dir.join("pg_dump"))
        .arg(format!("--host={}", src.socket_dir.display()))
        .arg(format!("--port={}", src.port))
        .args(["--username=postgres", "--format=custom", "--compress=0"])
        .arg("--dbname=production")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout.len() as u64
}

/// `n` is the dump's size, give or take pg_dump's time stamps.
fn near(n: u64, expected: u64) -> bool {
    n.abs_diff(expected) < expected / 100
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quick_refresh_reports_its_final_counters() {
    let f = fleet().await;
    let mut spec = f.pair();
    // One pass: the dump is one pg_dump archive, as measured here.
    spec.jobs = 1;
    // Progress samples of the source taken while it was still dumping
    // with bytes counted: the agents' setting leaves none.
    let mut mid_dump_samples = 0;
    let report = refresh(f.tls(), &spec, |e| {
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
    let expected = dump_size(&f);
    assert!(
        near(report.bytes_dumped, expected),
        "{report:?} vs {expected}"
    );
    assert_eq!(
        report.bytes_sent, report.bytes_dumped,
        "no compression on one host"
    );
    assert_eq!(report.bytes_restored, report.bytes_dumped, "{report:?}");

    // The same through the binary: the summary and the history line.
    let plan = f.write_plan(
        r#"
[pairs.prod-to-stage]
source = { agent = "prod-db", database = "production" }
dest = { agent = "staging-db", database = "stage", owner = "stage" }
jobs = 1
"#,
    );
    let state = f.state_dir();
    let out = f
        .command(STAGESYNC)
        .args(["sync", "prod-to-stage", "--json", "--plan"])
        .arg(&plan)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .expect("a summary event");
    let history = std::fs::read_to_string(state.join("history.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    for (what, v) in [("summary", &summary["pairs"][0]), ("history", &line)] {
        let n = |k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| panic!("{what}: {k} in {v}"))
        };
        assert!(
            near(n("bytes_dumped"), expected),
            "{what}: {v} vs {expected}"
        );
        assert_eq!(n("bytes_sent"), n("bytes_dumped"), "{what}: {v}");
        assert_eq!(n("bytes_restored"), n("bytes_dumped"), "{what}: {v}");
    }
}
