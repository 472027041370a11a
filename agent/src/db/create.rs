//! Creating the database a job restores into, and dropping databases:
//! one job's, or every leftover a crashed job left behind.

use super::{DbError, Ledger, admin, err, role_exists};
use crate::config::PostgresConfig;
use crate::sql::{self, DROP_PREFIX, NEW_PREFIX, ident, literal};

/// Creates the database a job restores into, owned by `owner`, with the live
/// database's encoding and locale when it exists.
pub async fn create_new(
    pg: &PostgresConfig,
    ledger: &Ledger,
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
    ledger.record(new_db)?;
    c.batch_execute(&sql)
        .await
        .map_err(|e| err(format!("creating database {new_db:?}"), e))?;
    Ok(())
}

/// Drops a database this agent made, ending its sessions first, and the
/// login role of the job that made it.
pub async fn drop_database(
    pg: &PostgresConfig,
    ledger: &Ledger,
    name: &str,
) -> Result<(), DbError> {
    let c = admin(pg).await?;
    c.batch_execute(&sql::drop_database(name))
        .await
        .map_err(|e| err(format!("dropping database {name:?}"), e))?;
    super::login::drop_job_role(&c, name).await?;
    ledger.forget(name);
    Ok(())
}

/// Drops every database this agent recorded and no job here still uses
/// (`keep`): what a crashed job left behind. Databases it did not make are
/// never touched, however they are named. Returns the names dropped.
pub async fn drop_orphans(
    pg: &PostgresConfig,
    ledger: &Ledger,
    keep: &[String],
) -> Result<Vec<String>, DbError> {
    let c = admin(pg).await?;
    let mut dropped = Vec::new();
    for name in ledger.names() {
        // Only stagesync's own names, should a record ever say otherwise.
        let ours = name.starts_with(NEW_PREFIX) || name.starts_with(DROP_PREFIX);
        if keep.contains(&name) || !ours {
            continue;
        }
        if super::database_exists(&c, &name).await? {
            c.batch_execute(&sql::drop_database(&name))
                .await
                .map_err(|e| err(format!("dropping leftover database {name:?}"), e))?;
            dropped.push(name.clone());
        }
        // Its job's login, made after the record and gone with the job.
        super::login::drop_job_role(&c, &name).await?;
        ledger.forget(&name);
    }
    Ok(dropped)
}
