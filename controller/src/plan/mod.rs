//! The fleet plan (`stagesync.toml`): the controller's identity, the agents,
//! and the pairs to refresh, chained with `after`.
//!
//! Parsing is strict: unknown keys, wrong types, unknown agents, cycles in
//! `after`, two pairs writing one destination and a pair writing into its
//! own source are all errors naming the file, the line and the key. Secrets
//! never appear in a plan: the post-restore SQL names environment variables
//! as `${NAME}`.
//!
//! `raw` is the file as serde reads it; `validate` turns it into the types
//! here, with `pair`, `options`, `sql`, `copy`, `backups` and `order` for
//! the parts; `spec` turns a validated pair into what a refresh runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stagesync_certs::TlsFiles;
use stagesync_proto::tomlfile::{ConfigError, TomlFile};
use stagesync_proto::v1 as pb;

mod backups;
mod copy;
mod notify;
mod options;
mod order;
mod pair;
mod raw;
mod scope;
mod spec;
mod sql;
mod staging;
mod validate;

pub use sql::referenced_params;

/// Where `--plan` points when not given.
pub const DEFAULT_PLAN: &str = "stagesync.toml";

/// A validated plan.
#[derive(Clone, Debug)]
pub struct Plan {
    pub source: PathBuf,
    pub controller: String,
    pub tls: TlsFiles,
    pub state_dir: Option<PathBuf>,
    pub parallel: u32,
    pub agents: BTreeMap<String, PlanAgent>,
    pub pairs: BTreeMap<String, PlanPair>,
    pub backups: Option<BackupPlan>,
    /// How runs are reported (`[notify]`).
    pub notify: Option<crate::notify::NotifyPlan>,
}

/// Where and how long backups are kept (`[backups]`). The profile, region
/// and endpoint are used by the agents on their hosts, and by
/// `stagesync backups` here.
#[derive(Clone, Debug)]
pub struct BackupPlan {
    pub daily: stagesync_s3::S3Location,
    pub weekly: Option<stagesync_s3::S3Location>,
    pub weekly_days: Vec<u32>,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub side: stagesync_s3::SideConfig,
}

/// The role's weekly days.
pub const DEFAULT_WEEKLY_DAYS: &[u32] = &[1, 7, 14, 21, 28];

#[derive(Clone, Debug)]
pub struct PlanAgent {
    pub name: String,
    pub endpoint: String,
    pub peer_endpoint: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PlanPair {
    pub name: String,
    /// Empty when the source is a backup.
    pub source_agent: String,
    pub source_db: String,
    /// The source is a backup in S3, not a live database.
    pub source_backup: Option<SourceBackup>,
    pub dest_agent: String,
    pub dest_db: String,
    pub owner: String,
    pub mode: pb::Mode,
    pub jobs: u32,
    /// Stream mode: at most this many concurrent COPY lanes (None: `jobs`;
    /// 0: none, all data in pg_dump's stream).
    pub lanes: Option<u32>,
    /// How copy lanes carry rows (`copy_format`: "auto" or "text").
    pub copy_format: crate::refresh::CopyFormat,
    pub compress: crate::refresh::Compress,
    pub dump: pb::DumpOptions,
    pub restore: pb::RestoreOptions,
    pub post_restore_sql: String,
    /// Environment variables the post-restore SQL uses.
    pub params: Vec<String>,
    /// Rows staging keeps of its own (`keep`), tables it empties
    /// (`truncate_after`).
    pub staging: stagesync_proto::v1::StagingRules,
    pub after: Vec<String>,
    /// S3 copies that run alongside the database refresh.
    pub copies: Vec<stagesync_s3::CopySpec>,
    pub preflight: Preflight,
    /// Send the rows unmasked though the source masks them (a DR replica):
    /// both agents' policies must allow it.
    pub unmasked: bool,
}

/// A pair's source in S3: `source = { backup = "s3://...", database = ... }`.
#[derive(Clone, Debug)]
pub struct SourceBackup {
    pub place: stagesync_s3::S3Location,
    pub taken: Option<String>,
}

/// Checks run before a pair changes anything.
#[derive(Clone, Debug, Default)]
pub struct Preflight {
    /// Refuse unless both refs of this repository point at one commit (the
    /// code, and so the migrations, must match before the data is copied).
    pub git: Option<GitCheck>,
    /// Shell commands that must exit 0.
    pub commands: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct GitCheck {
    pub repo: String,
    pub source_ref: String,
    pub dest_ref: String,
}

/// Reads and validates a plan file.
pub fn load(path: &Path) -> Result<Plan, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        key: String::new(),
        message: format!("cannot read the plan: {e}; pass --plan FILE"),
    })?;
    parse(path, &text)
}

/// Validates plan text read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Plan, ConfigError> {
    let f = TomlFile { path, text };
    let raw: raw::RawPlan =
        toml::from_str(text).map_err(|e| f.toml_error(&e, "see the example stagesync.toml"))?;
    validate::validate(&f, raw)
}
