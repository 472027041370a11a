//! A copy lane's rows on the source: `COPY … TO STDOUT` in a session that
//! imported the dump's snapshot, so every lane sees exactly what the schema
//! and the other lanes see. One session serves a lane's tables one after
//! the other; its rows go out as the server's CopyData messages, in runs
//! of about the frame size, as they are read off the socket
//! ([`crate::pg::wire`]).

use std::sync::Arc;

use bytes::Bytes;

use super::layout::CopyTable;
use crate::args::TableName;
use crate::config::PostgresConfig;
use crate::frames::CHUNK;
use crate::mask::{MaskKey, MaskedRows};
use crate::pg::wire::Wire;
use crate::sql::{ident, literal};

/// Session settings both ends of a copy lane share, so values print and
/// parse the same way whatever the servers' defaults: pg_dump's own.
pub const COPY_SETTINGS: &str = "SET datestyle = ISO; SET intervalstyle = postgres; \
     SET extra_float_digits = 3; SET row_security = off";

/// One copy lane's session on the snapshot, and the COPY it runs.
pub struct CopySession {
    wire: Wire,
    /// The current COPY ended.
    done: bool,
    /// The masking key, on an agent that masks.
    key: Option<Arc<MaskKey>>,
    /// The current COPY's masking, when its table has masked columns.
    masker: Option<MaskedRows>,
    /// Masked rows not handed out yet.
    out: Bytes,
    /// CopyData messages of the current COPY read so far.
    messages: u64,
    /// The current COPY is in the binary format.
    binary: bool,
}

impl CopySession {
    /// Connects to `database` and imports `snapshot`.
    pub async fn open(
        pg: &PostgresConfig,
        database: &str,
        snapshot: &str,
        key: Option<Arc<MaskKey>>,
    ) -> Result<CopySession, String> {
        let mut wire = Wire::connect_for_rows(pg, database)
            .await
            .map_err(|e| format!("connecting for a copy lane: {e}"))?;
        // The transaction stays open between tables: a server-wide
        // idle-in-transaction timeout must not end it (and the snapshot).
        wire.execute(&format!(
            "SET idle_in_transaction_session_timeout = 0; {COPY_SETTINGS}; \
             BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
             SET TRANSACTION SNAPSHOT {}",
            literal(snapshot)
        ))
        .await
        .map_err(|e| format!("importing the snapshot for a copy lane: {e}"))?;
        Ok(CopySession {
            wire,
            done: true,
            key,
            masker: None,
            out: Bytes::new(),
            messages: 0,
            binary: false,
        })
    }

    /// Starts the COPY of slice `slice` of `table`; its rows come from
    /// [`CopySession::next`].
    pub async fn copy(&mut self, table: &CopyTable, slice: u32) -> Result<(), String> {
        let binary = table.binary();
        let sql = copy_out_sql(
            &table.name,
            &table.columns,
            slice_range(table, slice),
            binary,
        );
        self.wire.copy_out(&sql).await.map_err(|e| {
            format!(
                "starting the COPY of {}.{}: {e}",
                table.name.schema, table.name.table
            )
        })?;
        (self.done, self.messages, self.binary) = (false, 0, binary);
        self.masker = match (&table.mask, &self.key) {
            (None, _) => None,
            (Some(mask), Some(key)) => Some(MaskedRows::new(mask.clone(), key.clone(), binary)),
            (Some(_), None) => {
                return Err("a masked table on an agent without a masking key".into());
            }
        };
        Ok(())
    }

