//! Database-level operations on the destination: the fresh database a job
//! restores into, the atomic swap, rollback, and cleaning up after crashes.
//!
//! The swap renames inside one transaction (PostgreSQL allows `ALTER
//! DATABASE ... RENAME` in a transaction block), so the live name always
//! points at a complete database: the old one or the new one, never neither.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::config::PostgresConfig;
use crate::pg::{self, error_chain};
use crate::sql::{
    DROP_PREFIX, NEW_PREFIX, ident, literal, previous_database, swap_database, with_prefix,
};

/// A database operation failed; the message says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DbError(pub String);

fn err(context: impl std::fmt::Display, e: tokio_postgres::Error) -> DbError {
    DbError(format!("{context}: {}", error_chain(&e)))
}

async fn admin(pg: &PostgresConfig) -> Result<Client, DbError> {
    pg::connect(pg, "postgres").await.map_err(|e| {
        err(
            format!("connecting to PostgreSQL at {}", pg.socket_dir.display()),
            e,
        )
    })
}

pub async fn database_exists(c: &Client, name: &str) -> Result<bool, DbError> {
    let row = c
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| err("reading pg_database", e))?;
    Ok(row.is_some())
}

pub async fn role_exists(c: &Client, name: &str) -> Result<bool, DbError> {
    let row = c
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .map_err(|e| err("reading pg_roles", e))?;
    Ok(row.is_some())
}

/// Creates the database a job restores into, owned by `owner`, with the live
/// database's encoding and locale when it exists.
pub async fn create_new(
    pg: &PostgresConfig,
    new_db: &str,
    live: &str,
    owner: &str,
) -> Result<(), DbError> {
    let c = admin(pg).await?;
    if !role_exists(&c, owner).await? {
        return Err(DbError(format!(
            "the owner role {owner:?} does not exist on this server: create it (CREATE ROLE {} LOGIN) or fix the pair's owner",
            ident(owner)
        )));
    }
    let mut sql = format!(
        "CREATE DATABASE {} OWNER {} TEMPLATE template0",
        ident(new_db),
        ident(owner)
    );
    let row = c
        .query_opt(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = $1",
            &[&live],
        )
        .await
        .map_err(|e| err("reading the live database's locale", e))?;
    if let Some(row) = row {
        let locale = |i| {
            row.try_get::<_, String>(i)
                .map_err(|e| err("reading the live database's locale", e))
        };
        let (enc, collate, ctype) = (locale(0)?, locale(1)?, locale(2)?);
        sql.push_str(&format!(
            " ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            literal(&enc),
            literal(&collate),
            literal(&ctype)
        ));
    }
    c.batch_execute(&sql)
        .await
        .map_err(|e| err(format!("creating database {new_db:?}"), e))?;
    Ok(())
}

/// Drops a database, ending its sessions first.
pub async fn drop_database(pg: &PostgresConfig, name: &str) -> Result<(), DbError> {
    let c = admin(pg).await?;
    c.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        ident(name)
    ))
    .await
    .map_err(|e| err(format!("dropping database {name:?}"), e))
}

/// Drops every `stagesync_new_*` database not in `keep`: what a crashed job
/// left behind. Returns the names dropped.
pub async fn drop_orphans(pg: &PostgresConfig, keep: &[String]) -> Result<Vec<String>, DbError> {
    let c = admin(pg).await?;
    let rows = c
        .query(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) OR starts_with(datname, $2)",
            &[&NEW_PREFIX, &DROP_PREFIX],
        )
        .await
        .map_err(|e| err("listing leftover databases", e))?;
    let mut dropped = Vec::new();
    for r in rows {
        let name: String = r
            .try_get(0)
            .map_err(|e| err("listing leftover databases", e))?;
        if keep.contains(&name) {
            continue;
        }
        c.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(&name)
        ))
        .await
        .map_err(|e| err(format!("dropping leftover database {name:?}"), e))?;
        dropped.push(name);
    }
    Ok(dropped)
}

/// Stops new connections to `db` and ends the sessions on it.
async fn close_database(c: &Client, db: &str) -> Result<(), DbError> {
    c.batch_execute(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        ident(db)
    ))
    .await
    .map_err(|e| err(format!("stopping new connections to {db:?}"), e))?;
    end_sessions(c, db).await
}

