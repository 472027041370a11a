//! The job's own login. Everything a restore runs from the dump
//! (`pg_restore`, its post-data pass and the materialized views it
//! refreshes, the post-restore SQL) runs in sessions *authenticated* as a
//! role made for that one job: a member of the owner and of
//! [`JOB_GROUP`], with no attribute of its own. A superuser session that
//! only switched role could climb back (`RESET ROLE`, `SET SESSION
//! AUTHORIZATION`, a deferred trigger firing at commit); this one has
//! nowhere to climb to.
//!
//! The password is random and made per job; the server receives only its
//! SCRAM verifier, and `pg_restore` finds it in its environment, never on a
//! command line. The server must let the group log in with a password over
//! its socket: [`probe`] checks that, and says which line to add.

use std::fmt;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::{DbError, admin, err};
use crate::config::PostgresConfig;
use crate::pg::{self, secret::SecretError};
use crate::sql::{JOB_GROUP, JOB_ROLE_PREFIX, ident, job_role_of, literal};

/// Why a job login could not be checked or was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoginProblem {
    /// The server refused the login: the message says what to add.
    #[error("{0}")]
    Refused(String),
    /// Anything else: the server unreachable, a statement failed.
    #[error("{0}")]
    Failed(#[from] DbError),
}

impl From<LoginProblem> for DbError {
    fn from(p: LoginProblem) -> Self {
        match p {
            LoginProblem::Refused(m) => DbError(m),
            LoginProblem::Failed(e) => e,
        }
    }
}

/// Who a job's restore sessions log in as.
#[derive(Clone)]
pub struct JobLogin {
    pub role: String,
    /// Some: a role made for this job, with its password. None: the
    /// agent's own login, which is not a superuser (a managed service),
    /// so code from a dump runs with no more than its rights.
    made: Option<String>,
}

impl fmt::Debug for JobLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobLogin")
            .field("role", &self.role)
            .field("made", &self.made.is_some())
            .finish_non_exhaustive()
    }
}

impl JobLogin {
    /// The login of job `job_id`, with a fresh password.
    pub fn for_job(job_id: &str) -> Self {
        Self::named(format!("{JOB_ROLE_PREFIX}{job_id}"))
    }

    /// The agent's own login, for an agent that is no superuser.
    pub fn agent(pg: &PostgresConfig) -> Self {
        JobLogin {
            role: pg.user.clone(),
            made: None,
        }
    }

    fn named(role: String) -> Self {
        JobLogin {
            role,
            made: Some(hex::encode(rand::random::<[u8; 32]>())),
        }
    }

    /// Whether the role was made for the job (and is dropped after it).
    pub fn is_made(&self) -> bool {
        self.made.is_some()
    }

    /// The environment of the tools that log in with it.
    pub async fn tool_env(
        &self,
        pg: &PostgresConfig,
    ) -> Result<Vec<(&'static str, String)>, SecretError> {
        let password = match &self.made {
            Some(p) => Some(p.clone()),
            None => pg.secret.password(&pg.user).await?,
        };
        Ok(pg::tool_env(pg, password))
    }

    /// How a copy lane's own session logs in as this role.
    pub fn wire_login(&self) -> pg::wire::Login<'_> {
        match &self.made {
            Some(password) => pg::wire::Login::As {
                role: &self.role,
                password,
            },
            None => pg::wire::Login::Agent,
        }
    }

    /// A session in `database` logged in as this role.
    pub async fn connect(
        &self,
        pg: &PostgresConfig,
        database: &str,
    ) -> Result<Client, pg::ConnectError> {
        match &self.made {
            Some(p) => pg::connect_as(pg, database, &self.role, Some(p)).await,
            None => pg::connect(pg, database).await,
        }
    }
}

/// Makes the job's login role, a member of `owner` and nothing more, then
/// checks that it can log in to `database`.
pub async fn create(
    pg: &PostgresConfig,
    login: &JobLogin,
    owner: &str,
    database: &str,
) -> Result<(), DbError> {
    if !login.is_made() {
        return Ok(());
    }
    let c = admin(pg).await?;
    ensure_group(&c).await?;
    c.batch_execute(&create_role_sql(login, &[JOB_GROUP, owner]))
        .await
        .map_err(|e| err(format!("creating the job's login role {:?}", login.role), e))?;
    Ok(check_login(pg, &c, login, database).await?)
}

fn create_role_sql(login: &JobLogin, member_of: &[&str]) -> String {
    let password = login.made.as_deref().unwrap_or_default();
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let groups: Vec<String> = member_of.iter().map(|g| ident(g)).collect();
    format!(
        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
         INHERIT PASSWORD {} IN ROLE {}",
        ident(&login.role),
        literal(&verifier),
        groups.join(", ")
    )
}

/// The group role `pg_hba.conf` names; it has no rights of its own.
async fn ensure_group(c: &Client) -> Result<(), DbError> {
    let sql = format!(
        "DO $$ BEGIN CREATE ROLE {} NOLOGIN; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        ident(JOB_GROUP)
    );
    c.batch_execute(&sql)
        .await
        .map_err(|e| err(format!("creating the group role {JOB_GROUP:?}"), e))
}

/// Logs in as `login`; a refusal says which line `pg_hba.conf` lacks.
async fn check_login(
    pg: &PostgresConfig,
    admin: &Client,
    login: &JobLogin,
    database: &str,
) -> Result<(), LoginProblem> {
    let e = match login.connect(pg, database).await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let refused = e.code().is_some_and(|c| {
        *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION || *c == SqlState::INVALID_PASSWORD
    });
    if !refused {
        return Err(DbError(e.to_string()).into());
    }
    let hba_file = match admin.query_one("SHOW hba_file", &[]).await {
        Ok(row) => row.try_get::<_, String>(0).unwrap_or_default(),
        Err(_) => String::new(),
    };
    Err(LoginProblem::Refused(refused_advice(
        pg.endpoint.is_tcp(),
        &login.role,
        &e.to_string(),
        &hba_file,
    )))
}

