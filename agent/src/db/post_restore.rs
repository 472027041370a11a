//! The new database finished before the swap: staging's kept rows and
//! truncated tables, then the post-restore SQL, with the owner's rights only.

use stagesync_proto::v1 as pb;
use tokio_postgres::Transaction;

use super::staging::{self, Kept};
use super::{DbError, JobLogin, err};
use crate::config::PostgresConfig;
use crate::pg;
use crate::sql::ident;

/// What runs in the new database after the data, in one transaction.
pub struct Finish<'a> {
    /// The job's login: every statement runs in its session.
    pub login: &'a JobLogin,
    pub owner: &'a str,
    /// The live database, where kept rows come from.
    pub live: &'a str,
    pub staging: &'a pb::StagingRules,
    /// The plan's post-restore SQL, parameters substituted.
    pub sql: &'a str,
}

impl Finish<'_> {
    /// Nothing to do: no rows to keep, no table to empty, no SQL.
    pub fn is_empty(&self) -> bool {
        self.staging.keep.is_empty()
            && self.staging.truncate.is_empty()
            && self.sql.trim().is_empty()
    }
}

/// Finishes the new database `db` in one transaction, with the owner's
/// rights only: staging's kept rows, the truncated tables, then the
/// post-restore SQL. The session is logged in as the job's own role (a
/// member of the owner, nothing more), so nothing in it, not even a
/// deferred trigger firing at commit, runs with more. The SQL itself runs
/// inside a SECURITY DEFINER function owned by the owner, where `RESET
/// ROLE` and `SET SESSION AUTHORIZATION` are refused, so what it creates is
/// the owner's.
pub async fn post_restore(pg: &PostgresConfig, db: &str, f: Finish<'_>) -> Result<Kept, DbError> {
    let (login, owner) = (f.login, f.owner);
    let mut c = login
        .connect(pg, db)
        .await
        .map_err(|e| DbError(e.to_string()))?;
    let tx = c
        .transaction()
        .await
        .map_err(|e| err("starting the post-restore transaction", e))?;
    let kept = staging::keep_rows(pg, &tx, login, f.live, &f.staging.keep).await?;
    staging::truncate(&tx, &f.staging.truncate, f.staging.truncate_cascade).await?;
    if !f.sql.trim().is_empty() {
        run_sql(&tx, owner, f.sql).await?;
    }
    tx.commit().await.map_err(|e| {
        DbError(format!(
            "committing the post-restore transaction: {}",
            pg::error_without_values(&e)
        ))
    })?;
    Ok(kept)
}

/// The plan's SQL, as the owner, inside `tx`.
async fn run_sql(tx: &Transaction<'_>, owner: &str, sql: &str) -> Result<(), DbError> {
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
        .map_err(|e| {
            DbError(format!(
                "the post-restore SQL failed: {}",
                pg::error_without_values(&e)
            ))
        })?;
    Ok(())
}
