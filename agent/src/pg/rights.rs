//! What the agent's login may do on its server. A superuser may do
//! everything; a managed service gives no superuser, so each step's right
//! is checked before anything changes, and a missing one is named.
//!
//! Destination: `CREATEDB` (create, rename and drop databases),
//! membership in `pg_signal_backend` (end sessions on the live database)
//! and membership in the owner role (create the database as its owner,
//! restore as it, carry settings and grants over). Source: `SELECT` on
//! every table it dumps (`pg_read_all_data` on 14+, or ownership), and
//! `BYPASSRLS` where a table has row-level security.

use tokio_postgres::Client;

/// The login's attributes and memberships.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rights {
    pub role: String,
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
    pub bypassrls: bool,
    pub signal_backend: bool,
    pub read_all_data: bool,
}

const RIGHTS: &str = "SELECT current_user::text, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolbypassrls, \
       pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'USAGE'), \
       COALESCE((SELECT pg_catalog.pg_has_role(current_user, oid, 'USAGE') \
                 FROM pg_catalog.pg_roles WHERE rolname = 'pg_read_all_data'), false) \
     FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";

/// The rights of the session's login.
pub async fn of_login(c: &Client) -> Result<Rights, tokio_postgres::Error> {
    let r = c.query_one(RIGHTS, &[]).await?;
    Ok(Rights {
        role: r.try_get(0)?,
        superuser: r.try_get(1)?,
        createdb: r.try_get(2)?,
        createrole: r.try_get(3)?,
        bypassrls: r.try_get(4)?,
        signal_backend: r.try_get(5)?,
        read_all_data: r.try_get(6)?,
    })
}

/// The other roles with settings of their own in `database`
/// (`ALTER ROLE … IN DATABASE … SET`), which a swap carries over.
pub async fn role_settings_in(
    c: &Client,
    database: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let sql = "SELECT r.rolname::text FROM pg_catalog.pg_db_role_setting s \
               JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase \
               JOIN pg_catalog.pg_roles r ON r.oid = s.setrole \
               WHERE d.datname = $1 AND r.rolname <> current_user ORDER BY 1";
    let rows = c.query(sql, &[&database]).await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// The tables, views and sequences of the session's database the login
/// cannot dump, each with what it lacks: `SELECT` (grant it, or
/// `pg_read_all_data`), or a way past row-level security (BYPASSRLS, or
/// owning the table), without which pg_dump refuses the table. At most
/// `limit` names.
pub async fn unreadable(c: &Client, limit: i64) -> Result<Vec<String>, tokio_postgres::Error> {
    let sql = "SELECT format('%I.%I', n.nspname, c.relname) || CASE \
                 WHEN NOT pg_catalog.has_table_privilege(c.oid, 'SELECT') THEN ' (no SELECT)' \
                 ELSE ' (row-level security: needs BYPASSRLS or ownership)' END \
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               WHERE c.relkind IN ('r', 'p', 'm', 'S', 'v', 'f') \
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
                 AND (NOT pg_catalog.has_table_privilege(c.oid, 'SELECT') \
                      OR (c.relrowsecurity AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE') \
                          AND NOT (SELECT rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user))) \
               ORDER BY 1 LIMIT $1";
    let rows = c.query(sql, &[&limit]).await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// Whether the login is a member of `role` with its privileges.
pub async fn member_of(c: &Client, role: &str) -> Result<bool, tokio_postgres::Error> {
    let sql = "SELECT pg_catalog.pg_has_role(current_user, r.oid, 'USAGE') \
               FROM pg_catalog.pg_roles r WHERE r.rolname = $1";
    Ok(c.query_opt(sql, &[&role])
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(false))
}

impl Rights {
    /// The names `info` shows.
    pub fn names(&self) -> Vec<String> {
        [
            (self.superuser, "superuser"),
            (self.createdb, "CREATEDB"),
            (self.createrole, "CREATEROLE"),
            (self.bypassrls, "BYPASSRLS"),
            (self.signal_backend, "pg_signal_backend"),
            (self.read_all_data, "pg_read_all_data"),
        ]
        .into_iter()
        .filter(|(has, _)| *has)
        .map(|(_, n)| n.to_string())
        .collect()
    }

    /// What a destination login lacks to restore as `owner` (it is
    /// `member_of_owner` or not) over a live database whose settings for
    /// other roles are `role_settings`, each with what to grant.
    pub fn missing_for_restore(
        &self,
        owner: &str,
        member_of_owner: bool,
        role_settings: &[String],
    ) -> Vec<String> {
        if self.superuser {
            return Vec::new();
        }
        let role = crate::sql::ident(&self.role);
        let mut missing = Vec::new();
        if !self.createdb {
            missing.push(format!(
                "CREATEDB (to create, rename and drop databases): ALTER ROLE {role} CREATEDB"
            ));
        }
        if !self.signal_backend {
            missing.push(format!(
                "membership in pg_signal_backend (to end sessions on the live database): GRANT pg_signal_backend TO {role}"
            ));
        }
        if !self.createrole && !role_settings.is_empty() {
            missing.push(format!(
                "CREATEROLE (to carry over what roles {} have set in the live database, ALTER ROLE … IN DATABASE): ALTER ROLE {role} CREATEROLE, or remove those settings",
                role_settings.join(", ")
            ));
        }
        if !member_of_owner {
            missing.push(format!(
                "membership in the owner role {owner:?} (to restore as it): GRANT {} TO {role}",
                crate::sql::ident(owner)
            ));
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_names_each_missing_right() {
        let none = Rights {
            role: "stage agent".into(),
            ..Default::default()
        };
        let missing = none.missing_for_restore("app", false, &["reader".into()]);
        assert_eq!(missing.len(), 4, "{missing:?}");
        assert!(missing[2].starts_with("CREATEROLE") && missing[2].contains("reader"));
        assert!(
            missing[0].starts_with("CREATEDB")
                && missing[0].contains("ALTER ROLE \"stage agent\" CREATEDB")
        );
        assert!(missing[1].contains("GRANT pg_signal_backend TO \"stage agent\""));
        assert!(missing[3].contains("GRANT \"app\" TO \"stage agent\""));
        let enough = Rights {
            createdb: true,
            signal_backend: true,
            ..none.clone()
        };
        assert!(enough.missing_for_restore("app", true, &[]).is_empty());
        assert_eq!(
            enough.missing_for_restore("app", true, &["r".into()]).len(),
            1
        );
        let superuser = Rights {
            superuser: true,
            ..none
        };
        assert!(
            superuser
                .missing_for_restore("app", false, &["r".into()])
                .is_empty()
        );
        assert_eq!(superuser.names(), ["superuser"]);
    }
}