/// The line to add, for an operator whose server refused a job login.
pub fn refused_advice(tcp: bool, role: &str, why: &str, hba_file: &str) -> String {
    let file = match hba_file.is_empty() {
        true => "pg_hba.conf".to_string(),
        false => hba_file.to_string(),
    };
    // The agent reaches its server over the socket, or over TCP with TLS
    // from its own address.
    let (kind, line) = match tcp {
        false => (
            "local",
            format!("local   all   +{JOB_GROUP}   scram-sha-256"),
        ),
        true => (
            "host",
            format!("hostssl   all   +{JOB_GROUP}   <the agent's address>/32   scram-sha-256"),
        ),
    };
    format!(
        "PostgreSQL refused the login of {role:?}, the role a restore runs as ({why}). \
         stagesync runs what comes from a dump only in sessions logged in as a role of group \
         {JOB_GROUP:?}, never in a superuser session. Add this line to {file} above the other \
         `{kind}` lines, then reload PostgreSQL (SELECT pg_reload_conf()):\n    {line}"
    )
}

/// Hands what the job's login made in `database` over to `owner`, then
/// drops the login: run when the restore is done, before the swap.
pub async fn hand_over(
    pg: &PostgresConfig,
    login: &JobLogin,
    owner: &str,
    database: &str,
) -> Result<(), DbError> {
    if !login.is_made() {
        return Ok(());
    }
    let c = pg::connect(pg, database)
        .await
        .map_err(|e| DbError(format!("connecting to {database:?}: {e}")))?;
    let role = ident(&login.role);
    c.batch_execute(&format!(
        "REASSIGN OWNED BY {role} TO {}; DROP OWNED BY {role}",
        ident(owner)
    ))
    .await
    .map_err(|e| {
        err(
            format!("handing {:?}'s objects to {owner:?}", login.role),
            e,
        )
    })?;
    drop_role(&c, &login.role).await
}

/// Drops the login of the job whose new database was `new_db`, if any.
pub async fn drop_job_role(c: &Client, new_db: &str) -> Result<(), DbError> {
    match job_role_of(new_db) {
        // An agent that is no superuser never makes one (and may not drop
        // roles even with IF EXISTS).
        Some(role) if super::role_exists(c, &role).await? => drop_role(c, &role).await,
        _ => Ok(()),
    }
}

async fn drop_role(c: &Client, role: &str) -> Result<(), DbError> {
    c.batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(role)))
        .await
        .map_err(|e| err(format!("dropping the job's login role {role:?}"), e))
}

/// Whether job logins work on this server: makes a login of the group only,
/// logs in with it, drops it. The error says what to change.
pub async fn probe(pg: &PostgresConfig) -> Result<JobLogins, LoginProblem> {
    let c = admin(pg).await?;
    let rights = pg::rights::of_login(&c)
        .await
        .map_err(|e| err("reading the agent's rights", e))?;
    if !rights.superuser {
        // Restores run as the agent's own login: nothing to make.
        return Ok(JobLogins::AgentLogin);
    }
    ensure_group(&c).await?;
    let login = JobLogin::named(format!("{JOB_ROLE_PREFIX}probe"));
    drop_role(&c, &login.role).await?;
    c.batch_execute(&create_role_sql(&login, &[JOB_GROUP]))
        .await
        .map_err(|e| err(format!("creating the probe role {:?}", login.role), e))?;
    let checked = check_login(pg, &c, &login, "postgres").await;
    let dropped = drop_role(&c, &login.role).await;
    checked?;
    dropped?;
    Ok(JobLogins::PerJobRole)
}

/// Who restores log in as on this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobLogins {
    /// A role made for each job (the agent's login is a superuser).
    PerJobRole,
    /// The agent's own login, which is no superuser.
    AgentLogin,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_made_with_a_verifier_never_the_password() {
        let login = JobLogin::for_job("00aa11bb");
        assert_eq!(login.role, "stagesync_job_00aa11bb");
        let password = login.made.clone().expect("made");
        assert_eq!(password.len(), 64);
        let sql = create_role_sql(&login, &[JOB_GROUP, "app \"owner\""]);
        assert!(!sql.contains(&password), "{sql}");
        assert!(sql.contains("PASSWORD 'SCRAM-SHA-256$4096:"), "{sql}");
        assert!(
            sql.ends_with("IN ROLE \"stagesync_jobs\", \"app \"\"owner\"\"\""),
            "{sql}"
        );
        assert!(!format!("{login:?}").contains(&password));
        assert_ne!(JobLogin::for_job("00aa11bb").made, login.made);
        assert_eq!(job_role_of("app"), None);
    }

    #[test]
    fn a_refused_login_names_the_line_to_add() {
        let tcp = refused_advice(true, "stagesync_job_1", "refused", "");
        assert!(tcp.contains("hostssl   all   +stagesync_jobs"), "{tcp}");
        let text = refused_advice(
            false,
            "stagesync_job_1",
            "password authentication failed",
            "",
        );
        assert!(text.contains("pg_hba.conf"), "{text}");
        assert!(
            text.ends_with("local   all   +stagesync_jobs   scram-sha-256"),
            "{text}"
        );
    }
}
