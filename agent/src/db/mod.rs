//! Database-level operations on the destination: the fresh database a job
//! restores into, the atomic swap, rollback, and cleaning up after crashes.
//!
//! The swap renames inside one transaction (PostgreSQL allows `ALTER
//! DATABASE ... RENAME` in a transaction block), so the live name always
//! points at a complete database: the old one or the new one, never neither.
//!
//! `create.rs` makes and drops databases, `swap.rs` and `rollback.rs` move
//! the live name, `closed.rs` closes databases around them and records it,
//! `carried.rs` reads what the live database carries over, `login.rs`
//! makes the role a job's restore sessions log in as, `staging.rs` keeps
//! staging's own rows and empties its queues, and `post_restore.rs` runs
//! those and the plan's SQL as the owner.

mod carried;
mod closed;
mod create;
mod ledger;
mod login;
mod post_restore;
mod rollback;
mod staging;
mod swap;

use tokio_postgres::Client;

use crate::config::PostgresConfig;
use crate::pg::{self, error_chain};

pub use closed::reopen_closed;
pub use create::{create_new, drop_database, drop_orphans};
pub use ledger::Ledger;
pub use login::{
    JobLogin, JobLogins, LoginProblem, create as create_job_login, hand_over,
    probe as probe_job_login,
};
pub use post_restore::{Finish, post_restore};
pub use rollback::rollback;
pub use staging::Kept;
pub use swap::swap_in;

/// A database operation failed; the message says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DbError(pub String);

fn err(context: impl std::fmt::Display, e: tokio_postgres::Error) -> DbError {
    DbError(format!("{context}: {}", error_chain(&e)))
}

async fn admin(pg: &PostgresConfig) -> Result<Client, DbError> {
    pg::connect(pg, "postgres")
        .await
        .map_err(|e| DbError(e.to_string()))
}

pub async fn database_exists(c: &Client, name: &str) -> Result<bool, DbError> {
    let sql = "SELECT 1 FROM pg_database WHERE datname = $1";
    has_row(c, sql, name, "reading pg_database").await
}

pub async fn role_exists(c: &Client, name: &str) -> Result<bool, DbError> {
    let sql = "SELECT 1 FROM pg_roles WHERE rolname = $1";
    has_row(c, sql, name, "reading pg_roles").await
}

/// Whether `sql` finds a row for `name` (its `$1`); `reading` says what
/// was read when it fails.
async fn has_row(c: &Client, sql: &str, name: &str, reading: &str) -> Result<bool, DbError> {
    let row = c
        .query_opt(sql, &[&name])
        .await
        .map_err(|e| err(reading, e))?;
    Ok(row.is_some())
}

/// Runs `sql` in one transaction: all of it happens, or none.
async fn in_transaction(c: &mut Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute(sql).await?;
    tx.commit().await
}

/// Statements as one text for [`in_transaction`].
fn script(statements: &[String]) -> String {
    statements.iter().map(|s| format!("{s};\n")).collect()
}
