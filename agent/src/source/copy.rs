//! A data lane's rows on the source: `COPY schema.table (columns) TO
//! STDOUT` in a session that imported the dump's snapshot, so the lane sees
//! exactly what the schema and the other lanes see. PostgreSQL sends a row
//! a message; they are gathered into chunks of the frame size.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio_postgres::{Client, CopyOutStream};

use crate::args::TableName;
use crate::config::PostgresConfig;
use crate::frames::CHUNK;
use crate::pg;
use crate::sql::{ident, literal};

/// One table's COPY output, in chunks.
pub struct CopyChunks {
    stream: Pin<Box<CopyOutStream>>,
    buf: BytesMut,
    done: bool,
    /// The session the COPY runs in; it ends with the lane.
    _session: Client,
}

impl CopyChunks {
    /// Starts the COPY of `table`'s `columns` on `snapshot`.
    pub async fn open(
        pg: &PostgresConfig,
        database: &str,
        snapshot: &str,
        table: &TableName,
        columns: &[String],
    ) -> Result<CopyChunks, String> {
        let name = format!("{}.{}", table.schema, table.table);
        let fail = |what: &str, e: tokio_postgres::Error| {
            format!("{what} for the lane of {name}: {}", pg::error_chain(&e))
        };
        let session = pg::connect(pg, database)
            .await
            .map_err(|e| fail("connecting", e))?;
        session
            .batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = 0; \
                 BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
                 SET TRANSACTION SNAPSHOT {}",
                literal(snapshot)
            ))
            .await
            .map_err(|e| fail("importing the snapshot", e))?;
        let stream = session
            .copy_out(&copy_out_sql(table, columns))
            .await
            .map_err(|e| fail("starting the COPY", e))?;
        Ok(CopyChunks {
            stream: Box::pin(stream),
            buf: BytesMut::with_capacity(CHUNK * 2),
            done: false,
            _session: session,
        })
    }

    /// The next chunk: `CHUNK` bytes, fewer only at the end, and empty once
    /// the COPY is over.
    pub async fn next(&mut self) -> std::io::Result<Bytes> {
        while self.buf.len() < CHUNK && !self.done {
            match self.stream.next().await {
                Some(Ok(row)) => self.buf.extend_from_slice(&row),
                Some(Err(e)) => {
                    return Err(std::io::Error::other(pg::error_without_values(&e)));
                }
                None => self.done = true,
            }
        }
        let n = self.buf.len().min(CHUNK);
        Ok(self.buf.split_to(n).freeze())
    }
}

/// `COPY "schema"."table" ("a", "b") TO STDOUT`.
pub fn copy_out_sql(table: &TableName, columns: &[String]) -> String {
    format!(
        "COPY {}.{} ({}) TO STDOUT",
        ident(&table.schema),
        ident(&table.table),
        column_list(columns)
    )
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

    #[test]
    fn the_copy_names_every_part_quoted() {
        let t = TableName {
            schema: "My App".into(),
            table: "odd\"name".into(),
        };
        assert_eq!(
            copy_out_sql(&t, &["id".into(), "Body Text".into()]),
            "COPY \"My App\".\"odd\"\"name\" (\"id\", \"Body Text\") TO STDOUT"
        );
    }
}
