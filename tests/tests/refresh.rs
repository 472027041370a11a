//! Database refreshes between two real agents over mutual TLS, on two real
//! PostgreSQL clusters.

use stagesync_controller::refresh::{
    Compress, CopyFormat, PairSpec, RefreshError, refresh, rollback,
};
use stagesync_harness::Fleet;
use stagesync_harness::fixtures::{assert_identical, content_hashes};
use stagesync_proto::v1 as pb;

/// Production with the rich database, staging with an older `stage`; both
/// policies also take names that need quoting.
async fn fleet() -> Fleet {
    Fleet::builder()
        .prod(|p| {
            p.may_dump.push("Prod *".into());
            // Every table is big enough for a data lane of its own, so that
            // the small fixture takes the path large databases take.
            p.jobs.insert("lane_min_table_mb".into(), 0);
        })
        .staging(|s| s.may_overwrite = vec!["stage*".into(), "Stage *".into()])
        .build()
        .await
}

async fn refresh_and_compare(mode: pb::Mode, compress: Compress, jobs: u32) {
    let f = fleet().await;
    let mut spec = f.pair();
    spec.mode = mode;
    spec.compress = compress;
    spec.jobs = jobs;
    let mut events = 0;
    let report = refresh(f.tls(), &spec, |_| events += 1)
        .await
        .expect("refresh succeeds");
    assert!(events >= 3);
    assert_eq!(report.database, "stage");
    assert_eq!(report.previous, "stagesync_prev_stage");
    assert!(report.bytes_restored > 1_000_000, "{report:?}");
    // Stream mode with several workers builds indexes, constraints and
    // triggers in a parallel pass of their own after the data.
    let split = mode == pb::Mode::Stream && jobs > 1;
    assert_eq!(
        report.post_data_jobs,
        if split { jobs } else { 0 },
        "{report:?}"
    );
    // ... and copies the tables' rows in one copy lane per worker, beside
    // lane 0 (sequence values, the large object).
    assert_eq!(
        report.data_lanes,
        if split { jobs + 1 } else { 0 },
        "{report:?}"
    );
    // With lanes, tables' own indexes and keys are built as each lands
    // (the fixture has more than lanes can hold back).
    assert_eq!(report.indexes_built > 0, split, "{report:?}");
    // Every table's rows came on the copy lanes (app.posts alone has
    // 100000), each table whole.
    if split {
        assert!(report.tables_copied >= 8, "{report:?}");
        assert_eq!(report.slices_copied, report.tables_copied, "{report:?}");
        assert!(report.rows_copied > 120_000, "{report:?}");
        // Both servers run one major version: every table's rows went in
        // the binary format but app.odd_columns' (an array of an enum, a
        // composite, a regclass: text).
        assert_eq!(report.tables_copied - report.tables_binary, 1, "{report:?}");
    } else {
        assert_eq!(report.rows_copied, 0, "{report:?}");
    }
    if compress == Compress::Always {
        assert!(
            report.bytes_sent < report.bytes_dumped,
            "zstd was not used: {report:?}"
        );
    } else {
        // Both agents are on this host: no compression by default.
        assert_eq!(report.bytes_sent, report.bytes_dumped, "{report:?}");
    }
    assert_identical(&f).await;
    // The old content is kept as the previous copy; nothing else is left.
    let dbs = f.dest_databases().await;
    assert!(dbs.contains(&"stagesync_prev_stage".to_string()), "{dbs:?}");
    assert!(
        !dbs.iter().any(|d| d.starts_with("stagesync_new_")),
        "{dbs:?}"
    );
    let old = f.dst().client("stagesync_prev_stage").await.unwrap();
    let n: i64 = old
        .query_one("SELECT count(*) FROM old_data", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_mode_arrives_identical() {
    refresh_and_compare(pb::Mode::Stream, Compress::Always, 2).await;
}

/// Four copy lanes for the fixture's tables (among them one named with
/// dots, a star and quotes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_mode_in_four_lanes_arrives_identical() {
    refresh_and_compare(pb::Mode::Stream, Compress::Auto, 4).await;
}

/// `copy_format = "text"` (here `CopyFormat::Text`) sends every table's
/// rows as text; the copy arrives identical all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_rows_when_the_plan_asks() {
    let f = fleet().await;
    let mut spec = f.pair();
    spec.copy_format = CopyFormat::Text;
    let report = refresh(f.tls(), &spec, |_| {})
        .await
        .expect("refresh succeeds");
    assert!(report.tables_copied >= 8, "{report:?}");
    assert_eq!(report.tables_binary, 0, "{report:?}");
    assert_identical(&f).await;
}

