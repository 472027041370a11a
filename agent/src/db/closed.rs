//! Closing databases to connections around a swap or rollback, and the
//! records in the work dir that let the next start reopen what a crash
//! left closed.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{DbError, admin, database_exists, err};
use crate::config::PostgresConfig;
use crate::pg::error_chain;
use crate::sql;

/// Stops new connections to `db` and ends the sessions on it.
async fn close_database(c: &Client, db: &str) -> Result<(), DbError> {
    c.batch_execute(&sql::allow_connections(db, false))
        .await
        .map_err(|e| err(format!("stopping new connections to {db:?}"), e))?;
    end_sessions(c, db).await
}

/// Ends the sessions on `db` and waits until they are gone.
pub(super) async fn end_sessions(c: &Client, db: &str) -> Result<(), DbError> {
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

pub(super) fn unmark(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(dir.join(hex::encode(name)));
}

/// Lets connections back into `name` after a failed swap or rollback.
async fn reopen(c: &Client, dir: &Path, name: &str, allowed: bool) {
    match c
        .batch_execute(&sql::allow_connections(name, allowed))
        .await
    {
        Ok(()) => unmark(dir, name),
        Err(e) => {
            tracing::error!(database = name, error = %error_chain(&e), "could not reopen the database; the agent retries when it next starts")
        }
    }
}

/// Records and closes `dbs` (name, whether it allowed connections) in
/// order. When one cannot be closed, those closed so far are reopened; a
/// record that cannot be written stops it before that database is touched.
pub(super) async fn close_all(c: &Client, dir: &Path, dbs: &[(&str, bool)]) -> Result<(), DbError> {
    for (i, &(db, allowed)) in dbs.iter().enumerate() {
        mark_closed(dir, db, allowed)?;
        if let Err(e) = close_database(c, db).await {
            reopen_all(c, dir, &dbs[..=i]).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Lets connections back into `dbs` after a failed swap or rollback.
pub(super) async fn reopen_all(c: &Client, dir: &Path, dbs: &[(&str, bool)]) {
    for &(db, allowed) in dbs {
        reopen(c, dir, db, allowed).await;
    }
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
