//! Code from production runs with the owner's rights and no more: a source
//! whose CHECK constraint, generated column, index expression and
//! materialized view try to make the owner a superuser, and post-restore
//! SQL that tries `RESET ROLE`, `SET SESSION AUTHORIZATION`, `COPY ... TO
//! PROGRAM`, a column default and a deferred constraint trigger. Every
//! attempt runs (the destination's server log says so) and every one is
//! refused; the refresh succeeds.
//!
//! And a destination whose `pg_hba.conf` does not let a job's role log in
//! refuses the refresh before anything changes, naming the line to add, as
//! `stagesync-agent --check` does.

use stagesync_controller::refresh::{RefreshError, refresh};
use stagesync_harness::agent::agent_binary;
use stagesync_harness::pg::HBA;
use stagesync_harness::{Fleet, PgCluster};

/// `trap.climb(what, how)` runs `how`, then tries to make the owner
/// `stage` a superuser, and logs which it managed; it acts only in a
/// database being restored, so the source's own inserts are harmless.
const TRAP: &str = r#"
CREATE SCHEMA trap;
CREATE FUNCTION trap.climb(what text, how text) RETURNS boolean
LANGUAGE plpgsql AS $f$
BEGIN
  IF current_database() LIKE 'stagesync_new_%' THEN
    RAISE WARNING 'stagesync-attempt %', what;
    BEGIN
      EXECUTE how;
      EXECUTE 'ALTER ROLE stage SUPERUSER CREATEROLE';
      RAISE WARNING 'stagesync-climbed %', what;
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'stagesync-refused % (%)', what, SQLERRM;
    END;
  END IF;
  RETURN true;
END $f$;
CREATE FUNCTION trap.climb_fixed(what text, x int) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN
  RETURN trap.climb(what, 'RESET ROLE');
END $f$;
CREATE FUNCTION trap.at_commit() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM trap.climb('deferred', 'RESET ROLE');
  RETURN NULL;
END $f$;
CREATE TABLE trap.checked (x int CHECK (trap.climb('check', 'RESET ROLE')));
INSERT INTO trap.checked VALUES (1);
CREATE TABLE trap.generated (
  x int,
  y boolean GENERATED ALWAYS AS (trap.climb_fixed('generated', x)) STORED
);
INSERT INTO trap.generated (x) VALUES (1);
CREATE TABLE trap.indexed (x int);
INSERT INTO trap.indexed VALUES (1);
CREATE INDEX indexed_climb ON trap.indexed ((trap.climb_fixed('index', x)));
CREATE MATERIALIZED VIEW trap.viewed AS SELECT trap.climb('matview', 'RESET ROLE') AS ok;
CREATE TABLE trap.defaulted (x int, y boolean DEFAULT trap.climb('default', 'RESET ROLE'));
CREATE TABLE trap.tripwire (x int);
CREATE CONSTRAINT TRIGGER tripwire AFTER INSERT ON trap.tripwire
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION trap.at_commit();
"#;

/// Post-restore SQL that tries every way out of the owner's rights it can.
fn post_restore_sql(marker: &std::path::Path) -> String {
    format!(
        "SELECT trap.climb('post-reset', 'RESET ROLE');\n\
         SELECT trap.climb('post-session', 'SET SESSION AUTHORIZATION postgres');\n\
         SELECT trap.climb('post-program', $p$COPY (SELECT 1) TO PROGRAM 'touch {}'$p$);\n\
         INSERT INTO trap.defaulted (x) VALUES (1);\n\
         INSERT INTO trap.tripwire VALUES (1);\n",
        marker.display()
    )
}

