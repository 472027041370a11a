//! Agents that reach their databases over TCP with TLS and passwords, as
//! roles that are no superuser: clusters configured like a managed
//! service (see `FleetBuilder::managed`).

use stagesync_controller::refresh::refresh;
use stagesync_harness::agent::agent_binary;
use stagesync_harness::fixtures::assert_identical;
use stagesync_harness::fleet::MANAGED_DEST_PASSWORD;
use stagesync_harness::fleet::MANAGED_SOURCE_PASSWORD;
use stagesync_harness::{Fleet, TestPki};

async fn managed() -> Fleet {
    Fleet::builder()
        .managed()
        .prod(|p| {
            p.jobs.insert("lane_min_table_mb".into(), 0);
        })
        .build()
        .await
}

/// The whole refresh over TCP: the rich fixture arrives identical, copy
/// lanes and all, restored by a login that is no superuser.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_over_tls_without_superuser_arrives_identical() {
    let f = managed().await;
    // Both agents reach their servers over TCP with TLS, as logins
    // without superuser.
    for (agent, role) in [(f.prod(), "stagesync_src"), (f.staging(), "stagesync_dst")] {
        let pg = f
            .info(agent)
            .await
            .expect("info")
            .postgres
            .expect("postgres info");
        assert!(pg.reachable, "{pg:?}");
        assert!(pg.tls && pg.endpoint.starts_with("localhost:"), "{pg:?}");
        assert_eq!(pg.login_role, role);
        assert!(!pg.rights.contains(&"superuser".to_string()), "{pg:?}");
        assert!(pg.disk_check.contains("skipped"), "{pg:?}");
    }
    let mut spec = f.pair();
    spec.jobs = 2;
    let report = refresh(f.tls(), &spec, |_| {})
        .await
        .expect("refresh succeeds");
    assert!(report.tables_copied >= 8, "{report:?}");
    assert_identical(&f).await;
    // No role was made for the job: the agent's own login restored.
    let made = f
        .dst()
        .strings(
            "postgres",
            "SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'stagesync_job%'",
        )
        .await
        .unwrap();
    assert!(made.is_empty(), "{made:?}");
}

/// `stagesync-agent --check` on `config` (a file's text).
fn check(f: &Fleet, name: &str, config: &str) -> std::process::Output {
    let path = f.dir().join(name);
    std::fs::write(&path, config).unwrap();
    std::process::Command::new(agent_binary().unwrap())
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap()
}

/// `verify-full` checks the server's certificate against the configured CA
/// and the host name; either failing is a clear error that names the
/// agent, the server and the role, and `--check` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_servers_certificate_is_verified() {
    let f = Fleet::builder().managed().build().await;
    let config = std::fs::read_to_string(f.staging().config_path()).unwrap();
    let good = check(&f, "good.toml", &config);
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        stdout.contains("TLS verify-full") && stdout.contains("role \"stagesync_dst\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("pg_signal_backend") && stdout.contains("CREATEDB"),
        "{stdout}"
    );
    assert!(
        stdout.contains("restores run as the agent's own login"),
        "{stdout}"
    );

    // A server certificate from another CA than the one configured.
    let other = TestPki::new().unwrap();
    let ca_line = config
        .lines()
        .find(|l| l.starts_with("sslrootcert"))
        .unwrap()
        .to_string();
    let other_ca = config.replace(&ca_line, &format!("sslrootcert = {:?}", other.ca_path()));
    let out = check(&f, "other-ca.toml", &other_ca);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("staging-db") && err.contains("stagesync_dst"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // The right CA, but the server is reached by a name its certificate
    // does not carry (it names localhost only).
    let wrong_host = config.replace("host = \"localhost\"", "host = \"127.0.0.1\"");
    let out = check(&f, "wrong-host.toml", &wrong_host);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("127.0.0.1") && err.contains("stagesync_dst"),
        "{err}"
    );
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for"),
        "{err}"
    );
    // verify-ca lets the same certificate through.
    let ca_only = wrong_host.replace("sslrootcert", "sslmode = \"verify-ca\"\nsslrootcert");
    let out = check(&f, "verify-ca.toml", &ca_only);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A wrong password and a missing password file: errors that name the
