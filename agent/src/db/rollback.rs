//! Rollback: the previous copy takes the live name back, and the current
//! live database becomes the previous copy, so a second rollback undoes
//! the first.

use std::path::Path;

use super::carried::carried;
use super::closed::{close_all, reopen_all, unmark};
use super::{DbError, admin, database_exists, err, in_transaction, script};
use crate::config::PostgresConfig;
use crate::sql::{allow_connections, previous_database, rename_database, swap_database};

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
    let live_exists = database_exists(&c, live).await?;
    let live_allow = if live_exists {
        carried(&c, live).await?.allow_connections
    } else {
        true
    };
    let prev_allow = carried(&c, &previous).await?.allow_connections;
    let mut to_close = vec![(previous.as_str(), prev_allow)];
    if live_exists {
        to_close.insert(0, (live, live_allow));
    }
    close_all(&c, closed, &to_close).await?;
    let live_now = live_exists.then_some(live_allow);
    let statements = statements(live, &previous, live_now, prev_allow);
    if let Err(e) = in_transaction(&mut c, &script(&statements)).await {
        reopen_all(&c, closed, &to_close).await;
        return Err(err(format!("rolling {live:?} back"), e));
    }
    for (d, _) in &to_close {
        unmark(closed, d);
    }
    Ok(previous)
}

/// The statements of the rollback's transaction: live out of the way under
/// a transient name, previous to live, then the old live to previous.
/// `live_allow` is None when there is no live database.
fn statements(
    live: &str,
    previous: &str,
    live_allow: Option<bool>,
    prev_allow: bool,
) -> Vec<String> {
    let swap = swap_database(live);
    let mut statements = Vec::new();
    if live_allow.is_some() {
        statements.push(rename_database(live, &swap));
    }
    statements.push(rename_database(previous, live));
    statements.push(allow_connections(live, prev_allow));
    if let Some(allowed) = live_allow {
        statements.push(rename_database(&swap, previous));
        statements.push(allow_connections(previous, allowed));
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_trades_the_live_and_previous_names() {
        let sql = script(&statements("app", "stagesync_prev_app", Some(false), true));
        assert_eq!(
            sql,
            "ALTER DATABASE \"app\" RENAME TO \"stagesync_swap_app\";\n\
             ALTER DATABASE \"stagesync_prev_app\" RENAME TO \"app\";\n\
             ALTER DATABASE \"app\" ALLOW_CONNECTIONS true;\n\
             ALTER DATABASE \"stagesync_swap_app\" RENAME TO \"stagesync_prev_app\";\n\
             ALTER DATABASE \"stagesync_prev_app\" ALLOW_CONNECTIONS false;\n"
        );
        let no_live = script(&statements("app", "stagesync_prev_app", None, true));
        assert_eq!(
            no_live,
            "ALTER DATABASE \"stagesync_prev_app\" RENAME TO \"app\";\n\
             ALTER DATABASE \"app\" ALLOW_CONNECTIONS true;\n"
        );
    }
}