async fn role_rights(c: &PgCluster, role: &str) -> (bool, bool) {
    let row = c
        .client("postgres")
        .await
        .unwrap()
        .query_one(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Objects in `db` owned by a superuser, outside the system's own schemas.
async fn superuser_objects(c: &PgCluster, db: &str) -> Vec<String> {
    let sql = "SELECT kind || ' ' || name FROM ( \
         SELECT 'relation' AS kind, c.relname::text AS name, c.relowner AS owner, c.relnamespace AS ns FROM pg_class c \
         UNION ALL SELECT 'function', p.proname::text, p.proowner, p.pronamespace FROM pg_proc p \
         UNION ALL SELECT 'type', t.typname::text, t.typowner, t.typnamespace FROM pg_type t \
         UNION ALL SELECT 'schema', n.nspname::text, n.nspowner, n.oid FROM pg_namespace n \
       ) o JOIN pg_roles r ON r.oid = o.owner JOIN pg_namespace s ON s.oid = o.ns \
       WHERE r.rolsuper AND s.nspname NOT LIKE 'pg\\_%' AND s.nspname <> 'information_schema' \
       ORDER BY 1";
    c.strings(db, sql).await.unwrap()
}

async fn job_roles(c: &PgCluster) -> Vec<String> {
    let sql = "SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'stagesync\\_job\\_%'";
    c.strings("postgres", sql).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn code_from_the_dump_and_post_restore_sql_cannot_climb_above_the_owner() {
    let f = Fleet::builder().source_sql(TRAP).build().await;
    let marker = f.dst().dir().join("escaped");
    let mut spec = f.pair();
    spec.post_restore_sql = post_restore_sql(&marker);
    let report = refresh(f.tls(), &spec, |_| {})
        .await
        .expect("the refresh succeeds, every attempt refused");
    assert_eq!(report.database, "stage");

    // Each attempt ran: the destination's server logged it, and its refusal.
    let log = f.dst().server_log();
    for what in [
        "check",
        "generated",
        "index",
        "matview",
        "default",
        "deferred",
        "post-reset",
        "post-session",
        "post-program",
    ] {
        assert!(
            log.contains(&format!("stagesync-attempt {what}")),
            "{what} never ran:\n{log}"
        );
        assert!(
            log.contains(&format!("stagesync-refused {what} (")),
            "{what} was not refused:\n{log}"
        );
    }
    assert!(!log.contains("stagesync-climbed"), "{log}");
    assert_eq!(role_rights(f.dst(), "stage").await, (false, false));
    assert_eq!(
        superuser_objects(f.dst(), "stage").await,
        Vec::<String>::new()
    );
    assert!(!marker.exists(), "a program ran on the staging host");
    // The rows the attempts ran for are there, and the job's login is gone.
    let c = f.dst().client("stage").await.unwrap();
    let n: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM trap.checked) + (SELECT count(*) FROM trap.tripwire) \
             + (SELECT count(*) FROM trap.defaulted) + (SELECT count(*) FROM trap.viewed)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
    assert_eq!(job_roles(f.dst()).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_refuses_job_logins_is_refused_before_anything_changes() {
    let f = Fleet::builder().build().await;
    // As Debian ships it: peer for every local role.
    f.dst()
        .set_hba("local all postgres trust\nlocal all all peer\n")
        .await
        .unwrap();
    let err = refresh(f.tls(), &f.pair(), |_| {}).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RefreshError::Agent(_)), "{text}");
    assert!(
        text.contains("local   all   +stagesync_jobs   scram-sha-256"),
        "{text}"
    );
    assert!(text.contains("pg_hba.conf"), "{text}");
    f.assert_untouched().await;
    assert_eq!(job_roles(f.dst()).await, Vec::<String>::new());

    // `--check` says the same, and exits with the configuration code.
    let out = check(&f);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("local   all   +stagesync_jobs   scram-sha-256"),
        "{stderr}"
    );

    // With the line, both work.
    f.dst().set_hba(HBA).await.unwrap();
    let out = check(&f);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("job logins: ok"), "{stdout}");
    refresh(f.tls(), &f.pair(), |_| {}).await.unwrap();
}

/// `stagesync-agent --check` on the staging agent's configuration.
fn check(f: &Fleet) -> std::process::Output {
    std::process::Command::new(agent_binary().unwrap())
        .arg("--check")
        .arg("--config")
        .arg(f.staging().config_path())
        .output()
        .unwrap()
}
