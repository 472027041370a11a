//! A data lane on the destination: one table's rows, as COPY text, into
//! the new database, in a session logged in as the job's own role. One
//! transaction first empties the table (the pre-data pass created it
//! moments ago, so nothing is lost) and then copies into it, which lets
//! PostgreSQL write the rows frozen: no later pass rewrites them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::{SinkExt, pin_mut};
use stagesync_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::config::PostgresConfig;
use crate::db::JobLogin;
use crate::jobs::{Job, StepError};
use crate::pg;
use crate::sql::ident;

/// Everything one lane's COPY needs, owned by its task.
pub struct CopyIn {
    pub job: Arc<Job>,
    pub pg: PostgresConfig,
    pub login: JobLogin,
    pub table: pb::LaneTable,
}

impl CopyIn {
    /// Copies what arrives on `rx` until it closes, then commits.
    pub async fn run(self, mut rx: mpsc::Receiver<Bytes>) -> Result<(), StepError> {
        let name = format!("{}.{}", self.table.schema, self.table.table);
        let fail = |what: &str, e: tokio_postgres::Error| {
            StepError::new(
                pb::Step::PgRestore,
                format!("{what} {name}: {}", pg::error_without_values(&e)),
            )
        };
        let mut c = self
            .login
            .connect(&self.pg, &self.job.new_database)
            .await
            .map_err(|e| fail("connecting to copy into", e))?;
        for s in &self.pg.restore_settings {
            let (key, value) = s.split_once('=').unwrap_or((s, ""));
            c.execute(
                "SELECT pg_catalog.set_config($1, $2, false)",
                &[&key.trim(), &value.trim()],
            )
            .await
            .map_err(|e| fail("setting the session up to copy into", e))?;
        }
        let tx = c
            .transaction()
            .await
            .map_err(|e| fail("starting the copy into", e))?;
        let (truncate, copy) = copy_in_sql(&self.table);
        tx.batch_execute(&truncate)
            .await
            .map_err(|e| fail("emptying", e))?;
        let sink = tx
            .copy_in::<_, Bytes>(&copy)
            .await
            .map_err(|e| fail("starting the COPY into", e))?;
        pin_mut!(sink);
        while let Some(raw) = rx.recv().await {
            let n = raw.len() as u64;
            sink.send(raw).await.map_err(|e| fail("copying into", e))?;
            self.job.restored.fetch_add(n, Ordering::Relaxed);
        }
        // The lane ended, its digest checked: the rows are complete.
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| fail("copying into", e))?;
        tx.commit()
            .await
            .map_err(|e| fail("committing the rows of", e))
    }
}

/// `TRUNCATE ONLY` the lane's table, then `COPY … FROM STDIN (FREEZE)`.
pub fn copy_in_sql(t: &pb::LaneTable) -> (String, String) {
    let table = format!("{}.{}", ident(&t.schema), ident(&t.table));
    let columns: Vec<String> = t.columns.iter().map(|c| ident(c)).collect();
    (
        format!("TRUNCATE ONLY {table}"),
        format!(
            "COPY {table} ({}) FROM STDIN WITH (FREEZE)",
            columns.join(", ")
        ),
    )
}

/// The header's lane tables, checked: one for each lane from 1 to
/// `lanes - 1`, in order, each with a table name and stored columns.
pub fn check_lane_tables(lanes: u32, tables: &[pb::LaneTable]) -> Result<(), String> {
    let wanted = lanes.saturating_sub(1) as usize;
    if tables.len() != wanted {
        return Err(format!(
            "the stream has {lanes} data lanes but names the tables of {}: a source agent of another version? Upgrade both agents",
            tables.len()
        ));
    }
    let ok = |n: &str| (1..=63).contains(&n.len()) && !n.contains('\0');
    for (i, t) in tables.iter().enumerate() {
        if t.lane as usize != i + 1 {
            return Err(format!("lane table {i} is for lane {}", t.lane));
        }
        if !ok(&t.schema)
            || !ok(&t.table)
            || t.columns.is_empty()
            || !t.columns.iter().all(|c| ok(c))
        {
            return Err(format!(
                "lane {} names no valid table and columns ({:?}.{:?})",
                t.lane, t.schema, t.table
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(lane: u32) -> pb::LaneTable {
        pb::LaneTable {
            lane,
            schema: "My App".into(),
            table: "t\"x".into(),
            columns: vec!["id".into(), "Body".into()],
            indexes: Vec::new(),
        }
    }

    #[test]
    fn lane_tables_are_quoted_and_checked() {
        let (truncate, copy) = copy_in_sql(&table(1));
        assert_eq!(truncate, "TRUNCATE ONLY \"My App\".\"t\"\"x\"");
        assert_eq!(
            copy,
            "COPY \"My App\".\"t\"\"x\" (\"id\", \"Body\") FROM STDIN WITH (FREEZE)"
        );
        assert!(check_lane_tables(3, &[table(1), table(2)]).is_ok());
        assert!(check_lane_tables(0, &[]).is_ok());
        assert!(check_lane_tables(3, &[table(1)]).is_err());
        assert!(check_lane_tables(3, &[table(2), table(1)]).is_err());
        let mut no_columns = table(1);
        no_columns.columns.clear();
        assert!(check_lane_tables(2, &[no_columns]).is_err());
    }
}
