//! Creating the database a job restores into, and dropping databases:
//! one job's, or every leftover a crashed job left behind.

use super::{DbError, admin, err, role_exists};
use crate::config::PostgresConfig;
use crate::sql::{self, DROP_PREFIX, NEW_PREFIX, ident, literal};

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
    c.batch_execute(&sql::drop_database(name))
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
        c.batch_execute(&sql::drop_database(&name))
            .await
            .map_err(|e| err(format!("dropping leftover database {name:?}"), e))?;
        dropped.push(name);
    }
    Ok(dropped)
}
