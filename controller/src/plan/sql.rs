//! A pair's post-restore SQL, inline and from files, and its `params`: the
//! environment variables the SQL names as `${NAME}`, so that no secret is
//! written in a plan.

use std::collections::BTreeSet;

use stagesync_proto::tomlfile::ConfigError;

use super::pair::PairCheck;

impl PairCheck<'_> {
    /// The SQL, then its parameters, which must cover what it uses.
    pub(super) fn post_restore(&self) -> Result<(String, Vec<String>), ConfigError> {
        let sql = self.post_restore_sql()?;
        let params = self.params()?;
        self.params_cover(&sql, &params)?;
        Ok((sql, params))
    }

    /// The inline SQL, then each file's, one statement list after another.
    fn post_restore_sql(&self) -> Result<String, ConfigError> {
        let f = self.at.f;
        let mut sql = self
            .raw
            .post_restore_sql
            .as_ref()
            .map(|s| s.get_ref().clone())
            .unwrap_or_default();
        for file in &self.raw.post_restore_sql_files {
            let path = f.resolve(file.get_ref());
            let text = std::fs::read_to_string(&path).map_err(|e| {
                self.at.error(
                    file.span(),
                    "post_restore_sql_files",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if !sql.is_empty() {
                sql.push_str(";\n");
            }
            sql.push_str(&text);
        }
        Ok(sql)
    }

    fn params(&self) -> Result<Vec<String>, ConfigError> {
        let mut params = Vec::new();
        for v in &self.raw.params {
            if !valid_env(v.get_ref()) {
                return self.at.err(
                    v.span(),
                    "params",
                    format!(
                        "{:?} is not an environment variable name (A-Z, 0-9, _)",
                        v.get_ref()
                    ),
                );
            }
            params.push(v.get_ref().clone());
        }
        Ok(params)
    }

    fn params_cover(&self, sql: &str, params: &[String]) -> Result<(), ConfigError> {
        let used = referenced_params(sql);
        let Some(missing) = used.iter().find(|u| !params.contains(u)) else {
            return Ok(());
        };
        let span = self
            .raw
            .post_restore_sql
            .as_ref()
            .map(|s| s.span())
            .unwrap_or(0..0);
        self.at.err(
            span,
            "post_restore_sql",
            format!("uses ${{{missing}}}, which is not listed in params: add \"{missing}\" to params and set it in the environment"),
        )
    }
}

pub(super) fn valid_env(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !n.as_bytes()[0].is_ascii_digit()
}

/// `${NAME}` references in SQL (`$${` is an escaped literal).
pub fn referenced_params(sql: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = sql;
    while let Some(pos) = rest.find("${") {
        let escaped = pos > 0 && rest.as_bytes()[pos - 1] == b'$';
        let after = &rest[pos + 2..];
        if !escaped && let Some(end) = after.find('}') {
            out.insert(after[..end].to_string());
        }
        rest = after;
    }
    out
}
