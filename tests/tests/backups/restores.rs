//! Refreshes from a backup: equal to a live refresh, a corrupt one changes
//! nothing, over TCP without superuser, only from the folders the policy
//! lists.

use super::*;

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
