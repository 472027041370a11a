//! The masking rules file the source agent's configuration names
//! (`masking.rules`). A controller's plan never reaches it: what leaves
//! this host is decided here. Strictly read, like every file here: unknown
//! keys and bad values are errors naming the file, the line and the key.
//!
//! ```toml
//! [[databases]]
//! names = ["production", "prod_*"]   # globs
//! # strict = true (the default): every column of every copied table is
//! # classified, masked or "keep", or the refresh is refused.
//!
//! [databases.tables]
//! "public.django_migrations" = "keep"          # the whole table
//!
//! [databases.tables."public.auth_user"]
//! id = "keep"
//! email = { email = "example.com" }
//! first_name = "first_name"
//! password = { password = "pbkdf2_sha256$600000$..." }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use stagesync_proto::tomlfile::{ConfigError, TomlFile};
use toml::Spanned;

use super::transform::Transform;
use crate::args::TableName;
use crate::config::Patterns;

/// The rules of every database this agent masks.
#[derive(Clone, Debug)]
pub struct Rules {
    pub file: PathBuf,
    pub databases: Vec<DatabaseRules>,
}

/// One `[[databases]]` entry.
#[derive(Clone, Debug)]
pub struct DatabaseRules {
    pub names: Patterns,
    pub strict: bool,
    pub tables: Vec<TableRules>,
}

#[derive(Clone, Debug)]
pub struct TableRules {
    pub name: TableName,
    /// Where the rule is, for messages (`file:line`).
    pub line: usize,
    /// None: the whole table is kept as it is.
    pub columns: Option<Vec<ColumnRule>>,
}

#[derive(Clone, Debug)]
pub struct ColumnRule {
    pub column: String,
    pub line: usize,
    pub transform: Transform,
}

impl Rules {
    /// The rules for `database`: the first entry whose names match.
    pub fn for_database(&self, database: &str) -> Option<&DatabaseRules> {
        self.databases.iter().find(|d| d.names.matches(database))
    }
}

impl DatabaseRules {
    pub fn table(&self, t: &TableName) -> Option<&TableRules> {
        self.tables.iter().find(|r| &r.name == t)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    databases: Vec<RawDatabase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    names: Spanned<Vec<Spanned<String>>>,
    strict: Option<bool>,
    #[serde(default)]
    tables: BTreeMap<String, Spanned<toml::Value>>,
}

/// Reads and checks the rules file at `path`.
pub fn load(path: &Path) -> Result<Rules, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        key: String::new(),
        message: format!("cannot read the masking rules: {e}"),
    })?;
    parse(path, &text)
}

/// Checks rules text read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Rules, ConfigError> {
    let file = TomlFile { path, text };
    let raw: RawRules = toml::from_str(text).map_err(|e| {
        file.toml_error(
            &e,
            "see the example masking rules (deploy/examples/masking.toml)",
        )
    })?;
    let mut databases = Vec::new();
    for (i, d) in raw.databases.into_iter().enumerate() {
        databases.push(database(&file, i, d)?);
    }
    Ok(Rules {
        file: path.to_path_buf(),
        databases,
    })
}

fn database(file: &TomlFile<'_>, i: usize, d: RawDatabase) -> Result<DatabaseRules, ConfigError> {
    let key = format!("databases[{i}].names");
    if d.names.get_ref().is_empty() {
        return file.err(d.names.span(), &key, "name at least one database (globs)");
    }
    let names: Vec<String> = d
        .names
        .get_ref()
        .iter()
        .map(|n| n.get_ref().clone())
        .collect();
    let patterns = Patterns::new(&names)
        .map_err(|e| file.error(d.names.span(), &key, format!("bad glob: {e}")))?;
    let mut tables = Vec::new();
    for (name, rule) in d.tables {
        let tkey = format!("databases[{i}].tables.{name:?}");
        let line = file.line_of(rule.span().start);
        let table = parse_table_name(&name).map_err(|m| file.error(rule.span(), &tkey, m))?;
        let span = rule.span();
        let columns = match rule.into_inner() {
            toml::Value::String(w) if w == "keep" => None,
            toml::Value::Table(cols) => {
                let mut out = Vec::new();
                for (column, spec) in cols {
                    let ckey = format!("{tkey}.{column}");
                    let at = column_span(file, span.clone(), &column);
                    let transform =
                        transform(&spec).map_err(|m| file.error(at.clone(), &ckey, m))?;
                    out.push(ColumnRule {
                        column,
                        line: file.line_of(at.start),
                        transform,
                    });
                }
                Some(out)
            }
            other => {
                return file.err(
                    span,
                    &tkey,
                    format!(
                        "{other}: a whole table can only be \"keep\"; mask it column by column"
                    ),
                );
            }
        };
        tables.push(TableRules {
            name: table,
            line,
            columns,
        });
    }
    Ok(DatabaseRules {
        names: patterns,
        strict: d.strict.unwrap_or(true),
        tables,
    })
}

