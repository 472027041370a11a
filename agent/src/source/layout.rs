//! How much of the agreed shape one dump uses. The controller agreed the
//! most; here the source may only lower it: without an exported snapshot
//! the schema cannot travel apart, and only tables big enough (and not left
//! out by the plan) get data lanes of their own.

use stagesync_proto::v1 as pb;

use crate::args::{self, TableName};
use crate::config::{AgentConfig, JobLimits};
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
    /// The tables the copy lanes carry, largest first.
    pub tables: Vec<CopyTable>,
    /// Tables whose rows lane 0's pg_dump carries though they are not too
    /// small for a lane (a name pg_dump cannot be given exactly, beyond
    /// the most tables lanes carry), as `schema.table`.
    pub unlaned: Vec<String>,
}

/// A table whose rows the copy lanes carry.
#[derive(Clone, Debug)]
pub struct CopyTable {
    pub name: TableName,
    /// Stored columns, in order, for the COPY.
    pub columns: Vec<String>,
    /// Its indexes' names, which the destination builds as it lands.
    pub indexes: Vec<String>,
    /// Heap and TOAST bytes, to schedule the largest first.
    pub bytes: u64,
    /// Its heap's blocks when the snapshot was taken.
    pub blocks: u64,
    /// Block ranges it travels in (1: whole).
    pub slices: u32,
    /// The agreed shape allows binary rows and every stored column's type
    /// has a binary form that names no object by OID (see `COPY_TABLES`).
    pub binary_safe: bool,
    /// How its rows are masked, when the agent's rules mask any column.
    pub mask: Option<std::sync::Arc<crate::mask::TableMask>>,
}

impl CopyTable {
    /// Whether its rows travel in the binary COPY format: where allowed
    /// and safe, and, when they are masked, where every masked column can
    /// be masked in binary (`TableMask::binary_ok`).
    pub fn binary(&self) -> bool {
        self.binary_safe && self.mask.as_ref().is_none_or(|m| m.binary_ok)
    }
}

impl Layout {
    /// Chooses the layout: a snapshot when the agreed shape has a schema
    /// file, and copy lanes for the tables when it has lanes.
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
        // A masked database's rows all travel on the lanes, small or not.
        let mut limits = cfg.jobs.clone();
        if super::masked::applies(cfg, database) {
            limits.lane_min_table_bytes = 0;
        }
        let (mut tables, unlaned) = match &snapshot {
            Some(s) if agreed.lanes() > 1 => copy_tables(&s.session, dump, &limits)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(job = %job.id, error = %e, "cannot list the tables for copy lanes; the data travels in one stream");
                    (Vec::new(), Vec::new())
                }),
            _ => (Vec::new(), Vec::new()),
        };
        // Lane 0 and as many copy lanes as were agreed, or as there are
        // slices to copy.
        let slices: u64 = tables.iter().map(|t| t.slices as u64).sum();
        let lanes = match slices {
            0 => 0,
            n => n.min(agreed.lanes() as u64 - 1) as u32 + 1,
        };
        let shape = agreed.lowered(snapshot.is_some(), lanes);
        if !shape.binary_rows {
            tables.iter_mut().for_each(|t| t.binary_safe = false);
        }
        Layout {
            shape,
            snapshot,
            tables,
            unlaned,
        }
    }

    /// The copy lanes' tables as the header names them.
    pub fn lane_tables(&self) -> Vec<pb::LaneTable> {
        self.tables
            .iter()
            .map(|t| pb::LaneTable {
                schema: t.name.schema.clone(),
                table: t.name.table.clone(),
                columns: t.columns.clone(),
                indexes: t.indexes.clone(),
                slices: t.slices,
                binary: t.binary(),
            })
            .collect()
    }

    /// The tables whose data lane 0's pg_dump leaves out.
    pub fn copied(&self) -> Vec<TableName> {
        self.tables.iter().map(|t| t.name.clone()).collect()
    }

    /// The copy lanes' work, largest first: `(table, slice)`.
    pub fn work(&self) -> Vec<Slice> {
        let mut work: Vec<Slice> = self
            .tables
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                (0..t.slices).map(move |s| Slice {
                    table: i as u32,
                    slice: s,
                    bytes: t.bytes / t.slices as u64,
                })
            })
            .collect();
        work.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.table.cmp(&b.table)));
        work
    }
}

