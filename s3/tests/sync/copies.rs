//! What a mirror copies: prefixes, buckets, servers and profiles, changed
//! bytes, large objects, filters and dry runs.

use super::*;

pub(super) async fn prefix_to_prefix_in_one_bucket(backend: Backend) {
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

pub(super) async fn across_buckets_second_run_writes_nothing(backend: Backend) {
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

pub(super) async fn changed_bytes_recopied_and_extra_deleted(backend: Backend) {
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

pub(super) async fn multipart_server_side_copy_above_threshold(backend: Backend) {
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

pub(super) async fn streamed_between_two_servers_with_two_profiles(backend: Backend) {
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

pub(super) async fn include_exclude_and_no_delete(backend: Backend) {
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

pub(super) async fn dry_run_lists_what_real_run_does(backend: Backend) {
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