/// Ends the sessions on `db` and waits until they are gone.
async fn end_sessions(c: &Client, db: &str) -> Result<(), DbError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = c
            .query_one(
                "SELECT count(pg_terminate_backend(pid))::int8 FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db],
            )
            .await
            .map_err(|e| err(format!("ending sessions on {db:?}"), e))?;
        let left: i64 = row
            .try_get(0)
            .map_err(|e| err(format!("ending sessions on {db:?}"), e))?;
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DbError(format!(
                "{left} sessions on {db:?} did not end within 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a live database carries that a restored one must inherit.
struct Carried {
    owner: String,
    allow_connections: bool,
    connection_limit: i32,
    /// (role or "" for all roles, "name=value")
    settings: Vec<(String, String)>,
    /// None: default privileges. Some: (grantee or "" for PUBLIC, privilege, grantable).
    grants: Option<Vec<(String, String, bool)>>,
}

async fn carried(c: &Client, db: &str) -> Result<Carried, DbError> {
    let e = |x| err(format!("reading the settings of {db:?}"), x);
    let row = c
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text, datallowconn, datconnlimit, datacl IS NULL \
             FROM pg_database WHERE datname = $1",
            &[&db],
        )
        .await
        .map_err(e)?;
    let default_acl: bool = row.try_get(3).map_err(e)?;
    let settings = c
        .query(
            "SELECT COALESCE(r.rolname::text, ''), unnest(s.setconfig) \
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = $1",
            &[&db],
        )
        .await
        .map_err(e)?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let grants = if default_acl {
        None
    } else {
        Some(
            c.query(
                "SELECT COALESCE(r.rolname::text, ''), a.privilege_type::text, a.is_grantable \
                 FROM pg_database d, aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee \
                 WHERE d.datname = $1",
                &[&db],
            )
            .await
            .map_err(e)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, _>>()
            .map_err(e)?,
        )
    };
    Ok(Carried {
        owner: row.try_get(0).map_err(e)?,
        allow_connections: row.try_get(1).map_err(e)?,
        connection_limit: row.try_get(2).map_err(e)?,
        settings,
        grants,
    })
}

/// Settings whose value is a list: stored as `a, "b c"`, set back as
/// separate literals (`'a', 'b c'`), the way pg_dump does.
const LIST_SETTINGS: &[&str] = &[
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
];

fn setting_value(name: &str, value: &str) -> String {
    if !LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        return literal(value);
    }
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut cur)),
            c if c.is_whitespace() && !quoted => {}
            c => cur.push(c),
        }
    }
    items.push(cur);
    items
        .iter()
        .map(|i| literal(i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// SQL that gives `db` what `carried` describes.
fn apply(db: &str, k: &Carried) -> String {
    let d = ident(db);
    let mut sql = format!(
        "ALTER DATABASE {d} OWNER TO {};\nALTER DATABASE {d} CONNECTION LIMIT {};\n",
        ident(&k.owner),
        k.connection_limit
    );
    for (role, setting) in &k.settings {
        let Some((name, value)) = setting.split_once('=') else {
            continue;
        };
        let target = if role.is_empty() {
            format!("ALTER DATABASE {d}")
        } else {
            format!("ALTER ROLE {} IN DATABASE {d}", ident(role))
        };
        sql.push_str(&format!(
            "{target} SET {} TO {};\n",
            ident(name),
            setting_value(name, value)
        ));
    }
    if let Some(grants) = &k.grants {
        sql.push_str(&format!("REVOKE ALL ON DATABASE {d} FROM PUBLIC;\n"));
        for (grantee, privilege, grantable) in grants {
            let who = if grantee.is_empty() {
                "PUBLIC".to_string()
            } else {
                ident(grantee)
            };
            let privilege = match privilege.as_str() {
                "CREATE" | "CONNECT" | "TEMPORARY" => privilege.as_str(),
                _ => continue,
            };
            sql.push_str(&format!(
                "GRANT {privilege} ON DATABASE {d} TO {who}{};\n",
                if *grantable { " WITH GRANT OPTION" } else { "" }
            ));
        }
    }
    sql
}

/// Remembers, in `dir`, that database `name` was closed to connections (and
/// whether it allowed them before), so a crash between closing and
/// reopening is repaired when the agent starts again.
fn mark_closed(dir: &Path, name: &str, allowed: bool) -> Result<(), DbError> {
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(dir.join(hex::encode(name)), format!("{allowed}\n{name}")))
        .map_err(|e| {
            DbError(format!(
                "cannot record closing {name:?} in {}: {e}",
                dir.display()
            ))
        })
}

fn unmark(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(dir.join(hex::encode(name)));
}

/// Lets connections back into `name` after a failed swap or rollback.
async fn reopen(c: &Client, dir: &Path, name: &str, allowed: bool) {
    let sql = format!("ALTER DATABASE {} ALLOW_CONNECTIONS {allowed}", ident(name));
    match c.batch_execute(&sql).await {
        Ok(()) => unmark(dir, name),
        Err(e) => {
            tracing::error!(database = name, error = %error_chain(&e), "could not reopen the database; the agent retries when it next starts")
        }
    }
}

/// Runs `sql` in one transaction: all of it happens, or none.
async fn in_transaction(c: &mut Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute(sql).await?;
    tx.commit().await
}

/// Reopens databases a crash left closed (see [`mark_closed`]).
pub async fn reopen_closed(pg: &PostgresConfig, dir: &Path) -> Result<Vec<String>, DbError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let c = admin(pg).await?;
    let mut reopened = Vec::new();
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let Some((allowed, name)) = text.split_once('\n') else {
            let _ = std::fs::remove_file(entry.path());
            continue;
        };
        if database_exists(&c, name).await? {
            reopen(&c, dir, name, allowed == "true").await;
            reopened.push(name.to_string());
        } else {
            unmark(dir, name);
        }
    }
    Ok(reopened)
}

