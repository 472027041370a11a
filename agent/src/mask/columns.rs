//! The rules against the live schema, before a row is read: every rule
//! names a table and a column that exist, each transform fits its column
//! (text into text, integers into integers, no NULL into a NOT NULL
//! column, nothing longer than a `varchar(n)` takes), and in strict mode
//! every column of every table whose data leaves the host is classified.
//! Each problem is named with the rule's place in the file.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::rules::{DatabaseRules, Rules};
use super::transform::{Needs, Transform};
use crate::args::TableName;

/// How one copied table's rows are masked: a transform per copied column
/// (None: as it is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMask {
    /// `schema.table`, for messages.
    pub table: String,
    pub transforms: Vec<Option<Transform>>,
    /// Its rows may be masked in the binary COPY format: every masked
    /// column is made NULL or is a string type (`text`, `varchar`,
    /// `bpchar`, `name`, or a domain over one), whose binary form is its
    /// text, unescaped.
    pub binary_ok: bool,
}

/// Whether a masked column's values can be masked in binary rows.
fn binary_maskable(t: &Transform, c: Option<&ColumnInfo>) -> bool {
    *t == Transform::Null
        || c.is_some_and(|c| matches!(c.type_name.as_str(), "text" | "varchar" | "bpchar" | "name"))
}

/// A column as the catalog describes it.
#[derive(Clone, Debug)]
pub struct ColumnInfo {
    /// `typcategory` of its type (of a domain's base type).
    pub category: char,
    /// The type's name (base type for a domain).
    pub type_name: String,
    pub not_null: bool,
    pub generated: bool,
    /// The most characters it takes (`varchar(n)`, `char(n)`).
    pub max_chars: Option<usize>,
    /// The CHECK constraints its values must pass (its domain's, its
    /// table's that read it), named for messages.
    pub checked_by: Option<String>,
}

/// Every column of every table, by table, then by name.
pub type Catalog = BTreeMap<(String, String), BTreeMap<String, ColumnInfo>>;

const COLUMNS: &str = "SELECT n.nspname::text, c.relname::text, a.attname::text, \
       COALESCE(bt.typcategory, t.typcategory)::text, COALESCE(bt.typname, t.typname)::text, \
       a.attnotnull, a.attgenerated <> '', \
       CASE WHEN COALESCE(bt.oid, t.oid) IN (1042, 1043) \
            THEN NULLIF(CASE WHEN t.typbasetype <> 0 THEN t.typtypmod ELSE a.atttypmod END, -1) - 4 END, \
       (SELECT string_agg(CASE WHEN k.contypid <> 0 \
                   THEN format('the CHECK %I of domain %s', k.conname, k.contypid::regtype) \
                   ELSE format('the CHECK %I of the table', k.conname) END, ', ' ORDER BY k.conname) \
          FROM pg_catalog.pg_constraint k \
         WHERE k.contype = 'c' AND (k.contypid = a.atttypid \
               OR (k.conrelid = c.oid AND a.attnum = ANY (k.conkey)))) \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
     LEFT JOIN pg_catalog.pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd' \
     WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped \
       AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'";

/// The columns of the session's database.
pub async fn catalog(c: &Client) -> Result<Catalog, tokio_postgres::Error> {
    let mut out = Catalog::new();
    for r in c.query(COLUMNS, &[]).await? {
        let category: String = r.try_get(3)?;
        let max: Option<i32> = r.try_get(7)?;
        out.entry((r.try_get(0)?, r.try_get(1)?))
            .or_default()
            .insert(
                r.try_get(2)?,
                ColumnInfo {
                    category: category.chars().next().unwrap_or('X'),
                    type_name: r.try_get(4)?,
                    not_null: r.try_get(5)?,
                    generated: r.try_get(6)?,
                    max_chars: max.filter(|m| *m > 0).map(|m| m as usize),
                    checked_by: r.try_get(8)?,
                },
            );
    }
    Ok(out)
}

