//! The sync engine against real S3-API servers: every scenario runs once on
//! `s3s-fs` (in process) and once on `moto_server` (a child process).

mod common;

use std::collections::HashMap;

use common::proxy::{self, Faults};
use common::servers::{self, KEYS_B};
use common::*;
use stagesync_s3::{
    CopyMethod, DeleteLimit, Event, ListingMode, S3Location, Side, SideConfig, SyncError,
    SyncOptions, sync,
};

const ODD_KEYS: &[&str] = &[
    "plain.txt",
    "with space.txt",
    "unicodé/ファイル.bin",
    "plus+sign",
    "percent%20literal",
    "question?mark",
    "deep/a/b/c/d/e/f/g/h/nested.txt",
    "zero-bytes",
];

fn rich_meta() -> Meta {
    Meta {
        content_type: Some("image/webp".into()),
        cache_control: Some("max-age=3600".into()),
        content_encoding: Some("gzip".into()),
        metadata: HashMap::from([("owner".to_string(), "team-media".to_string())]),
    }
}

async fn fill_odd_keys(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) {
    for (i, key) in ODD_KEYS.iter().enumerate() {
        let len = if *key == "zero-bytes" {
            0
        } else {
            100 + i * 37
        };
        let meta = if i % 2 == 0 {
            rich_meta()
        } else {
            Meta::default()
        };
        put(
            client,
            bucket,
            &format!("{prefix}{key}"),
            bytes(len, i as u8),
            &meta,
        )
        .await;
    }
}

async fn prefix_to_prefix_in_one_bucket(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let b = bucket("one-bucket", backend);
    create_bucket(&c, &b).await;
    fill_odd_keys(&c, &b, "prod/").await;
    put_bytes(&c, &b, "prodigal/not-in-prefix", b"x").await;

    let spec = spec(
        "media",
        S3Location::new(&b, "prod"),
        S3Location::new(&b, "stage/"),
        &server.endpoint,
        &profiles,
    );
    let report = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("sync");

    assert_eq!(report.copied.objects, ODD_KEYS.len() as u64);
    let expected = contents(&c, &b, "prod/").await;
    assert_eq!(contents(&c, &b, "stage/").await, expected);
    for (i, key) in ODD_KEYS.iter().enumerate() {
        let (_, source_meta) = get(&c, &b, &format!("prod/{key}")).await;
        let (_, dest_meta) = get(&c, &b, &format!("stage/{key}")).await;
        assert_eq!(dest_meta, source_meta, "metadata of {key}");
        if i % 2 == 0 {
            assert_eq!(dest_meta.content_type.as_deref(), Some("image/webp"));
            assert_eq!(
                dest_meta.metadata.get("owner").map(String::as_str),
                Some("team-media")
            );
        }
    }
    assert!(
        !contents(&c, &b, "stage/")
            .await
            .contains_key("not-in-prefix")
    );
}

async fn across_buckets_second_run_writes_nothing(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let (src, dst) = (bucket("across-src", backend), bucket("across-dst", backend));
    create_bucket(&c, &src).await;
    create_bucket(&c, &dst).await;
    fill_odd_keys(&c, &src, "").await;
    let counting = proxy::start(server.addr, Faults::default()).await;

    let spec = spec(
        "media",
        S3Location::new(&src, ""),
        S3Location::new(&dst, "copy/"),
        &counting.endpoint,
        &profiles,
    );
    let first = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("first sync");
    assert_eq!(first.copied.objects, ODD_KEYS.len() as u64);
    assert_eq!(
        contents(&c, &dst, "copy/").await,
        contents(&c, &src, "").await
    );
    assert!(
        !counting.stats.writes().is_empty(),
        "the proxy sees the copies"
    );

    counting.stats.clear();
    let second = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("second sync");
    assert_eq!(second.copied.objects, 0);
    assert_eq!(second.skipped.objects, ODD_KEYS.len() as u64);
    assert_eq!(
        counting.stats.writes(),
        Vec::<String>::new(),
        "no write requests on a no-change run"
    );
    use std::sync::atomic::Ordering::SeqCst;
    let (lean, sdk) = (
        counting.stats.lean_heads.load(SeqCst),
        counting.stats.sdk_heads.load(SeqCst),
    );
    match backend {
        // Listings without ETags: every key is asked for on both sides,
        // each once, by lean HEADs (odd keys and all).
        Backend::S3sFs => assert_eq!((lean, sdk), (2 * ODD_KEYS.len() as u64, 0)),
        // Listings with plain MD5 ETags decide alone.
        Backend::Moto => assert_eq!((lean, sdk), (0, 0)),
    }

    // When the lean path is refused, the SDK answers every comparison.
    let denying = proxy::start(
        server.addr,
        Faults {
            deny_lean_heads: true,
            ..Faults::default()
        },
    )
    .await;
    let mut spec = spec;
    through(&mut spec, &denying.endpoint);
    let third = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("third sync");
    assert_eq!(third.copied.objects, 0);
    assert_eq!(third.skipped.objects, ODD_KEYS.len() as u64);
    assert!(denying.stats.writes().is_empty());
    if backend == Backend::S3sFs {
        assert!(
            denying.stats.denied.load(SeqCst) > 0,
            "lean HEADs were refused"
        );
        assert_eq!(
            denying.stats.sdk_heads.load(SeqCst),
            2 * ODD_KEYS.len() as u64
        );
    }
}

