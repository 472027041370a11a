//! The `Mask` RPC: the masking tools, run where the data is. `check` sets
//! the rules against the live schema as a refresh would; `suggest` writes a
//! rules file for every table and column, guessing transforms from names
//! and types (every guess to be reviewed); `preview` shows a few rows of a
//! table masked on this agent, so raw values never leave it.

use std::sync::Arc;

use stagesync_proto::v1 as pb;

use super::columns::{self, Catalog};
use super::lane::MaskedRows;
use super::rules::parse_table_name;
use crate::args::TableName;
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::pg::wire::Wire;
use crate::{pg, policy, source::COPY_SETTINGS, sql::ident};

/// The most rows a preview shows.
pub const MAX_PREVIEW_ROWS: u32 = 100;

pub async fn run(cfg: &AgentConfig, req: pb::MaskRequest) -> Result<pb::MaskResponse, AgentError> {
    policy::may_dump(cfg, &req.database)?;
    let internal = |e: String| AgentError::internal(&cfg.name, e);
    let c = pg::connect(&cfg.postgres, &req.database)
        .await
        .map_err(|e| internal(e.to_string()))?;
    let read =
        |e: tokio_postgres::Error| internal(format!("reading the schema: {}", pg::error_chain(&e)));
    let catalog = columns::catalog(&c).await.map_err(read)?;
    let copied = columns::copied_tables(&c).await.map_err(read)?;
    let action = pb::MaskAction::try_from(req.action)
        .map_err(|_| AgentError::invalid(&cfg.name, "unknown masking action: upgrade the agent"))?;
    let rules_file = cfg
        .masking
        .as_ref()
        .map(|m| m.rules.file.display().to_string())
        .unwrap_or_default();
    let mut out = pb::MaskResponse {
        rules_file,
        ..Default::default()
    };
    match action {
        pb::MaskAction::MaskSuggest => out.suggestion = suggest(&req.database, &catalog, &copied),
        pb::MaskAction::MaskCheck => {
            let (m, db) = rules_for(cfg, &req.database)?;
            if let Err(problems) = super::check(&m.rules, db, &catalog, &copied) {
                out.problems = problems;
            }
        }
        pb::MaskAction::MaskPreview => {
            let (m, db) = rules_for(cfg, &req.database)?;
            let name =
                parse_table_name(&req.table).map_err(|e| AgentError::invalid(&cfg.name, e))?;
            let Some((_, cols)) = copied.iter().find(|(t, _)| *t == name) else {
                return Err(AgentError::precondition(
                    &cfg.name,
                    format!(
                        "{} has no table {:?} whose rows a refresh copies",
                        req.database, req.table
                    ),
                ));
            };
            let one = vec![(name.clone(), cols.clone())];
            match super::check(&m.rules, db, &catalog, &one) {
                Err(problems) => out.problems = problems,
                Ok(mut masks) => {
                    let mask = masks.pop().flatten().map(Arc::new);
                    let rows = req.rows.clamp(1, MAX_PREVIEW_ROWS);
                    out.columns = cols.clone();
                    out.rows = preview(cfg, &req.database, &name, cols, mask, m.key.clone(), rows)
                        .await
                        .map_err(internal)?;
                }
            }
        }
    }
    Ok(out)
}

fn rules_for<'a>(
    cfg: &'a AgentConfig,
    database: &str,
) -> Result<(&'a super::Masking, &'a super::rules::DatabaseRules), AgentError> {
    let m = cfg.masking.as_ref().ok_or_else(|| {
        AgentError::precondition(
            &cfg.name,
            format!(
                "this agent masks nothing: name a rules file and a key in [masking] of {}",
                cfg.source.display()
            ),
        )
    })?;
    let db = m.rules.for_database(database).ok_or_else(|| {
        AgentError::precondition(
            &cfg.name,
            format!(
                "no entry of {} names database {database:?}",
                m.rules.file.display()
            ),
        )
    })?;
    Ok((m, db))
}

/// `rows` rows of `table`, masked, as COPY text lines.
async fn preview(
    cfg: &AgentConfig,
    database: &str,
    table: &TableName,
    columns: &[String],
    mask: Option<Arc<super::TableMask>>,
    key: Arc<super::MaskKey>,
    rows: u32,
) -> Result<Vec<String>, String> {
    let mut wire = Wire::connect(&cfg.postgres, database).await?;
    wire.execute(COPY_SETTINGS).await?;
    let cols: Vec<String> = columns.iter().map(|c| ident(c)).collect();
    wire.copy_out(&format!(
        "COPY (SELECT {} FROM ONLY {}.{} LIMIT {rows}) TO STDOUT",
        cols.join(", "),
        ident(&table.schema),
        ident(&table.table)
    ))
    .await?;
    let mut masker = mask.map(|m| MaskedRows::new(m, key, false));
    let mut bytes = Vec::new();
    let mut counted = 0;
    while let Some(run) = wire.copy_data(crate::frames::CHUNK, &mut counted).await? {
        match &mut masker {
            Some(m) => bytes.extend_from_slice(&m.chunk(&run)?),
            None => bytes.extend_from_slice(&run),
        }
    }
    let mut lines = Vec::new();
    let mut d = &bytes[..];
    while d.len() >= 5 {
        let len = u32::from_be_bytes([d[1], d[2], d[3], d[4]]) as usize;
        let body = d.get(5..1 + len).ok_or("a row was cut short")?;
        lines.push(String::from_utf8_lossy(body.strip_suffix(b"\n").unwrap_or(body)).into_owned());
        d = &d[1 + len..];
    }
    Ok(lines)
}

