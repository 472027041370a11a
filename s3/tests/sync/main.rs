//! The sync engine against real S3-API servers: every scenario runs once on
//! `s3s-fs` (in process) and once on `moto_server` (a child process).

mod common;
mod copies;
mod failures;
mod listing;

use std::collections::HashMap;

use common::proxy::{self, Faults};
use common::servers::{self, KEYS_B};
use common::*;
use copies::*;
use failures::*;
use listing::*;
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
