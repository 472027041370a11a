//! The agent's configuration file (`agent.toml`).
//!
//! TOML is read into [`RawConfig`] (every key spanned, unknown keys refused)
//! and validated into [`AgentConfig`] before any port is bound. Every error
//! names the file, the line and the key, and says what to do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use stagesync_certs::{Identity, Kind, ReloadingServerConfig, TlsError, TlsFiles};
use toml::Spanned;

pub use stagesync_proto::tomlfile::ConfigError;
use stagesync_proto::tomlfile::TomlFile;

/// Where the agent looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/stagesync/agent.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Spanned<String>,
    listen: Spanned<String>,
    trust_domain: Option<Spanned<String>>,
    work_dir: Spanned<String>,
    tls: RawTls,
    #[serde(default)]
    postgres: RawPostgres,
    policy: RawPolicy,
    #[serde(default)]
    jobs: RawJobs,
    #[serde(default)]
    s3: RawS3,
}

/// AWS profile files for backups (default: the standard locations of the
/// agent's user, `~/.aws/config` and `~/.aws/credentials`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    config_file: Option<Spanned<String>>,
    credentials_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    controller_timeout_secs: Option<Spanned<u64>>,
    stall_timeout_secs: Option<Spanned<u64>>,
    ticket_ttl_secs: Option<Spanned<u64>>,
    lane_min_table_mb: Option<Spanned<u64>>,
    status_interval_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Spanned<String>,
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    socket_dir: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    user: Option<Spanned<String>>,
    bin_dir: Option<Spanned<String>>,
    restore_settings: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    may_dump: Vec<Spanned<String>>,
    #[serde(default)]
    may_overwrite: Vec<Spanned<String>>,
    controllers: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    peers: Vec<Spanned<String>>,
    #[serde(default)]
    may_backup_to: Vec<Spanned<String>>,
    #[serde(default)]
    may_restore_from: Vec<Spanned<String>>,
}

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
    /// Source side: a table gets a data lane of its own from this size
    /// (heap and TOAST, in bytes); below it, one more pg_dump and pg_restore
    /// cost more than they win.
    pub lane_min_table_bytes: u64,
    /// How often a controller watching a job gets its status when nothing
    /// else changed (phase changes are sent at once).
    pub status_interval: std::time::Duration,
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
}

#[derive(Clone, Debug)]
pub struct PostgresConfig {
    pub socket_dir: PathBuf,
    pub port: u16,
    /// The database role the agent connects as (peer auth: its OS user).
    pub user: String,
    /// Where `pg_dump` and `pg_restore` live.
    pub bin_dir: PathBuf,
    /// Session settings for `pg_restore` and the post-restore SQL, as
    /// `name=value`: the database being restored is private to the job, so
    /// it can trade durability for speed until the swap.
    pub restore_settings: Vec<String>,
}

/// Used when `postgres.restore_settings` is not given.
pub const DEFAULT_RESTORE_SETTINGS: &[&str] =
    &["synchronous_commit=off", "maintenance_work_mem=256MB"];

/// What this agent may do, and for whom.
#[derive(Clone, Debug)]
pub struct Policy {
    pub may_dump: Patterns,
    pub may_overwrite: Patterns,
    pub controllers: Vec<Identity>,
    pub peers: Vec<Identity>,
    /// Where backups may be uploaded: globs over `s3://bucket/prefix/`
    /// (or `https://endpoint/bucket/prefix/`).
    pub may_backup_to: Patterns,
    /// Where backups may be restored from, in the same form.
    pub may_restore_from: Patterns,
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

struct Ctx<'a>(TomlFile<'a>);

impl<'a> std::ops::Deref for Ctx<'a> {
    type Target = TomlFile<'a>;
    fn deref(&self) -> &TomlFile<'a> {
        &self.0
    }
}

