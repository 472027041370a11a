//! The local PostgreSQL server and its tools, as seen by the agent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio_postgres::Client;

use crate::config::{Endpoint, PostgresConfig};

pub mod copy_check;
mod message;
pub mod rights;
pub mod secret;
mod socket;
pub mod tls;
pub mod wire;

use secret::SecretError;

/// Checks that `dir` holds executable `pg_dump` and `pg_restore`.
pub fn check_bin_dir(dir: &Path) -> Result<(), String> {
    for tool in ["pg_dump", "pg_restore"] {
        if !is_executable(&dir.join(tool)) {
            return Err(format!(
                "{} has no executable {tool}: point it at the PostgreSQL bin directory (pg_config --bindir)",
                dir.display()
            ));
        }
    }
    Ok(())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds the newest PostgreSQL bin directory with `pg_dump` and `pg_restore`:
/// `pg_config --bindir`, then `/usr/lib/postgresql/<major>/bin`, then `PATH`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    versioned.sort();
    candidates.extend(versioned.into_iter().rev().map(|(_, p)| p));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates.into_iter().find(|d| check_bin_dir(d).is_ok())
}

/// First line of `<tool> --version` and the major version in it.
pub async fn tool_version(bin_dir: &Path, tool: &str) -> (String, u32) {
    let run = Command::new(bin_dir.join(tool))
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) if out.status.success() => {
            let line = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let major = parse_major(&line);
            (line, major)
        }
        Ok(Ok(out)) => (
            format!(
                "error: {tool} --version exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            0,
        ),
        Ok(Err(e)) => (
            format!("error: cannot run {}: {e}", bin_dir.join(tool).display()),
            0,
        ),
        Err(_) => (format!("error: {tool} --version did not answer in 10 s"), 0),
    }
}

/// `pg_dump (PostgreSQL) 15.18 (Debian ...)` → 15.
pub fn parse_major(line: &str) -> u32 {
    line.split_whitespace()
        .find_map(|w| {
            let digits: String = w.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

/// Connects to `database` as the agent's own role.
pub async fn connect(pg: &PostgresConfig, database: &str) -> Result<Client, ConnectError> {
    let password = pg
        .secret
        .password(&pg.user)
        .await
        .map_err(|e| ConnectError::Secret {
            endpoint: pg.endpoint.describe(),
            role: pg.user.clone(),
            why: e,
        })?;
    connect_as(pg, database, &pg.user, password.as_deref()).await
}

/// Connects to `database` as `user`, with `password` when the server asks
/// for one.
pub async fn connect_as(
    pg: &PostgresConfig,
    database: &str,
    user: &str,
    password: Option<&str>,
) -> Result<Client, ConnectError> {
    let mut cfg = tokio_postgres::Config::new();
    if let Some(p) = password {
        cfg.password(p);
    }
    cfg.port(pg.endpoint.port())
        .user(user)
        .dbname(database)
        .application_name("stagesync-agent")
        .connect_timeout(Duration::from_secs(10));
    let failed = |e: tokio_postgres::Error| ConnectError::Server {
        endpoint: pg.endpoint.describe(),
        role: user.to_string(),
        source: e,
    };
    let client = match &pg.endpoint {
        Endpoint::Socket { dir, .. } => {
            cfg.host_path(dir);
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(failed)?;
            spawn_connection(conn);
            client
        }
        Endpoint::Tcp { host, tls, .. } => {
            cfg.host(host)
                .ssl_mode(tokio_postgres::config::SslMode::Require);
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls.client).clone());
            let (client, conn) = cfg.connect(connector).await.map_err(failed)?;
            spawn_connection(conn);
            client
        }
    };
    Ok(client)
}

fn spawn_connection<F>(conn: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
}

/// The environment of a tool that logs in as the agent's own role.
pub async fn own_tool_env(pg: &PostgresConfig) -> Result<Vec<(&'static str, String)>, SecretError> {
    Ok(tool_env(pg, pg.secret.password(&pg.user).await?))
}

/// A session could not be opened: where, as whom and why (never the
/// secret).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no secret to log in to PostgreSQL at {endpoint} as role {role:?}: {why}")]
    Secret {
        endpoint: String,
        role: String,
        why: SecretError,
    },
    #[error(
        "cannot log in to PostgreSQL at {endpoint} as role {role:?}: {}",
        error_chain(source)
    )]
    Server {
        endpoint: String,
        role: String,
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// Whether nothing answered (the server is down or not there yet), as
    /// opposed to a server that answered and refused: a wrong password, a
    /// certificate that does not verify, a missing secret.
    pub fn unreachable(&self) -> bool {
        use std::io::ErrorKind;
        let ConnectError::Server { source, .. } = self else {
            return false;
        };
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return matches!(
                    io.kind(),
                    ErrorKind::ConnectionRefused
                        | ErrorKind::NotFound
                        | ErrorKind::TimedOut
                        | ErrorKind::AddrNotAvailable
                        | ErrorKind::ConnectionReset
                );
            }
            cur = e.source();
        }
        false
    }

    /// The server's SQLSTATE, when it answered with one.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            ConnectError::Server { source, .. } => source.code(),
            ConnectError::Secret { .. } => None,
        }
    }
}

