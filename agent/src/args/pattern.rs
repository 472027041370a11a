//! Table names and the table patterns `pg_dump` reads.

/// A table as the catalog names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// A pg_dump pattern that matches this table and nothing else: both
    /// parts double-quoted, where wildcards and dots are literal and case
    /// is kept.
    pub fn exact_pattern(&self) -> Result<String, String> {
        let quote = |s: &str| {
            if s.is_empty() || s.chars().any(char::is_control) {
                return Err(format!("{s:?} cannot be named in a pg_dump pattern"));
            }
            Ok(format!("\"{}\"", s.replace('"', "\"\"")))
        };
        Ok(format!("{}.{}", quote(&self.schema)?, quote(&self.table)?))
    }
}

/// A table pattern as pg_dump reads it (`--exclude-table`,
/// `--exclude-table-data`): dots split schema and table; outside double
/// quotes `*` and `?` are wildcards and letters fold to lower case; inside
/// them everything is literal and `""` is a quote. Regular expression
/// syntax outside quotes, which pg_dump also accepts, is refused. Used to
/// tell which tables
/// a plan leaves out, so that none of them is given a data lane of its own.
pub struct TablePattern {
    schema: Option<globset::GlobMatcher>,
    table: globset::GlobMatcher,
    /// Has an unquoted `?`, which globset reads as one byte and pg_dump as
    /// one character.
    any_char: bool,
}

impl TablePattern {
    pub fn parse(pattern: &str) -> Result<TablePattern, String> {
        let (parts, any_char) = glob_parts(pattern)?;
        let glob = |g: &str| {
            globset::GlobBuilder::new(g)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("table pattern {pattern:?}: {e}"))
        };
        let n = parts.len();
        match n {
            1 => Ok(TablePattern {
                schema: None,
                table: glob(&parts[0])?,
                any_char,
            }),
            // database.schema.table: the database part is the dump's own.
            2 | 3 => Ok(TablePattern {
                schema: Some(glob(&parts[n - 2])?),
                table: glob(&parts[n - 1])?,
                any_char,
            }),
            _ => Err(format!(
                "table pattern {pattern:?} has too many dotted names"
            )),
        }
    }

    /// True when the pattern names `t`. A pattern without a schema is taken
    /// to name the table in every schema (pg_dump limits it to the visible
    /// ones): the answer errs towards "named".
    pub fn matches(&self, t: &TableName) -> bool {
        if self.any_char && !(t.schema.is_ascii() && t.table.is_ascii()) {
            return true;
        }
        self.schema.as_ref().is_none_or(|s| s.is_match(&t.schema)) && self.table.is_match(&t.table)
    }
}

/// The dotted parts of a pattern as globset globs (case folded and quotes
/// resolved as pg_dump does), and whether an unquoted `?` was among them.
fn glob_parts(pattern: &str) -> Result<(Vec<String>, bool), String> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut quoted = false;
    let mut any_char = false;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                part.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut part)),
            '*' if !quoted => part.push(c),
            '?' if !quoted => {
                any_char = true;
                part.push(c);
            }
            // pg_dump passes these on as regular expression syntax,
            // which this reading does not follow.
            '|' | '+' | '(' | ')' | '^' | '[' | ']' | '{' | '}' | '\\' if !quoted => {
                return Err(format!(
                    "table pattern {pattern:?} uses regular expression syntax"
                ));
            }
            // Everything else is literal; globset escapes with a backslash.
            c if "*?[]{}\\".contains(c) => {
                part.push('\\');
                part.push(c);
            }
            c if !quoted => part.push(c.to_ascii_lowercase()),
            c => part.push(c),
        }
    }
    parts.push(part);
    Ok((parts, any_char))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_patterns_read_as_pg_dump_reads_them() {
        let t = |schema: &str, table: &str| TableName {
            schema: schema.into(),
            table: table.into(),
        };
        let m = |p: &str, name: &TableName| TablePattern::parse(p).expect(p).matches(name);
        assert!(m("app.posts", &t("app", "posts")));
        assert!(m("APP.Posts", &t("app", "posts")), "unquoted names fold");
        assert!(!m("app.posts", &t("App", "posts")));
        assert!(m("\"App\".posts", &t("App", "posts")));
        assert!(m("posts", &t("anything", "posts")), "no schema: any schema");
        assert!(m("app.cache_*", &t("app", "cache_sessions")));
        assert!(!m("app.cache_*", &t("app", "posts")));
        assert!(m("app.post?", &t("app", "posts")));
        assert!(m("*.*", &t("x", "y")));
        assert!(m("mydb.app.posts", &t("app", "posts")));
        // Quoted: wildcards, dots and brackets are literal; "" is a quote.
        let odd = t("app", "Big \"*.t");
        assert!(m("app.\"Big \"\"*.t\"", &odd));
        assert!(!m("app.\"Big \"\"*.t\"", &t("app", "Big \"xx.t")));
        assert!(m("app.\"a[1]\"", &t("app", "a[1]")));
        assert!(!m("app.\"a[1]\"", &t("app", "a1")));
        assert!(m("app.\"a{b}\"", &t("app", "a{b}")));
        assert!(m("app.a$b", &t("app", "a$b")), "pg_dump escapes $");
        assert!(TablePattern::parse("a.b.c.d").is_err());
        // Regular expression syntax outside quotes is not followed: the
        // caller then gives no table a lane.
        assert!(TablePattern::parse("app.(posts|users)").is_err());
        assert!(TablePattern::parse("app.\"(posts|users)\"").is_ok());
        // ? against a name that is not ASCII: taken as named.
        assert!(m("app.caf?", &t("app", "café")));
        assert!(m("app.caf?", &t("app", "cafe")));
        // The exact pattern of any table names that table.
        for name in [odd, t("s p", "Ta\\ble"), t("x", "?")] {
            assert!(
                m(&name.exact_pattern().expect("nameable"), &name),
                "{name:?}"
            );
        }
    }
}
