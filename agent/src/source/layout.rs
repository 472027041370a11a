//! How much of the agreed shape one dump uses. The controller agreed the
//! most; here the source may only lower it: without an exported snapshot
//! the schema cannot travel apart, and only tables big enough (and not left
//! out by the plan) get data lanes of their own.

use stagesync_proto::v1 as pb;

use crate::args::{self, TableName};
use crate::config::AgentConfig;
use crate::jobs::Job;
use crate::pg;

/// An exported snapshot; it lives as long as the session that exported it.
pub struct Snapshot {
    session: tokio_postgres::Client,
    pub id: String,
}

/// What one dump sends.
pub struct Layout {
    /// Within the agreed shape; the stream's header carries it.
    pub shape: pb::Shape,
    /// Shared by the data and schema dumps when the schema travels apart.
    pub snapshot: Option<Snapshot>,
    /// The tables with lanes of their own (lanes 1 and up).
    pub tables: Vec<TableName>,
    /// Their stored columns, in order, for the COPY each lane runs.
    pub columns: Vec<Vec<String>>,
    /// Their indexes' names, which the destination builds as each lands.
    pub indexes: Vec<Vec<String>>,
}

impl Layout {
    /// Chooses the layout: a snapshot when the agreed shape has a schema
    /// file, and lanes for the largest tables when it has lanes.
    pub async fn choose(
        cfg: &AgentConfig,
        job: &Job,
        database: &str,
        dump: &pb::DumpOptions,
        agreed: &pb::Shape,
    ) -> Layout {
        let snapshot = match agreed.post_data_file {
            false => None,
            true => match export_snapshot(cfg, database).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot export a snapshot; indexes and constraints travel with the data");
                    None
                }
            },
        };
        let picked = match &snapshot {
            Some(s) if agreed.lanes() > 1 => {
                let max = agreed.lanes() as usize - 1;
                let min = cfg.jobs.lane_min_table_bytes;
                lane_tables(&s.session, dump, max, min)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(job = %job.id, error = %e, "cannot pick tables for data lanes; the data travels in one stream");
                        Vec::new()
                    })
            }
            _ => Vec::new(),
        };
        let (mut tables, mut columns, mut indexes) = (Vec::new(), Vec::new(), Vec::new());
        for p in picked {
            tables.push(p.name);
            columns.push(p.columns);
            indexes.push(p.indexes);
        }
        let lanes = match tables.len() {
            0 => 0,
            n => n as u32 + 1,
        };
        Layout {
            shape: agreed.lowered(snapshot.is_some(), lanes),
            snapshot,
            tables,
            columns,
            indexes,
        }
    }

    /// What the header says each lane carries.
    pub fn lane_tables(&self) -> Vec<pb::LaneTable> {
        self.tables
            .iter()
            .zip(self.columns.iter().zip(&self.indexes))
            .enumerate()
            .map(|(i, (t, (columns, indexes)))| pb::LaneTable {
                lane: i as u32 + 1,
                schema: t.schema.clone(),
                table: t.table.clone(),
                columns: columns.clone(),
                indexes: indexes.clone(),
            })
            .collect()
    }
}

/// Opens a read-only repeatable-read transaction on `database` and exports
/// its snapshot.
async fn export_snapshot(cfg: &AgentConfig, database: &str) -> Result<Snapshot, String> {
    let session = pg::connect(&cfg.postgres, database)
        .await
        .map_err(|e| format!("connecting to {database:?}: {}", pg::error_chain(&e)))?;
    let id: String = async {
        // The transaction stays idle while the dumps run: a server-wide
        // idle-in-transaction timeout must not end it (and the snapshot).
        session
            .batch_execute(
                "SET idle_in_transaction_session_timeout = 0; \
                 BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            )
            .await?;
        session
            .query_one("SELECT pg_export_snapshot()", &[])
            .await?
            .try_get(0)
    }
    .await
    .map_err(|e| {
        format!(
            "exporting a snapshot of {database:?}: {}",
            pg::error_chain(&e)
        )
    })?;
    Ok(Snapshot { session, id })
}

/// Tables listed beyond the lanes wanted, to make up for those the plan
/// leaves out.
const EXCLUDED_ROOM: usize = 64;

/// The largest ordinary tables (heap and TOAST, not indexes), at most
/// `max + EXCLUDED_ROOM`, none below `min_bytes`, biggest first.
const LARGEST_TABLES: &str = "SELECT n.nspname::text, c.relname::text \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
       AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
           WHERE d.classid = 'pg_catalog.pg_class'::regclass \
             AND d.objid = c.oid AND d.deptype = 'e') \
       AND pg_catalog.pg_table_size(c.oid) >= $1 \
     ORDER BY pg_catalog.pg_table_size(c.oid) DESC, c.oid \
     LIMIT $2";

