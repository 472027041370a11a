//! Backups into a real S3-API server (s3s-fs) by real agents over mutual
//! TLS: restorable and identical, an upload cut by a killed agent leaves no
//! backup and is aborted at the next start, retention keeps exactly the
//! configured sets and never the failed attempt's victim, `verify` catches
//! a tampered dump.

use std::path::Path;

use stagesync_controller::backup;
use stagesync_controller::plan::BackupPlan;
use stagesync_harness::fixtures::{content_hashes, schema_dump};
use stagesync_harness::fleet::{BACKUP_BUCKET, FleetBuilder, S3_PROFILE};
use stagesync_harness::proxy::FaultProxy;
use stagesync_harness::{AgentRun, Fleet, PgCluster, eventually};
use stagesync_proto::v1 as pb;
use stagesync_s3::backups::{Store, stamp};
use stagesync_s3::{ClientPool, ProfileFilePaths, S3Location, SideConfig};

/// The standard fleet with an S3 server and its bucket for backups; the
/// source may also dump `missing`, a database that is not there.
fn fleet() -> FleetBuilder {
    Fleet::builder()
        .backups()
        .prod(|p| p.may_dump.push("missing".into()))
}

fn side(endpoint: &str) -> SideConfig {
    SideConfig {
        profile: Some(S3_PROFILE.into()),
        region: None,
        endpoint: Some(endpoint.to_string()),
    }
}

fn plan(endpoint: &str, weekly: bool) -> BackupPlan {
    BackupPlan {
        daily: S3Location::new(BACKUP_BUCKET, "daily/"),
        weekly: weekly.then(|| S3Location::new(BACKUP_BUCKET, "weekly/")),
        weekly_days: (1..=31).collect(),
        keep_daily: 2,
        keep_weekly: 1,
        side: side(endpoint),
    }
}

fn aws_files(f: &Fleet) -> ProfileFilePaths {
    let (config, credentials) = f.aws_files();
    ProfileFilePaths {
        config: Some(config),
        credentials: Some(credentials),
    }
}