/// A table above `jobs.split_table_mb` travels in slices of block ranges,
/// several lanes copying it at once; it arrives identical, its keys built
/// once its last slice is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_table_in_slices_arrives_identical() {
    let f = Fleet::builder()
        .prod(|p| {
            p.jobs.insert("lane_min_table_mb".into(), 0);
            // app.posts (about 15 MiB) in 4 MiB slices.
            p.jobs.insert("split_table_mb".into(), 4);
        })
        .build()
        .await;
    let mut spec = f.pair();
    spec.jobs = 3;
    let report = refresh(f.tls(), &spec, |_| {})
        .await
        .expect("refresh succeeds");
    assert_eq!(report.data_lanes, 4, "{report:?}");
    assert!(
        report.slices_copied >= report.tables_copied + 3,
        "app.posts went in slices: {report:?}"
    );
    // Its slices went in binary, each a COPY of its own.
    assert_eq!(report.tables_copied - report.tables_binary, 1, "{report:?}");
    assert!(report.indexes_built > 0, "{report:?}");
    assert_identical(&f).await;
}

/// A schema filter turns the lanes off (pg_dump would not apply it to
/// tables named on their own), as does `lanes = 0`; the split stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_filters_keep_the_data_in_one_lane() {
    let f = fleet().await;
    let mut spec = f.pair();
    // A pattern that matches no schema: the filter changes nothing but
    // the way the data travels.
    spec.dump.exclude_schemas = vec!["scratch_*".into()];
    let report = refresh(f.tls(), &spec, |_| {})
        .await
        .expect("refresh succeeds");
    assert_eq!(report.post_data_jobs, 2, "{report:?}");
    assert_eq!(report.data_lanes, 0, "{report:?}");
    assert_identical(&f).await;
    // The plan may ask for no copy lanes: the same.
    let mut spec = f.pair();
    spec.lanes = Some(0);
    let report = refresh(f.tls(), &spec, |_| {})
        .await
        .expect("refresh succeeds");
    assert_eq!(report.post_data_jobs, 2, "{report:?}");
    assert_eq!(report.data_lanes, 0, "{report:?}");
    assert_identical(&f).await;
}

/// The plan's own table filters hold inside lanes: the largest table
/// (app.posts, a lane of its own) keeps its definition but not its data, an
/// excluded table is absent, and the rest arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_filters_apply_inside_lanes() {
    let f = fleet().await;
    let mut spec = f.pair();
    spec.jobs = 4;
    spec.dump.exclude_table_data = vec!["app.posts".into()];
    spec.dump.exclude_tables = vec!["audit.log".into()];
    let report = refresh(f.tls(), &spec, |_| {})
        .await
        .expect("refresh succeeds");
    assert_eq!(report.data_lanes, 5, "{report:?}");
    let c = f.dst().client("stage").await.unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM app.posts").await, 0);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_class WHERE oid = to_regclass('audit.log')"
        )
        .await,
        0
    );
    assert_eq!(count(&c, "SELECT count(*) FROM app.users").await, 2000);
    assert_eq!(
        count(&c, r#"SELECT count(*) FROM app."Big ""*.t""#).await,
        20_000
    );
    assert_eq!(count(&c, "SELECT count(*) FROM app.members").await, 500);
}