/// Swaps `new_db` in as `live`; the old live database becomes the previous
/// copy (replacing an older one, dropped only once the swap committed).
/// `closed` is where closings are recorded. Returns the previous copy's name.
pub async fn swap_in(
    pg: &PostgresConfig,
    closed: &Path,
    new_db: &str,
    live: &str,
) -> Result<String, DbError> {
    let mut c = admin(pg).await?;
    let previous = previous_database(live);
    let retired = with_prefix(DROP_PREFIX, live);
    if !database_exists(&c, new_db).await? {
        return Err(DbError(format!("the restored database {new_db:?} is gone")));
    }
    let live_exists = database_exists(&c, live).await?;
    let previous_exists = live_exists && database_exists(&c, &previous).await?;
    if database_exists(&c, &retired).await? {
        c.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", ident(&retired)))
            .await
            .map_err(|e| err(format!("dropping {retired:?}"), e))?;
    }
    // Nobody may connect to the new database until it has the live name.
    c.batch_execute(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        ident(new_db)
    ))
    .await
    .map_err(|e| err(format!("closing {new_db:?}"), e))?;
    end_sessions(&c, new_db).await?;
    let carried = if live_exists {
        Some(carried(&c, live).await?)
    } else {
        None
    };
    let allowed = carried.as_ref().is_none_or(|k| k.allow_connections);
    if live_exists {
        mark_closed(closed, live, allowed)?;
        if let Err(e) = close_database(&c, live).await {
            reopen(&c, closed, live, allowed).await;
            return Err(e);
        }
    }
    let mut sql = String::new();
    if previous_exists {
        sql.push_str(&format!(
            "ALTER DATABASE {} RENAME TO {};\n",
            ident(&previous),
            ident(&retired)
        ));
    }
    if live_exists {
        sql.push_str(&format!(
            "ALTER DATABASE {} RENAME TO {};\n",
            ident(live),
            ident(&previous)
        ));
        sql.push_str(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {allowed};\n",
            ident(&previous)
        ));
    }
    sql.push_str(&format!(
        "ALTER DATABASE {} RENAME TO {};\n",
        ident(new_db),
        ident(live)
    ));
    sql.push_str(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS {allowed};\n",
        ident(live)
    ));
    if let Some(k) = &carried {
        sql.push_str(&apply(live, k));
    }
    let result = in_transaction(&mut c, &sql).await;
    if let Err(e) = result {
        // Nothing was renamed; let the live database take connections again.
        if live_exists {
            reopen(&c, closed, live, allowed).await;
        }
        return Err(err(format!("swapping {new_db:?} in as {live:?}"), e));
    }
    unmark(closed, live);
    if previous_exists
        && let Err(e) = c
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(&retired)
            ))
            .await
    {
        tracing::warn!(database = %retired, error = %error_chain(&e), "could not drop the older previous copy; it is dropped when the agent next starts");
    }
    Ok(previous)
}

