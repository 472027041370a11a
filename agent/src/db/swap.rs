//! The swap: the restored database takes the live name in one
//! transaction, and the live one becomes the previous copy kept for
//! rollback.

use std::path::Path;

use tokio_postgres::Client;

use super::carried::{Carried, apply, carried};
use super::closed::{close_all, end_sessions, reopen_all, unmark};
use super::{DbError, Ledger, admin, database_exists, err, in_transaction, script};
use crate::config::PostgresConfig;
use crate::pg::error_chain;
use crate::sql::{
    self, DROP_PREFIX, allow_connections, ident, previous_database, rename_database, with_prefix,
};

/// The names one swap moves.
struct Names<'a> {
    new_db: &'a str,
    live: &'a str,
    /// The previous copy: the live database after the swap.
    previous: String,
    /// An older previous copy, between the swap and its drop.
    retired: String,
}

/// Which of the names exist before the swap.
struct Found {
    live: bool,
    previous: bool,
}

/// Swaps `new_db` in as `live`; the old live database becomes the previous
/// copy (replacing an older one, dropped only once the swap committed).
/// `closed` is where closings are recorded. Returns the previous copy's name.
pub async fn swap_in(
    pg: &PostgresConfig,
    ledger: &Ledger,
    closed: &Path,
    new_db: &str,
    live: &str,
) -> Result<String, DbError> {
    let mut c = admin(pg).await?;
    let names = Names {
        new_db,
        live,
        previous: previous_database(live),
        retired: with_prefix(DROP_PREFIX, live),
    };
    let found = names.look(&c).await?;
    close_new(&c, new_db).await?;
    let carried = if found.live {
        Some(carried(&c, live).await?)
    } else {
        None
    };
    let allowed = carried.as_ref().is_none_or(|k| k.allow_connections);
    let live_closed = if found.live {
        vec![(live, allowed)]
    } else {
        Vec::new()
    };
    if found.previous {
        // The older copy takes the retired name until it is dropped.
        ledger.record(&names.retired)?;
    }
    close_all(&c, closed, &live_closed).await?;
    let script = names.script(&found, allowed, carried.as_ref());
    if let Err(e) = in_transaction(&mut c, &script).await {
        // Nothing was renamed; let the live database take connections again.
        reopen_all(&c, closed, &live_closed).await;
        return Err(err(format!("swapping {new_db:?} in as {live:?}"), e));
    }
    unmark(closed, live);
    // The restored database is the live one now, no longer the agent's.
    ledger.forget(new_db);
    if found.previous && drop_retired(&c, &names.retired).await {
        ledger.forget(&names.retired);
    }
    Ok(names.previous)
}

impl Names<'_> {
    /// Which names exist; the restored database must, and an older
    /// previous copy a crash left under the retired name is dropped.
    async fn look(&self, c: &Client) -> Result<Found, DbError> {
        let new_db = self.new_db;
        if !database_exists(c, new_db).await? {
            return Err(DbError(format!("the restored database {new_db:?} is gone")));
        }
        let live = database_exists(c, self.live).await?;
        let previous = live && database_exists(c, &self.previous).await?;
        let retired = &self.retired;
        if database_exists(c, retired).await? {
            c.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", ident(retired)))
                .await
                .map_err(|e| err(format!("dropping {retired:?}"), e))?;
        }
        Ok(Found { live, previous })
    }

    /// The statements of the swap's transaction: the previous copy to the
    /// retired name, live to previous, new to live, and what the live
    /// database carried given to the new one.
    fn script(&self, found: &Found, allowed: bool, carried: Option<&Carried>) -> String {
        let (live, previous) = (self.live, self.previous.as_str());
        let mut statements = Vec::new();
        if found.previous {
            statements.push(rename_database(previous, &self.retired));
        }
        if found.live {
            statements.push(rename_database(live, previous));
            statements.push(allow_connections(previous, allowed));
        }
        statements.push(rename_database(self.new_db, live));
        statements.push(allow_connections(live, allowed));
        let mut script = script(&statements);
        if let Some(k) = carried {
            script.push_str(&apply(live, k));
        }
        script
    }
}

/// Nobody may connect to the new database until it has the live name.
async fn close_new(c: &Client, new_db: &str) -> Result<(), DbError> {
    c.batch_execute(&allow_connections(new_db, false))
        .await
        .map_err(|e| err(format!("closing {new_db:?}"), e))?;
    end_sessions(c, new_db).await
}

/// Drops the older previous copy once the swap committed; what fails here
/// is dropped with the leftovers at the next start.
/// Drops the older previous copy; whether it is gone.
async fn drop_retired(c: &Client, retired: &str) -> bool {
    match c.batch_execute(&sql::drop_database(retired)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(database = %retired, error = %error_chain(&e), "could not drop the older previous copy; it is dropped when the agent next starts");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_swap_moves_three_names_in_one_script() {
        let names = Names {
            new_db: "stagesync_new_j1",
            live: "app",
            previous: "stagesync_prev_app".into(),
            retired: "stagesync_drop_app".into(),
        };
        let both = Found {
            live: true,
            previous: true,
        };
        assert_eq!(
            names.script(&both, false, None),
            "ALTER DATABASE \"stagesync_prev_app\" RENAME TO \"stagesync_drop_app\";\n\
             ALTER DATABASE \"app\" RENAME TO \"stagesync_prev_app\";\n\
             ALTER DATABASE \"stagesync_prev_app\" ALLOW_CONNECTIONS false;\n\
             ALTER DATABASE \"stagesync_new_j1\" RENAME TO \"app\";\n\
             ALTER DATABASE \"app\" ALLOW_CONNECTIONS false;\n"
        );
        let first = Found {
            live: false,
            previous: false,
        };
        assert_eq!(
            names.script(&first, true, None),
            "ALTER DATABASE \"stagesync_new_j1\" RENAME TO \"app\";\n\
             ALTER DATABASE \"app\" ALLOW_CONNECTIONS true;\n"
        );
    }
}