/// One unit of a copy lane's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub table: u32,
    pub slice: u32,
    pub bytes: u64,
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

/// The most tables the copy lanes carry; lane 0 carries any others.
pub const MAX_COPY_TABLES: i64 = 4000;

/// Every ordinary table (partitions too, each leaf on its own; not
/// temporary, not an extension's) of at least `$1` bytes, biggest first,
/// at most `$2`, with its size in bytes and blocks, whether it is unlogged,
/// its stored columns (not dropped, not generated), its indexes, and
/// whether its rows may travel in the binary COPY format.
///
/// Binary rows are safe when every stored column's type, seen through any
/// domains, is an enum (sent as its label) or a built-in base, range or
/// multirange type (or an array of one) with binary input and output,
/// other than the `reg*` types (sent as OIDs, which differ between
/// clusters). Anything else (a composite type, an array of an enum or of a
/// domain, which carry their element's OID, or an extension's type) goes
/// as text.
const COPY_TABLES: &str = "SELECT n.nspname::text, c.relname::text, \
       pg_catalog.pg_table_size(c.oid)::int8, \
       (pg_catalog.pg_relation_size(c.oid) \
           / pg_catalog.current_setting('block_size')::int8)::int8, \
       c.relpersistence = 'u', \
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             AND a.attgenerated = '' ORDER BY a.attnum), \
       ARRAY(SELECT ic.relname::text FROM pg_catalog.pg_index i \
           JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
           WHERE i.indrelid = c.oid ORDER BY 1), \
       NOT EXISTS (WITH RECURSIVE t(oid) AS ( \
           SELECT a.atttypid FROM pg_catalog.pg_attribute a \
           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             AND a.attgenerated = '' \
           UNION SELECT y.typbasetype FROM t \
           JOIN pg_catalog.pg_type y ON y.oid = t.oid WHERE y.typtype = 'd') \
         SELECT 1 FROM t JOIN pg_catalog.pg_type y ON y.oid = t.oid \
         LEFT JOIN pg_catalog.pg_type e ON e.oid = y.typelem AND y.typcategory = 'A' \
         WHERE y.typtype <> 'd' AND NOT (y.typtype = 'e' \
           OR (y.oid < 16384 AND y.typtype IN ('b', 'r', 'm') \
             AND y.typsend <> 0 AND y.typreceive <> 0 \
             AND (e.oid IS NULL OR (e.typsend <> 0 AND e.typreceive <> 0)) \
             AND COALESCE(e.typname, y.typname) NOT IN ('regclass', 'regcollation', \
               'regconfig', 'regdictionary', 'regnamespace', 'regoper', 'regoperator', \
               'regproc', 'regprocedure', 'regrole', 'regtype')))) \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
       AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
           WHERE d.classid = 'pg_catalog.pg_class'::regclass \
             AND d.objid = c.oid AND d.deptype = 'e') \
       AND pg_catalog.pg_table_size(c.oid) >= $1 \
     ORDER BY 3 DESC, c.oid \
     LIMIT $2";

