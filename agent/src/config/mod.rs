//! The agent's configuration file (`agent.toml`).
//!
//! TOML is read into the raw tables of `raw` (every key spanned, unknown
//! keys refused) and validated by `validate` into [`AgentConfig`] before any
//! port is bound. Every error names the file, the line and the key, and
//! says what to do.

pub mod places;
mod postgres;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
pub use places::PlacePatterns;
pub use postgres::{DEFAULT_RESTORE_SETTINGS, Endpoint, PostgresConfig, ServerTls, SslMode};
use stagesync_certs::{Identity, TlsFiles};

pub use stagesync_proto::tomlfile::ConfigError;
use stagesync_proto::tomlfile::TomlFile;

use raw::RawConfig;
use validate::Ctx;

/// Where the agent looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/stagesync/agent.toml";

/// A validated agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    pub name: String,
    pub identity: Identity,
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    pub work_dir: PathBuf,
    pub postgres: PostgresConfig,
    pub policy: Policy,
    pub jobs: JobLimits,
    /// AWS profile files for backups.
    pub s3_files: stagesync_s3::ProfileFilePaths,
    /// The privacy guard's rules and key (`[masking]`), if this agent
    /// masks anything.
    pub masking: Option<crate::mask::Masking>,
    /// Test-only fault injection; never set from a configuration file.
    #[doc(hidden)]
    pub faults: Faults,
}

/// Timeouts that end jobs nobody is looking after, and when a table is
/// worth a data lane of its own.
#[derive(Clone, Debug)]
pub struct JobLimits {
    /// A job no controller has watched for this long is aborted.
    pub controller_timeout: std::time::Duration,
    /// A dump stream that delivers nothing for this long has failed.
    pub stall_timeout: std::time::Duration,
    /// A prepared job whose stream has not started within this long is aborted.
    pub ticket_ttl: std::time::Duration,
    /// Source side: tables from this size (heap and TOAST, in bytes) move
    /// on the copy lanes; smaller ones travel in lane 0's pg_dump.
    pub lane_min_table_bytes: u64,
    /// Source side: a table above this size (bytes) is copied in slices of
    /// about this size, on several lanes at once (None: never split).
    pub split_table_bytes: Option<u64>,
    /// How often a controller watching a job gets its status when nothing
    /// else changed (phase changes are sent at once).
    pub status_interval: std::time::Duration,
    /// The async runtime's worker threads: by default a quarter of the
    /// host's cores (at least one), since PostgreSQL does most of a
    /// refresh's work on the same host and every extra worker costs
    /// wake-ups between threads; every core for an agent that masks.
    pub worker_threads: usize,
}

/// Faults the tests inject to prove that the agent survives them.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Source side: flip a byte in this data frame after its CRC is computed.
    pub corrupt_frame: Option<u64>,
    /// Source side: with data lanes, `corrupt_frame` counts the frames of
    /// this lane (lane 0 otherwise).
    pub corrupt_lane: u32,
    /// Source side: the schema dump of a split stream is given a snapshot
    /// that does not exist, so it fails while the data streams.
    pub bad_schema_snapshot: bool,
    /// Destination side: the largest schema file it lands, instead of 2 GiB.
    pub max_schema_file: Option<u64>,
    /// Destination side: the free space landed files must leave, instead
    /// of 256 MiB.
    pub keep_free: Option<u64>,
}

/// What this agent may do, and for whom.
#[derive(Clone, Debug)]
pub struct Policy {
    pub may_dump: Patterns,
    pub may_overwrite: Patterns,
    pub controllers: Vec<Identity>,
    pub peers: Vec<Identity>,
    /// Where backups may be uploaded: globs over `s3://bucket/prefix/`
    /// (or `https://endpoint/bucket/prefix/`), matched part by part.
    pub may_backup_to: PlacePatterns,
    /// Where backups may be restored from, in the same form.
    pub may_restore_from: PlacePatterns,
    /// Whether this agent restores personal data a source sent unmasked
    /// (a stream or a backup of a database with masking rules).
    pub may_receive_unmasked: bool,
}

/// A list of database-name globs.
#[derive(Clone, Debug)]
pub struct Patterns {
    pub patterns: Vec<String>,
    set: GlobSet,
}

impl Patterns {
    pub fn new(patterns: &[String]) -> Result<Self, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        for p in patterns {
            builder.add(Glob::new(p)?);
        }
        Ok(Patterns {
            patterns: patterns.to_vec(),
            set: builder.build()?,
        })
    }

    pub fn matches(&self, database: &str) -> bool {
        self.set.is_match(database)
    }
}

/// Reads and validates an agent configuration file.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        key: String::new(),
        message: format!("cannot read the agent configuration: {e}; pass --config PATH"),
    })?;
    parse(path, &text)
}

/// Validates configuration text read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
    let ctx = Ctx(TomlFile { path, text });
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| ctx.toml_error(&e, "see the example agent.toml files"))?;
    ctx.validate(raw)
}

/// Checks only the file's shape (TOML syntax, known keys, types), not the
/// files and directories it names: for example configurations.
pub fn check_syntax(path: &Path, text: &str) -> Result<(), ConfigError> {
    let ctx = Ctx(TomlFile { path, text });
    toml::from_str::<RawConfig>(text)
        .map(|_| ())
        .map_err(|e| ctx.toml_error(&e, "see the example agent.toml files"))
}

/// The name of the OS user this process runs as: the database role that
/// peer authentication maps it to.
pub fn os_user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".to_string())
}