async fn changed_bytes_recopied_and_extra_deleted(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let (src, dst) = (
        bucket("changed-src", backend),
        bucket("changed-dst", backend),
    );
    create_bucket(&c, &src).await;
    create_bucket(&c, &dst).await;
    put_bytes(&c, &src, "a.bin", &bytes(1000, 1)).await;
    put_bytes(&c, &src, "b.bin", &bytes(1000, 2)).await;
    let spec = spec(
        "media",
        S3Location::new(&src, ""),
        S3Location::new(&dst, ""),
        &server.endpoint,
        &profiles,
    );
    sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("first sync");

    put_bytes(&c, &src, "b.bin", &bytes(1000, 9)).await; // same size, other bytes
    put_bytes(&c, &dst, "extra.bin", b"left over").await;
    let report = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("second sync");
    assert_eq!(report.copied_keys, vec!["b.bin".to_string()]);
    assert_eq!(report.deleted_keys, vec!["extra.bin".to_string()]);
    assert_eq!(contents(&c, &dst, "").await, contents(&c, &src, "").await);
}

async fn multipart_server_side_copy_above_threshold(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let (src, dst) = (bucket("mpcopy-src", backend), bucket("mpcopy-dst", backend));
    create_bucket(&c, &src).await;
    create_bucket(&c, &dst).await;
    put(
        &c,
        &src,
        "big/video.bin",
        bytes(11 * 1024 * 1024 + 17, 3),
        &rich_meta(),
    )
    .await;
    put_bytes(&c, &src, "small.txt", b"small").await;

    let mut spec = spec(
        "media",
        S3Location::new(&src, ""),
        S3Location::new(&dst, ""),
        &server.endpoint,
        &profiles,
    );
    spec.multipart_threshold = 1024 * 1024;
    spec.part_size = 5 * 1024 * 1024;
    let events = Events::default();
    sync(&spec, SyncOptions::default(), events.sink())
        .await
        .expect("sync");
    assert!(events.all().iter().any(|e| matches!(e,
        Event::Copied { key, method: CopyMethod::ServerSideMultipart, .. } if key == "big/video.bin")));
    assert_eq!(contents(&c, &dst, "").await, contents(&c, &src, "").await);
    let (_, meta) = get(&c, &dst, "big/video.bin").await;
    assert_eq!(meta, rich_meta());

    // The multipart copy's ETag is no MD5: the re-run reads the identity
    // stagesync recorded on it, by a lean HEAD.
    let counting = proxy::start(server.addr, Faults::default()).await;
    through(&mut spec, &counting.endpoint);
    let again = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("re-run");
    assert_eq!(
        again.copied.objects, 0,
        "multipart copy is recognised as identical"
    );
    use std::sync::atomic::Ordering::SeqCst;
    assert!(counting.stats.lean_heads.load(SeqCst) >= 1);
    assert_eq!(counting.stats.sdk_heads.load(SeqCst), 0);
}

