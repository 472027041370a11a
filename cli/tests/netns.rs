//! The link between the source and destination hosts cut mid-stream, for
//! real: each agent runs in its own network namespace joined by a veth pair,
//! the controller runs in the destination's namespace, and `ip link set
//! down` makes a true blackhole (no FIN, no RST). Only addresses inside the
//! namespaces this test makes are ever dialed.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use stagesync_harness::wait::PATIENCE;
use stagesync_harness::{AgentRun, AgentSpec, Fleet, eventually, require_root};

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

/// An agent's place: in `netns`, on `ip`.
fn in_netns(netns: &str, ip: Ipv4Addr) -> AgentRun {
    AgentRun::InNetns {
        netns: netns.to_string(),
        ip: IpAddr::V4(ip),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_mid_stream_leaves_the_destination_untouched() {
    if !require_root("network namespaces") {
        return;
    }
    let link = Link::new();
    let limits = |a: &mut AgentSpec| {
        a.jobs.insert("stall_timeout_secs".into(), 3);
        a.jobs.insert("controller_timeout_secs".into(), 3);
    };
    let f = Fleet::builder()
        .prod(limits)
        .staging(limits)
        .prod_runs(in_netns(&link.src_ns, link.src_ip))
        .staging_runs(in_netns(&link.dst_ns, link.dst_ip))
        .build()
        .await;

    // The controller lives in the destination's namespace.
    let mut controller = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &link.dst_ns,
            STAGESYNC,
            "refresh",
            "--certs-dir",
        ])
        .arg(f.pki().dir())
        .args(["--controller", "ops"])
        .arg("--source")
        .arg(format!("prod-db={}", f.prod().target().address))
        .args(["--source-db", "production"])
        .arg("--dest")
        .arg(format!("staging-db={}", f.staging().target().address))
        .args(["--dest-db", "stage", "--owner", "stage"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Wait until table data is copied in on the destination (by a copy
    // lane or pg_restore: the stream is past the schema and data is
    // flowing), then cut.
    let c = f.dst().client("postgres").await.unwrap();
    eventually(
        "table data to be copied in on the destination",
        async || {
            assert!(
                controller.try_wait().unwrap().is_none(),
                "the refresh ended before the cut"
            );
            let copying: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'COPY % FROM STDIN%' \
                 AND state = 'active' AND datname LIKE 'stagesync\\_new\\_%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if copying > 0 { Ok(()) } else { Err(copying) }
        },
    )
    .await;
    link.cut();
    assert!(link.is_down(), "the link is down");
    assert!(
        controller.try_wait().unwrap().is_none(),
        "the refresh was still running at the cut"
    );

    let out = tokio::time::timeout(PATIENCE, controller.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the controller never gave up ({} s)", PATIENCE.as_secs()))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no data from the source agent"), "{stderr}");
    assert!(stderr.contains("is unchanged"), "{stderr}");
    f.assert_untouched().await;
}
