//! `[postgres]`: where the agent's database server is and how it logs in.
//!
//! Either the server's unix socket on this host (the default, peer or
//! trust authentication as the agent's OS user), or a server over TCP with
//! TLS, such as a managed service: then the agent runs next to it (a VM or
//! container in the same network), verifies its certificate against a CA
//! file, and logs in with a secret it reads from a file only it can read,
//! from an environment variable, or as an RDS IAM token it makes itself.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use toml::Spanned;

use super::raw::RawPostgres;
use super::validate::{Ctx, span_of};
use super::{ConfigError, os_user_name};
use crate::pg::secret::{self, Secret};
use crate::pg::tls;

/// Where the server is, how the agent logs in, and its tools.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    pub endpoint: Endpoint,
    /// The database role the agent logs in as.
    pub user: String,
    /// What the agent logs in with.
    pub secret: Secret,
    /// Where `pg_dump` and `pg_restore` live.
    pub bin_dir: PathBuf,
    /// Session settings for `pg_restore` and the post-restore SQL, as
    /// `name=value`: the database being restored is private to the job, so
    /// it can trade durability for speed until the swap.
    pub restore_settings: Vec<String>,
    /// The largest database a restore may make, in bytes: the disk check
    /// where the agent cannot see the server's disk (over TCP).
    pub max_database_size: Option<u64>,
    /// A loopback address of the server on this host: the source's copy
    /// lanes read rows over plain TCP to it (same port), where the kernel
    /// can gather them before it wakes the agent; everything else still
    /// uses the unix socket.
    pub copy_over_tcp: Option<IpAddr>,
}

/// Used when `postgres.restore_settings` is not given.
pub const DEFAULT_RESTORE_SETTINGS: &[&str] =
    &["synchronous_commit=off", "maintenance_work_mem=256MB"];

/// How the agent reaches its server.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// The unix socket `dir/.s.PGSQL.port` of a server on this host.
    Socket { dir: PathBuf, port: u16 },
    /// A server over TCP, always with TLS.
    Tcp {
        host: String,
        port: u16,
        tls: ServerTls,
    },
}

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Signed by the CA and naming the host (the default).
    VerifyFull,
    /// Signed by the CA, whatever host it names.
    VerifyCa,
}

impl SslMode {
    /// As libpq spells it (`PGSSLMODE`).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::VerifyFull => "verify-full",
            SslMode::VerifyCa => "verify-ca",
        }
    }
}

/// TLS to a server over TCP.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub mode: SslMode,
    /// The CA the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// The client configuration every session uses.
    pub client: Arc<rustls::ClientConfig>,
}

impl Endpoint {
    pub fn port(&self) -> u16 {
        match self {
            Endpoint::Socket { port, .. } | Endpoint::Tcp { port, .. } => *port,
        }
    }

    /// What the endpoint is, for messages: a socket path or `host:port`.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Socket { dir, port } => format!("{}/.s.PGSQL.{port}", dir.display()),
            Endpoint::Tcp { host, port, tls } => {
                format!("{host}:{port} (TLS {})", tls.mode.as_str())
            }
        }
    }

    /// The host as the client tools take it: a socket directory or a name.
    pub fn host(&self) -> String {
        match self {
            Endpoint::Socket { dir, .. } => dir.display().to_string(),
            Endpoint::Tcp { host, .. } => host.clone(),
        }
    }

    pub fn is_tcp(&self) -> bool {
        matches!(self, Endpoint::Tcp { .. })
    }
}