/// Where `column`'s line is in the table that starts at `span` (its
/// `[header]` or its inline `{ … }`), up to the next header; the table's
/// own start when it cannot be told.
fn column_span(
    file: &TomlFile<'_>,
    span: std::ops::Range<usize>,
    column: &str,
) -> std::ops::Range<usize> {
    let text = file.text.get(span.start..).unwrap_or("");
    let mut at = span.start;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i > 0 && line.trim_start().starts_with('[') {
            break;
        }
        let key = line.trim_start();
        let bare = key.strip_prefix(column);
        let quoted = key.strip_prefix(&format!("{column:?}"));
        if bare
            .or(quoted)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            let lead = line.len() - key.len();
            return at + lead..at + lead;
        }
        at += line.len();
    }
    span.start..span.start
}

const REGEX_USE: &str = "regex takes [pattern, replacement], e.g. { regex = ['\\d{4}$', '0000'] }";

const NAMED: &str = "keep, null, hash, email, first_name, last_name, name, phone, text, ip";

fn transform(raw: &toml::Value) -> Result<Transform, String> {
    let t = match raw {
        toml::Value::String(n) => match n.as_str() {
            "keep" => Transform::Keep,
            "null" => Transform::Null,
            "hash" => Transform::Hash { length: None },
            "email" => Transform::Email {
                domain: "example.com".into(),
            },
            "first_name" => Transform::FirstName,
            "last_name" => Transform::LastName,
            "name" => Transform::Name,
            "phone" => Transform::Phone,
            "text" => Transform::Text,
            "ip" => Transform::Ip,
            other => {
                return Err(format!(
                    "unknown transform {other:?}: one of {NAMED}, or {{ email = \"domain\" }}, {{ hash = length }}, {{ int = [min, max] }}, {{ value = \"text\" }}, {{ password = \"hash\" }}"
                ));
            }
        },
        toml::Value::Table(map) => {
            let mut it = map.iter();
            let (Some((name, value)), None) = (it.next(), it.next()) else {
                return Err("a transform with a setting has exactly one key, e.g. { email = \"example.com\" }".into());
            };
            let text = |v: &toml::Value| v.as_str().map(str::to_string);
            match (name.as_str(), value) {
                ("email", v) => match text(v) {
                    Some(d) if is_domain(&d) => Transform::Email { domain: d },
                    _ => return Err("email takes a domain name, e.g. { email = \"example.com\" }".into()),
                },
                ("hash", toml::Value::Integer(n)) if (1..=64).contains(n) => Transform::Hash {
                    length: Some(*n as usize),
                },
                ("hash", _) => return Err("hash takes a length from 1 to 64, e.g. { hash = 12 }".into()),
                ("int", toml::Value::Array(a)) => match (a.first().and_then(|v| v.as_integer()), a.get(1).and_then(|v| v.as_integer()), a.len()) {
                    (Some(min), Some(max), 2) if min <= max => Transform::Int { min, max },
                    _ => return Err("int takes [min, max], e.g. { int = [18, 90] }".into()),
                },
                ("int", _) => return Err("int takes [min, max], e.g. { int = [18, 90] }".into()),
                ("noise", v) => match v.as_float().or(v.as_integer().map(|i| i as f64)) {
                    Some(f) if f > 0.0 && f <= 1.0 && (f * 1e6).round() >= 1.0 => Transform::Noise {
                        ppm: (f * 1e6).round() as u32,
                        limit: None,
                    },
                    _ => return Err("noise takes the most share a number moves, above 0 and at most 1, e.g. { noise = 0.1 }".into()),
                },
                ("date", toml::Value::Integer(n)) if (1..=3650).contains(n) => Transform::Date {
                    days: *n as u32,
                },
                ("date", _) => return Err("date takes the most days a date moves, 1 to 3650, e.g. { date = 30 }".into()),
                ("json", toml::Value::Array(a)) if !a.is_empty() && a.iter().all(|k| k.as_str().is_some_and(|s| !s.is_empty())) => Transform::Json {
                    keys: a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect(),
                },
                ("json", _) => return Err("json takes the keys to mask, e.g. { json = [\"email\", \"phone\"] }".into()),
                ("regex", toml::Value::Array(a)) if a.len() == 2 => {
                    let (Some(pattern), Some(replacement)) = (a[0].as_str(), a[1].as_str()) else {
                        return Err(REGEX_USE.into());
                    };
                    let re = regex::bytes::Regex::new(pattern)
                        .map_err(|e| format!("regex pattern {pattern:?}: {e}"))?;
                    Transform::Regex(super::transform::Pattern {
                        re,
                        replacement: replacement.to_string(),
                    })
                }
                ("regex", _) => return Err(REGEX_USE.into()),
                ("value", v) => match text(v) {
                    Some(s) => Transform::Value(s),
                    None => return Err("value takes a text, e.g. { value = \"redacted\" }".into()),
                },
                ("password", v) => match text(v) {
                    Some(s) if !s.is_empty() => Transform::Password(s),
                    _ => return Err("password takes the hash every row gets, e.g. { password = \"pbkdf2_sha256$...\" }".into()),
                },
                (other, _) => return Err(format!("unknown transform {other:?}: one of {NAMED}, email, hash, int, noise, date, json, regex, value, password")),
            }
        }
        other => {
            return Err(format!(
                "{other} is not a transform: a name such as \"email\", or {{ email = \"example.com\" }}"
            ));
        }
    };
    Ok(t)
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 63
        && d.contains('.')
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// `schema.table`, either part double-quoted when it holds a dot or a
/// quote (`"Billing Dept"."Invoices"`); names are matched exactly.
pub fn parse_table_name(s: &str) -> Result<TableName, String> {
    let (schema, rest) = name_part(s)?;
    let Some(rest) = rest.strip_prefix('.') else {
        return Err(format!(
            "{s:?} is not schema.table (quote a part that holds a dot)"
        ));
    };
    let (table, end) = name_part(rest)?;
    if !end.is_empty() || schema.is_empty() || table.is_empty() {
        return Err(format!("{s:?} is not schema.table"));
    }
    Ok(TableName { schema, table })
}

fn name_part(s: &str) -> Result<(String, &str), String> {
    let Some(quoted) = s.strip_prefix('"') else {
        let end = s.find('.').unwrap_or(s.len());
        return Ok((s[..end].to_string(), &s[end..]));
    };
    let mut out = String::new();
    let mut chars = quoted.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        if chars.peek().is_some_and(|(_, n)| *n == '"') {
            chars.next();
            out.push('"');
            continue;
        }
        return Ok((out, &quoted[i + 1..]));
    }
    Err(format!("{s:?}: a quote is not closed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[databases]]
names = ["production"]

[databases.tables]
"public.django_migrations" = "keep"

[databases.tables."public.auth_user"]
id = "keep"
email = { email = "staging.example" }
first_name = "first_name"
age = { int = [18, 90] }

[databases.tables.'"Billing Dept"."Invoices"']
note = { hash = 8 }
"#;

    #[test]
    fn rules_are_read_with_their_places() {
        let r = parse(Path::new("/etc/stagesync/masking.toml"), GOOD).unwrap();
        let d = r.for_database("production").unwrap();
        assert!(d.strict);
        assert!(r.for_database("staging").is_none());
        let user = d
            .table(&TableName {
                schema: "public".into(),
                table: "auth_user".into(),
            })
            .unwrap();
        let cols = user.columns.as_ref().unwrap();
        let email = cols.iter().find(|c| c.column == "email").unwrap();
        assert_eq!(email.line, 10);
        assert_eq!(
            email.transform,
            Transform::Email {
                domain: "staging.example".into()
            }
        );
        let billing = TableName {
            schema: "Billing Dept".into(),
            table: "Invoices".into(),
        };
        assert!(d.table(&billing).is_some());
        let migrations = d
            .tables
            .iter()
            .find(|t| t.name.table == "django_migrations")
            .unwrap();
        assert!(migrations.columns.is_none());
    }

    #[test]
    fn the_example_rules_are_well_formed() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/masking.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let r = parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let d = r.for_database("production").unwrap();
        assert!(d.strict && d.tables.len() >= 10);
    }

    #[test]
    fn mistakes_name_file_line_and_key() {
        let bad = GOOD.replace("\"first_name\"", "\"frist_name\"");
        let e = parse(Path::new("m.toml"), &bad).unwrap_err().to_string();
        assert!(
            e.contains("m.toml:11") && e.contains("first_name") && e.contains("unknown transform"),
            "{e}"
        );
        let bad = GOOD.replace("[18, 90]", "[90, 18]");
        let e = parse(Path::new("m.toml"), &bad).unwrap_err().to_string();
        assert!(e.contains("m.toml:12") && e.contains("int takes"), "{e}");
        let bad = GOOD.replace(
            "names = [\"production\"]",
            "names = [\"production\"]\nstrcit = false",
        );
        let e = parse(Path::new("m.toml"), &bad).unwrap_err().to_string();
        assert!(e.contains("strcit"), "{e}");
        let with_regex = GOOD.replace("{ hash = 8 }", "{ regex = ['\\d+', '0'] }");
        let r = parse(Path::new("m.toml"), &with_regex).unwrap();
        let billing = &r.databases[0]
            .tables
            .iter()
            .find(|t| t.name.table == "Invoices")
            .unwrap();
        assert_eq!(
            billing.columns.as_ref().unwrap()[0].transform.name(),
            "regex"
        );
        let bad = GOOD.replace("{ hash = 8 }", "{ regex = ['(', 'x'] }");
        let e = parse(Path::new("m.toml"), &bad).unwrap_err().to_string();
        assert!(
            e.contains("m.toml:15") && e.contains("regex pattern"),
            "{e}"
        );
        assert!(parse_table_name("nodot").is_err());
        assert_eq!(
            parse_table_name("\"a.b\".\"c\"\"d\"").unwrap().table,
            "c\"d"
        );
    }
}