/// The tables whose rows a refresh copies (ordinary tables and partition
/// leaves, not temporary, not an extension's) with their stored columns in
/// order, as the copy lanes take them.
pub async fn copied_tables(
    c: &Client,
) -> Result<Vec<(TableName, Vec<String>)>, tokio_postgres::Error> {
    let sql = "SELECT n.nspname::text, c.relname::text, \
           ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 AND a.attgenerated = '' ORDER BY a.attnum) \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
           AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
               WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
         ORDER BY 1, 2";
    c.query(sql, &[])
        .await?
        .iter()
        .map(|r| {
            Ok((
                TableName {
                    schema: r.try_get(0)?,
                    table: r.try_get(1)?,
                },
                r.try_get(2)?,
            ))
        })
        .collect()
}

/// The masks of `copied` (each with its copied columns, in order) under
/// `db`'s rules, or every problem found.
pub fn check(
    rules: &Rules,
    db: &DatabaseRules,
    catalog: &Catalog,
    copied: &[(TableName, Vec<String>)],
) -> Result<Vec<Option<TableMask>>, Vec<String>> {
    let file = rules.file.display();
    let mut problems = Vec::new();
    for t in &db.tables {
        let at = format!("{file}:{}", t.line);
        let Some(cols) = catalog.get(&(t.name.schema.clone(), t.name.table.clone())) else {
            problems.push(format!(
                "{at}: a rule names table {}.{}, which does not exist",
                t.name.schema, t.name.table
            ));
            continue;
        };
        for r in t.columns.iter().flatten() {
            let place = format!(
                "{file}:{}: {}.{}.{}",
                r.line, t.name.schema, t.name.table, r.column
            );
            match cols.get(&r.column) {
                None => problems.push(format!("{place}: no such column")),
                Some(info) => {
                    if let Err(why) = fits(&r.transform, info) {
                        problems.push(format!("{place}: {why}"));
                    }
                }
            }
        }
    }
    let mut masks = Vec::with_capacity(copied.len());
    for (name, columns) in copied {
        let rule = db.table(name);
        let whole_keep = rule.is_some_and(|r| r.columns.is_none());
        let mut transforms = Vec::with_capacity(columns.len());
        let mut binary_ok = true;
        let table_cols = catalog.get(&(name.schema.clone(), name.table.clone()));
        for c in columns {
            let t = rule
                .and_then(|r| r.columns.as_ref())
                .and_then(|cols| cols.iter().find(|r| &r.column == c))
                .map(|r| r.transform.clone())
                .map(|t| {
                    let info = catalog
                        .get(&(name.schema.clone(), name.table.clone()))
                        .and_then(|cols| cols.get(c));
                    bounded(t, info)
                });
            if t.is_none() && !whole_keep && db.strict {
                problems.push(format!(
                    "{}.{}.{c}: not classified (strict mode): add a rule for it to {file}, masked or \"keep\"",
                    name.schema, name.table
                ));
            }
            let t = t.filter(|t| *t != Transform::Keep);
            if let Some(t) = &t {
                binary_ok &= binary_maskable(t, table_cols.and_then(|cols| cols.get(c)));
            }
            transforms.push(t);
        }
        masks.push(transforms.iter().any(Option::is_some).then(|| TableMask {
            table: format!("{}.{}", name.schema, name.table),
            transforms,
            binary_ok,
        }));
    }
    match problems.is_empty() {
        true => Ok(masks),
        false => Err(problems),
    }
}

/// `t` with the column's integer range, for `noise`.
fn bounded(t: Transform, c: Option<&ColumnInfo>) -> Transform {
    match (t, c.map(|c| c.type_name.as_str())) {
        (Transform::Noise { ppm, .. }, Some(ty)) => Transform::Noise {
            ppm,
            limit: match ty {
                "int2" => Some(i16::MAX as i64),
                "int4" => Some(i32::MAX as i64),
                // f64 rounds i64::MAX up, past the range.
                "int8" => Some(9_000_000_000_000_000_000),
                _ => None,
            },
        },
        (t, _) => t,
    }
}

