//! The demo's throwaway fleet: a CA, two PostgreSQL clusters with the app,
//! an S3-API server with a media bucket for each, two agents and two plans
//! (the real one and a reversed one the direction guard must refuse).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::app::{APP_SCHEMA, STAGING_CLIENT_ID, STAGING_SECRET, app_data, image};
use crate::s3::{S3Server, profile_files};
use crate::{AgentSpec, PgCluster, TestAgent, TestPki};

const ACCESS_KEY: &str = "AKIASTAGESYNCDEMO";
const SECRET_KEY: &str = "demo-secret-key-not-a-real-one";
const PROFILE: &str = "demo";

/// Where the demo's masked emails point.
pub const MASKED_DOMAIN: &str = "staging.example";

/// The production agent's masking rules: every copied column classified
/// (strict mode), emails and usernames masked.
const MASKING_RULES: &str = r#"
[[databases]]
names = ["production"]

[databases.tables]
"public.blog_post" = "keep"
"public.socialaccount_socialapp" = "keep"

[databases.tables."public.auth_user"]
id = "keep"
username = { hash = 12 }
email = { email = "staging.example" }
date_joined = "keep"
"#;

/// Everything the demo started; dropping it stops and removes it all.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub plan: PathBuf,
    pub reversed_plan: PathBuf,
    pub aws_config: PathBuf,
    pub aws_credentials: PathBuf,
    pub prod: PgCluster,
    pub staging: PgCluster,
    pub s3: S3Server,
    pub agents: Vec<TestAgent>,
    /// The production agent's masking rules.
    pub masking_rules: PathBuf,
    _pki: TestPki,
}

impl Fleet {
    pub async fn build(tcp: bool) -> anyhow::Result<Fleet> {
        let dir = tempfile::Builder::new()
            .prefix("stagesync-demo-")
            .tempdir()?;
        let pki = TestPki::new()?;
        pki.controller("ops")?;
        let (prod, staging) = start_clusters(tcp.then_some(&pki)).await?;
        let s3 = start_s3().await?;
        let (aws_config, aws_credentials) =
            profile_files(dir.path(), PROFILE, ACCESS_KEY, SECRET_KEY)?;
        let masking_rules = write_masking(dir.path())?;
        let (prod_agent, staging_agent) = start_agents(&pki, &prod, &staging, dir.path()).await?;
        let header = controller_and_agents(
            &pki,
            &dir.path().join("state"),
            prod_agent.addr,
            staging_agent.addr,
        );
        let (plan, reversed_plan) = write_plans(dir.path(), &header, &s3.endpoint())?;
        Ok(Fleet {
            plan,
            reversed_plan,
            aws_config,
            aws_credentials,
            prod,
            staging,
            s3,
            agents: vec![prod_agent, staging_agent],
            masking_rules,
            _pki: pki,
            dir,
        })
    }

    /// Where `stagesync sync` keeps its history for the demo.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Stops the agents first, so none is left talking to a cluster that
    /// is going away, then the clusters, the S3 server and the directories.
    pub async fn stop(self) {
        for a in self.agents {
            a.stop().await;
        }
        drop((self.prod, self.staging, self.s3, self.dir, self._pki));
    }
}

/// "production" with the app's data, and "staging" a month behind it;
/// with `managed`, both served like a managed service, with the agents'
/// login roles.
async fn start_clusters(managed: Option<&TestPki>) -> anyhow::Result<(PgCluster, PgCluster)> {
    let start = || match managed {
        Some(pki) => PgCluster::start_managed(pki),
        None => PgCluster::start(),
    };
    let prod = start().context("starting the production cluster")?;
    let staging = start().context("starting the staging cluster")?;
    prod.exec("postgres", "CREATE DATABASE production").await?;
    let prod_data = app_data(
        2500,
        20_000,
        5000,
        "prod-oauth-client-7f3a",
        "prod-oauth-secret",
    );
    prod.exec("production", &format!("{APP_SCHEMA}{prod_data}"))
        .await?;
    for sql in [
        "CREATE ROLE stage LOGIN",
        "CREATE DATABASE stage OWNER stage",
        "ALTER DATABASE stage SET statement_timeout = '30s'",
    ] {
        staging.exec("postgres", sql).await?;
    }
    let stage_data = app_data(1800, 12_000, 300, STAGING_CLIENT_ID, STAGING_SECRET);
    staging
        .exec("stage", &format!("SET ROLE stage;{APP_SCHEMA}{stage_data}"))
        .await?;
    if managed.is_some() {
        crate::fleet::managed_roles(&prod, Some(&staging)).await?;
    }
    Ok((prod, staging))
}

/// The production agent's masking rules and a fresh random key (mode
/// 0600) in `dir`; the rules' path.
fn write_masking(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let rules = dir.join("masking.toml");
    std::fs::write(&rules, MASKING_RULES)?;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let key_file = dir.join("masking.key");
    std::fs::write(&key_file, key)?;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
    Ok(rules)
}