async fn streamed_between_two_servers_with_two_profiles(backend: Backend) {
    let source = servers::start(backend).await;
    let dest = servers::s3s_fs(KEYS_B).await;
    let profiles = Profiles::new();
    let cs = client(&source.endpoint, source.keys);
    let cd = client(&dest.endpoint, dest.keys);
    let (src, dst) = (
        bucket("streamed-src", backend),
        bucket("streamed-dst", backend),
    );
    create_bucket(&cs, &src).await;
    create_bucket(&cd, &dst).await;
    fill_odd_keys(&cs, &src, "p/").await;
    put(
        &cs,
        &src,
        "p/large.bin",
        bytes(12 * 1024 * 1024 + 5, 4),
        &rich_meta(),
    )
    .await;

    let mut spec = spec(
        "cross",
        S3Location::new(&src, "p/"),
        S3Location::new(&dst, "q/"),
        &source.endpoint,
        &profiles,
    );
    spec.part_size = 5 * 1024 * 1024;
    spec.dest_side = SideConfig {
        profile: Some("stage".into()),
        region: Some("eu-west-1".into()),
        endpoint: Some(dest.endpoint.clone()),
    };
    let events = Events::default();
    let report = sync(&spec, SyncOptions::default(), events.sink())
        .await
        .expect("sync");
    assert_eq!(report.copied.objects, ODD_KEYS.len() as u64 + 1);
    let methods: Vec<CopyMethod> = events
        .all()
        .iter()
        .filter_map(|e| match e {
            Event::Copied { method, .. } => Some(*method),
            _ => None,
        })
        .collect();
    assert!(methods.contains(&CopyMethod::Streamed));
    assert!(methods.contains(&CopyMethod::StreamedMultipart));
    assert!(!methods.contains(&CopyMethod::ServerSide));
    assert_eq!(
        contents(&cd, &dst, "q/").await,
        contents(&cs, &src, "p/").await
    );
    let (_, meta) = get(&cd, &dst, "q/large.bin").await;
    assert_eq!(meta, rich_meta());
    let (_, meta) = get(&cd, &dst, "q/plain.txt").await;
    assert_eq!(meta, rich_meta());

    let again = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("re-run");
    assert_eq!(again.copied.objects, 0);
}