    /// The next run of the current COPY's messages, about `CHUNK` bytes
    /// (fewer at the end), and empty once it is over.
    pub async fn next(&mut self) -> std::io::Result<Bytes> {
        loop {
            if !self.out.is_empty() {
                let n = self.out.len().min(CHUNK);
                return Ok(self.out.split_to(n));
            }
            if self.done {
                return Ok(Bytes::new());
            }
            match self.wire.copy_data(CHUNK, &mut self.messages).await {
                Ok(Some(run)) => match &mut self.masker {
                    None => return Ok(run),
                    // Masked rows may come out longer or shorter; they are
                    // handed out in frame-sized pieces.
                    Some(m) => self.out = m.chunk(&run).map_err(std::io::Error::other)?,
                },
                Ok(None) => {
                    self.done = true;
                    if self.masker.take().is_some_and(|m| !m.is_clear()) {
                        return Err(std::io::Error::other("the COPY ended inside a row"));
                    }
                }
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
    }

    /// Stops watching the session's socket until it is next read.
    pub fn park(&mut self) {
        self.wire.park();
    }

    /// Rows of the current COPY read so far: one CopyData message each,
    /// but for the binary format's trailer (a message of its own, after
    /// the last row).
    pub fn rows(&self) -> u64 {
        match self.binary && self.done {
            true => self.messages.saturating_sub(1),
            false => self.messages,
        }
    }
}

/// The blocks `[from, to)` of a table's slice (`to` None: to the end, so
/// rows past the size read at the start are not missed).
pub fn slice_range(table: &CopyTable, slice: u32) -> Option<(u64, Option<u64>)> {
    if table.slices <= 1 {
        return None;
    }
    let per = table.blocks.div_ceil(table.slices as u64).max(1);
    let from = per * slice as u64;
    let to = (slice + 1 < table.slices).then(|| per * (slice as u64 + 1));
    Some((from, to))
}

/// `COPY "schema"."table" ("a", "b") TO STDOUT`, or for a block range
/// `COPY (SELECT … WHERE ctid >= '(from,0)' AND ctid < '(to,0)') TO STDOUT`;
/// `WITH (FORMAT binary)` after either when `binary`.
pub fn copy_out_sql(
    table: &TableName,
    columns: &[String],
    range: Option<(u64, Option<u64>)>,
    binary: bool,
) -> String {
    let name = format!("{}.{}", ident(&table.schema), ident(&table.table));
    let columns = column_list(columns);
    let format = if binary { " WITH (FORMAT binary)" } else { "" };
    match range {
        None => format!("COPY {name} ({columns}) TO STDOUT{format}"),
        Some((from, to)) => {
            let upper = to.map_or(String::new(), |to| format!(" AND ctid < '({to},0)'::tid"));
            format!(
                "COPY (SELECT {columns} FROM ONLY {name} WHERE ctid >= '({from},0)'::tid{upper}) TO STDOUT{format}"
            )
        }
    }
}

/// Columns, each quoted.
pub fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(slices: u32, blocks: u64) -> CopyTable {
        CopyTable {
            name: TableName {
                schema: "My App".into(),
                table: "odd\"name".into(),
            },
            columns: vec!["id".into(), "Body Text".into()],
            indexes: Vec::new(),
            bytes: blocks * 8192,
            blocks,
            slices,
            binary_safe: false,
            mask: None,
        }
    }

    #[test]
    fn the_copy_names_every_part_quoted() {
        let t = table(1, 10);
        assert_eq!(
            copy_out_sql(&t.name, &t.columns, slice_range(&t, 0), false),
            "COPY \"My App\".\"odd\"\"name\" (\"id\", \"Body Text\") TO STDOUT"
        );
        assert_eq!(
            copy_out_sql(&t.name, &t.columns, None, true),
            "COPY \"My App\".\"odd\"\"name\" (\"id\", \"Body Text\") TO STDOUT WITH (FORMAT binary)"
        );
    }

    #[test]
    fn slices_cover_every_block_once() {
        let t = table(3, 10);
        assert_eq!(slice_range(&t, 0), Some((0, Some(4))));
        assert_eq!(slice_range(&t, 1), Some((4, Some(8))));
        // The last is open-ended.
        assert_eq!(slice_range(&t, 2), Some((8, None)));
        assert_eq!(
            copy_out_sql(&t.name, &t.columns, slice_range(&t, 1), false),
            "COPY (SELECT \"id\", \"Body Text\" FROM ONLY \"My App\".\"odd\"\"name\" \
             WHERE ctid >= '(4,0)'::tid AND ctid < '(8,0)'::tid) TO STDOUT"
        );
        assert!(
            copy_out_sql(&t.name, &t.columns, slice_range(&t, 2), true)
                .ends_with("WHERE ctid >= '(8,0)'::tid) TO STDOUT WITH (FORMAT binary)")
        );
    }
}
