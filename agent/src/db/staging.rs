//! What staging keeps of its own across a refresh: rows of its live
//! database carried into the new one (upserted by primary key, the tables'
//! sequences moved past them), and tables emptied so that copied queues do
//! not act on real people. Both run in the new database, in the
//! post-restore SQL's transaction, logged in as the job's own role.

use futures::{SinkExt, pin_mut};
use stagesync_proto::v1 as pb;
use tokio_postgres::{IsolationLevel, Transaction};

use super::{DbError, JobLogin, admin, database_exists};
use crate::config::PostgresConfig;
use crate::pg;
use crate::sql::ident;

/// What keeping did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    pub rows: u64,
    /// Rows were to be kept, and there was no live database (a first
    /// refresh).
    pub no_live_database: bool,
}

/// `schema.table` for messages.
fn label(t: &pb::TableRef) -> String {
    format!("{}.{}", t.schema, t.table)
}

/// `"schema"."table"` for SQL.
fn qualified(t: &pb::TableRef) -> String {
    format!("{}.{}", ident(&t.schema), ident(&t.table))
}

fn failed(what: String, e: &tokio_postgres::Error) -> DbError {
    DbError(format!("{what}: {}", pg::error_without_values(e)))
}

/// Copies the rows `keep` names from the live database `live` into the new
/// database's transaction `new`.
pub async fn keep_rows(
    pg: &PostgresConfig,
    new: &Transaction<'_>,
    login: &JobLogin,
    live: &str,
    keep: &[pb::KeepRows],
) -> Result<Kept, DbError> {
    if keep.is_empty() {
        return Ok(Kept::default());
    }
    if !database_exists(&admin(pg).await?, live).await? {
        return Ok(Kept {
            rows: 0,
            no_live_database: true,
        });
    }
    let mut c = login.connect(pg, live).await.map_err(|e| {
        DbError(format!(
            "connecting to staging's live database {live:?}: {e}"
        ))
    })?;
    // Every kept table as of one moment.
    let snapshot = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| failed(format!("reading {live:?}"), &e))?;
    let mut rows = 0;
    for (i, rule) in keep.iter().enumerate() {
        let table = rule
            .table
            .as_ref()
            .ok_or_else(|| DbError("a kept table without a name".into()))?;
        rows += keep_table(&snapshot, new, table, &rule.r#where, i).await?;
    }
    Ok(Kept {
        rows,
        no_live_database: false,
    })
}

/// One kept table: checked on both sides, its rows streamed into a
/// temporary table, upserted, its sequences moved past them.
async fn keep_table(
    live: &Transaction<'_>,
    new: &Transaction<'_>,
    table: &pb::TableRef,
    filter: &str,
    i: usize,
) -> Result<u64, DbError> {
    let name = label(table);
    let here = Columns::of(new, table).await?.ok_or_else(|| {
        DbError(format!(
            "keep {name}: no such table in production's schema; remove it from keep or check its name"
        ))
    })?;
    let there = Columns::of(live, table).await?.ok_or_else(|| {
        DbError(format!(
            "keep {name}: no such table in staging's live database; remove it from keep or check its name"
        ))
    })?;
    here.same_as(&there, &name)?;
    let key = primary_key(new, here.oid).await?;
    if key.is_empty() {
        return Err(DbError(format!(
            "keep {name}: the table has no primary key in production's schema, so kept rows cannot replace production's; give it one or remove it from keep"
        )));
    }
    let cols = here.list();
    let temp = format!("stagesync_kept_{i}");
    new.batch_execute(&format!(
        "CREATE TEMP TABLE {temp} ON COMMIT DROP AS SELECT {cols} FROM {} WITH NO DATA",
        qualified(table)
    ))
    .await
    .map_err(|e| failed(format!("keep {name}"), &e))?;
    let rows = stream_rows(live, new, table, filter, &cols, &temp).await?;
    new.batch_execute(&upsert(table, &here, &key, &temp))
        .await
        .map_err(|e| failed(format!("keep {name}: putting staging's rows in"), &e))?;
    move_sequences(new, table, &here).await?;
    Ok(rows)
}

/// `COPY` out of staging's live table into the temporary table.
async fn stream_rows(
    live: &Transaction<'_>,
    new: &Transaction<'_>,
    table: &pb::TableRef,
    filter: &str,
    cols: &str,
    temp: &str,
) -> Result<u64, DbError> {
    let name = label(table);
    let filter = match filter.trim() {
        "" => String::new(),
        f => format!(" WHERE ({f})"),
    };
    let out = live
        .copy_out(&format!(
            "COPY (SELECT {cols} FROM {}{filter}) TO STDOUT",
            qualified(table)
        ))
        .await
        .map_err(|e| failed(format!("keep {name}: reading staging's rows"), &e))?;
    let sink = new
        .copy_in::<_, bytes::Bytes>(&format!("COPY {temp} ({cols}) FROM STDIN"))
        .await
        .map_err(|e| failed(format!("keep {name}"), &e))?;
    pin_mut!(out);
    pin_mut!(sink);
    sink.send_all(&mut out)
        .await
        .map_err(|e| failed(format!("keep {name}: copying staging's rows"), &e))?;
    sink.as_mut()
        .finish()
        .await
        .map_err(|e| failed(format!("keep {name}: copying staging's rows"), &e))
}

