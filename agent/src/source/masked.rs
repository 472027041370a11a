//! A dump of a database this agent's masking rules name: its rows may
//! leave only on the copy lanes, where `mask::MaskedRows` rewrites them.
//! Everything that would carry rows some other way is refused before the
//! stream starts: no lanes (one worker, `lanes = 0`, schema filters, a
//! SQL_ASCII database), a table left to pg_dump's stream, large objects.

use std::sync::Arc;

use stagesync_proto::v1 as pb;

use super::layout::Layout;
use crate::config::AgentConfig;
use crate::jobs::StepError;
use crate::mask;
use crate::pg;

/// Whether this agent masks `database`.
pub fn applies(cfg: &AgentConfig, database: &str) -> bool {
    crate::policy::masking_for(cfg, database).is_some()
}

/// Checks the rules against the layout and the live schema and gives each
/// copied table its mask; an error names every problem.
pub async fn apply(
    cfg: &AgentConfig,
    layout: &mut Layout,
    database: &str,
) -> Result<(), StepError> {
    let Some(m) = &cfg.masking else {
        return Ok(());
    };
    let Some(db) = m.rules.for_database(database) else {
        return Ok(());
    };
    let refuse = |why: String| {
        StepError::new(
            pb::Step::PgDump,
            format!(
                "database {database:?} has masking rules ({}), and {why}; nothing was sent",
                m.rules.file.display()
            ),
        )
    };
    if layout.shape.lanes() < 2 || layout.tables.is_empty() {
        return Err(refuse(
            "its rows may leave only on copy lanes, which this refresh does not use: refresh with --jobs 2 or more and lanes, without schema filters (a SQL_ASCII database cannot be masked)".into(),
        ));
    }
    if !layout.unlaned.is_empty() {
        return Err(refuse(format!(
            "these tables' rows would travel unmasked in pg_dump's stream: {}",
            layout.unlaned.join(", ")
        )));
    }
    let c = pg::connect(&cfg.postgres, database)
        .await
        .map_err(|e| refuse(format!("its schema could not be read: {e}")))?;
    let read = |e: tokio_postgres::Error| {
        refuse(format!(
            "its schema could not be read: {}",
            pg::error_chain(&e)
        ))
    };
    let los: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(read)?;
    if los > 0 {
        return Err(refuse(format!(
            "it holds {los} large objects, which cannot be masked: leave them out (the plan's dump options: --no-large-objects) or remove them"
        )));
    }
    let catalog = mask::columns::catalog(&c).await.map_err(read)?;
    let copied: Vec<_> = layout
        .tables
        .iter()
        .map(|t| (t.name.clone(), t.columns.clone()))
        .collect();
    let masks = mask::check(&m.rules, db, &catalog, &copied).map_err(|problems| {
        refuse(format!(
            "the rules do not fit the schema:\n  {}",
            problems.join("\n  ")
        ))
    })?;
    for (t, mask) in layout.tables.iter_mut().zip(masks) {
        t.mask = mask.map(Arc::new);
    }
    tracing::info!(
        database,
        masked = layout.tables.iter().filter(|t| t.mask.is_some()).count(),
        tables = layout.tables.len(),
        "rows are masked on the copy lanes"
    );
    Ok(())
}
