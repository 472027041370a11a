//! Bad agent configurations stop the real binary before it binds a port,
//! with exit code 64 and a message naming the file, the line and the key.

mod common;

use std::path::Path;

use common::{Fixture, accepted, expect_error, fixture, replace_line, run_agent};

#[test]
fn the_valid_base_configuration_is_accepted() {
    let f = fixture();
    let out = accepted(&f, &f.base);
    assert!(out.contains("spiffe://stagesync/agent/staging-db"));
}

#[test]
fn missing_file() {
    let (code, stderr) = run_agent(Path::new("/nonexistent/stagesync/agent.toml"));
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains("/nonexistent/stagesync/agent.toml: cannot read the agent configuration"),
        "{stderr}"
    );
    assert!(stderr.contains("--config"), "{stderr}");
}

#[test]
fn unknown_top_level_key() {
    let f = fixture();
    let text = format!("nmae = \"x\"\n{}", f.base);
    expect_error(&f, &text, "nmae", "nmae", "unknown field `nmae`");
}

#[test]
fn unknown_key_in_a_table() {
    let f = fixture();
    let text = replace_line(&f.base, "peers", "peers = []\nmay_dmp = [\"x\"]");
    expect_error(
        &f,
        &text,
        "may_dmp",
        "policy.may_dmp",
        "unknown field `may_dmp`",
    );
}

#[test]
fn lane_threshold_out_of_range() {
    let f = fixture();
    let text = format!("{}\n[jobs]\nlane_min_table_mb = 99999999999\n", f.base);
    expect_error(
        &f,
        &text,
        "lane_min_table_mb",
        "jobs.lane_min_table_mb",
        "must be at most",
    );
}

#[test]
fn no_worker_threads() {
    let f = fixture();
    let text = format!("{}\n[jobs]\nworker_threads = 0\n", f.base);
    expect_error(
        &f,
        &text,
        "worker_threads",
        "jobs.worker_threads",
        "must be 1 to 256",
    );
}

#[test]
fn bad_glob() {
    let f = fixture();
    let text = replace_line(&f.base, "may_dump", "may_dump = [\"prod\", \"prod[\"]");
    expect_error(
        &f,
        &text,
        "may_dump",
        "policy.may_dump",
        "bad glob \"prod[\"",
    );
}

#[test]
fn unreadable_key_file() {
    let f = fixture();
    let text = replace_line(&f.base, "key =", "key = \"/nonexistent/agent.key\"");
    expect_error(&f, &text, "key =", "tls.key", "cannot read the private key");
}

#[test]
fn key_file_without_a_key() {
    let f = fixture();
    let bogus = f.dir.path().join("bogus.key");
    std::fs::write(&bogus, "not a key\n").unwrap();
    let text = replace_line(&f.base, "key =", &format!("key = {bogus:?}"));
    expect_error(&f, &text, "key =", "tls.key", "no PEM private key");
}

#[test]
fn key_of_another_certificate() {
    let f = fixture();
    let other = f._pki.agent("other-db").unwrap();
    let text = replace_line(&f.base, "key =", &format!("key = {:?}", other.key));
    expect_error(
        &f,
        &text,
        "key =",
        "tls.key",
        "does not belong to the certificate",
    );
}

#[test]
fn name_does_not_match_the_certificate() {
    let f = fixture();
    let text = replace_line(&f.base, "name =", "name = \"prod-db\"");
    expect_error(
        &f,
        &text,
        "name =",
        "name",
        "configured as spiffe://stagesync/agent/prod-db but its certificate",
    );
}

#[test]
fn bad_listen_address() {
    let f = fixture();
    let text = replace_line(&f.base, "listen", "listen = \"localhost\"");
    expect_error(&f, &text, "listen", "listen", "IP:PORT");
}

#[test]
fn wrong_type() {
    let f = fixture();
    let text = replace_line(&f.base, "port", "port = \"abc\"");
    expect_error(&f, &text, "port", "postgres.port", "invalid type");
}

#[test]
fn missing_required_key() {
    let f = fixture();
    let text = replace_line(&f.base, "controllers", "");
    expect_error(
        &f,
        &text,
        "[policy]",
        "policy.controllers",
        "missing field `controllers`",
    );
}

#[test]
fn work_dir_that_does_not_exist() {
    let f = fixture();
    let text = replace_line(&f.base, "work_dir", "work_dir = \"/nonexistent/work\"");
    expect_error(&f, &text, "work_dir", "work_dir", "is not a directory");
}

#[test]
fn bin_dir_without_the_tools() {
    let f = fixture();
    let text = replace_line(&f.base, "user", "user = \"postgres\"\nbin_dir = \"/\"");
    expect_error(
        &f,
        &text,
        "bin_dir",
        "postgres.bin_dir",
        "has no executable pg_dump",
    );
}

#[test]
fn bad_restore_setting() {
    let f = fixture();
    let text = replace_line(
        &f.base,
        "user",
        "user = \"postgres\"\nrestore_settings = [\"work_mem=64MB\", \"fsync=off; DROP\"]",
    );
    expect_error(
        &f,
        &text,
        "restore_settings",
        "postgres.restore_settings",
        "is not name=value",
    );
}

#[test]
fn no_controllers() {
    let f = fixture();
    let text = replace_line(&f.base, "controllers", "controllers = []");
    expect_error(
        &f,
        &text,
        "controllers",
        "policy.controllers",
        "list at least one",
    );
}