async fn store(f: &Fleet, prefix: &str) -> Store {
    Store::open(
        &ClientPool::new(),
        S3Location::new(BACKUP_BUCKET, prefix),
        side(&f.s3().endpoint()),
        &aws_files(f),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_to_an_identical_database_and_verify_catches_tampering() {
    let f = fleet().dest_unseeded().build().await;
    let mut progress = 0;
    let done = backup::run(
        f.tls(),
        &f.prod().target(),
        backup::request(&plan(&f.s3().endpoint(), false), "production"),
        |_| progress += 1,
    )
    .await
    .unwrap();
    assert!(done.dump_key.starts_with("daily/production/"), "{done:?}");
    assert!(done.dump_key.ends_with(".prod-db.dump"), "{done:?}");
    let daily = store(&f, "daily/").await;
    let found = daily.list("production").await.unwrap();
    assert_eq!(found.complete.len(), 1, "{found:?}");
    assert!(found.incomplete.is_empty(), "{found:?}");
    let b = &found.complete[0];
    assert_eq!(b.manifest.size, done.size);
    assert_eq!(b.manifest.sha256, done.sha256);
    assert!(b.manifest.pg_dump_version.contains("pg_dump"), "{b:?}");
    let live_size: i64 = f
        .src()
        .client("production")
        .await
        .unwrap()
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(b.manifest.database_size, live_size as u64, "{b:?}");
    assert_eq!(daily.verify(b).await.unwrap(), None);

    // Restore the object with pg_restore into another cluster.
    let dst = f.dst();
    dst.exec("postgres", "CREATE DATABASE restored")
        .await
        .unwrap();
    let bytes = f.s3().objects(BACKUP_BUCKET)[&done.dump_key].clone();
    let dump_file = dst.dir().join("backup.dump");
    std::fs::write(&dump_file, &bytes).unwrap();
    chown_to_postgres(&dump_file);
    restore(dst, "restored", &dump_file);
    assert_eq!(
        content_hashes(dst, "restored").await.unwrap(),
        content_hashes(f.src(), "production").await.unwrap()
    );
    assert_eq!(
        schema_dump(dst, "restored").unwrap(),
        schema_dump(f.src(), "production").unwrap()
    );

    // The same bytes at the same size, one flipped: verify says so.
    let path = f.s3().root.join(BACKUP_BUCKET).join(&done.dump_key);
    let mut tampered = bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x55;
    std::fs::write(&path, &tampered).unwrap();
    let why = daily
        .verify(b)
        .await
        .unwrap()
        .expect("tampering went unnoticed");
    assert!(why.contains("SHA-256"), "{why}");

    // A 10 MiB manifest beside a dump is refused by its size, not read.
    let folder = f.s3().root.join(BACKUP_BUCKET).join("daily/production");
    let base = "20990101T000000Z.prod-db";
    std::fs::write(folder.join(format!("{base}.dump")), b"dump").unwrap();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(10 << 20));
    std::fs::write(folder.join(format!("{base}.manifest.json")), big).unwrap();
    let found = daily.list("production").await.unwrap();
    assert_eq!(found.complete.len(), 1, "{found:?}");
    let (key, why) = &found.unreadable[0];
    assert!(key.ends_with(&format!("{base}.manifest.json")), "{key}");
    assert!(why.contains("larger than 1048576 bytes"), "{why}");
}

fn chown_to_postgres(path: &Path) {
    if nix::unistd::geteuid().is_root()
        && let Ok(Some(pg)) = nix::unistd::User::from_name("postgres")
    {
        nix::unistd::chown(path, Some(pg.uid), Some(pg.gid)).unwrap();
    }
}

fn restore(cluster: &PgCluster, db: &str, file: &Path) {
    let out = std::process::Command::new(cluster.bin_dir.join("pg_restore"))
        .arg("-h")
        .arg(&cluster.socket_dir)
        .args(["-p", &cluster.port.to_string(), "-U", "postgres", "-d", db])
        .args(["--no-owner", "--exit-on-error"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Multipart uploads the server holds open (s3s-fs keeps `.upload-ID.json`
/// per upload and `.upload_id-ID.part-N` per part, in its root).
fn pending_parts(root: &Path) -> usize {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".upload"))
        .count()
}

/// A production database of 24 MiB pg_dump cannot compress (more than one
/// upload part), and S3 behind a slow link, so faults land mid-upload.
/// The proxy and the endpoint through it.
async fn slow_upload(prod: AgentRun) -> (Fleet, FaultProxy, String) {
    let f = fleet()
        .no_dest()
        .source_sql(
            "CREATE EXTENSION pgcrypto; CREATE TABLE blob (id int PRIMARY KEY, data bytea); INSERT INTO blob SELECT g, gen_random_bytes(1024) FROM generate_series(1, 24576) g",
        )
        .prod_runs(prod)
        .build()
        .await;
    let proxy = FaultProxy::start(f.s3().addr).await.unwrap();
    proxy.throttle(4 * 1024 * 1024);
    let endpoint = format!("http://{}", proxy.addr);
    (f, proxy, endpoint)
}

/// Waits until upload parts are arriving at the server.
async fn wait_for_parts(proxy: &FaultProxy) {
    eventually("the upload to get going", async || {
        match proxy.forwarded() {
            n if n >= 6 * 1024 * 1024 => Ok(()),
            n => Err(n),
        }
    })
    .await
}

/// Waits until no upload is held open at the server and the source
/// agent's records of started uploads are gone.
async fn wait_uploads_gone(f: &Fleet, what: &str) {
    let records = f.prod().work_dir().join("uploads");
    eventually(what, async || {
        let parts = pending_parts(&f.s3().root);
        let recorded = std::fs::read_dir(&records).map_or(0, |d| d.count());
        match (parts, recorded) {
            (0, 0) => Ok(()),
            _ => Err(format!(
                "{parts} upload files at the server, {recorded} records; agent log: {}",
                f.prod().log_text()
            )),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_agent_leaves_no_backup_and_aborts_the_upload_when_it_starts_again() {
    let (mut f, proxy, endpoint) = slow_upload(AgentRun::Process).await;
    let (tls, target) = (f.tls(), f.prod().target());
    let req = backup::request(&plan(&endpoint, false), "production");
    let running = tokio::spawn(async move { backup::run(tls, &target, req, |_| {}).await });
    wait_for_parts(&proxy).await;
    let status = f.prod_mut().process().kill().unwrap();
    assert!(!status.success(), "the agent was not killed: {status}");
    let result = running.await.unwrap();
    assert!(result.is_err(), "a killed backup reported success");
    assert!(
        pending_parts(&f.s3().root) > 0,
        "the fault did not happen: no upload was in progress when the agent died"
    );
    let records = f.prod().work_dir().join("uploads");
    assert_eq!(
        std::fs::read_dir(&records).unwrap().count(),
        1,
        "the started upload was not recorded"
    );

    // Nothing that looks like a backup.
    let objects = f.s3().objects(BACKUP_BUCKET);
    assert!(
        objects.is_empty(),
        "objects after a killed upload: {:?}",
        objects.keys()
    );
    let found = store(&f, "daily/").await.list("production").await.unwrap();
    assert!(
        found.complete.is_empty() && found.incomplete.is_empty(),
        "{found:?}"
    );

    // The next start aborts the upload the crash left behind.
    proxy.throttle(0);
    f.prod_mut().process().start().await.unwrap();
    wait_uploads_gone(&f, "the left upload to be aborted").await;
    assert!(
        f.prod()
            .log_text()
            .contains("aborted an upload a crash left behind")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_keeps_the_configured_sets_and_never_the_newest_good_backup() {
    let f = fleet()
        .no_dest()
        .source_sql(
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)",
        )
        .build()
        .await;
    let (tls, agent) = (f.tls(), f.prod());
    let p = plan(&f.s3().endpoint(), true);
    let mut taken = Vec::new();
    for _ in 0..3 {
        let done = backup::run(
            tls.clone(),
            &agent.target(),
            backup::request(&p, "production"),
            |_| {},
        )
        .await
        .unwrap();
        assert!(done.weekly, "today is a weekly day in this plan");
        // Names have one-second resolution: the next backup starts in a
        // later second.
        eventually(
            format!("the clock to leave {}", done.taken),
            async || match stamp(time::OffsetDateTime::now_utc()) {
                now if now != done.taken => Ok(()),
                now => Err(now),
            },
        )
        .await;
        taken.push(done.taken);
    }
    let daily = store(&f, "daily/").await;
    let weekly = store(&f, "weekly/").await;
    let names = |found: &stagesync_s3::backups::Found| -> Vec<String> {
        found
            .complete
            .iter()
            .map(|b| b.manifest.taken.clone())
            .collect()
    };
    assert_eq!(
        names(&daily.list("production").await.unwrap()),
        taken[1..].to_vec(),
        "keep_daily = 2 keeps the newest two"
    );
    assert_eq!(
        names(&weekly.list("production").await.unwrap()),
        taken[2..].to_vec(),
        "keep_weekly = 1 keeps the newest"
    );

    // A failing attempt (pg_dump cannot get its lock) prunes nothing.
    let locker = f.src().client("production").await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut req = backup::request(&p, "production");
    req.dump = Some(pb::DumpOptions {
        extra_args: vec!["--lock-wait-timeout=300".into()],
        ..Default::default()
    });
    let err = backup::run(tls.clone(), &agent.target(), req, |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pg_dump failed"), "{err}");
    locker.batch_execute("ROLLBACK").await.unwrap();
    let after = daily.list("production").await.unwrap();
    assert_eq!(names(&after), taken[1..].to_vec());
    assert!(after.incomplete.is_empty(), "{after:?}");
    assert_eq!(
        pending_parts(&f.s3().root),
        0,
        "the failed upload was not aborted"
    );
    assert_eq!(
        names(&weekly.list("production").await.unwrap()),
        taken[2..].to_vec()
    );

    // A database that is not there fails before anything is uploaded.
    let err = backup::run(
        tls.clone(),
        &agent.target(),
        backup::request(&p, "missing"),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    // Places outside policy.may_backup_to are refused: another bucket, and
    // the allowed bucket name on another server.
    let mut elsewhere = p.clone();
    elsewhere.daily = S3Location::new("other-bucket", "x/");
    let mut other_server = p.clone();
    other_server.side.endpoint = Some("https://s3.attacker.example".into());
    for (plan, place) in [
        (&elsewhere, format!("{}/other-bucket/x/", f.s3().endpoint())),
        (
            &other_server,
            "https://s3.attacker.example/backups/daily/".to_string(),
        ),
    ] {
        let err = backup::run(
            tls.clone(),
            &agent.target(),
            backup::request(plan, "production"),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("may not upload backups to {place}")),
            "{err}"
        );
    }
    assert_eq!(
        names(&daily.list("production").await.unwrap()),
        taken[1..].to_vec()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_from_the_newest_backup_equals_a_live_refresh_and_a_corrupt_one_changes_nothing()
{
    refresh_from_backup(fleet()).await;
}

/// The same with both agents on managed-like servers: the backup's pg_dump
/// and the restore log in over TCP with TLS, as logins without superuser.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_and_a_refresh_from_one_work_over_tcp_without_superuser() {
    refresh_from_backup(fleet().managed()).await;
}

async fn refresh_from_backup(fleet: FleetBuilder) {
    use stagesync_controller::refresh::{BackupSource, PairSource, PairSpec, refresh};
    let f = fleet
        .staging(|s| s.may_overwrite.push("live_copy".into()))
        .build()
        .await;
    let (src, dst, tls) = (f.src(), f.dst(), f.tls());
    dst.exec("postgres", "CREATE DATABASE live_copy OWNER stage")
        .await
        .unwrap();
    let p = plan(&f.s3().endpoint(), false);
    let done = backup::run(
        tls.clone(),
        &f.prod().target(),
        backup::request(&p, "production"),
        |_| {},
    )
    .await
    .unwrap();
    let source = BackupSource {
        place: S3Location::new(BACKUP_BUCKET, "daily/"),
        side: p.side.clone(),
        files: aws_files(&f),
        database: "production".into(),
        taken: None,
    };
    let from = |source: &BackupSource| {
        let source = PairSource::Backup(source.clone());
        PairSpec::with_source(source, f.staging().target(), "stage", "stage")
    };
    let spec = from(&source);
    let report = refresh(tls.clone(), &spec, |_| {}).await.unwrap();
    assert_eq!(report.database, "stage");
    // The same source refreshed live, for comparison.
    let mut live = f.pair();
    live.dest_db = "live_copy".into();
    refresh(tls.clone(), &live, |_| {}).await.unwrap();
    let from_backup = content_hashes(dst, "stage").await.unwrap();
    assert_eq!(
        from_backup,
        content_hashes(src, "production").await.unwrap()
    );
    assert_eq!(from_backup, content_hashes(dst, "live_copy").await.unwrap());
    assert_eq!(
        schema_dump(dst, "stage").unwrap(),
        schema_dump(dst, "live_copy").unwrap()
    );

    // A dump object that no longer matches its manifest is refused at the
    // trailer, and the live database stays as it was.
    let before = content_hashes(dst, "stage").await.unwrap();
    let path = f.s3().root.join(BACKUP_BUCKET).join(&done.dump_key);
    // The database name in the dump's header: pg_restore ignores it, so
    // only the checksum can notice.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(b"production".len())
        .position(|w| w == b"production")
        .expect("the header names the database");
    bytes[at] = b'q';
    std::fs::write(&path, &bytes).unwrap();
    let err = refresh(tls.clone(), &spec, |_| {}).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("SHA-256 digest does not match"),
        "not caught by the checksum: {text}"
    );
    assert_eq!(content_hashes(dst, "stage").await.unwrap(), before);
    let leftovers = f.stagesync_databases().await;
    assert!(
        !leftovers.iter().any(|d| d.starts_with("stagesync_new_")),
        "a new database was left behind: {leftovers:?}"
    );

    // No complete backup at all: refused before anything starts.
    let none = BackupSource {
        database: "nothing".into(),
        ..source.clone()
    };
    let err = refresh(tls, &from(&none), |_| {}).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no complete backup of \"nothing\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_that_goes_away_cancels_the_backup_and_its_upload() {
    let (f, proxy, endpoint) = slow_upload(AgentRun::InProcess).await;
    let (tls, target) = (f.tls(), f.prod().target());
    let req = backup::request(&plan(&endpoint, false), "production");
    let running = tokio::spawn(async move { backup::run(tls, &target, req, |_| {}).await });
    wait_for_parts(&proxy).await;
    assert!(
        pending_parts(&f.s3().root) > 0,
        "the fault did not happen: no upload in progress"
    );
    // The controller goes away (as on Ctrl-C): its stream closes.
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    proxy.throttle(0);
    wait_uploads_gone(&f, "the cancelled backup's upload to be aborted").await;
    assert!(f.s3().objects(BACKUP_BUCKET).is_empty());
    // The database's slot is free again: a new backup runs. The slot is
    // freed just after the cleanup seen above, so a backup started in
    // between is told to wait; it may take a moment.
    let req = backup::request(&plan(&f.s3().endpoint(), false), "production");
    let done = eventually(
        "the cancelled backup to free its slot",
        async || match backup::run(f.tls(), &f.prod().target(), req.clone(), |_| {}).await {
            Err(e) if e.to_string().contains("already running") => Err(e.to_string()),
            r => Ok(r),
        },
    )
    .await
    .unwrap();
    assert!(done.size > 20 * 1024 * 1024, "{done:?}");
}

/// `policy.may_restore_from` names a folder: backups under it restore,
/// a backup elsewhere in the same bucket is refused, and so is a request
/// that names the permitted folder but a key outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_come_only_from_the_folders_the_policy_lists() {
    use stagesync_controller::refresh::{BackupSource, PairSource, PairSpec, refresh};
    let f = fleet()
        .staging(|s| s.may_restore_from = vec!["http://127.0.0.1:*/backups/db1/*".into()])
        .build()
        .await;
    let tls = f.tls();
    let mut taken = Vec::new();
    for prefix in ["db1/", "hr/"] {
        let mut p = plan(&f.s3().endpoint(), false);
        p.daily = S3Location::new(BACKUP_BUCKET, prefix);
        let req = backup::request(&p, "production");
        let done = backup::run(tls.clone(), &f.prod().target(), req, |_| {})
            .await
            .unwrap();
        taken.push((p, done));
    }
    let from = |prefix: &str| {
        let source = PairSource::Backup(BackupSource {
            place: S3Location::new(BACKUP_BUCKET, prefix),
            side: side(&f.s3().endpoint()),
            files: aws_files(&f),
            database: "production".into(),
            taken: None,
        });
        PairSpec::with_source(source, f.staging().target(), "stage", "stage")
    };
    refresh(tls.clone(), &from("db1/"), |_| {}).await.unwrap();
    assert_eq!(
        content_hashes(f.dst(), "stage").await.unwrap(),
        content_hashes(f.src(), "production").await.unwrap()
    );
    let before = content_hashes(f.dst(), "stage").await.unwrap();
    let err = refresh(tls.clone(), &from("hr/"), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("may not restore from"), "{err}");
    assert!(err.contains("/backups/hr/production/"), "{err}");

    // A request naming the permitted folder with a key from elsewhere.
    let mut dest = stagesync_controller::client::connect(tls.clone(), &f.staging().target())
        .await
        .unwrap();
    let ticket = "c".repeat(64);
    dest.prepare_restore(pb::PrepareRestoreRequest {
        job_id: "00000000000000c1".into(),
        database: "stage".into(),
        owner: "stage".into(),
        shape: Some(pb::Shape::one_pass(pb::Mode::Stream)),
        jobs: 1,
        ticket: ticket.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let hr = &taken[1].1;
    let refused = dest
        .restore_backup(pb::RestoreBackupRequest {
            job_id: "00000000000000c1".into(),
            ticket,
            place: Some(pb::S3Place {
                bucket: BACKUP_BUCKET.into(),
                prefix: "db1/production/".into(),
                profile: S3_PROFILE.into(),
                endpoint: f.s3().endpoint(),
                ..Default::default()
            }),
            dump_key: hr.dump_key.clone(),
            size: hr.size,
            sha256: hr.sha256.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("is not under"),
        "{}",
        refused.message()
    );
    dest.abort(pb::AbortRequest {
        job_id: "00000000000000c1".into(),
        reason: "test over".into(),
        side: pb::Side::Dest as i32,
    })
    .await
    .unwrap();
    assert_eq!(content_hashes(f.dst(), "stage").await.unwrap(), before);
}
