//! The real agent binary: readiness for systemd, graceful SIGTERM, and the
//! hardened unit file.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use stagesync_harness::agent::write_config;
use stagesync_harness::wait::exit_of;
use stagesync_harness::{AgentSpec, TestPki};

const AGENT: &str = env!("CARGO_BIN_EXE_stagesync-agent");

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn signals_readiness_and_stops_gracefully_on_sigterm() {
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = pki.agent("staging-db").unwrap();
    let path = write_config(dir.path(), &AgentSpec::new("staging-db"), &tls, None).unwrap();
    let port = free_port();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&path, text).unwrap();

    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let child = Command::new(AGENT)
        .arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("the agent notifies systemd");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    // Ready means listening.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening once ready");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = exit_of(child).unwrap_or_else(|out| {
        panic!(
            "agent ignored SIGTERM: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let (status, stderr) = (out.status, String::from_utf8_lossy(&out.stderr));
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(stderr.contains("SIGTERM: shutting down"), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    let n = notify
        .recv(&mut buf)
        .expect("the agent tells systemd it is stopping");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

fn verify_unit(unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze is installed (apt-get install systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.trim().is_empty(), text)
}

#[test]
fn the_systemd_unit_verifies() {
    let repo_unit =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/stagesync-agent.service");
    let unit = std::fs::read_to_string(&repo_unit).unwrap();
    for needle in [
        "User=postgres",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "ReadWritePaths=/var/lib/stagesync",
        "Type=notify",
    ] {
        assert!(unit.contains(needle), "the unit must contain {needle}");
    }
    // systemd-analyze checks that ExecStart exists: point it at the binary
    // cargo just built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("stagesync-agent.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/stagesync-agent", AGENT)).unwrap();
    let (ok, text) = verify_unit(&copy);
    assert!(ok, "systemd-analyze verify complained: {text}");

    // The check itself can fail: a misspelt directive is reported.
    let typo = dir.path().join("typo.service");
    std::fs::write(
        &typo,
        unit.replace("ProtectSystem=", "ProtectSytem=")
            .replace("/usr/local/bin/stagesync-agent", AGENT),
    )
    .unwrap();
    let (ok, text) = verify_unit(&typo);
    assert!(!ok && text.contains("ProtectSytem"), "{text}");
}

#[test]
fn the_backup_timer_and_service_verify() {
    timer_and_service_verify(
        "stagesync-backup@",
        "prod-db",
        &["Type=oneshot", "backup %i --all", "ProtectSystem=strict"],
    );
}

#[test]
fn the_nightly_sync_timer_and_service_verify() {
    timer_and_service_verify(
        "stagesync-sync@",
        "nightly",
        &[
            "Type=oneshot",
            "sync --all --plan /etc/stagesync/plans/%i.toml",
            "EnvironmentFile=-/etc/stagesync/plans/%i.env",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
        ],
    );
}

/// `deploy/systemd/<template>.service` and `.timer`, as instance
/// `instance`, pass `systemd-analyze verify` (and a misspelt timer setting
/// does not).
fn timer_and_service_verify(template: &str, instance: &str, service_needles: &[&str]) {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let service = std::fs::read_to_string(deploy.join(format!("{template}.service"))).unwrap();
    let timer = std::fs::read_to_string(deploy.join(format!("{template}.timer"))).unwrap();
    for needle in service_needles {
        assert!(
            service.contains(needle),
            "the service must contain {needle}"
        );
    }
    for needle in ["OnCalendar=", "Persistent=true"] {
        assert!(timer.contains(needle), "the timer must contain {needle}");
    }
    // An instance of the template, pointing at a binary that exists here.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("stagesync");
    std::fs::write(&exe, "#!/bin/sh\n").unwrap();
    let mut perm = std::fs::metadata(&exe).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&exe, perm).unwrap();
    let unit = dir.path().join(format!("{template}{instance}.service"));
    std::fs::write(
        &unit,
        service.replace("/usr/local/bin/stagesync", &exe.display().to_string()),
    )
    .unwrap();
    let timer_unit = dir.path().join(format!("{template}{instance}.timer"));
    std::fs::write(&timer_unit, &timer).unwrap();
    for u in [&unit, &timer_unit] {
        let (ok, text) = verify_unit(u);
        assert!(ok, "systemd-analyze verify {}: {text}", u.display());
    }
    // The check can fail: a misspelt timer setting is reported.
    let typo = dir.path().join(format!("typo@{instance}.timer"));
    std::fs::write(&typo, timer.replace("OnCalendar=", "OnCalender=")).unwrap();
    std::fs::write(
        dir.path().join(format!("typo@{instance}.service")),
        std::fs::read_to_string(&unit).unwrap(),
    )
    .unwrap();
    let (ok, text) = verify_unit(&typo);
    assert!(!ok && text.contains("OnCalender"), "{text}");
}