impl Ctx<'_> {
    pub(super) fn validate_postgres(
        &self,
        raw: &RawPostgres,
    ) -> Result<PostgresConfig, ConfigError> {
        let port = raw.port.as_ref().map(|p| *p.get_ref()).unwrap_or(5432);
        if port == 0 {
            let span = span_of(&raw.port);
            return self.err(span, "postgres.port", "port 0 is not a PostgreSQL port");
        }
        let user = match &raw.user {
            Some(u) if u.get_ref().is_empty() => {
                return self.err(u.span(), "postgres.user", "must not be empty");
            }
            Some(u) => u.get_ref().clone(),
            None if raw.host.is_some() => {
                return self.err(
                    span_of(&raw.host),
                    "postgres.user",
                    "a server over TCP needs the role the agent logs in as: set postgres.user",
                );
            }
            None => os_user_name(),
        };
        let copy_over_tcp = self.copy_over_tcp(raw)?;
        let endpoint = self.endpoint(raw, port)?;
        let secret = self.secret(raw, &endpoint)?;
        let max_database_size = match &raw.max_database_size_mb {
            Some(m) if *m.get_ref() == 0 => {
                return self.err(
                    m.span(),
                    "postgres.max_database_size_mb",
                    "must be at least 1 (leave it out for no limit)",
                );
            }
            Some(m) => Some(m.get_ref().saturating_mul(1024 * 1024)),
            None => None,
        };
        Ok(PostgresConfig {
            endpoint,
            user,
            secret,
            copy_over_tcp,
            bin_dir: self.bin_dir(&raw.bin_dir)?,
            restore_settings: self.restore_settings(&raw.restore_settings)?,
            max_database_size,
        })
    }

    /// `postgres.host` (TCP, with its TLS keys) or `postgres.socket_dir`.
    fn endpoint(&self, raw: &RawPostgres, port: u16) -> Result<Endpoint, ConfigError> {
        let Some(host) = &raw.host else {
            for (key, set) in [
                ("postgres.sslmode", raw.sslmode.as_ref().map(|s| s.span())),
                (
                    "postgres.sslrootcert",
                    raw.sslrootcert.as_ref().map(|s| s.span()),
                ),
            ] {
                if let Some(span) = set {
                    return self.err(
                        span,
                        key,
                        "TLS settings apply to a server over TCP: set postgres.host, or remove this key",
                    );
                }
            }
            let dir = self.socket_dir(&raw.socket_dir)?;
            return Ok(Endpoint::Socket { dir, port });
        };
        if let Some(s) = &raw.socket_dir {
            return self.err(
                s.span(),
                "postgres.socket_dir",
                "set either postgres.socket_dir (a server on this host) or postgres.host (over TCP), not both",
            );
        }
        let name = host.get_ref();
        if name.is_empty() || name.starts_with('/') || name.contains([' ', ',', '\'', '\\']) {
            return self.err(
                host.span(),
                "postgres.host",
                format!(
                    "{name:?} is not a host name or address (a socket directory goes in postgres.socket_dir)"
                ),
            );
        }
        let mode = match raw
            .sslmode
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("verify-full", _)) => SslMode::VerifyFull,
            Some(("verify-ca", _)) => SslMode::VerifyCa,
            Some((other, span)) => {
                return self.err(
                    span,
                    "postgres.sslmode",
                    format!(
                        "{other:?} is not offered: the agent always checks the server's certificate; use \"verify-full\" (the default) or \"verify-ca\""
                    ),
                );
            }
        };
        let Some(ca) = &raw.sslrootcert else {
            return self.err(
                host.span(),
                "postgres.sslrootcert",
                "a server over TCP needs the CA file its certificate is checked against (for RDS, the region's bundle from AWS): set postgres.sslrootcert",
            );
        };
        let ca_file = self.resolve(ca.get_ref());
        let client = tls::client_config(&ca_file, mode)
            .map_err(|m| self.error(ca.span(), "postgres.sslrootcert", m))?;
        Ok(Endpoint::Tcp {
            host: name.clone(),
            port,
            tls: ServerTls {
                mode,
                ca_file,
                client: Arc::new(client),
            },
        })
    }

    /// `postgres.copy_over_tcp`: a loopback address, and only beside
    /// `socket_dir` (rows cross it without TLS).
    fn copy_over_tcp(&self, raw: &RawPostgres) -> Result<Option<IpAddr>, ConfigError> {
        let Some(addr) = &raw.copy_over_tcp else {
            return Ok(None);
        };
        if raw.host.is_some() {
            return self.err(
                addr.span(),
                "postgres.copy_over_tcp",
                "is for a server on this host reached by its unix socket; over postgres.host the copy lanes already use TCP (with TLS): remove this key",
            );
        }
        match addr.get_ref().parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => Ok(Some(ip)),
            _ => self.err(
                addr.span(),
                "postgres.copy_over_tcp",
                format!(
                    "{:?} is not a loopback address: rows travel it without TLS, so it must be this host's, such as \"127.0.0.1\" or \"::1\"",
                    addr.get_ref()
                ),
            ),
        }
    }

    /// At most one of `password_file`, `password_env` and `rds_iam`.
    fn secret(&self, raw: &RawPostgres, endpoint: &Endpoint) -> Result<Secret, ConfigError> {
        let mut chosen: Vec<(&str, std::ops::Range<usize>)> = Vec::new();
        if let Some(f) = &raw.password_file {
            chosen.push(("postgres.password_file", f.span()));
        }
        if let Some(e) = &raw.password_env {
            chosen.push(("postgres.password_env", e.span()));
        }
        if let Some(i) = &raw.rds_iam {
            chosen.push(("postgres.rds_iam", i.span()));
        }
        if chosen.len() > 1 {
            let (key, span) = chosen[1].clone();
            return self.err(
                span,
                key,
                format!(
                    "the agent logs in with one secret: keep {} or {key}, not both",
                    chosen[0].0
                ),
            );
        }
        if let Some(f) = &raw.password_file {
            let path = self.resolve(f.get_ref());
            secret::check_file(&path)
                .map_err(|m| self.error(f.span(), "postgres.password_file", m))?;
            return Ok(Secret::File(path));
        }
        if let Some(e) = &raw.password_env {
            let name = e.get_ref();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return self.err(
                    e.span(),
                    "postgres.password_env",
                    format!("{name:?} is not an environment variable name"),
                );
            }
            if std::env::var_os(name).is_none() {
                return self.err(
                    e.span(),
                    "postgres.password_env",
                    format!(
                        "the environment variable {name} is not set for the agent (systemd: an EnvironmentFile= readable only by root)"
                    ),
                );
            }
            return Ok(Secret::Env(name.clone()));
        }
        if let Some(i) = &raw.rds_iam {
            if !*i.get_ref() {
                return Ok(Secret::None);
            }
            let Endpoint::Tcp { host, port, .. } = endpoint else {
                return self.err(
                    i.span(),
                    "postgres.rds_iam",
                    "RDS IAM authentication needs a server over TCP: set postgres.host",
                );
            };
            let region = raw.aws_region.as_ref().map(|r| r.get_ref().clone());
            return Ok(Secret::rds_iam(host, *port, region));
        }
        if let Some(r) = &raw.aws_region {
            return self.err(
                r.span(),
                "postgres.aws_region",
                "only used with postgres.rds_iam = true",
            );
        }
        Ok(Secret::None)
    }

    /// `postgres.socket_dir`, by default where Debian and Red Hat put it.
    fn socket_dir(&self, raw: &Option<Spanned<String>>) -> Result<PathBuf, ConfigError> {
        let dir = raw
            .as_ref()
            .map(|s| self.resolve(s.get_ref()))
            .unwrap_or_else(|| PathBuf::from("/var/run/postgresql"));
        if !dir.is_dir() {
            return self.err(
                span_of(raw),
                "postgres.socket_dir",
                format!(
                    "{} is not a directory: set it to the server's unix_socket_directories, or set postgres.host for a server over TCP",
                    dir.display()
                ),
            );
        }
        Ok(dir)
    }

    /// `postgres.bin_dir`, or where the client tools are found.
    fn bin_dir(&self, raw: &Option<Spanned<String>>) -> Result<PathBuf, ConfigError> {
        let Some(b) = raw else {
            return crate::pg::find_bin_dir().ok_or_else(|| {
                self.error(
                    0..0,
                    "postgres.bin_dir",
                    "pg_dump and pg_restore were not found (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH): install the PostgreSQL client tools or set postgres.bin_dir",
                )
            });
        };
        let dir = self.resolve(b.get_ref());
        if let Err(m) = crate::pg::check_bin_dir(&dir) {
            return self.err(b.span(), "postgres.bin_dir", m);
        }
        Ok(dir)
    }

    /// `postgres.restore_settings`: `name=value` items, or the defaults.
    fn restore_settings(
        &self,
        raw: &Option<Spanned<Vec<Spanned<String>>>>,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(list) = raw else {
            return Ok(DEFAULT_RESTORE_SETTINGS
                .iter()
                .map(|s| s.to_string())
                .collect());
        };
        let mut out = Vec::new();
        for item in list.get_ref() {
            let v = item.get_ref();
            if !is_setting(v) {
                return self.err(
                    item.span(),
                    "postgres.restore_settings",
                    format!("{v:?} is not name=value (e.g. \"maintenance_work_mem=512MB\")"),
                );
            }
            out.push(v.clone());
        }
        Ok(out)
    }
}

/// A session setting as `pg_restore` may be given it: a lower-case name
/// and a plain value, which passes through PGOPTIONS as one option.
fn is_setting(v: &str) -> bool {
    v.split_once('=').is_some_and(|(name, value)| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
            && !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    })
}