/// The tables the copy lanes carry, read on the snapshot's own session
/// (so they are the tables the lanes will see): every table of at least
/// `jobs.lane_min_table_bytes` whose data the plan does not leave out and
/// whose name pg_dump can be given exactly, largest first; those above
/// `jobs.split_table_bytes` in slices. None when the plan filters schemas
/// (pg_dump applies those to no table named on its own).
async fn copy_tables(
    session: &tokio_postgres::Client,
    dump: &pb::DumpOptions,
    limits: &JobLimits,
) -> Result<(Vec<CopyTable>, Vec<String>), String> {
    if !dump.schemas.is_empty() || !dump.exclude_schemas.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    // A table whose data the plan leaves out stays out.
    let mut excluded = Vec::new();
    for p in dump.exclude_tables.iter().chain(&dump.exclude_table_data) {
        match args::TablePattern::parse(p) {
            Ok(p) => excluded.push(p),
            // A pattern read otherwise (regular expression syntax, or one
            // pg_dump will refuse): no lanes rather than a wrong guess.
            Err(_) => return Ok((Vec::new(), Vec::new())),
        }
    }
    let no_unlogged = dump
        .extra_args
        .iter()
        .any(|a| a == "--no-unlogged-table-data");
    let read = |what: &'static str| {
        move |e: tokio_postgres::Error| format!("reading {what}: {}", pg::error_chain(&e))
    };
    // pg_dump matches patterns in the database's encoding; names that are
    // not plain ASCII get lanes only where that is UTF-8, as ours.
    let row = session
        .query_one(
            "SELECT current_setting('server_encoding'), \
                    current_setting('server_version_num')::int4",
            &[],
        )
        .await
        .map_err(read("the server encoding and version"))?;
    let encoding: String = row.try_get(0).map_err(read("the server encoding"))?;
    // Both ends of a lane speak UTF-8, which the server converts to and
    // from the database's encoding; SQL_ASCII bytes are not converted (nor
    // checked) and may not be UTF-8: such a database's data stays in
    // pg_dump's stream.
    if encoding == "SQL_ASCII" {
        return Ok((Vec::new(), Vec::new()));
    }
    let utf8 = encoding == "UTF8";
    // Block ranges are scanned alone from PostgreSQL 14 (TID range scans).
    let can_split = row.try_get::<_, i32>(1).map_err(read("the version"))? >= 140000;
    let min = limits.lane_min_table_bytes.min(i64::MAX as u64) as i64;
    let rows = session
        .query(COPY_TABLES, &[&min, &(MAX_COPY_TABLES + 1)])
        .await
        .map_err(read("the tables to copy"))?;
    let rows_full = rows.len() as i64 > MAX_COPY_TABLES;
    let rows = rows.into_iter().take(MAX_COPY_TABLES as usize);
    let mut tables = Vec::with_capacity(rows.len());
    let mut unlaned = Vec::new();
    for row in rows {
        let name = TableName {
            schema: row.try_get(0).map_err(read("the tables to copy"))?,
            table: row.try_get(1).map_err(read("the tables to copy"))?,
        };
        let bytes = row
            .try_get::<_, i64>(2)
            .map_err(read("a table's size"))?
            .max(0) as u64;
        let blocks = row
            .try_get::<_, i64>(3)
            .map_err(read("a table's size"))?
            .max(0) as u64;
        let unlogged: bool = row.try_get(4).map_err(read("a table's persistence"))?;
        let columns: Vec<String> = row.try_get(5).map_err(read("a table's columns"))?;
        let indexes: Vec<String> = row.try_get(6).map_err(read("a table's indexes"))?;
        let binary_safe: bool = row.try_get(7).map_err(read("a table's column types"))?;
        // A name pg_dump cannot be given exactly stays in lane 0, and so
        // does a table of generated columns only (no rows to copy by name).
        let ascii = name.schema.is_ascii() && name.table.is_ascii();
        let left_out = excluded.iter().any(|p| p.matches(&name)) || (unlogged && no_unlogged);
        if left_out || columns.is_empty() {
            continue;
        }
        if name.exact_pattern().is_err() || !(utf8 || ascii) {
            unlaned.push(format!("{}.{}", name.schema, name.table));
            continue;
        }
        let slices = match limits.split_table_bytes {
            Some(split) if can_split && blocks > 1 && bytes > split => {
                bytes.div_ceil(split).min(blocks).min(MAX_SLICES as u64) as u32
            }
            _ => 1,
        };
        tables.push(CopyTable {
            name,
            columns,
            indexes,
            bytes,
            blocks,
            slices,
            binary_safe,
            mask: None,
        });
    }
    // Past the most the lanes carry, the rest stay in lane 0: count them.
    if rows_full {
        unlaned.push(format!("the tables beyond the largest {MAX_COPY_TABLES}"));
    }
    Ok((tables, unlaned))
}

/// The most slices one table is split into.
pub const MAX_SLICES: u32 = 64;