/// The environment a client tool logs in with: where the server is and
/// how its certificate is checked, and the password (the environment is
/// readable only by the agent's user; a command line is readable by all).
pub fn tool_env(pg: &PostgresConfig, password: Option<String>) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if let Endpoint::Tcp { tls, .. } = &pg.endpoint {
        env.push(("PGSSLMODE", tls.mode.as_str().to_string()));
        env.push(("PGSSLROOTCERT", tls.ca_file.display().to_string()));
    }
    if let Some(p) = password {
        env.push(("PGPASSWORD", p));
    }
    env
}

/// How a restore's room is checked on this server, for `info`.
pub fn disk_check(pg: &PostgresConfig) -> String {
    let limit = match pg.max_database_size {
        Some(b) => format!(
            "databases up to {} MiB (postgres.max_database_size_mb)",
            b >> 20
        ),
        None => "no size limit set (postgres.max_database_size_mb)".to_string(),
    };
    match pg.endpoint.is_tcp() {
        true => format!("free space skipped: the server's disk cannot be read over TCP; {limit}"),
        false => match pg.max_database_size {
            Some(_) => format!("free space where the server keeps its data; {limit}"),
            None => "free space where the server keeps its data".to_string(),
        },
    }
}

/// Free bytes on the file system holding `path` (0 when unknown).
#[allow(clippy::unnecessary_cast)] // the statvfs field types differ between platforms
pub fn free_bytes(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks_available() as u64 * s.fragment_size() as u64)
        .unwrap_or(0)
}

/// An error and its causes on one line (tokio-postgres keeps the useful
/// part, such as "No such file or directory", in the source).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// A database error without the parts that quote data: PostgreSQL's DETAIL
/// (`Key (email)=(...)`, `Failing row contains (...)`), HINT and WHERE can
/// carry production values and secrets, and errors reach terminals and run
/// histories. What is kept names the failure: its message, and the table,
/// column and constraint it concerns.
pub fn error_without_values(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return error_chain(e);
    };
    let mut names = Vec::new();
    for (what, value) in [
        ("table", db.table()),
        ("column", db.column()),
        ("constraint", db.constraint()),
    ] {
        if let Some(v) = value {
            names.push(format!("{what} {v:?}"));
        }
    }
    let names = match names.is_empty() {
        true => String::new(),
        false => format!(" ({})", names.join(", ")),
    };
    format!("{}: {}{names}", db.severity(), db.message())
}

/// A database on the local server.
#[derive(Clone, Debug)]
pub struct DatabaseRow {
    pub name: String,
    pub owner: String,
    pub size_bytes: u64,
}