/// agent, the server and the role, never the secret; nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_or_missing_password_is_named_never_shown() {
    let f = managed().await;
    let file = f.dir().join("staging-db.pgpass");
    let wrong = "not-the-Pa55word";
    std::fs::write(&file, format!("{wrong}\n")).unwrap();
    let e = refresh(f.tls(), &f.pair(), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("staging-db") && e.contains("localhost:") && e.contains("stagesync_dst"),
        "{e}"
    );
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(
        !e.contains(wrong) && !e.contains(MANAGED_DEST_PASSWORD),
        "{e}"
    );
    f.assert_untouched().await;

    std::fs::remove_file(&file).unwrap();
    let e = refresh(f.tls(), &f.pair(), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("staging-db") && e.contains("stagesync_dst"),
        "{e}"
    );
    assert!(e.contains("staging-db.pgpass"), "{e}");
    f.assert_untouched().await;
}

/// During a refresh over TCP, no process's command line holds a password:
/// the tools get theirs through the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_on_any_command_line() {
    let f = managed().await;
    let mut spec = f.pair();
    spec.jobs = 2;
    let running = refresh(f.tls(), &spec, |_| {});
    tokio::pin!(running);
    let mut tools_seen = 0;
    let report = loop {
        tokio::select! {
            r = &mut running => break r,
            _ = tokio::task::yield_now() => {
                for cmdline in command_lines() {
                    assert!(
                        !cmdline.contains(MANAGED_SOURCE_PASSWORD) && !cmdline.contains(MANAGED_DEST_PASSWORD),
                        "a password on a command line: {cmdline}"
                    );
                    if cmdline.contains("pg_dump") || cmdline.contains("pg_restore") {
                        tools_seen += 1;
                    }
                }
            }
        }
    };
    report.expect("refresh succeeds");
    // The scan saw the tools at work, so it could have seen a password.
    assert!(tools_seen > 0, "no pg_dump or pg_restore was seen running");
}

fn command_lines() -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

/// A destination login missing each right a restore needs is refused at
/// preflight, naming it; nothing changes. A source login that cannot read
/// a table is refused naming the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_right_is_named_before_anything_changes() {
    let f = managed().await;
    for (take, right, give) in [
        (
            "ALTER ROLE stagesync_dst NOCREATEDB",
            "CREATEDB",
            "ALTER ROLE stagesync_dst CREATEDB",
        ),
        (
            "REVOKE pg_signal_backend FROM stagesync_dst",
            "pg_signal_backend",
            "GRANT pg_signal_backend TO stagesync_dst",
        ),
        (
            "REVOKE stage FROM stagesync_dst",
            "owner role \"stage\"",
            "GRANT stage TO stagesync_dst",
        ),
    ] {
        f.dst().exec("postgres", take).await.unwrap();
        let e = refresh(f.tls(), &f.pair(), |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(right) && e.contains("nothing was changed"),
            "{right}: {e}"
        );
        assert!(
            e.contains("staging-db") && e.contains("stagesync_dst"),
            "{e}"
        );
        f.assert_untouched().await;
        f.dst().exec("postgres", give).await.unwrap();
    }
    f.src()
        .exec("postgres", "ALTER ROLE stagesync_src NOBYPASSRLS")
        .await
        .unwrap();
    let e = refresh(f.tls(), &f.pair(), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("prod-db") && e.contains("row-level security") && e.contains("BYPASSRLS"),
        "{e}"
    );
    f.assert_untouched().await;
    f.src()
        .exec("postgres", "REVOKE pg_read_all_data FROM stagesync_src")
        .await
        .unwrap();
    let e = refresh(f.tls(), &f.pair(), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(no SELECT)") && e.contains("pg_read_all_data"),
        "{e}"
    );
    f.assert_untouched().await;
}
