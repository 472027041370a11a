//! What a mirror does when something is wrong: a failed copy, the delete
//! guard, a flaky server, a missing bucket or profile, wrong credentials.

use super::*;

pub(super) async fn failed_copy_deletes_nothing(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let (src, dst) = (bucket("failed-src", backend), bucket("failed-dst", backend));
    create_bucket(&c, &src).await;
    create_bucket(&c, &dst).await;
    put_bytes(&c, &src, "good.txt", b"good").await;
    put_bytes(&c, &src, "poison.txt", b"poison").await;
    put_bytes(&c, &dst, "extra.txt", b"extra").await;
    let faulty = proxy::start(
        server.addr,
        Faults {
            deny_put_containing: Some("poison".into()),
            ..Faults::default()
        },
    )
    .await;

    let spec = spec(
        "media",
        S3Location::new(&src, ""),
        S3Location::new(&dst, ""),
        &faulty.endpoint,
        &profiles,
    );
    let err = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect_err("a copy fails");
    assert!(
        faulty
            .stats
            .denied
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0,
        "the fault happened"
    );
    assert!(
        matches!(err, SyncError::CopiesFailed { failed: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("poison.txt"), "{err}");
    let dest = contents(&c, &dst, "").await;
    assert!(
        dest.contains_key("extra.txt"),
        "nothing deleted after a failure"
    );
    assert!(dest.contains_key("good.txt"));
}

pub(super) async fn delete_guard_stops_large_mirror(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let (src, dst) = (bucket("guard-src", backend), bucket("guard-dst", backend));
    create_bucket(&c, &src).await;
    create_bucket(&c, &dst).await;
    put_bytes(&c, &src, "keep.txt", b"keep").await;
    for i in 0..5 {
        put_bytes(&c, &dst, &format!("old-{i}.txt"), b"old").await;
    }
    let mut spec = spec(
        "media",
        S3Location::new(&src, ""),
        S3Location::new(&dst, ""),
        &server.endpoint,
        &profiles,
    );
    spec.delete_limit = DeleteLimit {
        max_count: Some(2),
        max_percent: None,
    };
    let err = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect_err("guard trips");
    assert!(
        matches!(
            err,
            SyncError::DeleteGuard {
                would_delete: 5,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(contents(&c, &dst, "").await.len(), 6, "nothing deleted");

    spec.delete_limit = DeleteLimit {
        max_count: None,
        max_percent: Some(50.0),
    };
    let err = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect_err("percentage guard trips");
    assert!(
        matches!(
            err,
            SyncError::DeleteGuard {
                would_delete: 5,
                dest_objects: 6,
                ..
            }
        ),
        "{err}"
    );

    spec.force_delete = true;
    let report = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("forced");
    assert_eq!(report.deleted.objects, 5);
    assert_eq!(contents(&c, &dst, "").await, contents(&c, &src, "").await);
}

pub(super) async fn survives_slow_down_and_connection_resets(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let (src, dst) = (bucket("faults-src", backend), bucket("faults-dst", backend));
    let tree_dst = bucket("faults-tree", backend);
    create_bucket(&c, &src).await;
    create_bucket(&c, &dst).await;
    create_bucket(&c, &tree_dst).await;
    for i in 0..30u8 {
        put_bytes(
            &c,
            &src,
            &format!("d{}/obj-{i:02}", i % 5),
            &bytes(500 + i as usize, i),
        )
        .await;
    }
    put_bytes(&c, &dst, "extra", b"extra").await;
    let faulty = proxy::start(
        server.addr,
        Faults {
            slow_down_every: 4,
            reset_every: 3,
            ..Faults::default()
        },
    )
    .await;
    let mut spec = spec(
        "media",
        S3Location::new(&src, ""),
        S3Location::new(&dst, ""),
        &faulty.endpoint,
        &profiles,
    );
    spec.force_delete = true;
    let report = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("sync despite faults");
    use std::sync::atomic::Ordering::SeqCst;
    assert!(
        faulty.stats.slow_downs.load(SeqCst) > 0,
        "503 SlowDown was injected"
    );
    assert!(
        faulty.stats.resets.load(SeqCst) > 0,
        "connections were reset"
    );
    assert_eq!(report.copied.objects, 30);
    assert_eq!(report.deleted_keys, vec!["extra"]);
    assert_eq!(contents(&c, &dst, "").await, contents(&c, &src, "").await);

    // Folder-by-folder listing, with its pages fetched ahead, under the same faults.
    let before = faulty.stats.slow_downs.load(SeqCst) + faulty.stats.resets.load(SeqCst);
    spec.dest = S3Location::new(&tree_dst, "");
    spec.listing = ListingMode::Tree;
    let report = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("tree sync despite faults");
    assert!(
        faulty.stats.slow_downs.load(SeqCst) + faulty.stats.resets.load(SeqCst) > before,
        "faults were injected during the tree run too"
    );
    assert_eq!(report.copied.objects, 30);
    assert_eq!(
        contents(&c, &tree_dst, "").await,
        contents(&c, &src, "").await
    );

    // A no-change run where every third request is answered 503: on a
    // server whose listings carry no ETags every comparison is a HEAD, and
    // those the lean path is refused are asked again through the SDK.
    let slowing = proxy::start(
        server.addr,
        Faults {
            slow_down_every: 3,
            ..Faults::default()
        },
    )
    .await;
    through(&mut spec, &slowing.endpoint);
    let report = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("no-change sync despite faults");
    assert!(
        slowing.stats.slow_downs.load(SeqCst) > 0,
        "503s were injected"
    );
    assert_eq!((report.copied.objects, report.skipped.objects), (0, 30));
    if backend == Backend::S3sFs {
        let (lean, sdk) = (
            slowing.stats.lean_heads.load(SeqCst),
            slowing.stats.sdk_heads.load(SeqCst),
        );
        assert!(
            lean >= 60,
            "every object asked for on both sides by a lean HEAD"
        );
        assert!(sdk > 0, "the refused ones asked again through the SDK");
    }
    assert_eq!(
        contents(&c, &tree_dst, "").await,
        contents(&c, &src, "").await
    );
}

pub(super) async fn missing_bucket_names_copy_side_bucket_profile(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let src = bucket("missing-src", backend);
    create_bucket(&c, &src).await;
    let spec = spec(
        "uploads",
        S3Location::new(&src, ""),
        S3Location::new("no-such-bucket-here", ""),
        &server.endpoint,
        &profiles,
    );
    let err = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect_err("missing bucket");
    let SyncError::MissingBucket { target } = &err else {
        panic!("wrong error: {err}")
    };
    assert_eq!(target.side, Side::Dest);
    let text = err.to_string();
    for part in ["uploads", "destination", "no-such-bucket-here", "prod"] {
        assert!(text.contains(part), "`{text}` names {part}");
    }
}

pub(super) async fn unknown_profile_names_copy_side_bucket_profile(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let mut spec = spec(
        "uploads",
        S3Location::new("src-bucket", ""),
        S3Location::new("dst-bucket", ""),
        &server.endpoint,
        &profiles,
    );
    spec.source_side.profile = Some("prdo".into());
    let err = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect_err("unknown profile");
    assert!(matches!(err, SyncError::UnknownProfile { .. }), "{err}");
    let text = err.to_string();
    for part in ["uploads", "source", "src-bucket", "prdo"] {
        assert!(text.contains(part), "`{text}` names {part}");
    }
}

pub(super) async fn wrong_credentials_are_access_denied(backend: Backend) {
    // moto only checks keys when told to; start one that does.
    let (guard, server_endpoint, keys) = match backend {
        Backend::S3sFs => {
            let s = servers::s3s_fs(common::servers::KEYS_A).await;
            let endpoint = s.endpoint.clone();
            (
                Box::new(s) as Box<dyn std::any::Any>,
                endpoint,
                Some(common::servers::KEYS_A),
            )
        }
        Backend::Moto => {
            let (child, addr) = servers::start_moto(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
            (
                Box::new(child) as Box<dyn std::any::Any>,
                format!("http://{addr}"),
                None,
            )
        }
    };
    let profiles = Profiles::new();
    let b = bucket("wrongkeys", backend);
    if let Some(keys) = keys {
        create_bucket(&client(&server_endpoint, keys), &b).await;
    }
    let mut spec = spec(
        "uploads",
        // Side by side in one bucket (one inside the other would be
        // refused before any request: a mirror into its own source).
        S3Location::new(&b, "uploads/"),
        S3Location::new(&b, "copy/"),
        &server_endpoint,
        &profiles,
    );
    spec.source_side.profile = Some("wrong".into());
    let err = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect_err("wrong keys");
    assert!(matches!(err, SyncError::AccessDenied { .. }), "{err}");
    let text = err.to_string();
    for part in ["uploads", "source", &b, "wrong"] {
        assert!(text.contains(part), "`{text}` names {part}");
    }
    if let Ok(child) = guard.downcast::<std::process::Child>() {
        servers::stop_moto(*child);
    }
}

#[tokio::test]
async fn unreachable_endpoint_is_reported_as_such() {
    let profiles = Profiles::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let mut spec = spec(
        "uploads",
        S3Location::new("src-bucket", ""),
        S3Location::new("dst-bucket", ""),
        &endpoint,
        &profiles,
    );
    spec.retry.request_attempts = 1;
    let err = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect_err("no server");
    assert!(matches!(err, SyncError::BadEndpoint { .. }), "{err}");
    assert!(err.to_string().contains("src-bucket"), "{err}");
}
