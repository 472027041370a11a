//! A copy lane on the destination: the tables (or slices of tables) one
//! lane carries, one after the other, as COPY rows (text or binary) into
//! the new database, in one session logged in as the job's own role. Each
//! slice is a transaction of its own, which holds one of the job's slots
//! while it runs, if one is free (it never waits for one). A table that
//! arrives whole is emptied and copied in the same transaction (the
//! pre-data pass created it moments ago, so nothing is lost), which lets
//! PostgreSQL write the rows frozen: no later pass rewrites them. When a table's last slice commits, the lane says it
//! landed, so its indexes can be built.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use stagesync_proto::v1 as pb;
use tokio::sync::{Semaphore, mpsc};

use crate::config::PostgresConfig;
use crate::db::JobLogin;
use crate::jobs::{Job, StepError};
use crate::pg::wire::{CopyDataCheck, Wire};
use crate::source::{COPY_SETTINGS, MAX_SLICES};
use crate::sql::{ident, literal};

/// The send buffer a copy lane asks for on its unix socket to the server
/// (the kernel grants up to twice `net.core.wmem_max`). The server reads
/// 8 KiB at a time, and the kernel wakes a writer that waits for room once
/// three quarters of its buffer drained: at the default (~200 KiB) that
/// woke the agent for every ~150 KiB of rows, 42% of its wake-ups.
const SERVER_SEND_BUFFER: usize = 1 << 20;

/// What the router hands a copy lane.
pub enum LaneInput {
    /// The next bytes are slice `slice` of lane table `table`.
    Start { table: usize, slice: u32 },
    /// The current slice's rows, as the source server's CopyData
    /// messages.
    Data(Bytes),
    /// The current slice is whole (its digest checked).
    End { rows: u64 },
}

/// The lane tables of one stream, and how many slices of each are still
/// to land.
pub struct LaneTables {
    pub tables: Vec<pb::LaneTable>,
    remaining: Vec<AtomicU32>,
}

impl LaneTables {
    pub fn new(tables: Vec<pb::LaneTable>) -> Self {
        let remaining = tables
            .iter()
            .map(|t| AtomicU32::new(t.slices.max(1)))
            .collect();
        LaneTables { tables, remaining }
    }