/// The S3-API server with production's media bucket and staging's older one.
async fn start_s3() -> anyhow::Result<S3Server> {
    let s3 = S3Server::start(ACCESS_KEY, SECRET_KEY).await?;
    for n in 1..=40 {
        let key = format!("media/posts/{n}.jpg");
        s3.put("prod-media", &key, &image(&key, 2))?;
    }
    for n in 1..=20 {
        let key = format!("media/avatars/user{n}.png");
        s3.put("prod-media", &key, &image(&key, 1))?;
    }
    // Staging's bucket is a month old: fewer posts, five re-uploaded since,
    // and a test upload that production never had.
    for n in 1..=30 {
        let key = format!("media/posts/{n}.jpg");
        s3.put(
            "stage-media",
            &key,
            &image(&key, if n > 25 { 1 } else { 2 }),
        )?;
    }
    s3.put("stage-media", "media/tmp/upload-test.jpg", b"test upload")?;
    Ok(s3)
}

/// The production agent may dump but overwrite nothing; the staging agent
/// may overwrite its database and take streams from the production one.
async fn start_agents(
    pki: &TestPki,
    prod: &PgCluster,
    staging: &PgCluster,
    dir: &Path,
) -> anyhow::Result<(TestAgent, TestAgent)> {
    use crate::fleet::{
        MANAGED_DEST_PASSWORD, MANAGED_DEST_ROLE, MANAGED_SOURCE_PASSWORD, MANAGED_SOURCE_ROLE,
        managed_keys,
    };
    let mut p = AgentSpec::new("prod-db");
    p.may_dump = vec!["production".into()];
    p.extra_toml = format!(
        "\n[masking]\nrules = {:?}\nkey_file = {:?}\n",
        dir.join("masking.toml"),
        dir.join("masking.key")
    );
    if prod.tcp.is_some() {
        p.postgres = Some(managed_keys(
            prod,
            dir,
            "prod-db",
            MANAGED_SOURCE_ROLE,
            MANAGED_SOURCE_PASSWORD,
        ));
    }
    let prod_agent = TestAgent::start(pki, Some(prod), p).await?;
    let mut s = AgentSpec::new("staging-db");
    s.may_dump = vec!["stage".into()];
    s.may_overwrite = vec!["stage".into()];
    s.peers = vec!["prod-db".into()];
    if staging.tcp.is_some() {
        s.postgres = Some(managed_keys(
            staging,
            dir,
            "staging-db",
            MANAGED_DEST_ROLE,
            MANAGED_DEST_PASSWORD,
        ));
    }
    let staging_agent = TestAgent::start(pki, Some(staging), s).await?;
    Ok((prod_agent, staging_agent))
}

/// The part both plans share: the controller and where the agents listen.
fn controller_and_agents(
    pki: &TestPki,
    state: &Path,
    prod: SocketAddr,
    staging: SocketAddr,
) -> String {
    format!(
        r#"[controller]
name = "ops"
certs_dir = {certs:?}
state_dir = {state:?}

[agents]
prod-db = {{ endpoint = "{prod}" }}
staging-db = {{ endpoint = "{staging}" }}
"#,
        certs = pki.dir(),
    )
}

/// The demo's plan (database and media bucket) and a reversed one that is
/// wrong on purpose; returns their paths.
fn write_plans(dir: &Path, header: &str, endpoint: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let plan = dir.join("stagesync.toml");
    std::fs::write(
        &plan,
        format!(
            r#"{header}
[pairs.prod-to-staging]
source = {{ agent = "prod-db", database = "production" }}
dest = {{ agent = "staging-db", database = "stage", owner = "stage" }}
# Sessions stay on production.
exclude_table_data = ["public.django_session"]
# Staging logs in with its own OAuth app: the values come from the
# environment, never from this file.
post_restore_sql = """
UPDATE socialaccount_socialapp
   SET client_id = ${{STAGING_SOCIAL_CLIENT_ID}}, secret = ${{STAGING_SOCIAL_SECRET}}
 WHERE provider = 'github'
"""
params = ["STAGING_SOCIAL_CLIENT_ID", "STAGING_SOCIAL_SECRET"]

[[pairs.prod-to-staging.copies]]
name = "media"
source = "s3://prod-media/media/"
dest = "s3://stage-media/media/"
profile = "{PROFILE}"
endpoint = "{endpoint}"
"#
        ),
    )?;
    let reversed_plan = dir.join("reversed.toml");
    std::fs::write(
        &reversed_plan,
        format!(
            r#"{header}
# Wrong on purpose: staging written over production.
[pairs.staging-to-prod]
source = {{ agent = "staging-db", database = "stage" }}
dest = {{ agent = "prod-db", database = "production", owner = "postgres" }}
"#
        ),
    )?;
    Ok((plan, reversed_plan))
}
