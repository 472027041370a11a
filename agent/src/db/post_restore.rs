//! The post-restore SQL, run with the owner's rights only.

use super::{DbError, JobLogin, err};
use crate::config::PostgresConfig;
use crate::pg;
use crate::sql::ident;

/// Runs the post-restore SQL in `db`, in one transaction, with the owner's
/// rights only: the session is logged in as the job's own role (a member
/// of the owner, nothing more), so nothing in it, not even a deferred
/// trigger firing at commit, runs with more. The SQL itself runs inside a
/// SECURITY DEFINER function owned by the owner, where `RESET ROLE` and
/// `SET SESSION AUTHORIZATION` are refused, so what it creates is the
/// owner's.
pub async fn post_restore(
    pg: &PostgresConfig,
    db: &str,
    login: &JobLogin,
    owner: &str,
    sql: &str,
) -> Result<(), DbError> {
    let mut c = login
        .connect(pg, db)
        .await
        .map_err(|e| err(format!("connecting to {db:?} as {:?}", login.role), e))?;
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
    let withheld = |what: &str, e: tokio_postgres::Error| {
        DbError(format!("{what}: {}", pg::error_without_values(&e)))
    };
    tx.execute("SELECT pg_temp.stagesync_post_restore($1)", &[&sql])
        .await
        .map_err(|e| withheld("the post-restore SQL failed", e))?;
    tx.commit()
        .await
        .map_err(|e| withheld("committing the post-restore SQL", e))
}