/// A rules file for every copied table of `database`: a transform guessed
/// from each column's name and type, `keep` where nothing suggests one.
pub fn suggest(database: &str, catalog: &Catalog, copied: &[(TableName, Vec<String>)]) -> String {
    let mut out = format!(
        "# Masking rules suggested for {database:?}: review every line; \"keep\" copies a\n\
         # column as it is. Strict mode refuses a refresh while any column is missing.\n\n\
         [[databases]]\nnames = [{database:?}]\n"
    );
    for (t, cols) in copied {
        out.push_str(&format!("\n[databases.tables.{}]\n", toml_key(t)));
        let info = catalog.get(&(t.schema.clone(), t.table.clone()));
        for c in cols {
            let ci = info.and_then(|i| i.get(c));
            let (rule, why) = guess(c, ci);
            let key = match c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                true => c.clone(),
                false => format!("{c:?}"),
            };
            out.push_str(&format!("{key} = {rule}{why}\n"));
        }
    }
    out
}

fn toml_key(t: &TableName) -> String {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let part = |s: &str| match plain(s) {
        true => s.to_string(),
        false => format!("\"{}\"", s.replace('"', "\"\"")),
    };
    format!("'{}.{}'", part(&t.schema), part(&t.table))
}

/// A transform for a column, by its name and type, and a note.
fn guess(column: &str, info: Option<&columns::ColumnInfo>) -> (String, &'static str) {
    let n = column.to_ascii_lowercase();
    let text = info.is_none_or(|i| i.category == 'S');
    let has = |w: &[&str]| w.iter().any(|w| n.contains(w));
    let rule = if has(&["email", "e_mail"]) && text {
        "\"email\""
    } else if has(&["password", "passwd"]) && text {
        "{ password = \"REPLACE with the hash every staging user gets\" }"
    } else if has(&["first_name", "firstname", "given_name"]) && text {
        "\"first_name\""
    } else if has(&["last_name", "lastname", "surname", "family_name"]) && text {
        "\"last_name\""
    } else if (n == "name" || n.ends_with("_name") || n == "full_name") && text {
        "\"name\""
    } else if has(&["phone", "mobile", "fax"]) && text {
        "\"phone\""
    } else if has(&["ip_address", "last_ip", "remote_addr"]) || n == "ip" || n.ends_with("_ip") {
        "\"ip\""
    } else if has(&["birth", "dob"]) {
        "{ date = 30 }"
    } else if has(&["token", "secret", "api_key", "apikey", "ssn", "iban"]) && text {
        "\"hash\""
    } else if has(&["address", "street", "city", "zip", "postal", "postcode"]) && text {
        "\"text\""
    } else if info.is_some_and(|i| i.type_name == "json" || i.type_name == "jsonb") {
        return (
            "{ json = [\"email\", \"name\", \"phone\"] }".into(),
            "  # review: which keys hold personal data?",
        );
    } else {
        return ("\"keep\"".into(), "  # review");
    };
    (rule.into(), "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::rules::parse;

    #[test]
    fn a_suggestion_is_a_rules_file_that_reads_back() {
        let mut catalog = Catalog::new();
        let t = TableName {
            schema: "Billing Dept".into(),
            table: "Invoices".into(),
        };
        let cols: Vec<String> = [
            "id",
            "email",
            "first_name",
            "phone_number",
            "last_ip",
            "birth_date",
            "api_token",
            "odd col",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let entry = catalog
            .entry((t.schema.clone(), t.table.clone()))
            .or_default();
        for c in &cols {
            entry.insert(
                c.clone(),
                columns::ColumnInfo {
                    category: if c == "id" {
                        'N'
                    } else if c == "birth_date" {
                        'D'
                    } else {
                        'S'
                    },
                    type_name: "text".into(),
                    not_null: false,
                    generated: false,
                    max_chars: None,
                    checked_by: None,
                },
            );
        }
        let text = suggest("app", &catalog, &[(t.clone(), cols.clone())]);
        let rules = parse(std::path::Path::new("suggested.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let db = rules.for_database("app").unwrap();
        let got = db.table(&t).unwrap().columns.as_ref().unwrap();
        let of = |c: &str| got.iter().find(|r| r.column == c).unwrap().transform.name();
        assert_eq!(of("id"), "keep");
        assert_eq!(of("email"), "email");
        assert_eq!(of("first_name"), "first_name");
        assert_eq!(of("phone_number"), "phone");
        assert_eq!(of("last_ip"), "ip");
        assert_eq!(of("birth_date"), "date");
        assert_eq!(of("api_token"), "hash");
        assert_eq!(of("odd col"), "keep");
        assert!(text.contains("# review"));
    }
}