/// A table whose data the plan leaves out is not copied (and its lane, if
/// it were alone, would be an empty one): with the data of every table in
/// `app` and `Billing Dept` excluded, only the other schemas' tables are
/// left to fill the copy lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lanes_skip_tables_the_plan_leaves_out() {
    let f = fleet().await;
    let src = f.src().client("production").await.unwrap();
    let tables = |except_app: bool| {
        let src = &src;
        async move {
            let sql = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
                   AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
                   AND NOT ($1 AND n.nspname IN ('app', 'Billing Dept')) \
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                       AND d.objid = c.oid AND d.deptype = 'e')";
            let n: i64 = src.query_one(sql, &[&except_app]).await.unwrap().get(0);
            n as u32
        }
    };
    // Copy lanes: at most one per table, at most 8 with 8 jobs; plus
    // lane 0.
    let lanes = |n: u32| if n == 0 { 0 } else { n.min(8) + 1 };
    let (all, outside_app) = (tables(false).await, tables(true).await);
    assert!(
        lanes(outside_app) < lanes(all),
        "the fixture must have enough app tables for the exclusion to show: {all} tables, {outside_app} outside app"
    );
    let mut spec = f.pair();
    spec.jobs = 8;
    spec.dump.exclude_table_data = vec!["APP.*".into(), "\"Billing Dept\".*".into()];
    let report = refresh(f.tls(), &spec, |_| {})
        .await
        .expect("refresh succeeds");
    assert_eq!(report.data_lanes, lanes(outside_app), "{report:?}");
    let c = f.dst().client("stage").await.unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM app.users").await, 0);
    assert_eq!(
        count(&c, r#"SELECT count(*) FROM app."Big ""*.t""#).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_mode_in_one_pass_arrives_identical() {
    refresh_and_compare(pb::Mode::Stream, Compress::Auto, 1).await;
}

/// The session that exports the split stream's snapshot sits idle in its
/// transaction while the dumps run; a timeout for that on the source must
/// not end it (which would quietly fall back to one pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_survives_an_idle_in_transaction_timeout_on_the_source() {
    let f = fleet().await;
    f.src()
        .exec(
            "postgres",
            "ALTER DATABASE production SET idle_in_transaction_session_timeout = '1ms'",
        )
        .await
        .unwrap();
    let report = refresh(f.tls(), &f.pair(), |_| {})
        .await
        .expect("refresh succeeds");
    assert_eq!(report.post_data_jobs, 2, "{report:?}");
    assert_identical(&f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settings_grants_sessions_and_rollback() {
    settings_grants_sessions_and_rollback_in(fleet().await, true).await;
}

/// The same, with both agents on managed-like servers over TCP, as logins
/// that are no superuser (nor CREATEROLE: a role's own setting in the live
/// database is refused at preflight, naming the right, until it is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settings_grants_sessions_and_rollback_without_superuser() {
    settings_grants_sessions_and_rollback_in(Fleet::builder().managed().build().await, false).await;
}

/// The live database's settings and grants carry over, a session open on
/// it is ended, the post-restore SQL runs, and a rollback brings the old
/// content back.
async fn settings_grants_sessions_and_rollback_in(f: Fleet, may_alter_roles: bool) {
    f.dst()
        .exec("postgres", "CREATE ROLE reader LOGIN")
        .await
        .unwrap();
    f.dst()
        .exec(
            "postgres",
            "ALTER DATABASE stage SET work_mem = '7MB'; ALTER ROLE reader IN DATABASE stage SET search_path = app, public; \
             REVOKE ALL ON DATABASE stage FROM PUBLIC; GRANT CONNECT ON DATABASE stage TO reader; ALTER DATABASE stage CONNECTION LIMIT 40",
        )
        .await
        .unwrap();
    if !may_alter_roles {
        let refused = refresh(f.tls(), &f.pair(), |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("CREATEROLE")
                && refused.contains("reader")
                && refused.contains("nothing was changed"),
            "{refused}"
        );
        f.assert_untouched().await;
        f.dst()
            .exec("postgres", "ALTER ROLE reader IN DATABASE stage RESET ALL")
            .await
            .unwrap();
    }
    let before = content_hashes(f.dst(), "stage").await.unwrap();
    // A session open during the refresh is ended.
    let open = f.dst().client_as("stage", "reader").await.unwrap();
    open.query_one("SELECT 1", &[]).await.unwrap();

    let mut spec = f.pair();
    spec.post_restore_sql = "UPDATE public.socialaccount_socialapp SET client_id = ${CLIENT_ID}, secret = ${SECRET} WHERE provider = 'github'".into();
    spec.params.insert("CLIENT_ID".into(), "stage-id".into());
    spec.params.insert("SECRET".into(), "it's s3cret\\".into());
    refresh(f.tls(), &spec, |_| {}).await.unwrap();

    assert!(
        open.query_one("SELECT 1", &[]).await.is_err(),
        "the old session was ended"
    );
    let c = f.dst().client("postgres").await.unwrap();
    let row = c
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text, datconnlimit, datacl::text FROM pg_database WHERE datname = 'stage'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "stage");
    assert_eq!(row.get::<_, i32>(1), 40);
    let acl: String = row.get(2);
    assert!(acl.contains("reader=c/"), "{acl}");
    assert!(
        !acl.contains("=Tc/"),
        "PUBLIC must not get CONNECT back: {acl}"
    );
    let settings: Vec<String> = c
        .query(
            "SELECT coalesce(r.rolname, '*') || ':' || array_to_string(s.setconfig, ',') FROM pg_db_role_setting s \
             JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole \
             WHERE d.datname = 'stage' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut want = vec!["*:work_mem=7MB", "reader:search_path=app, public"];
    want.truncate(if may_alter_roles { 2 } else { 1 });
    assert_eq!(settings, want);
    // New sessions see the new data, with the post-restore SQL applied.
    let s = f.dst().client_as("stage", "stage").await.unwrap();
    let app = s
        .query_one(
            "SELECT client_id, secret FROM public.socialaccount_socialapp",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(app.get::<_, String>(0), "stage-id");
    assert_eq!(app.get::<_, String>(1), "it's s3cret\\");

    let back = rollback(f.tls(), &f.staging().target(), "stage")
        .await
        .unwrap();
    assert_eq!(back.previous_database, "stagesync_prev_stage");
    assert_eq!(content_hashes(f.dst(), "stage").await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_that_need_quoting() {
    let f = fleet().await;
    let source_db = r#"Prod "Main" DB"#;
    let dest_db = "Stage 'q' DB";
    let owner = r#"Stage "Owner"; DROP ROLE stage; --"#;
    f.src()
        .exec(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", source_db.replace('"', "\"\"")),
        )
        .await
        .unwrap();
    f.src()
        .exec(
            source_db,
            "CREATE TABLE t (x int); INSERT INTO t VALUES (42)",
        )
        .await
        .unwrap();
    f.dst()
        .exec(
            "postgres",
            &format!("CREATE ROLE \"{}\" LOGIN", owner.replace('"', "\"\"")),
        )
        .await
        .unwrap();
    let mut spec = f.pair_from(source_db);
    spec.dest_db = dest_db.into();
    spec.owner = owner.into();
    spec.post_restore_sql = "INSERT INTO t VALUES (${V})".into();
    spec.params.insert("V".into(), "7".into());
    // Copy lanes, then one pass.
    for jobs in [2, 1] {
        spec.jobs = jobs;
        refresh(f.tls(), &spec, |_| {})
            .await
            .expect("quoted names work");
    }
    let c = f.dst().client(dest_db).await.unwrap();
    let rows: Vec<String> = c
        .query("SELECT x::text FROM t ORDER BY x", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // '7' is a text literal, cast on insert: the value never became SQL.
    assert_eq!(rows, vec!["42", "7"]);
    let owner_of: String = c
        .query_one(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE relname = 't'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner_of, owner);
    let stage_role: i64 = c
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = 'stage'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stage_role, 1, "nothing was injected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_outside_the_policies() {
    let f = fleet().await;
    // Restore into a database the destination may not overwrite.
    let mut spec = f.pair();
    spec.dest_db = "postgres".into();
    let err = refresh(f.tls(), &spec, |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("may not overwrite"), "{err}");
    // Dump a database the source may not dump.
    f.src()
        .exec("postgres", "CREATE DATABASE secrets")
        .await
        .unwrap();
    let spec = f.pair_from("secrets");
    let err = refresh(f.tls(), &spec, |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("may not dump"), "{err}");
    // A missing owner role.
    let mut spec = f.pair();
    spec.owner = "nobody".into();
    let err = refresh(f.tls(), &spec, |_| {}).await.unwrap_err();
    assert!(matches!(err, RefreshError::Preflight(_)), "{err}");
    assert!(
        err.to_string().contains("\"nobody\" does not exist"),
        "{err}"
    );
    // A reversed pair: staging into production. Production's agent refuses.
    let reversed = PairSpec::new(
        f.staging().target(),
        "stage",
        f.prod().target(),
        "production",
        "postgres",
    );
    let err = refresh(f.tls(), &reversed, |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("may not"), "{err}");
    let left = f.stagesync_databases().await;
    assert!(left.is_empty(), "{left:?}");
}

/// The single count a query returns.
async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// An owner role with rights beyond its own objects would run the dump's
/// code with them: refused at preflight and by the agent itself, naming
/// the role and why, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owners_with_more_than_their_own_rights_are_refused() {
    let f = Fleet::builder().build().await;
    for (role, attribute, why) in [
        ("boss", "SUPERUSER", "superuser"),
        ("hr_admin", "CREATEROLE", "CREATEROLE"),
        ("auditor", "BYPASSRLS", "BYPASSRLS"),
    ] {
        f.dst()
            .exec("postgres", &format!("CREATE ROLE {role} LOGIN {attribute}"))
            .await
            .unwrap();
        let mut spec = f.pair();
        spec.owner = role.into();
        let err = refresh(f.tls(), &spec, |_| {}).await.unwrap_err();
        assert!(matches!(err, RefreshError::Preflight(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("{role:?}")) && text.contains(why),
            "{text}"
        );

        // The agent refuses it on its own, whatever a controller checked.
        let mut dest = stagesync_controller::client::connect(f.tls(), &f.staging().target())
            .await
            .unwrap();
        let refused = dest
            .prepare_restore(pb::PrepareRestoreRequest {
                job_id: "00000000000000d1".into(),
                database: "stage".into(),
                owner: role.into(),
                shape: Some(pb::Shape::one_pass(pb::Mode::Stream)),
                jobs: 1,
                ticket: "d".repeat(64),
                source_identity: "spiffe://stagesync/agent/prod-db".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let message = refused.message();
        assert!(
            message.contains(&format!("{role:?}")) && message.contains(why),
            "{message}"
        );
    }
    f.assert_untouched().await;
}

/// A SQL_ASCII database's bytes are not converted to UTF-8 (nor checked),
/// so its data stays in pg_dump's stream rather than the copy lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sql_ascii_database_keeps_its_data_in_one_stream() {
    let f = fleet().await;
    f.src()
        .exec(
            "postgres",
            "CREATE DATABASE \"Prod legacy\" ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        )
        .await
        .unwrap();
    f.src()
        .exec(
            "Prod legacy",
            "CREATE TABLE notes (id int PRIMARY KEY, body text); \
             INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 1000) g",
        )
        .await
        .unwrap();
    let report = refresh(f.tls(), &f.pair_from("Prod legacy"), |_| {})
        .await
        .expect("refresh succeeds");
    assert_eq!(report.data_lanes, 0, "{report:?}");
    assert_eq!(report.tables_copied, 0, "{report:?}");
    let c = f.dst().client("stage").await.unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM notes").await, 1000);
}
