//! The link between the source and destination hosts cut mid-stream, for
//! real: each agent runs in its own network namespace joined by a veth pair,
//! the controller runs in the destination's namespace, and `ip link set
//! down` makes a true blackhole (no FIN, no RST). Only addresses inside the
//! namespaces this test makes are ever dialed.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stagesync_harness::agent::{agent_binary, write_config};
use stagesync_harness::fixtures::{content_hashes, seed_rich, seed_stage};
use stagesync_harness::proxy::tool_processes;
use stagesync_harness::{AgentSpec, PgCluster, TestPki};

const STAGESYNC: &str = env!("CARGO_BIN_EXE_stagesync");

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) is installed");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and the veth pair between them; deleted on drop.
struct Link {
    src_ns: String,
    dst_ns: String,
    src_dev: String,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
}

impl Link {
    fn new() -> Link {
        let id = std::process::id();
        let n = (id % 250) as u8 + 1;
        let l = Link {
            src_ns: format!("ss{id}s"),
            dst_ns: format!("ss{id}d"),
            src_dev: format!("ss{id}a"),
            src_ip: Ipv4Addr::new(10, 231, n, 1),
            dst_ip: Ipv4Addr::new(10, 231, n, 2),
        };
        let dst_dev = format!("ss{id}b");
        ip(&["netns", "add", &l.src_ns]);
        ip(&["netns", "add", &l.dst_ns]);
        ip(&[
            "link", "add", &l.src_dev, "type", "veth", "peer", "name", &dst_dev,
        ]);
        ip(&["link", "set", &l.src_dev, "netns", &l.src_ns]);
        ip(&["link", "set", &dst_dev, "netns", &l.dst_ns]);
        ip(&[
            "-n",
            &l.src_ns,
            "addr",
            "add",
            &format!("{}/30", l.src_ip),
            "dev",
            &l.src_dev,
        ]);
        ip(&[
            "-n",
            &l.dst_ns,
            "addr",
            "add",
            &format!("{}/30", l.dst_ip),
            "dev",
            &dst_dev,
        ]);
        for (ns, dev) in [(&l.src_ns, &l.src_dev), (&l.dst_ns, &dst_dev)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // A slow link (token bucket, no netem needed) so the dump is still
        // flowing when we cut it.
        let out = Command::new("ip")
            .args([
                "netns", "exec", &l.src_ns, "tc", "qdisc", "add", "dev", &l.src_dev,
            ])
            .args([
                "root", "tbf", "rate", "4mbit", "burst", "32kb", "latency", "400ms",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        l
    }

    fn cut(&self) {
        ip(&["-n", &self.src_ns, "link", "set", &self.src_dev, "down"]);
    }

    fn is_down(&self) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.src_ns, "link", "show", &self.src_dev])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("state DOWN")
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.src_ns])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.dst_ns])
            .status();
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent_in(ns: &str, config: &Path, log: &Path) -> Proc {
    let log_file = std::fs::File::create(log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(agent_binary().unwrap())
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("serving")
    {
        assert!(
            Instant::now() < deadline,
            "agent in {ns} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Proc(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_mid_stream_leaves_the_destination_untouched() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED link_cut_mid_stream: network namespaces need root (CI runs it as root)");
        return;
    }
    let src = PgCluster::start().unwrap();
    let dst = PgCluster::start().unwrap();
    seed_rich(&src, "production").await.unwrap();
    seed_stage(&dst).await.unwrap();
    let before = content_hashes(&dst, "stage").await.unwrap();

    let link = Link::new();
    let pki = TestPki::new().unwrap();
    pki.controller("ops").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let limits = "\n[jobs]\nstall_timeout_secs = 3\ncontroller_timeout_secs = 3\n";

    let mut p = AgentSpec::new("prod-db");
    p.may_dump = vec!["production".into()];
    p.extra_toml = limits.into();
    let pdir = dir.path().join("prod");
    std::fs::create_dir_all(&pdir).unwrap();
    let ptls = pki.agent_at("prod-db", IpAddr::V4(link.src_ip)).unwrap();
    let pcfg = write_config(&pdir, &p, &ptls, Some(&src)).unwrap();
    let text = std::fs::read_to_string(&pcfg)
        .unwrap()
        .replace("127.0.0.1:0", &format!("{}:7443", link.src_ip));
    std::fs::write(&pcfg, text).unwrap();

    let mut s = AgentSpec::new("staging-db");
    s.may_overwrite = vec!["stage".into()];
    s.peers = vec!["prod-db".into()];
    s.extra_toml = limits.into();
    let sdir = dir.path().join("staging");
    std::fs::create_dir_all(&sdir).unwrap();
    let stls = pki.agent_at("staging-db", IpAddr::V4(link.dst_ip)).unwrap();
    let scfg = write_config(&sdir, &s, &stls, Some(&dst)).unwrap();
    let text = std::fs::read_to_string(&scfg)
        .unwrap()
        .replace("127.0.0.1:0", &format!("{}:7443", link.dst_ip));
    std::fs::write(&scfg, text).unwrap();

    let _prod = agent_in(&link.src_ns, &pcfg, &pdir.join("log"));
    let _staging = agent_in(&link.dst_ns, &scfg, &sdir.join("log"));

    // The controller lives in the destination's namespace.
    let controller = Command::new("ip")
        .args([
            "netns",
            "exec",
            &link.dst_ns,
            STAGESYNC,
            "refresh",
            "--certs-dir",
        ])
        .arg(pki.dir())
        .args(["--controller", "ops"])
        .arg("--source")
        .arg(format!("prod-db={}:7443", link.src_ip))
        .args(["--source-db", "production"])
        .arg("--dest")
        .arg(format!("staging-db={}:7443", link.dst_ip))
        .args(["--dest-db", "stage", "--owner", "stage"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut controller = Proc(controller);

    // Wait until pg_restore is at work on the destination, then cut.
    let c = dst.client("postgres").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stagesync-pg_restore'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(
            controller.0.try_wait().unwrap().is_none(),
            "the refresh ended before the cut"
        );
        assert!(Instant::now() < deadline, "pg_restore never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    link.cut();
    assert!(link.is_down(), "the link is down");
    assert!(
        controller.0.try_wait().unwrap().is_none(),
        "the refresh was still running at the cut"
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = controller.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the controller never gave up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(controller.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no data from the source agent"), "{stderr}");
    assert!(stderr.contains("is unchanged"), "{stderr}");

    assert_eq!(content_hashes(&dst, "stage").await.unwrap(), before);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'stagesync%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let procs = [&src, &dst]
            .iter()
            .flat_map(|c| tool_processes(&c.socket_dir))
            .count();
        let dirs = [&pdir, &sdir]
            .iter()
            .filter(|d| {
                std::fs::read_dir(d.join("work/jobs"))
                    .map(|mut r| r.next().is_some())
                    .unwrap_or(false)
            })
            .count();
        if left == 0 && procs == 0 && dirs == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left} databases, {procs} tools, {dirs} work dirs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(controller);
}
