//! Retention keeps exactly the configured sets, never the newest good one.

use super::*;

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
