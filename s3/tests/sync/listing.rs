//! Listing: walking the key tree sees what a flat listing sees, and a
//! destination with many extras stays in bounded memory.

use super::*;

/// Keys whose order is easy to get wrong when folders are listed one by
/// one: '.' < '/' < '0', so "a.txt", then everything under "a/", then "a0".
const TREE_KEYS: &[&str] = &["a.txt", "a/b", "a/c/d", "a0", "a-b/x", "b"];

/// More keys than one listing page holds, in one folder.
const PAGE_PLUS: usize = 1_050;

/// Key (relative to `prefix`) to size, by the test's own flat listing.
pub(super) async fn sizes(
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

pub(super) async fn tree_listing_sees_what_flat_listing_sees(backend: Backend) {
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