impl Ctx<'_> {
    fn validate(&self, raw: RawConfig) -> Result<AgentConfig, ConfigError> {
        let name = raw.name.get_ref().clone();
        if let Err(e) = stagesync_certs::identity::validate_name(&name) {
            return self.err(raw.name.span(), "name", e.to_string());
        }
        let trust_domain = match &raw.trust_domain {
            Some(td) => {
                if let Err(e) = stagesync_certs::identity::validate_trust_domain(td.get_ref()) {
                    return self.err(td.span(), "trust_domain", e.to_string());
                }
                td.get_ref().clone()
            }
            None => stagesync_certs::DEFAULT_TRUST_DOMAIN.to_string(),
        };
        let identity = Identity::new(&trust_domain, Kind::Agent, &name)
            .map_err(|e| self.error(raw.name.span(), "name", e.to_string()))?;

        let listen: SocketAddr = match raw.listen.get_ref().parse() {
            Ok(a) => a,
            Err(_) => {
                return self.err(
                    raw.listen.span(),
                    "listen",
                    format!(
                        "{:?} is not an address to listen on: use IP:PORT, e.g. \"0.0.0.0:7443\"",
                        raw.listen.get_ref()
                    ),
                );
            }
        };

        let tls = self.validate_tls(&raw.tls, &raw.name, &identity)?;

        let work_dir = self.resolve(raw.work_dir.get_ref());
        if let Err(m) = check_writable_dir(&work_dir) {
            return self.err(raw.work_dir.span(), "work_dir", m);
        }

        let postgres = self.validate_postgres(&raw.postgres)?;
        let policy = self.validate_policy(&raw.policy, &trust_domain)?;
        let secs = |v: &Option<Spanned<u64>>, key: &str, default: u64| match v {
            Some(s) if *s.get_ref() == 0 => self.err(s.span(), key, "must be at least 1 second"),
            Some(s) => Ok(std::time::Duration::from_secs(*s.get_ref())),
            None => Ok(std::time::Duration::from_secs(default)),
        };
        let jobs = JobLimits {
            controller_timeout: secs(
                &raw.jobs.controller_timeout_secs,
                "jobs.controller_timeout_secs",
                60,
            )?,
            stall_timeout: secs(&raw.jobs.stall_timeout_secs, "jobs.stall_timeout_secs", 120)?,
            ticket_ttl: secs(&raw.jobs.ticket_ttl_secs, "jobs.ticket_ttl_secs", 600)?,
            lane_min_table_bytes: match &raw.jobs.lane_min_table_mb {
                Some(mb) if *mb.get_ref() > 1 << 30 => {
                    return self.err(
                        mb.span(),
                        "jobs.lane_min_table_mb",
                        "must be at most 1073741824 (1 PiB)",
                    );
                }
                Some(mb) => *mb.get_ref() << 20,
                None => 16 << 20,
            },
            status_interval: match &raw.jobs.status_interval_ms {
                Some(ms) if !(50..=3_600_000).contains(ms.get_ref()) => {
                    return self.err(
                        ms.span(),
                        "jobs.status_interval_ms",
                        "must be 50 to 3600000 (one hour)",
                    );
                }
                Some(ms) => std::time::Duration::from_millis(*ms.get_ref()),
                None => std::time::Duration::from_millis(500),
            },
        };

        let mut s3_files = stagesync_s3::ProfileFilePaths::default();
        for (raw_path, slot, key) in [
            (&raw.s3.config_file, &mut s3_files.config, "s3.config_file"),
            (
                &raw.s3.credentials_file,
                &mut s3_files.credentials,
                "s3.credentials_file",
            ),
        ] {
            if let Some(p) = raw_path {
                let path = self.resolve(p.get_ref());
                if !path.is_file() {
                    return self.err(
                        p.span(),
                        key,
                        format!("{} is not a readable file", path.display()),
                    );
                }
                *slot = Some(path);
            }
        }

        Ok(AgentConfig {
            source: self.path.to_path_buf(),
            name,
            identity,
            listen,
            tls,
            work_dir,
            postgres,
            policy,
            jobs,
            s3_files,
            faults: Faults::default(),
        })
    }

    fn validate_tls(
        &self,
        raw: &RawTls,
        name: &Spanned<String>,
        identity: &Identity,
    ) -> Result<TlsFiles, ConfigError> {
        let files = TlsFiles {
            ca: self.resolve(raw.ca.get_ref()),
            cert: self.resolve(raw.cert.get_ref()),
            key: self.resolve(raw.key.get_ref()),
        };
        let loaded = match ReloadingServerConfig::load(files.clone()) {
            Ok(l) => l,
            Err(e) => {
                let (span, key) = match &e {
                    TlsError::Read { what, .. } | TlsError::NoCertificate { what, .. } => {
                        if what.starts_with("CA") {
                            (raw.ca.span(), "tls.ca")
                        } else if *what == "private key" {
                            (raw.key.span(), "tls.key")
                        } else {
                            (raw.cert.span(), "tls.cert")
                        }
                    }
                    TlsError::BadKey { .. } | TlsError::Config { .. } => {
                        (raw.key.span(), "tls.key")
                    }
                    TlsError::Identity { .. } => (raw.cert.span(), "tls.cert"),
                };
                return self.err(span, key, e.to_string());
            }
        };
        let actual = loaded.identity();
        if &actual != identity {
            return self.err(
                name.span(),
                "name",
                format!(
                    "this agent is configured as {identity} but its certificate {} names {actual}: fix `name`/`trust_domain`, or issue a certificate with `stagesync certs issue agent {}`",
                    files.cert.display(),
                    identity.name
                ),
            );
        }
        Ok(files)
    }

    fn validate_postgres(&self, raw: &RawPostgres) -> Result<PostgresConfig, ConfigError> {
        let socket_dir = raw
            .socket_dir
            .as_ref()
            .map(|s| self.resolve(s.get_ref()))
            .unwrap_or_else(|| PathBuf::from("/var/run/postgresql"));
        if !socket_dir.is_dir() {
            let span = raw.socket_dir.as_ref().map(|s| s.span()).unwrap_or(0..0);
            return self.err(
                span,
                "postgres.socket_dir",
                format!(
                    "{} is not a directory: set it to the server's unix_socket_directories",
                    socket_dir.display()
                ),
            );
        }
        let port = raw.port.as_ref().map(|p| *p.get_ref()).unwrap_or(5432);
        if port == 0 {
            let span = raw.port.as_ref().map(|s| s.span()).unwrap_or(0..0);
            return self.err(span, "postgres.port", "port 0 is not a PostgreSQL port");
        }
        let user = match &raw.user {
            Some(u) if u.get_ref().is_empty() => {
                return self.err(u.span(), "postgres.user", "must not be empty");
            }
            Some(u) => u.get_ref().clone(),
            None => os_user_name(),
        };
        let bin_dir = match &raw.bin_dir {
            Some(b) => {
                let dir = self.resolve(b.get_ref());
                if let Err(m) = crate::pg::check_bin_dir(&dir) {
                    return self.err(b.span(), "postgres.bin_dir", m);
                }
                dir
            }
            None => match crate::pg::find_bin_dir() {
                Some(d) => d,
                None => {
                    return self.err(
                        0..0,
                        "postgres.bin_dir",
                        "pg_dump and pg_restore were not found (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH): install the PostgreSQL client tools or set postgres.bin_dir",
                    );
                }
            },
        };
        let restore_settings = match &raw.restore_settings {
            None => DEFAULT_RESTORE_SETTINGS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Some(list) => {
                let mut out = Vec::new();
                for item in list.get_ref() {
                    let v = item.get_ref();
                    let ok = v.split_once('=').is_some_and(|(name, value)| {
                        !name.is_empty()
                            && name
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
                            && !value.is_empty()
                            && value
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    });
                    if !ok {
                        return self.err(
                            item.span(),
                            "postgres.restore_settings",
                            format!(
                                "{v:?} is not name=value (e.g. \"maintenance_work_mem=512MB\")"
                            ),
                        );
                    }
                    out.push(v.clone());
                }
                out
            }
        };
        Ok(PostgresConfig {
            socket_dir,
            port,
            user,
            bin_dir,
            restore_settings,
        })
    }

    fn validate_policy(&self, raw: &RawPolicy, trust_domain: &str) -> Result<Policy, ConfigError> {
        let globs = |list: &[Spanned<String>], key: &str| -> Result<Patterns, ConfigError> {
            for p in list {
                if let Err(e) = Glob::new(p.get_ref()) {
                    return self.err(
                        p.span(),
                        key,
                        format!("bad glob {:?}: {}", p.get_ref(), e.kind()),
                    );
                }
                if p.get_ref().is_empty() {
                    return self.err(p.span(), key, "an empty pattern matches nothing; remove it");
                }
            }
            let all: Vec<String> = list.iter().map(|p| p.get_ref().clone()).collect();
            Patterns::new(&all).map_err(|e| ConfigError {
                file: self.path.to_path_buf(),
                line: 1,
                key: key.to_string(),
                message: e.to_string(),
            })
        };
        let identities = |list: &[Spanned<String>], kind: Kind, key: &str| {
            list.iter()
                .map(|s| {
                    let v = s.get_ref();
                    let id = if v.starts_with("spiffe://") {
                        v.parse::<Identity>()
                    } else {
                        Identity::new(trust_domain, kind, v)
                    };
                    match id {
                        Ok(id) if id.kind == kind && id.trust_domain == trust_domain => Ok(id),
                        Ok(id) => self.err(
                            s.span(),
                            key,
                            format!("{id} is not a {kind} of trust domain {trust_domain:?}"),
                        ),
                        Err(e) => self.err(s.span(), key, e.to_string()),
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        if raw.controllers.get_ref().is_empty() {
            return self.err(
                raw.controllers.span(),
                "policy.controllers",
                "no controller may command this agent: list at least one controller name",
            );
        }
        Ok(Policy {
            may_dump: globs(&raw.may_dump, "policy.may_dump")?,
            may_overwrite: globs(&raw.may_overwrite, "policy.may_overwrite")?,
            controllers: identities(
                raw.controllers.get_ref(),
                Kind::Controller,
                "policy.controllers",
            )?,
            peers: identities(&raw.peers, Kind::Agent, "policy.peers")?,
            may_backup_to: globs(&raw.may_backup_to, "policy.may_backup_to")?,
            may_restore_from: globs(&raw.may_restore_from, "policy.may_restore_from")?,
        })
    }
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

fn check_writable_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!(
            "{} is not a directory: create it, owned by the agent's user",
            dir.display()
        ));
    }
    let probe = dir.join(format!(".stagesync-probe-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "{} is not writable by this agent: {e}",
            dir.display()
        )),
    }
}