#[test]
fn bad_controller_name() {
    let f = fixture();
    let text = replace_line(&f.base, "controllers", "controllers = [\"Ops Team\"]");
    expect_error(
        &f,
        &text,
        "controllers",
        "policy.controllers",
        "invalid name \"Ops Team\"",
    );
}

#[test]
fn bad_trust_domain() {
    let f = fixture();
    let text = format!("trust_domain = \"Bad Domain\"\n{}", f.base);
    expect_error(
        &f,
        &text,
        "trust_domain",
        "trust_domain",
        "invalid trust domain",
    );
}

#[test]
fn example_configurations_are_well_formed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    for name in [
        "agent-production.toml",
        "agent-staging.toml",
        "agent-managed-staging.toml",
    ] {
        let path = root.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        stagesync_agent::config::check_syntax(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    }
    let prod = std::fs::read_to_string(root.join("agent-production.toml")).unwrap();
    assert!(
        prod.contains("may_overwrite = []"),
        "production overwrites nothing"
    );
}

/// The `[postgres]` lines of the base configuration replaced by `keys`.
fn with_postgres(f: &Fixture, keys: &str) -> String {
    let start = f.base.find("socket_dir").unwrap();
    let end = f.base[start..].find("user = ").unwrap() + start;
    let line_end = f.base[end..].find('\n').unwrap() + end + 1;
    format!("{}{keys}\n{}", &f.base[..start], &f.base[line_end..])
}

#[test]
fn a_tcp_server_needs_a_ca_file_and_a_user() {
    let f = fixture();
    let text = with_postgres(&f, "host = \"db.internal\"\nuser = \"agent\"");
    expect_error(&f, &text, "host =", "postgres.sslrootcert", "CA file");
    let text = with_postgres(&f, "host = \"db.internal\"\nsslrootcert = \"ca.pem\"");
    expect_error(&f, &text, "host =", "postgres.user", "set postgres.user");
    let ca = f.dir.path().join("tls-ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let text = with_postgres(
        &f,
        &format!("host = \"db.internal\"\nsslrootcert = {ca:?}\nuser = \"agent\""),
    );
    expect_error(
        &f,
        &text,
        "sslrootcert",
        "postgres.sslrootcert",
        "holds no certificate",
    );
}

#[test]
fn sslmode_offers_only_verifying_modes() {
    let f = fixture();
    let text = with_postgres(
        &f,
        "host = \"db.internal\"\nsslmode = \"require\"\nsslrootcert = \"ca.pem\"\nuser = \"agent\"",
    );
    expect_error(&f, &text, "sslmode", "postgres.sslmode", "verify-full");
}

#[test]
fn tls_keys_without_a_host_and_two_endpoints_are_refused() {
    let f = fixture();
    let text = replace_line(
        &f.base,
        "user",
        "user = \"postgres\"\nsslmode = \"verify-full\"",
    );
    expect_error(
        &f,
        &text,
        "sslmode",
        "postgres.sslmode",
        "set postgres.host",
    );
    let text = replace_line(
        &f.base,
        "user",
        "user = \"postgres\"\nhost = \"db.internal\"",
    );
    expect_error(&f, &text, "socket_dir", "postgres.socket_dir", "not both");
}

#[test]
fn a_password_file_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let file = f.dir.path().join("pg-password");
    std::fs::write(&file, "s3cret-value\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = replace_line(
        &f.base,
        "user",
        &format!("user = \"postgres\"\npassword_file = {file:?}"),
    );
    expect_error(
        &f,
        &text,
        "password_file",
        "postgres.password_file",
        "chmod 600",
    );
    // Two secrets at once.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = replace_line(
        &f.base,
        "user",
        &format!("user = \"postgres\"\npassword_file = {file:?}\npassword_env = \"PGPW\""),
    );
    expect_error(
        &f,
        &text,
        "password_env",
        "postgres.password_env",
        "not both",
    );
    // A variable the agent does not have.
    let text = replace_line(
        &f.base,
        "user",
        "user = \"postgres\"\npassword_env = \"STAGESYNC_TEST_SURELY_UNSET\"",
    );
    expect_error(
        &f,
        &text,
        "password_env",
        "postgres.password_env",
        "is not set",
    );
    // IAM tokens are for servers over TCP.
    let text = replace_line(&f.base, "user", "user = \"postgres\"\nrds_iam = true");
    expect_error(&f, &text, "rds_iam", "postgres.rds_iam", "over TCP");
}

#[test]
fn copy_over_tcp_takes_only_a_loopback_address_beside_the_socket() {
    let f = fixture();
    for bad in ["10.0.0.5", "db.internal", "0.0.0.0"] {
        let text = replace_line(
            &f.base,
            "user",
            &format!("user = \"postgres\"\ncopy_over_tcp = {bad:?}"),
        );
        expect_error(
            &f,
            &text,
            "copy_over_tcp",
            "postgres.copy_over_tcp",
            "not a loopback address",
        );
    }
    let text = with_postgres(
        &f,
        "host = \"db.internal\"\nsslrootcert = \"ca.pem\"\nuser = \"agent\"\ncopy_over_tcp = \"127.0.0.1\"",
    );
    expect_error(
        &f,
        &text,
        "copy_over_tcp",
        "postgres.copy_over_tcp",
        "unix socket",
    );
    for good in ["127.0.0.1", "::1", "127.0.0.2"] {
        let text = replace_line(
            &f.base,
            "user",
            &format!("user = \"postgres\"\ncopy_over_tcp = {good:?}"),
        );
        accepted(&f, &text);
    }
}