/// Swaps the previous copy of `live` back in; the current one becomes the
/// previous copy, so a second rollback undoes the first.
pub async fn rollback(pg: &PostgresConfig, closed: &Path, live: &str) -> Result<String, DbError> {
    let mut c = admin(pg).await?;
    let previous = previous_database(live);
    if !database_exists(&c, &previous).await? {
        return Err(DbError(format!(
            "there is no previous copy of {live:?} ({previous:?}) to roll back to"
        )));
    }
    let swap = swap_database(live);
    let live_exists = database_exists(&c, live).await?;
    let live_allow = if live_exists {
        carried(&c, live).await?.allow_connections
    } else {
        true
    };
    let prev_allow = carried(&c, &previous).await?.allow_connections;
    let mut closed_now: Vec<(&str, bool)> = Vec::new();
    for (db, allow, exists) in [
        (live, live_allow, live_exists),
        (previous.as_str(), prev_allow, true),
    ] {
        if !exists {
            continue;
        }
        mark_closed(closed, db, allow)?;
        closed_now.push((db, allow));
        if let Err(e) = close_database(&c, db).await {
            for (d, a) in &closed_now {
                reopen(&c, closed, d, *a).await;
            }
            return Err(e);
        }
    }
    let mut sql = String::new();
    if live_exists {
        sql.push_str(&format!(
            "ALTER DATABASE {} RENAME TO {};\n",
            ident(live),
            ident(&swap)
        ));
    }
    sql.push_str(&format!(
        "ALTER DATABASE {} RENAME TO {};\n",
        ident(&previous),
        ident(live)
    ));
    sql.push_str(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS {prev_allow};\n",
        ident(live)
    ));
    if live_exists {
        sql.push_str(&format!(
            "ALTER DATABASE {} RENAME TO {};\n",
            ident(&swap),
            ident(&previous)
        ));
        sql.push_str(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {live_allow};\n",
            ident(&previous)
        ));
    }
    let result = in_transaction(&mut c, &sql).await;
    if let Err(e) = result {
        for (d, a) in &closed_now {
            reopen(&c, closed, d, *a).await;
        }
        return Err(err(format!("rolling {live:?} back"), e));
    }
    for (d, _) in &closed_now {
        unmark(closed, d);
    }
    Ok(previous)
}

/// Runs the post-restore SQL in `db`, in one transaction, with the owner's
/// rights only: it runs inside a SECURITY DEFINER function owned by the
/// owner, where `RESET ROLE` and `SET SESSION AUTHORIZATION` are refused, so
/// it cannot climb back to the agent's superuser login.
pub async fn post_restore(
    pg: &PostgresConfig,
    db: &str,
    owner: &str,
    sql: &str,
) -> Result<(), DbError> {
    let mut c = pg::connect(pg, db)
        .await
        .map_err(|e| err(format!("connecting to {db:?}"), e))?;
    let tx = c
        .transaction()
        .await
        .map_err(|e| err("starting the post-restore transaction", e))?;
    tx.batch_execute(&format!(
        "CREATE FUNCTION pg_temp.stagesync_post_restore(sql text) RETURNS void \
         LANGUAGE plpgsql SECURITY DEFINER AS $f$ BEGIN EXECUTE sql; END $f$;\n\
         ALTER FUNCTION pg_temp.stagesync_post_restore(text) OWNER TO {}",
        ident(owner)
    ))
    .await
    .map_err(|e| err(format!("preparing to run as {owner:?}"), e))?;
    // The SQL (which may hold secrets) travels as a parameter and is never
    // logged or echoed; the error says what PostgreSQL objected to.
    tx.execute("SELECT pg_temp.stagesync_post_restore($1)", &[&sql])
        .await
        .map_err(|e| err("the post-restore SQL failed", e))?;
    tx.commit()
        .await
        .map_err(|e| err("committing the post-restore SQL", e))
}

#[cfg(test)]
mod tests {
    use super::setting_value;

    #[test]
    fn list_settings_split() {
        assert_eq!(
            setting_value("search_path", "app, public"),
            "'app', 'public'"
        );
        assert_eq!(
            setting_value("search_path", "\"$user\", \"a\"\"b\""),
            "'$user', 'a\"b'"
        );
        assert_eq!(setting_value("work_mem", "7MB"), "'7MB'");
    }
}
