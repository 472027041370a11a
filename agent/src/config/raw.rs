//! `agent.toml` as serde reads it: every value with its place in the file,
//! and every table refusing keys it does not know.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub name: Spanned<String>,
    pub listen: Spanned<String>,
    pub trust_domain: Option<Spanned<String>>,
    pub work_dir: Spanned<String>,
    pub tls: RawTls,
    #[serde(default)]
    pub postgres: RawPostgres,
    pub policy: RawPolicy,
    #[serde(default)]
    pub jobs: RawJobs,
    #[serde(default)]
    pub s3: RawS3,
    pub masking: Option<RawMasking>,
}

/// The source side's privacy guard: its rules and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMasking {
    pub rules: Spanned<String>,
    pub key_file: Spanned<String>,
    /// Peers a masked database may be streamed to unmasked (a DR replica).
    #[serde(default)]
    pub unmasked_peers: Vec<Spanned<String>>,
    /// Backup places a masked database may be dumped to unmasked.
    #[serde(default)]
    pub unmasked_backup_to: Vec<Spanned<String>>,
}

/// AWS profile files for backups (default: the standard locations of the
/// agent's user, `~/.aws/config` and `~/.aws/credentials`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS3 {
    pub config_file: Option<Spanned<String>>,
    pub credentials_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJobs {
    pub controller_timeout_secs: Option<Spanned<u64>>,
    pub stall_timeout_secs: Option<Spanned<u64>>,
    pub ticket_ttl_secs: Option<Spanned<u64>>,
    pub lane_min_table_mb: Option<Spanned<u64>>,
    pub split_table_mb: Option<Spanned<u64>>,
    pub status_interval_ms: Option<Spanned<u64>>,
    pub worker_threads: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub ca: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgres {
    pub socket_dir: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub sslmode: Option<Spanned<String>>,
    pub sslrootcert: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub rds_iam: Option<Spanned<bool>>,
    pub aws_region: Option<Spanned<String>>,
    pub max_database_size_mb: Option<Spanned<u64>>,
    pub bin_dir: Option<Spanned<String>>,
    pub restore_settings: Option<Spanned<Vec<Spanned<String>>>>,
    pub copy_over_tcp: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    pub may_dump: Vec<Spanned<String>>,
    #[serde(default)]
    pub may_overwrite: Vec<Spanned<String>>,
    pub controllers: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub peers: Vec<Spanned<String>>,
    #[serde(default)]
    pub may_backup_to: Vec<Spanned<String>>,
    #[serde(default)]
    pub may_restore_from: Vec<Spanned<String>>,
    pub may_receive_unmasked: Option<Spanned<bool>>,
}