/// A table's stored columns (not dropped, not generated), in order.
const STORED_COLUMNS: &str = "SELECT a.attname::text FROM pg_catalog.pg_attribute a \
     WHERE a.attrelid = (SELECT c.oid FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2) \
       AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
     ORDER BY a.attnum";

/// A table's indexes.
const INDEXES: &str = "SELECT ic.relname::text FROM pg_catalog.pg_index i \
     JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
     WHERE i.indrelid = (SELECT c.oid FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2) \
     ORDER BY 1";

/// A table picked for a lane of its own.
struct Picked {
    name: TableName,
    columns: Vec<String>,
    indexes: Vec<String>,
}

/// The tables that get data lanes of their own, with their stored columns:
/// the largest, at most `max`, none below `min_bytes` and none whose data
/// the plan leaves out. Not when the plan filters schemas (pg_dump applies
/// those to no table named on its own). Read on the snapshot's own
/// session, so they are the tables the lanes will see.
async fn lane_tables(
    session: &tokio_postgres::Client,
    dump: &pb::DumpOptions,
    max: usize,
    min_bytes: u64,
) -> Result<Vec<Picked>, String> {
    if max == 0 || !dump.schemas.is_empty() || !dump.exclude_schemas.is_empty() {
        return Ok(Vec::new());
    }
    // A table whose data the plan leaves out would make an empty lane.
    let mut excluded = Vec::new();
    for p in dump.exclude_tables.iter().chain(&dump.exclude_table_data) {
        match args::TablePattern::parse(p) {
            Ok(p) => excluded.push(p),
            // A pattern read otherwise (regular expression syntax, or one
            // pg_dump will refuse): no lanes rather than a wrong guess.
            Err(_) => return Ok(Vec::new()),
        }
    }
    // pg_dump matches patterns in the database's encoding; names that are
    // not plain ASCII get lanes only where that is UTF-8, as ours.
    let utf8 = session
        .query_one("SELECT current_setting('server_encoding') = 'UTF8'", &[])
        .await
        .and_then(|r| r.try_get::<_, bool>(0))
        .map_err(|e| format!("reading the server encoding: {}", pg::error_chain(&e)))?;
    let limit = (max + EXCLUDED_ROOM) as i64;
    let rows = session
        .query(
            LARGEST_TABLES,
            &[&(min_bytes.min(i64::MAX as u64) as i64), &limit],
        )
        .await
        .map_err(|e| format!("listing the largest tables: {}", pg::error_chain(&e)))?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in rows {
        let name = TableName {
            schema: row.try_get(0).map_err(|e| e.to_string())?,
            table: row.try_get(1).map_err(|e| e.to_string())?,
        };
        // A name pg_dump cannot be given exactly stays in lane 0.
        let ascii = name.schema.is_ascii() && name.table.is_ascii();
        let left_out = excluded.iter().any(|p| p.matches(&name));
        if name.exact_pattern().is_ok() && (utf8 || ascii) && !left_out {
            tables.push(name);
        }
    }
    tables.truncate(max);
    let mut picked = Vec::with_capacity(tables.len());
    for t in tables {
        let p = describe(session, t).await?;
        // A table of generated columns only has no rows to copy by name.
        if !p.columns.is_empty() {
            picked.push(p);
        }
    }
    Ok(picked)
}

/// A lane table's stored columns and its indexes, read on the snapshot.
async fn describe(session: &tokio_postgres::Client, t: TableName) -> Result<Picked, String> {
    let names = |sql: &'static str, what: &'static str| {
        let t = &t;
        async move {
            let rows = session
                .query(sql, &[&t.schema, &t.table])
                .await
                .map_err(|e| {
                    format!(
                        "reading the {what} of {}.{}: {}",
                        t.schema,
                        t.table,
                        pg::error_chain(&e)
                    )
                })?;
            Ok::<Vec<String>, String>(rows.iter().map(|r| r.get(0)).collect())
        }
    };
    let columns = names(STORED_COLUMNS, "columns").await?;
    let indexes = names(INDEXES, "indexes").await?;
    Ok(Picked {
        name: t,
        columns,
        indexes,
    })
}
