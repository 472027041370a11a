//! `[notify]` through the real binary, on real clusters and agents: a
//! webhook receiver on loopback gets one JSON body per run with each pair's
//! outcome; a receiver that fails or never answers changes nothing about
//! the run's exit code; the Prometheus textfile is replaced whole and
//! parses as the text format.

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use stagesync_harness::Fleet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STAGESYNC: &str = env!("CARGO_BIN_EXE_stagesync");

/// One pair that succeeds, one whose post-restore SQL fails.
const PAIRS: &str = r#"
[pairs.prod-to-stage]
source = { agent = "prod-db", database = "production" }
dest = { agent = "staging-db", database = "stage", owner = "stage" }

[pairs.prod-to-broken]
source = { agent = "prod-db", database = "production" }
dest = { agent = "staging-db", database = "broken", owner = "stage" }
post_restore_sql = "SELECT 1/0"
"#;

/// How a test receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    ServerError,
    Never,
}

/// A webhook receiver on loopback: every request's body, in order.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hooks/secret-token",
            listener.local_addr().unwrap()
        );
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move { serve(socket, answer, seen).await });
            }
        });
        Receiver { url, bodies }
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        let bodies = self.bodies.lock().unwrap();
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }
}

/// Reads requests off one connection and answers each as told.
async fn serve(mut socket: TcpStream, answer: Answer, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < end + 4 + length {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
        buf.drain(..end + 4 + length);
        seen.lock().unwrap().push(body);
        let status = match answer {
            Answer::Ok => "200 OK",
            Answer::ServerError => "500 Internal Server Error",
            // Holds the connection open and says nothing.
            Answer::Never => std::future::pending().await,
        };
        let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if socket.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Parses `file` with the Prometheus client library's own parser; the
/// metric families it found.
fn prometheus_families(file: &Path) -> Vec<String> {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys\n\
             from prometheus_client.parser import text_string_to_metric_families as parse\n\
             for f in parse(open(sys.argv[1]).read()):\n    \
                 print(f.name, len(f.samples))",
        )
        .arg(file)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the textfile does not parse (pip install prometheus_client): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_are_reported_and_a_failing_receiver_changes_nothing() {
    let f = Fleet::builder()
        .staging(|s| s.may_overwrite = vec!["stage".into(), "broken".into()])
        .build()
        .await;
    let metrics = f.dir().join("metrics");
    std::fs::create_dir(&metrics).unwrap();
    let textfile = metrics.join("stagesync.prom");
    let plan = f.write_plan(&format!(
        "{PAIRS}\n[notify]\nwebhook_env = \"HOOK_URL\"\ntimeout_secs = 2\nretries = 2\ntextfile = {:?}\n",
        textfile.display().to_string()
    ));
    let state = f.dir().join("state");
    let sync = |url: String| {
        let mut c = f.command(STAGESYNC);
        c.args(["sync", "--all", "--plan"])
            .arg(&plan)
            .arg("--state-dir")
            .arg(&state)
            .env("HOOK_URL", url);
        async move { c.output().await.unwrap() }
    };

    // A receiver that takes it: one body, each pair's outcome in it.
    let ok = Receiver::start(Answer::Ok).await;
    let o = sync(ok.url.clone()).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let bodies = ok.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let body = &bodies[0];
    assert_eq!(body["outcome"], "failed");
    assert!(
        body["text"].as_str().unwrap().contains("1 of 2 pairs ok"),
        "{body}"
    );
    let pairs = body["pairs"].as_array().unwrap();
    let pair = |name: &str| pairs.iter().find(|p| p["pair"] == name).unwrap().clone();
    assert_eq!(pair("prod-to-stage")["outcome"], "ok");
    assert!(pair("prod-to-stage")["bytes_restored"].as_u64().unwrap() > 0);
    let broken = pair("prod-to-broken");
    assert_eq!(broken["outcome"], "failed");
    assert_eq!(broken["failed_step"], "post-restore SQL");
    assert!(
        broken["failed_host"]
            .as_str()
            .unwrap()
            .contains("staging-db"),
        "{broken}"
    );
    assert!(!text(&o).contains("secret-token"), "{}", text(&o));

    // The textfile: the last success of the pair that worked, the failure
    // of the other; it parses; nothing half-written is left beside it.
    let families = prometheus_families(&textfile);
    assert!(
        families.contains(&"stagesync_pair_last_success_timestamp_seconds 1".to_string()),
        "{families:?}"
    );
    assert!(
        families.contains(&"stagesync_pair_last_run_success 2".to_string()),
        "{families:?}"
    );
    let metrics_text = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        metrics_text.contains("stagesync_pair_last_run_success{pair=\"prod-to-broken\"} 0"),
        "{metrics_text}"
    );
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let first = inode(&textfile);

    // A receiver that fails three times, then one that never answers: the
    // run ends as it would have, with a warning that names no secret.
    let failing = Receiver::start(Answer::ServerError).await;
    let o = sync(failing.url.clone()).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failing.bodies().len(), 3);
    assert!(
        text(&o).contains("the webhook at 127.0.0.1 failed 3 time(s), last: it answered 500"),
        "{}",
        text(&o)
    );
    let silent = Receiver::start(Answer::Never).await;
    let o = sync(silent.url.clone()).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("no answer in 2 s"), "{}", text(&o));
    assert!(!text(&o).contains("secret-token"), "{}", text(&o));

    // Replaced by a rename each run, never rewritten in place.
    assert_ne!(inode(&textfile), first);
    let left: Vec<_> = std::fs::read_dir(&metrics)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["stagesync.prom"], "{left:?}");
    prometheus_families(&textfile);
}
