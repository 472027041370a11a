//! The plan file as serde reads it: every table strict, and spans kept on
//! the values an error may have to point at.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub(super) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    pub(super) controller: RawController,
    pub(super) agents: S<BTreeMap<String, S<RawAgent>>>,
    #[serde(default)]
    pub(super) defaults: RawOptions,
    #[serde(default)]
    pub(super) pairs: BTreeMap<String, S<RawPair>>,
    pub(super) backups: Option<S<RawBackups>>,
    pub(super) notify: Option<S<RawNotify>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    /// The environment variable holding the webhook's URL.
    pub(super) webhook_env: Option<S<String>>,
    /// "always" (the default) or "failure".
    pub(super) on: Option<S<String>>,
    pub(super) timeout_secs: Option<S<u64>>,
    pub(super) retries: Option<S<u32>>,
    /// A Prometheus textfile to write after every run.
    pub(super) textfile: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackups {
    pub(super) daily: S<String>,
    pub(super) weekly: Option<S<String>>,
    pub(super) weekly_days: Option<S<Vec<u32>>>,
    pub(super) keep_daily: Option<S<u32>>,
    pub(super) keep_weekly: Option<S<u32>>,
    pub(super) profile: Option<String>,
    pub(super) region: Option<String>,
    pub(super) endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawController {
    pub(super) name: S<String>,
    pub(super) certs_dir: Option<S<String>>,
    pub(super) ca: Option<S<String>>,
    pub(super) cert: Option<S<String>>,
    pub(super) key: Option<S<String>>,
    pub(super) state_dir: Option<S<String>>,
    pub(super) parallel: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) endpoint: S<String>,
    /// The address other agents dial, when not `endpoint`.
    pub(super) peer_endpoint: Option<S<String>>,
}

/// Declares `RawOptions` (the `[defaults]` table) and `RawPair`, which takes
/// the same keys among its own. The keys are listed once, here: serde's
/// flatten would lose the spans, so they must be fields of both tables.
/// The pair's own fields keep their places around them, as serde names the
/// fields in that order when it refuses an unknown key.
macro_rules! option_keys {
    ($($key:ident: $ty:ty,)*) => {
        #[derive(Debug, Default, Deserialize, Clone)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawOptions {
            $(pub(super) $key: $ty,)*
        }

        impl RawOptions {
            /// Each key from `self` where set, else from `defaults`.
            pub(super) fn or(self, defaults: &RawOptions) -> RawOptions {
                RawOptions {
                    $($key: self.$key.or_else(|| defaults.$key.clone()),)*
                }
            }
        }

        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawPair {
            pub(super) source: S<RawEnd>,
            pub(super) dest: S<RawEnd>,
            $(pub(super) $key: $ty,)*
            pub(super) post_restore_sql: Option<S<String>>,
            #[serde(default)]
            pub(super) post_restore_sql_files: Vec<S<String>>,
            #[serde(default)]
            pub(super) params: Vec<S<String>>,
            #[serde(default)]
            pub(super) after: Vec<S<String>>,
            #[serde(default)]
            pub(super) copies: Vec<S<RawCopy>>,
            #[serde(default)]
            pub(super) preflight: RawPreflight,
            #[serde(default)]
            pub(super) keep: Vec<S<RawKeep>>,
            #[serde(default)]
            pub(super) truncate_after: Vec<S<String>>,
            pub(super) truncate_cascade: Option<bool>,
            pub(super) unmasked: Option<S<bool>>,
        }

        impl RawPair {
            /// The pair's own option keys, as a `[defaults]` table.
            pub(super) fn options(&self) -> RawOptions {
                RawOptions {
                    $($key: self.$key.clone(),)*
                }
            }
        }
    };
}

option_keys! {
    mode: Option<S<String>>,
    jobs: Option<S<u32>>,
    lanes: Option<S<u32>>,
    copy_format: Option<S<String>>,
    compress: Option<bool>,
    privileges: Option<bool>,
    exclude_tables: Option<Vec<String>>,
    exclude_table_data: Option<Vec<String>>,
    schemas: Option<Vec<String>>,
    exclude_schemas: Option<Vec<String>>,
    pg_dump_args: Option<Vec<String>>,
    pg_restore_args: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnd {
    pub(super) agent: Option<S<String>>,
    pub(super) database: S<String>,
    pub(super) owner: Option<S<String>>,
    /// A source only: `s3://bucket/prefix/` holding backups of `database`.
    pub(super) backup: Option<S<String>>,
    /// With `backup`: one backup by its time stamp (default: the newest).
    pub(super) taken: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCopy {
    pub(super) name: S<String>,
    pub(super) source: S<String>,
    pub(super) dest: S<String>,
    /// One profile for both sides, as the role does.
    pub(super) profile: Option<S<String>>,
    pub(super) source_profile: Option<S<String>>,
    pub(super) dest_profile: Option<S<String>>,
    pub(super) region: Option<String>,
    pub(super) source_region: Option<String>,
    pub(super) dest_region: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) source_endpoint: Option<String>,
    pub(super) dest_endpoint: Option<String>,
    #[serde(default)]
    pub(super) include: Vec<String>,
    #[serde(default)]
    pub(super) exclude: Vec<String>,
    pub(super) delete: Option<bool>,
    pub(super) max_delete: Option<u64>,
    pub(super) max_delete_percent: Option<S<f64>>,
    pub(super) concurrency: Option<S<usize>>,
    pub(super) multipart_threshold: Option<u64>,
    pub(super) listing: Option<S<String>>,
}

/// A table whose rows of staging's own survive the refresh.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeep {
    pub(super) table: S<String>,
    #[serde(rename = "where")]
    pub(super) filter: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPreflight {
    pub(super) git: Option<S<RawGit>>,
    #[serde(default)]
    pub(super) commands: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGit {
    pub(super) repo: S<String>,
    pub(super) source_ref: S<String>,
    pub(super) dest_ref: S<String>,
}
