//! What a live database carries that a restored one must inherit (owner,
//! connection settings, per-database and per-role settings, grants), read
//! before a swap and given to the database that takes the live name.

use tokio_postgres::Client;

use super::{DbError, err};
use crate::sql::{ident, literal};

/// What a live database carries that a restored one must inherit.
pub(super) struct Carried {
    owner: String,
    pub allow_connections: bool,
    connection_limit: i32,
    /// (role or "" for all roles, "name=value")
    settings: Vec<(String, String)>,
    /// None: default privileges. Some: (grantee or "" for PUBLIC, privilege, grantable).
    grants: Option<Vec<(String, String, bool)>>,
}

pub(super) async fn carried(c: &Client, db: &str) -> Result<Carried, DbError> {
    let e = |x| err(format!("reading the settings of {db:?}"), x);
    let row = c
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text, datallowconn, datconnlimit, datacl IS NULL \
             FROM pg_database WHERE datname = $1",
            &[&db],
        )
        .await
        .map_err(e)?;
    let default_acl: bool = row.try_get(3).map_err(e)?;
    let settings = c
        .query(
            "SELECT COALESCE(r.rolname::text, ''), unnest(s.setconfig) \
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = $1",
            &[&db],
        )
        .await
        .map_err(e)?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let grants = if default_acl {
        None
    } else {
        Some(
            c.query(
                "SELECT COALESCE(r.rolname::text, ''), a.privilege_type::text, a.is_grantable \
                 FROM pg_database d, aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee \
                 WHERE d.datname = $1",
                &[&db],
            )
            .await
            .map_err(e)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, _>>()
            .map_err(e)?,
        )
    };
    Ok(Carried {
        owner: row.try_get(0).map_err(e)?,
        allow_connections: row.try_get(1).map_err(e)?,
        connection_limit: row.try_get(2).map_err(e)?,
        settings,
        grants,
    })
}

/// Settings whose value is a list: stored as `a, "b c"`, set back as
/// separate literals (`'a', 'b c'`), the way pg_dump does.
const LIST_SETTINGS: &[&str] = &[
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
];

fn setting_value(name: &str, value: &str) -> String {
    if !LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        return literal(value);
    }
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut cur)),
            c if c.is_whitespace() && !quoted => {}
            c => cur.push(c),
        }
    }
    items.push(cur);
    items
        .iter()
        .map(|i| literal(i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// SQL that gives `db` what `carried` describes.
pub(super) fn apply(db: &str, k: &Carried) -> String {
    let d = ident(db);
    let mut sql = format!(
        "ALTER DATABASE {d} OWNER TO {};\nALTER DATABASE {d} CONNECTION LIMIT {};\n",
        ident(&k.owner),
        k.connection_limit
    );
    for (role, setting) in &k.settings {
        let Some((name, value)) = setting.split_once('=') else {
            continue;
        };
        let target = if role.is_empty() {
            format!("ALTER DATABASE {d}")
        } else {
            format!("ALTER ROLE {} IN DATABASE {d}", ident(role))
        };
        sql.push_str(&format!(
            "{target} SET {} TO {};\n",
            ident(name),
            setting_value(name, value)
        ));
    }
    if let Some(grants) = &k.grants {
        sql.push_str(&format!("REVOKE ALL ON DATABASE {d} FROM PUBLIC;\n"));
        for (grantee, privilege, grantable) in grants {
            let who = if grantee.is_empty() {
                "PUBLIC".to_string()
            } else {
                ident(grantee)
            };
            let privilege = match privilege.as_str() {
                "CREATE" | "CONNECT" | "TEMPORARY" => privilege.as_str(),
                _ => continue,
            };
            sql.push_str(&format!(
                "GRANT {privilege} ON DATABASE {d} TO {who}{};\n",
                if *grantable { " WITH GRANT OPTION" } else { "" }
            ));
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::setting_value;

    #[test]
    fn list_settings_split() {
        assert_eq!(
            setting_value("search_path", "app, public"),
            "'app', 'public'"
        );
        assert_eq!(
            setting_value("search_path", "\"$user\", \"a\"\"b\""),
            "'$user', 'a\"b'"
        );
        assert_eq!(setting_value("work_mem", "7MB"), "'7MB'");
    }
}