    /// One slice of `table` landed; true when it was the last.
    fn landed(&self, table: usize) -> bool {
        self.remaining[table].fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// Everything one copy lane needs, owned by its task.
pub struct CopyLane {
    pub job: Arc<Job>,
    /// Its number (1 and up).
    pub lane: u32,
    pub pg: PostgresConfig,
    pub login: JobLogin,
    pub tables: Arc<LaneTables>,
    /// Taken by each slice while it copies, when one is free (shared with
    /// the index builds, which wait for one).
    pub slots: Arc<Semaphore>,
    /// Told `table + 1` when a table's last slice committed.
    pub landed: mpsc::UnboundedSender<usize>,
}

impl CopyLane {
    /// Copies each slice that arrives on `rx` until it closes.
    pub async fn run(self, mut rx: mpsc::Receiver<LaneInput>) -> Result<(), StepError> {
        let mut session: Option<Wire> = None;
        while let Some(input) = rx.recv().await {
            let LaneInput::Start { table, slice } = input else {
                return Err(StepError::new(
                    pb::Step::PgRestore,
                    "rows arrived outside a table",
                ));
            };
            let t = &self.tables.tables[table];
            let name = format!("{}.{}", t.schema, t.table);
            // A slice never waits for a slot: its rows share the one
            // incoming stream with the other lanes', and a lane that stopped
            // taking them would stall every lane behind it. It takes a free
            // slot, so index builds wait while it copies.
            let slot = self.slots.clone().try_acquire_owned().ok();
            let c = match &mut session {
                Some(c) => c,
                None => session.insert(self.connect().await?),
            };
            let what = match t.slices {
                0 | 1 => format!("copying into {name}"),
                n => format!("copying into {name} (slice {} of {n})", slice + 1),
            };
            self.job.lane_progress(self.lane, |p| {
                p.table = name.clone();
                (p.slice, p.slices, p.bytes) = (slice + 1, t.slices, 0);
            });
            let rows = copy_slice(&self.job, self.lane, c, t, &mut rx)
                .await
                .map_err(|e| StepError::new(pb::Step::PgRestore, format!("{what}: {e}")))?;
            // Free before the table is said to have landed, so its index
            // builds count the cores this slice no longer uses.
            drop(slot);
            self.job.slices_copied.fetch_add(1, Ordering::Relaxed);
            self.job.lane_progress(self.lane, |p| p.table.clear());
            tracing::debug!(job = %self.job.id, lane = self.lane, table = %name, slice, rows, "slice copied");
            if self.tables.landed(table) {
                self.job.tables_copied.fetch_add(1, Ordering::Relaxed);
                if t.binary {
                    self.job.tables_binary.fetch_add(1, Ordering::Relaxed);
                }
                let _ = self.landed.send(table + 1);
            }
        }
        Ok(())
    }

    /// A session in the new database as the job's login, set up to read
    /// COPY text as the source wrote it.
    async fn connect(&self) -> Result<Wire, StepError> {
        let fail = |e: String| StepError::new(pb::Step::PgRestore, format!("a copy lane: {e}"));
        let mut c = Wire::connect_as(&self.pg, &self.job.new_database, self.login.wire_login())
            .await
            .map_err(fail)?;
        match c.widen_send_buffer(SERVER_SEND_BUFFER) {
            Ok(Some(granted)) => {
                tracing::debug!(job = %self.job.id, lane = self.lane, granted, "copy lane's send buffer (net.core.wmem_max caps it)");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = %self.job.id, lane = self.lane, error = %e, "could not widen a copy lane's send buffer");
            }
        }
        let mut setup = format!("{COPY_SETTINGS};");
        for s in &self.pg.restore_settings {
            let (key, value) = s.split_once('=').unwrap_or((s, ""));
            setup.push_str(&format!(
                " SELECT pg_catalog.set_config({}, {}, false);",
                literal(key.trim()),
                literal(value.trim())
            ));
        }
        c.execute(&setup)
            .await
            .map_err(|e| fail(format!("setting the session up: {e}")))?;
        Ok(c)
    }
}

/// One slice, in a transaction of its own: its rows until its end, then
/// the commit. Returns the rows the source counted.
async fn copy_slice(
    job: &Job,
    lane: u32,
    c: &mut Wire,
    t: &pb::LaneTable,
    rx: &mut mpsc::Receiver<LaneInput>,
) -> Result<u64, String> {
    c.execute("BEGIN").await?;
    let (truncate, copy) = copy_in_sql(t);
    if let Some(truncate) = truncate {
        c.execute(&truncate)
            .await
            .map_err(|e| format!("emptying the table: {e}"))?;
    }
    c.copy_in(&copy).await?;
    let mut check = CopyDataCheck::default();
    let rows = loop {
        match rx.recv().await {
            Some(LaneInput::Data(raw)) => {
                check.check(&raw)?;
                c.write_copy_data(&raw).await?;
                let n = raw.len() as u64;
                job.restored.fetch_add(n, Ordering::Relaxed);
                job.lane_progress(lane, |p| p.bytes += n);
            }
            Some(LaneInput::End { rows }) => break rows,
            Some(LaneInput::Start { .. }) | None => {
                return Err("the lane's input ended inside a table".into());
            }
        }
    };
    // The slice ended, its digest checked: the rows are complete (in
    // binary, one message more: the format's trailer).
    if !check.at_boundary() || check.messages != rows + u64::from(t.binary) {
        return Err(format!(
            "the slice's rows were cut short: {} messages, the source sent {rows} rows",
            check.messages
        ));
    }
    let copied = c.copy_done().await?;
    if copied != rows {
        return Err(format!(
            "{copied} rows were copied in, the source sent {rows}"
        ));
    }
    job.rows_copied.fetch_add(rows, Ordering::Relaxed);
    c.execute("COMMIT")
        .await
        .map_err(|e| format!("committing: {e}"))?;
    Ok(rows)
}

/// For a table that arrives whole: `TRUNCATE ONLY` it, then `COPY … FROM
/// STDIN (FREEZE)`; for a slice, only `COPY … FROM STDIN`; in the binary
/// format where the table's rows travel so.
pub fn copy_in_sql(t: &pb::LaneTable) -> (Option<String>, String) {
    let table = format!("{}.{}", ident(&t.schema), ident(&t.table));
    let columns: Vec<String> = t.columns.iter().map(|c| ident(c)).collect();
    let copy = format!("COPY {table} ({}) FROM STDIN", columns.join(", "));
    let whole = t.slices <= 1;
    let options: Vec<&str> = [(whole, "FREEZE"), (t.binary, "FORMAT binary")]
        .into_iter()
        .filter_map(|(on, option)| on.then_some(option))
        .collect();
    let copy = match options.is_empty() {
        true => copy,
        false => format!("{copy} WITH ({})", options.join(", ")),
    };
    (whole.then(|| format!("TRUNCATE ONLY {table}")), copy)
}

/// The header's lane tables, checked against the stream's `shape`: with
/// copy lanes, at least one, each with a table name, stored columns and a
/// sane number of slices, in binary only where the shape allows; none
/// without.
pub fn check_lane_tables(shape: &pb::Shape, tables: &[pb::LaneTable]) -> Result<(), String> {
    let lanes = shape.lanes();
    if (lanes > 1) == tables.is_empty() {
        return Err(format!(
            "the stream has {lanes} data lanes and names {} tables for them: a source agent of another version? Upgrade both agents",
            tables.len()
        ));
    }
    let ok = |n: &str| (1..=63).contains(&n.len()) && !n.contains('\0');
    for (i, t) in tables.iter().enumerate() {
        if !ok(&t.schema)
            || !ok(&t.table)
            || t.columns.is_empty()
            || !t.columns.iter().all(|c| ok(c))
            || !(1..=MAX_SLICES).contains(&t.slices)
        {
            return Err(format!(
                "lane table {i} names no valid table, columns and slices ({:?}.{:?}, {} slices)",
                t.schema, t.table, t.slices
            ));
        }
        if t.binary && !shape.binary_rows {
            return Err(format!(
                "lane table {i} ({:?}.{:?}) comes in binary, which the stream's shape does not allow: a source agent of another version? Upgrade both agents",
                t.schema, t.table
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(slices: u32) -> pb::LaneTable {
        pb::LaneTable {
            schema: "My App".into(),
            table: "t\"x".into(),
            columns: vec!["id".into(), "Body".into()],
            indexes: Vec::new(),
            slices,
            binary: false,
        }
    }

    #[test]
    fn lane_tables_are_quoted_and_checked() {
        let (truncate, copy) = copy_in_sql(&table(1));
        assert_eq!(truncate.unwrap(), "TRUNCATE ONLY \"My App\".\"t\"\"x\"");
        assert_eq!(
            copy,
            "COPY \"My App\".\"t\"\"x\" (\"id\", \"Body\") FROM STDIN WITH (FREEZE)"
        );
        // A slice neither empties the table nor freezes.
        let (truncate, copy) = copy_in_sql(&table(3));
        assert!(truncate.is_none());
        assert!(copy.ends_with("FROM STDIN"), "{copy}");
        // Binary rows: the format's option, with FREEZE or alone.
        let mut binary = table(1);
        binary.binary = true;
        assert!(
            copy_in_sql(&binary)
                .1
                .ends_with("FROM STDIN WITH (FREEZE, FORMAT binary)")
        );
        binary.slices = 2;
        assert!(
            copy_in_sql(&binary)
                .1
                .ends_with("FROM STDIN WITH (FORMAT binary)")
        );
        let shape = |lanes: u32| pb::Shape {
            mode: pb::Mode::Stream as i32,
            post_data_file: lanes > 1,
            data_lanes: lanes,
            ..Default::default()
        };
        assert!(check_lane_tables(&shape(3), &[table(1), table(2)]).is_ok());
        assert!(check_lane_tables(&shape(0), &[]).is_ok());
        assert!(check_lane_tables(&shape(3), &[]).is_err());
        assert!(check_lane_tables(&shape(0), &[table(1)]).is_err());
        assert!(check_lane_tables(&shape(2), &[table(0)]).is_err());
        assert!(check_lane_tables(&shape(2), &[table(MAX_SLICES + 1)]).is_err());
        let mut no_columns = table(1);
        no_columns.columns.clear();
        assert!(check_lane_tables(&shape(2), &[no_columns]).is_err());
        // Binary only where the shape allows.
        assert!(check_lane_tables(&shape(2), std::slice::from_ref(&binary)).is_err());
        let mut binary_shape = shape(2);
        binary_shape.binary_rows = true;
        assert!(check_lane_tables(&binary_shape, &[binary, table(1)]).is_ok());
    }
}