/// Whether `t`'s output fits the column.
fn fits(t: &Transform, c: &ColumnInfo) -> Result<(), String> {
    if c.generated && *t != Transform::Keep {
        return Err("a generated column is computed again on the destination: remove its rule or make it \"keep\"".into());
    }
    if *t == Transform::Null && c.not_null {
        return Err("\"null\" into a NOT NULL column".into());
    }
    let fixed = matches!(
        t,
        Transform::Keep | Transform::Null | Transform::Value(_) | Transform::Password(_)
    );
    if let (Some(checks), false) = (&c.checked_by, fixed) {
        return Err(format!(
            "{:?} cannot be shown to pass {checks}: make it \"keep\", \"null\" or a fixed value, or drop the constraint",
            t.name()
        ));
    }
    if matches!(t, Transform::Noise { .. }) && c.type_name == "money" {
        return Err("\"noise\" reads plain numbers, and money is written with its currency: use { int = [min, max] }".into());
    }
    let ok = match t.needs() {
        Needs::Anything => true,
        Needs::Text => c.category == 'S',
        Needs::Integer => c.category == 'N',
        Needs::Address => c.category == 'S' || matches!(c.type_name.as_str(), "inet" | "cidr"),
        Needs::Date => c.category == 'D' || c.category == 'S',
        Needs::Json => matches!(c.type_name.as_str(), "json" | "jsonb") || c.category == 'S',
    };
    if !ok {
        return Err(format!(
            "{:?} writes {} and the column is of type {}",
            t.name(),
            match t.needs() {
                Needs::Integer => "numbers",
                Needs::Address => "IP addresses",
                Needs::Date => "dates",
                Needs::Json => "JSON",
                _ => "text",
            },
            c.type_name
        ));
    }
    if let (Some(max), Some(len)) = (c.max_chars, t.max_len(c.max_chars))
        && len > max
    {
        return Err(format!(
            "{:?} may write {len} characters and the column takes {max}",
            t.name()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::rules::parse;

    fn info(category: char, type_name: &str, max: Option<usize>, not_null: bool) -> ColumnInfo {
        ColumnInfo {
            category,
            type_name: type_name.into(),
            not_null,
            generated: false,
            max_chars: max,
            checked_by: None,
        }
    }

    #[test]
    fn rules_are_checked_against_the_schema() {
        let rules = parse(
            std::path::Path::new("m.toml"),
            r#"
[[databases]]
names = ["app"]
[databases.tables."public.users"]
id = "keep"
email = "email"
age = "null"
nick = { email = "example.com" }
[databases.tables."public.gone"]
x = "keep"
"#,
        )
        .unwrap();
        let db = rules.for_database("app").unwrap();
        let mut catalog = Catalog::new();
        let users = catalog
            .entry(("public".into(), "users".into()))
            .or_default();
        users.insert("id".into(), info('N', "int8", None, true));
        users.insert("email".into(), info('S', "varchar", Some(255), true));
        users.insert("age".into(), info('N', "int4", None, true));
        users.insert("nick".into(), info('S', "varchar", Some(10), false));
        users.insert("bio".into(), info('S', "text", None, false));
        let copied = vec![(
            TableName {
                schema: "public".into(),
                table: "users".into(),
            },
            vec![
                "id".into(),
                "email".into(),
                "age".into(),
                "nick".into(),
                "bio".into(),
            ],
        )];
        let problems = check(&rules, db, &catalog, &copied).unwrap_err();
        let all = problems.join("\n");
        assert!(
            all.contains("m.toml:9: a rule names table public.gone"),
            "{all}"
        );
        assert!(
            all.contains("public.users.age: \"null\" into a NOT NULL column"),
            "{all}"
        );
        assert!(
            all.contains(
                "public.users.nick: \"email\" may write 33 characters and the column takes 10"
            ),
            "{all}"
        );
        assert!(all.contains("public.users.bio: not classified"), "{all}");
        assert_eq!(problems.len(), 4, "{all}");
    }
}
