//! What a pair's staging keeps of its own: `keep` (tables whose live rows
//! survive the refresh, optionally `where` they match) and `truncate_after`
//! (tables emptied before the swap), each table written `schema.table`.

use stagesync_proto::tomlfile::ConfigError;
use stagesync_proto::v1 as pb;

use super::pair::PairCheck;

impl PairCheck<'_> {
    pub(super) fn staging(&self) -> Result<pb::StagingRules, ConfigError> {
        let mut rules = pb::StagingRules {
            truncate_cascade: self.raw.truncate_cascade.unwrap_or(false),
            ..Default::default()
        };
        for k in &self.raw.keep {
            let k = k.get_ref();
            let table = parse_table(k.table.get_ref())
                .map_err(|m| self.at.error(k.table.span(), "keep.table", m))?;
            if rules.keep.iter().any(|r| r.table.as_ref() == Some(&table)) {
                return self.at.err(k.table.span(), "keep.table", "kept twice");
            }
            let filter = match &k.filter {
                Some(w) if w.get_ref().trim().is_empty() => {
                    return self.at.err(
                        w.span(),
                        "keep.where",
                        "is empty: leave it out to keep every row",
                    );
                }
                Some(w) => w.get_ref().clone(),
                None => String::new(),
            };
            rules.keep.push(pb::KeepRows {
                table: Some(table),
                r#where: filter,
            });
        }
        for t in &self.raw.truncate_after {
            let table = parse_table(t.get_ref())
                .map_err(|m| self.at.error(t.span(), "truncate_after", m))?;
            if rules.keep.iter().any(|r| r.table.as_ref() == Some(&table)) {
                return self.at.err(
                    t.span(),
                    "truncate_after",
                    "this table is also kept: keep its rows or empty it, not both",
                );
            }
            if rules.truncate.contains(&table) {
                return self.at.err(t.span(), "truncate_after", "named twice");
            }
            rules.truncate.push(table);
        }
        Ok(rules)
    }
}

/// `schema.table`, each part a plain identifier (folded to lower case, as
/// PostgreSQL does) or a double-quoted one (kept as written).
pub fn parse_table(text: &str) -> Result<pb::TableRef, String> {
    let parts = split_parts(text)?;
    match parts.as_slice() {
        [schema, table] => Ok(pb::TableRef {
            schema: schema.clone(),
            table: table.clone(),
        }),
        _ => Err(format!(
            "{text:?} is not schema.table (for example public.django_site)"
        )),
    }
}

fn split_parts(text: &str) -> Result<Vec<String>, String> {
    let bad = |why: &str| format!("{text:?} is not schema.table: {why}");
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(bad("a quote is not closed")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$') {
                    return Err(bad(&format!("{c:?} needs double quotes")));
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
            if part.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
                return Err(bad("a name starts with a letter or _"));
            }
        }
        if part.is_empty() || part.len() > 63 {
            return Err(bad("each name has 1 to 63 bytes"));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => {}
            Some(c) => return Err(bad(&format!("unexpected {c:?} after a name"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, t: &str) -> pb::TableRef {
        pb::TableRef {
            schema: s.into(),
            table: t.into(),
        }
    }

    #[test]
    fn table_names_parse_as_postgresql_reads_them() {
        assert_eq!(
            parse_table("public.django_site"),
            Ok(t("public", "django_site"))
        );
        assert_eq!(
            parse_table("Public.Auth_User"),
            Ok(t("public", "auth_user"))
        );
        assert_eq!(
            parse_table("\"My App\".\"Odd \"\"Name\"\".x\""),
            Ok(t("My App", "Odd \"Name\".x"))
        );
        for bad in [
            "django_site",
            "a.b.c",
            "public.",
            ".x",
            "public.my table",
            "\"open.x",
            "public.1x",
            "public.x;drop",
            "",
        ] {
            assert!(parse_table(bad).is_err(), "{bad}");
        }
    }
}