async fn failed_copy_deletes_nothing(backend: Backend) {
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

async fn delete_guard_stops_large_mirror(backend: Backend) {
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

async fn include_exclude_and_no_delete(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let (src, dst) = (
        bucket("filters-src", backend),
        bucket("filters-dst", backend),
    );
    create_bucket(&c, &src).await;
    create_bucket(&c, &dst).await;
    for key in ["a.jpg", "b.png", "tmp/c.jpg", "x/y/d.jpg"] {
        put_bytes(&c, &src, key, key.as_bytes()).await;
    }
    put_bytes(&c, &dst, "kept.png", b"not matched, so not deleted").await;
    put_bytes(&c, &dst, "tmp/old.jpg", b"excluded, so not deleted").await;
    put_bytes(&c, &dst, "gone.jpg", b"matched and extra").await;

    let mut spec = spec(
        "media",
        S3Location::new(&src, ""),
        S3Location::new(&dst, ""),
        &server.endpoint,
        &profiles,
    );
    spec.include = vec!["**/*.jpg".into()];
    spec.exclude = vec!["tmp/**".into()];
    spec.delete = false;
    let report = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("sync");
    assert_eq!(
        report.copied_keys,
        vec!["a.jpg".to_string(), "x/y/d.jpg".to_string()]
    );
    assert!(report.deleted_keys.is_empty());
    assert!(
        contents(&c, &dst, "").await.contains_key("gone.jpg"),
        "delete = false keeps extras"
    );

    spec.delete = true;
    let report = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("mirror");
    assert_eq!(report.deleted_keys, vec!["gone.jpg".to_string()]);
    let keys: Vec<String> = contents(&c, &dst, "").await.into_keys().collect();
    assert_eq!(keys, vec!["a.jpg", "kept.png", "tmp/old.jpg", "x/y/d.jpg"]);
}

async fn dry_run_lists_what_real_run_does(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let (src, dst) = (bucket("dryrun-src", backend), bucket("dryrun-dst", backend));
    create_bucket(&c, &src).await;
    create_bucket(&c, &dst).await;
    for key in ["same.txt", "new-1.txt", "new 2.txt", "changed.txt"] {
        put_bytes(&c, &src, key, &bytes(64, 1)).await;
    }
    put_bytes(&c, &dst, "same.txt", &bytes(64, 1)).await;
    put_bytes(&c, &dst, "changed.txt", &bytes(64, 2)).await;
    put_bytes(&c, &dst, "extra.txt", b"extra").await;
    let before = contents(&c, &dst, "").await;
    let counting = proxy::start(server.addr, Faults::default()).await;

    let spec = spec(
        "media",
        S3Location::new(&src, ""),
        S3Location::new(&dst, ""),
        &counting.endpoint,
        &profiles,
    );
    let dry = sync(
        &spec,
        SyncOptions {
            dry_run: true,
            record_keys: true,
        },
        |_| {},
    )
    .await
    .expect("dry run");
    assert_eq!(
        counting.stats.writes(),
        Vec::<String>::new(),
        "a dry run writes nothing"
    );
    assert_eq!(
        contents(&c, &dst, "").await,
        before,
        "a dry run changes nothing"
    );
    assert_eq!(
        dry.copied_keys,
        vec!["changed.txt", "new 2.txt", "new-1.txt"]
    );
    assert_eq!(dry.deleted_keys, vec!["extra.txt"]);

    let real = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("real run");
    assert_eq!(real.copied_keys, dry.copied_keys);
    assert_eq!(real.deleted_keys, dry.deleted_keys);
    assert_eq!(contents(&c, &dst, "").await, contents(&c, &src, "").await);
}

async fn survives_slow_down_and_connection_resets(backend: Backend) {
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

async fn missing_bucket_names_copy_side_bucket_profile(backend: Backend) {
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

async fn unknown_profile_names_copy_side_bucket_profile(backend: Backend) {
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

async fn wrong_credentials_are_access_denied(backend: Backend) {
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

/// Keys whose order is easy to get wrong when folders are listed one by
/// one: '.' < '/' < '0', so "a.txt", then everything under "a/", then "a0".
const TREE_KEYS: &[&str] = &["a.txt", "a/b", "a/c/d", "a0", "a-b/x", "b"];
/// More keys than one listing page holds, in one folder.
const PAGE_PLUS: usize = 1_050;

/// Key (relative to `prefix`) to size, by the test's own flat listing.
async fn sizes(
    c: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    let mut pages = c
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for o in page.expect("list").contents() {
            let key = o.key().unwrap_or_default();
            out.insert(key[prefix.len()..].to_string(), o.size().unwrap_or(-1));
        }
    }
    out
}

async fn tree_listing_sees_what_flat_listing_sees(backend: Backend) {
    let server = servers::start(backend).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let (src, dst) = (bucket("tree-src", backend), bucket("tree-dst", backend));
    create_bucket(&c, &src).await;
    create_bucket(&c, &dst).await;
    fill_odd_keys(&c, &src, "media/").await;
    for key in TREE_KEYS {
        put_bytes(&c, &src, &format!("media/{key}"), key.as_bytes()).await;
    }
    for i in 0..PAGE_PLUS {
        put_bytes(&c, &src, &format!("media/many/k-{i:04}"), b"k").await;
    }
    put_bytes(&c, &src, "mediatheque/outside", b"not under media/").await;
    let counting = proxy::start(server.addr, Faults::default()).await;
    let mut spec = spec(
        "media",
        S3Location::new(&src, "media/"),
        S3Location::new(&dst, "copy/"),
        &counting.endpoint,
        &profiles,
    );
    spec.listing = ListingMode::Tree;

    let first = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect("tree sync");
    let expected = ODD_KEYS.len() + TREE_KEYS.len() + PAGE_PLUS;
    assert_eq!(first.copied.objects, expected as u64);
    assert_eq!(
        sizes(&c, &dst, "copy/").await,
        sizes(&c, &src, "media/").await
    );
    for key in TREE_KEYS {
        assert_eq!(
            get(&c, &dst, &format!("copy/{key}")).await.0,
            key.as_bytes()
        );
    }
    // It really walked folder by folder.
    let folder_lists = |stats: &proxy::Stats| {
        stats
            .requests
            .lock()
            .expect("stats")
            .iter()
            .filter(|r| {
                r.starts_with("GET ") && r.contains("list-type=2") && r.contains("delimiter=")
            })
            .count()
    };
    assert!(
        folder_lists(&counting.stats) > 10,
        "tree listing issues one listing per folder"
    );

    // A second state where the two ways must agree key by key.
    put_bytes(&c, &src, "media/a/c/d", b"changed").await;
    put_bytes(&c, &dst, "copy/a/zz-extra", b"extra").await;
    put_bytes(&c, &dst, "copy/many/k-9999", b"extra").await;
    let dry = SyncOptions {
        dry_run: true,
        record_keys: true,
    };
    let tree = sync(&spec, dry, |_| {}).await.expect("tree dry run");
    spec.listing = ListingMode::Flat;
    counting.stats.clear();
    let flat = sync(&spec, dry, |_| {}).await.expect("flat dry run");
    assert_eq!(
        folder_lists(&counting.stats),
        0,
        "flat listing uses no delimiter"
    );
    assert_eq!(tree.copied_keys, vec!["a/c/d".to_string()]);
    assert_eq!(tree.deleted_keys, ["a/zz-extra", "many/k-9999"]);
    assert_eq!(
        (tree.copied_keys, tree.deleted_keys, tree.skipped.objects),
        (flat.copied_keys, flat.deleted_keys, flat.skipped.objects)
    );
}

macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {
        mod s3s_fs {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(Backend::S3sFs).await;
                }
            )*
        }
        mod moto {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(Backend::Moto).await;
                }
            )*
        }
    };
}

