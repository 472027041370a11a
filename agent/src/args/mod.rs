//! Command lines for `pg_dump` and `pg_restore`. Options from the controller
//! become separate arguments (never a shell string), and extra arguments
//! pass only if they are on a short list of harmless flags.
//!
//! `dump.rs` builds `pg_dump`'s, `restore.rs` `pg_restore`'s and its
//! session settings, and `pattern.rs` reads table patterns as `pg_dump`
//! does, to tell which tables a plan leaves out.

mod dump;
mod pattern;
mod restore;

use crate::config::PostgresConfig;

pub use dump::{DumpTo, pg_dump};
pub use pattern::{TableName, TablePattern};
pub use restore::{RestoreAs, RestoreFrom, pg_restore, restore_settings};

/// Extra `pg_dump` flags a plan may add.
pub const SAFE_DUMP_ARGS: &[&str] = &[
    "--no-comments",
    "--no-publications",
    "--no-subscriptions",
    "--no-security-labels",
    "--no-tablespaces",
    "--no-toast-compression",
    "--no-unlogged-table-data",
    "--no-table-access-method",
    "--no-blobs",
    "--no-large-objects",
    "--quote-all-identifiers",
    "--lock-wait-timeout=",
    "--extra-float-digits=",
];

/// Extra `pg_restore` flags a plan may add.
pub const SAFE_RESTORE_ARGS: &[&str] = &[
    "--no-comments",
    "--no-publications",
    "--no-security-labels",
    "--no-tablespaces",
    "--no-table-access-method",
    "--disable-triggers",
    "--no-data-for-failed-tables",
];

fn check_extra(args: &[String], safe: &[&str], tool: &str) -> Result<(), String> {
    for a in args {
        let ok = safe.iter().any(|s| {
            if s.ends_with('=') {
                a.starts_with(s)
                    && a.len() > s.len()
                    && a[s.len()..]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.')
            } else {
                a == s
            }
        });
        if !ok {
            return Err(format!(
                "{tool} argument {a:?} is not allowed; allowed extra arguments: {}",
                safe.join(" ")
            ));
        }
    }
    Ok(())
}

fn connection_args(pg: &PostgresConfig) -> Vec<String> {
    connection_args_as(pg, &pg.user)
}

/// Connection arguments for logging in as `user` (its password, if the
/// server asks for one, comes from the tool's environment).
fn connection_args_as(pg: &PostgresConfig, user: &str) -> Vec<String> {
    vec![
        format!("--host={}", pg.endpoint.host()),
        format!("--port={}", pg.endpoint.port()),
        format!("--username={user}"),
        "--no-password".to_string(),
    ]
}

/// A database name as a conninfo string, so names with spaces, quotes or
/// `=` are never parsed as connection options.
fn conninfo_dbname(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// The connection settings of a test agent.
#[cfg(test)]
fn test_postgres() -> PostgresConfig {
    PostgresConfig {
        endpoint: crate::config::Endpoint::Socket {
            dir: "/run/pg".into(),
            port: 5432,
        },
        user: "postgres".into(),
        secret: crate::pg::secret::Secret::None,
        bin_dir: "/usr/bin".into(),
        restore_settings: Vec::new(),
        max_database_size: None,
        copy_over_tcp: None,
    }
}