/// Server version and the databases a client can connect to.
pub struct ServerInfo {
    pub version: String,
    pub version_num: u32,
    pub databases: Vec<DatabaseRow>,
    pub roles: Vec<RoleRow>,
    pub data_dir_free_bytes: u64,
    /// What the agent's login may do.
    pub rights: rights::Rights,
}

/// A role, with the attributes that decide whether it may own a restored
/// database (see [`crate::policy::owner`]).
pub struct RoleRow {
    pub name: String,
    pub superuser: bool,
    pub createrole: bool,
    pub bypassrls: bool,
}

pub async fn server_info(pg: &PostgresConfig) -> Result<ServerInfo, String> {
    let describe = |e: tokio_postgres::Error| {
        format!(
            "PostgreSQL at {} as role {:?}: {}",
            pg.endpoint.describe(),
            pg.user,
            error_chain(&e)
        )
    };
    let client = connect(pg, "postgres").await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int4",
            &[],
        )
        .await
        .map_err(describe)?;
    let version: String = row.try_get(0).map_err(describe)?;
    let version_num: i32 = row.try_get(1).map_err(describe)?;
    Ok(ServerInfo {
        version,
        version_num: version_num.max(0) as u32,
        databases: databases(&client).await.map_err(describe)?,
        roles: roles(&client).await.map_err(describe)?,
        rights: rights::of_login(&client).await.map_err(describe)?,
        // Over TCP the server's disk is not this host's.
        data_dir_free_bytes: match pg.endpoint.is_tcp() {
            true => 0,
            false => data_dir_free_bytes(&client).await,
        },
    })
}

/// The databases a client can connect to, with owner and size.
async fn databases(client: &Client) -> Result<Vec<DatabaseRow>, tokio_postgres::Error> {
    // pg_database_size() is NULL for a database created or dropped while we
    // look (its directory is not there yet or any more): size 0, not an error.
    let rows = client
        .query(
            "SELECT datname::text, pg_get_userbyid(datdba)::text, pg_database_size(oid)::int8 \
             FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DatabaseRow {
                name: r.try_get(0)?,
                owner: r.try_get(1)?,
                size_bytes: r.try_get::<_, Option<i64>>(2)?.unwrap_or(0).max(0) as u64,
            })
        })
        .collect()
}

/// The roles, but PostgreSQL's own `pg_*` ones.
async fn roles(client: &Client) -> Result<Vec<RoleRow>, tokio_postgres::Error> {
    client
        .query(ROLES, &[])
        .await?
        .iter()
        .map(role_row)
        .collect()
}

const ROLES: &str = "SELECT rolname::text, rolsuper, rolcreaterole, rolbypassrls \
     FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1";

fn role_row(r: &tokio_postgres::Row) -> Result<RoleRow, tokio_postgres::Error> {
    Ok(RoleRow {
        name: r.try_get(0)?,
        superuser: r.try_get(1)?,
        createrole: r.try_get(2)?,
        bypassrls: r.try_get(3)?,
    })
}

/// Role `name`'s attributes, if it exists.
pub async fn role(client: &Client, name: &str) -> Result<Option<RoleRow>, tokio_postgres::Error> {
    let sql = "SELECT rolname::text, rolsuper, rolcreaterole, rolbypassrls \
               FROM pg_roles WHERE rolname = $1";
    match client.query_opt(sql, &[&name]).await? {
        Some(r) => Ok(Some(role_row(&r)?)),
        None => Ok(None),
    }
}

/// Free space where the data directory is. Readable by superusers and
/// pg_read_all_settings; 0 when we cannot tell.
async fn data_dir_free_bytes(client: &Client) -> u64 {
    match client.query_one("SHOW data_directory", &[]).await {
        Ok(row) => match row.try_get::<_, String>(0) {
            Ok(dir) => free_bytes(Path::new(&dir)),
            Err(_) => 0,
        },
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_major;

    #[test]
    fn majors() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            15
        );
        assert_eq!(parse_major("pg_restore (PostgreSQL) 17beta1"), 17);
        assert_eq!(parse_major("pg_dump (PostgreSQL) 9.6.24"), 9);
    }
}