on_both_servers!(
    prefix_to_prefix_in_one_bucket,
    across_buckets_second_run_writes_nothing,
    changed_bytes_recopied_and_extra_deleted,
    multipart_server_side_copy_above_threshold,
    streamed_between_two_servers_with_two_profiles,
    failed_copy_deletes_nothing,
    delete_guard_stops_large_mirror,
    include_exclude_and_no_delete,
    dry_run_lists_what_real_run_does,
    survives_slow_down_and_connection_resets,
    missing_bucket_names_copy_side_bucket_profile,
    unknown_profile_names_copy_side_bucket_profile,
    wrong_credentials_are_access_denied,
    tree_listing_sees_what_flat_listing_sees,
);

/// 200,000 destination-only objects: the mirror keeps 4,096 of them in
/// memory and the rest in a temporary file, refuses at the delete limit
/// having deleted nothing, and (forced, in a dry run) reads every one back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_with_200000_extras_refuses_at_the_delete_limit() {
    const EXTRAS: u64 = 200_000;
    let server = servers::start(Backend::S3sFs).await;
    let profiles = Profiles::new();
    let c = client(&server.endpoint, server.keys);
    let (src, dst) = ("extras-src", "extras-dst");
    create_bucket(&c, src).await;
    create_bucket(&c, dst).await;
    put_bytes(&c, src, "keep.txt", b"keep").await;
    // Written as files, as s3s-fs stores them: far faster than 200,000 PUTs.
    let old = server.root().expect("s3s-fs root").join(dst).join("old");
    for d in 0..EXTRAS / 1000 {
        let dir = old.join(format!("{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..1000 {
            std::fs::write(dir.join(format!("{i:03}")), b"").unwrap();
        }
    }
    let mut spec = spec(
        "media",
        S3Location::new(src, ""),
        S3Location::new(dst, ""),
        &server.endpoint,
        &profiles,
    );
    spec.listing = ListingMode::Tree;
    spec.delete_limit = DeleteLimit {
        max_count: Some(1000),
        max_percent: None,
    };
    let err = sync(&spec, SyncOptions::default(), |_| {})
        .await
        .expect_err("the guard trips");
    assert!(
        matches!(
            err,
            SyncError::DeleteGuard {
                would_delete: EXTRAS,
                dest_objects: EXTRAS,
                ..
            }
        ),
        "{err}"
    );
    let left: usize = std::fs::read_dir(&old)
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(left as u64, EXTRAS, "nothing deleted");

    spec.force_delete = true;
    let options = SyncOptions {
        dry_run: true,
        record_keys: false,
    };
    let report = sync(&spec, options, |_| {})
        .await
        .expect("a forced dry run");
    assert_eq!(report.deleted.objects, EXTRAS);
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
