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

mod restores;
mod retention;
mod uploads;

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