/// The kept rows in, replacing production's rows with the same key.
fn upsert(table: &pb::TableRef, cols: &Columns, key: &[String], temp: &str) -> String {
    let list = cols.list();
    let updates: Vec<String> = cols
        .names
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{} = EXCLUDED.{}", ident(c), ident(c)))
        .collect();
    let key: Vec<String> = key.iter().map(|k| ident(k)).collect();
    let action = match updates.is_empty() {
        true => "DO NOTHING".to_string(),
        false => format!("DO UPDATE SET {}", updates.join(", ")),
    };
    format!(
        "INSERT INTO {} ({list}) OVERRIDING SYSTEM VALUE SELECT {list} FROM {temp} ON CONFLICT ({}) {action}",
        qualified(table),
        key.join(", ")
    )
}

/// Moves each sequence a column of `table` draws from past the column's
/// largest value, so the next row does not collide with a kept one.
async fn move_sequences(
    new: &Transaction<'_>,
    table: &pb::TableRef,
    cols: &Columns,
) -> Result<(), DbError> {
    let name = label(table);
    let qualified = qualified(table);
    for col in &cols.names {
        let row = new
            .query_one("SELECT pg_get_serial_sequence($1, $2)", &[&qualified, col])
            .await
            .map_err(|e| failed(format!("keep {name}: finding sequences"), &e))?;
        let Some(seq): Option<String> = row.get(0) else {
            continue;
        };
        let sql = format!(
            "SELECT setval($1::text::regclass, m) FROM (SELECT max({})::bigint AS m FROM {qualified}) x \
             WHERE m IS NOT NULL AND m > COALESCE(pg_sequence_last_value($1::text::regclass), 0)",
            ident(col)
        );
        new.execute(&sql, &[&seq])
            .await
            .map_err(|e| failed(format!("keep {name}: moving sequence {seq}"), &e))?;
    }
    Ok(())
}

/// A table's columns that rows carry (not dropped, not generated).
struct Columns {
    oid: u32,
    names: Vec<String>,
    types: Vec<String>,
}

impl Columns {
    async fn of(c: &Transaction<'_>, t: &pb::TableRef) -> Result<Option<Columns>, DbError> {
        let name = label(t);
        let Some(row) = c
            .query_opt(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&t.schema, &t.table],
            )
            .await
            .map_err(|e| failed(format!("keep {name}: reading the catalog"), &e))?
        else {
            return Ok(None);
        };
        let oid: u32 = row.get(0);
        let rows = c
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
                 ORDER BY attnum",
                &[&oid],
            )
            .await
            .map_err(|e| failed(format!("keep {name}: reading its columns"), &e))?;
        Ok(Some(Columns {
            oid,
            names: rows.iter().map(|r| r.get(0)).collect(),
            types: rows.iter().map(|r| r.get(1)).collect(),
        }))
    }

    fn list(&self) -> String {
        let quoted: Vec<String> = self.names.iter().map(|n| ident(n)).collect();
        quoted.join(", ")
    }

    /// Sorted `name type` pairs, to compare two sides in any column order.
    fn described(&self) -> Vec<String> {
        let mut d: Vec<String> = self
            .names
            .iter()
            .zip(&self.types)
            .map(|(n, t)| format!("{n} {t}"))
            .collect();
        d.sort();
        d
    }

    fn same_as(&self, live: &Columns, name: &str) -> Result<(), DbError> {
        let (here, there) = (self.described(), live.described());
        if here == there {
            return Ok(());
        }
        let only = |a: &[String], b: &[String]| -> String {
            let v: Vec<&str> = a
                .iter()
                .filter(|x| !b.contains(x))
                .map(String::as_str)
                .collect();
            match v.is_empty() {
                true => "none".into(),
                false => v.join(", "),
            }
        };
        Err(DbError(format!(
            "keep {name}: its columns differ between production's schema (only there: {}) and staging's live database (only there: {}); migrate staging or remove the table from keep",
            only(&here, &there),
            only(&there, &here)
        )))
    }
}

async fn primary_key(c: &Transaction<'_>, oid: u32) -> Result<Vec<String>, DbError> {
    let rows = c
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1 AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&oid],
        )
        .await
        .map_err(|e| failed("reading a primary key".into(), &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Empties `tables` in the new database; `cascade` also empties the
/// tables whose foreign keys point at them.
pub async fn truncate(
    new: &Transaction<'_>,
    tables: &[pb::TableRef],
    cascade: bool,
) -> Result<(), DbError> {
    if tables.is_empty() {
        return Ok(());
    }
    for t in tables {
        if Columns::of(new, t).await?.is_none() {
            return Err(DbError(format!(
                "truncate_after {}: no such table in production's schema; remove it or check its name",
                label(t)
            )));
        }
    }
    let list: Vec<String> = tables.iter().map(qualified).collect();
    let sql = format!(
        "TRUNCATE TABLE {}{}",
        list.join(", "),
        if cascade { " CASCADE" } else { "" }
    );
    new.batch_execute(&sql).await.map_err(|e| {
        // A foreign key in the way: its DETAIL names the tables, no values.
        let referenced = e.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED);
        let names = match e.as_db_error().and_then(|d| d.detail()) {
            Some(detail) if referenced => format!(" ({detail})"),
            _ => String::new(),
        };
        let advice = match referenced && !cascade {
            true => {
                "; add the referencing tables to truncate_after, or set truncate_cascade = true"
            }
            false => "",
        };
        DbError(format!(
            "truncate_after: {}{names}{advice}",
            pg::error_without_values(&e)
        ))
    })
}
