//! `stagesync demo`: a real refresh on a throwaway local fleet.
//!
//! Two PostgreSQL clusters ("production" and "staging"), an S3-API server
//! with a media bucket for each, two agents with their own certificates and
//! a plan, all under temporary directories. The demo then runs the real
//! `stagesync plan` and `stagesync sync` (this same binary, as a child
//! process), checks and shows what changed, shows the direction guard
//! refusing a reversed plan, and removes everything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use stagesync_harness::s3::{S3Server, profile_files};
use stagesync_harness::{AgentSpec, PgCluster, TestAgent, TestPki};
use tokio::signal::unix::{SignalKind, signal};

use crate::Exit;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Leave the fleet running after the demo (until Ctrl-C) and print how
    /// to look around.
    #[arg(long)]
    keep: bool,
}

const ACCESS_KEY: &str = "AKIASTAGESYNCDEMO";
const SECRET_KEY: &str = "demo-secret-key-not-a-real-one";
const PROFILE: &str = "demo";
const STAGING_CLIENT_ID: &str = "staging-oauth-client-4b1d";
const STAGING_SECRET: &str = "staging-oauth-secret-9e2c";

/// A small Django-style web app.
const APP_SCHEMA: &str = r#"
CREATE TABLE auth_user (
    id serial PRIMARY KEY,
    username text UNIQUE NOT NULL,
    email text NOT NULL,
    date_joined timestamptz NOT NULL
);
CREATE TABLE blog_post (
    id serial PRIMARY KEY,
    author_id int NOT NULL REFERENCES auth_user (id),
    title text NOT NULL,
    body text NOT NULL,
    image text
);
CREATE INDEX blog_post_author ON blog_post (author_id);
CREATE TABLE socialaccount_socialapp (
    id serial PRIMARY KEY,
    provider text NOT NULL,
    name text NOT NULL,
    client_id text NOT NULL,
    secret text NOT NULL
);
CREATE TABLE django_session (
    session_key text PRIMARY KEY,
    session_data text NOT NULL,
    expire_date timestamptz NOT NULL
);
"#;

/// Fills the app's tables: `users` users, `posts` posts, `sessions` sessions.
fn app_data(users: u32, posts: u32, sessions: u32, client_id: &str, secret: &str) -> String {
    format!(
        r#"
INSERT INTO auth_user (username, email, date_joined)
  SELECT 'user' || g, 'user' || g || '@example.com', now() - g * interval '1 hour'
  FROM generate_series(1, {users}) g;
INSERT INTO blog_post (author_id, title, body, image)
  SELECT 1 + g % {users}, 'Post number ' || g, repeat(md5(g::text) || ' ', 40),
         CASE WHEN g <= 40 THEN 'posts/' || g || '.jpg' END
  FROM generate_series(1, {posts}) g;
INSERT INTO socialaccount_socialapp (provider, name, client_id, secret)
  VALUES ('github', 'GitHub login', '{client_id}', '{secret}');
INSERT INTO django_session
  SELECT md5('session' || g), repeat('x', 200), now() + interval '1 day'
  FROM generate_series(1, {sessions}) g;
"#
    )
}

/// Bytes of a demo "image": deterministic, different per name and version.
fn image(name: &str, version: u8) -> Vec<u8> {
    let seed = name.bytes().fold(version as u32, |h, b| {
        h.wrapping_mul(31).wrapping_add(b as u32)
    });
    let len = 4096 + (seed % 60_000) as usize;
    (0..len)
        .map(|i| (seed.wrapping_add(i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Everything the demo started; dropping it stops and removes it all.
struct Fleet {
    dir: tempfile::TempDir,
    plan: PathBuf,
    reversed_plan: PathBuf,
    aws_config: PathBuf,
    aws_credentials: PathBuf,
    prod: PgCluster,
    staging: PgCluster,
    s3: S3Server,
    agents: Vec<TestAgent>,
    _pki: TestPki,
}

/// What the demo looks at in each environment.
#[derive(Debug, PartialEq)]
struct Snapshot {
    users: i64,
    posts: i64,
    sessions: i64,
    client_id: String,
}

/// Announces the next step (unless Ctrl-C was pressed).
fn step(text: &str) -> anyhow::Result<()> {
    interrupted()?;
    println!("\n==> {text}");
    Ok(())
}

/// Set once Ctrl-C was pressed: the demo stops at the next step and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<Exit> {
    if let Err(e) = stagesync_harness::pg::bin_dir() {
        eprintln!("stagesync demo: needs the PostgreSQL server binaries on this machine.\n{e:#}");
        return Ok(Exit::Failed);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Ctrl-C must not kill the demo before it has stopped its clusters.
    let mut sigint = runtime
        .block_on(async { signal(SignalKind::interrupt()) })
        .context("cannot watch for Ctrl-C")?;
    runtime.spawn(async move {
        if sigint.recv().await.is_some() {
            INTERRUPTED.store(true, Ordering::SeqCst);
        }
    });
    let result = demo(&runtime, &args);
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("\nstagesync demo: interrupted; everything it started is stopped and removed");
        return Ok(Exit::Interrupted);
    }
    result
}

/// The demo itself; everything it started is stopped and removed when it
/// returns, whatever happened (the fleet's parts clean up when dropped).
fn demo(runtime: &tokio::runtime::Runtime, args: &DemoArgs) -> anyhow::Result<Exit> {
    step(
        "Building a throwaway fleet: a CA, two PostgreSQL clusters, an S3-API server, two agents",
    )?;
    let fleet = runtime.block_on(build_fleet())?;
    println!("    demo directory: {}", fleet.dir.path().display());
    println!(
        "    production cluster: socket {} port {}",
        fleet.prod.socket_dir.display(),
        fleet.prod.port
    );
    println!(
        "    staging cluster:    socket {} port {}",
        fleet.staging.socket_dir.display(),
        fleet.staging.port
    );
    println!("    S3-API server:      {}", fleet.s3.endpoint());
    for a in &fleet.agents {
        println!("    agent {:<13} {}", a.name, a.addr);
    }
    println!("    plan:               {}", fleet.plan.display());

    let before_prod = runtime.block_on(snapshot(&fleet.prod, "production"))?;
    let before_stage = runtime.block_on(snapshot(&fleet.staging, "stage"))?;
    let before_media = fleet.s3.objects("stage-media");
    step("Before: production and staging differ")?;
    show(
        &before_prod,
        &before_stage,
        &fleet.s3.objects("prod-media"),
        &before_media,
    );

    step(&format!(
        "stagesync plan --plan {}   (a dry run: changes nothing)",
        fleet.plan.display()
    ))?;
    let code = stagesync(&fleet, &["plan", "--plan", &path(&fleet.plan)], true)?.0;
    if code != 0 {
        bail!("`stagesync plan` exited with {code}; the demo fleet is broken");
    }

    step(&format!(
        "stagesync sync --all --plan {}",
        fleet.plan.display()
    ))?;
    let state = fleet.dir.path().join("state");
    let code = stagesync(
        &fleet,
        &[
            "sync",
            "--all",
            "--plan",
            &path(&fleet.plan),
            "--state-dir",
            &path(&state),
        ],
        true,
    )?
    .0;
    if code != 0 {
        bail!("`stagesync sync` exited with {code}");
    }

    let after_prod = runtime.block_on(snapshot(&fleet.prod, "production"))?;
    let after_stage = runtime.block_on(snapshot(&fleet.staging, "stage"))?;
    let prod_media = fleet.s3.objects("prod-media");
    let after_media = fleet.s3.objects("stage-media");
    step("After: staging has production's data, with staging's own credentials")?;
    show(&after_prod, &after_stage, &prod_media, &after_media);
    let previous = runtime.block_on(previous_copies(&fleet.staging))?;
    if !previous.is_empty() {
        println!(
            "    staging's old database is kept as {}: `stagesync rollback prod-to-staging` swaps it back",
            previous.join(", ")
        );
    }
    let expected = Snapshot {
        users: after_prod.users,
        posts: after_prod.posts,
        sessions: 0,
        client_id: STAGING_CLIENT_ID.into(),
    };
    if after_stage != expected {
        bail!("staging is not what the plan asked for: {after_stage:?}, expected {expected:?}");
    }
    if after_media.keys().collect::<Vec<_>>() != prod_media.keys().collect::<Vec<_>>()
        || after_media != prod_media
    {
        bail!("the staging media bucket does not mirror production's");
    }
    if after_prod != before_prod {
        bail!("production changed during the demo: {before_prod:?} → {after_prod:?}");
    }
    println!(
        "    production's OAuth client_id ({}) arrived and was rewritten by the pair's post_restore_sql",
        after_prod.client_id
    );
    println!(
        "    checked: users and posts equal production's, sessions left out, OAuth app rewritten, media mirrored"
    );

    step("The direction guard: a reversed plan (staging → production) is refused")?;
    let (code, output) = stagesync(
        &fleet,
        &[
            "sync",
            "--all",
            "--plan",
            &path(&fleet.reversed_plan),
            "--state-dir",
            &path(&state),
        ],
        false,
    )?;
    if let Some(line) = output
        .lines()
        .find(|l| l.starts_with("stagesync:") && l.contains("direction guard"))
    {
        println!("    {line}");
    }
    let still_prod = runtime.block_on(snapshot(&fleet.prod, "production"))?;
    if code != Exit::Refused as i32 || still_prod != before_prod {
        bail!("the reversed plan was not refused (exit {code}):\n{output}");
    }
    println!(
        "    exit code {code} (refused); production is untouched: the production agent lists nothing in policy.may_overwrite"
    );

    if args.keep {
        step("The fleet is still running. Look around from another terminal:")?;
        let env = format!(
            "export STAGESYNC_PLAN={} AWS_CONFIG_FILE={} AWS_SHARED_CREDENTIALS_FILE={} STAGING_SOCIAL_CLIENT_ID={STAGING_CLIENT_ID} STAGING_SOCIAL_SECRET={STAGING_SECRET}",
            path(&fleet.plan),
            path(&fleet.aws_config),
            path(&fleet.aws_credentials),
        );
        println!("    {env}");
        println!("    stagesync status");
        println!("    stagesync sync --all --state-dir {}", path(&state));
        println!("    stagesync history --state-dir {}", path(&state));
        println!("    stagesync rollback prod-to-staging");
        println!(
            "    psql -h {} -p {} -U postgres stage",
            path(&fleet.staging.socket_dir),
            fleet.staging.port
        );
        println!("    ls -R {}", path(&fleet.s3.root));
        println!("\n    Press Ctrl-C to stop the fleet and remove it.");
        runtime.block_on(async {
            while !INTERRUPTED.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        INTERRUPTED.store(false, Ordering::SeqCst);
    }
    step("Cleaning up")?;
    runtime.block_on(async {
        for a in fleet.agents {
            a.stop().await;
        }
    });
    drop((fleet.prod, fleet.staging, fleet.s3, fleet.dir));
    println!("    done: clusters stopped, agents stopped, temporary directories removed");
    Ok(Exit::Ok)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Runs this binary with the demo's environment; returns its exit code and,
/// unless `show` (output straight to the terminal), its output.
fn stagesync(fleet: &Fleet, args: &[&str], show: bool) -> anyhow::Result<(i32, String)> {
    let exe = std::env::current_exe().context("cannot find the stagesync binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("AWS_CONFIG_FILE", &fleet.aws_config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &fleet.aws_credentials)
        .env("STAGING_SOCIAL_CLIENT_ID", STAGING_CLIENT_ID)
        .env("STAGING_SOCIAL_SECRET", STAGING_SECRET)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("STAGESYNC_PLAN");
    if show {
        let status = cmd.status().context("cannot run stagesync")?;
        Ok((status.code().unwrap_or(1), String::new()))
    } else {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("cannot run stagesync")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code().unwrap_or(1), text))
    }
}

async fn build_fleet() -> anyhow::Result<Fleet> {
    let dir = tempfile::Builder::new()
        .prefix("stagesync-demo-")
        .tempdir()?;
    let pki = TestPki::new()?;
    pki.controller("ops")?;

    let prod = PgCluster::start().context("starting the production cluster")?;
    let staging = PgCluster::start().context("starting the staging cluster")?;
    prod.exec("postgres", "CREATE DATABASE production").await?;
    prod.exec(
        "production",
        &format!(
            "{APP_SCHEMA}{}",
            app_data(
                2500,
                20_000,
                5000,
                "prod-oauth-client-7f3a",
                "prod-oauth-secret"
            )
        ),
    )
    .await?;
    for sql in [
        "CREATE ROLE stage LOGIN",
        "CREATE DATABASE stage OWNER stage",
        "ALTER DATABASE stage SET statement_timeout = '30s'",
    ] {
        staging.exec("postgres", sql).await?;
    }
    staging
        .exec(
            "stage",
            &format!(
                "SET ROLE stage;{APP_SCHEMA}{}",
                app_data(1800, 12_000, 300, STAGING_CLIENT_ID, STAGING_SECRET)
            ),
        )
        .await?;

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
    let (aws_config, aws_credentials) = profile_files(dir.path(), PROFILE, ACCESS_KEY, SECRET_KEY)?;

    let mut p = AgentSpec::new("prod-db");
    p.may_dump = vec!["production".into()];
    let prod_agent = TestAgent::start(&pki, Some(&prod), p).await?;
    let mut s = AgentSpec::new("staging-db");
    s.may_dump = vec!["stage".into()];
    s.may_overwrite = vec!["stage".into()];
    s.peers = vec!["prod-db".into()];
    let staging_agent = TestAgent::start(&pki, Some(&staging), s).await?;

    let agents = format!(
        r#"[controller]
name = "ops"
certs_dir = {certs:?}
state_dir = {state:?}

[agents]
prod-db = {{ endpoint = "{prod}" }}
staging-db = {{ endpoint = "{staging}" }}
"#,
        certs = pki.dir(),
        state = dir.path().join("state"),
        prod = prod_agent.addr,
        staging = staging_agent.addr,
    );
    let plan = dir.path().join("stagesync.toml");
    std::fs::write(
        &plan,
        format!(
            r#"{agents}
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
"#,
            endpoint = s3.endpoint(),
        ),
    )?;
    let reversed_plan = dir.path().join("reversed.toml");
    std::fs::write(
        &reversed_plan,
        format!(
            r#"{agents}
# Wrong on purpose: staging written over production.
[pairs.staging-to-prod]
source = {{ agent = "staging-db", database = "stage" }}
dest = {{ agent = "prod-db", database = "production", owner = "postgres" }}
"#
        ),
    )?;
    Ok(Fleet {
        plan,
        reversed_plan,
        aws_config,
        aws_credentials,
        prod,
        staging,
        s3,
        agents: vec![prod_agent, staging_agent],
        _pki: pki,
        dir,
    })
}

async fn snapshot(cluster: &PgCluster, db: &str) -> anyhow::Result<Snapshot> {
    let c = cluster.client(db).await?;
    let mut counts = Vec::new();
    for table in ["auth_user", "blog_post", "django_session"] {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .and_then(|r| r.try_get(0))
            .with_context(|| format!("counting {table} in {db}"))?;
        counts.push(n);
    }
    let (users, posts, sessions) = (counts[0], counts[1], counts[2]);
    let client_id = c
        .query_one(
            "SELECT client_id FROM socialaccount_socialapp WHERE provider = 'github'",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .with_context(|| format!("reading the OAuth app in {db}"))?;
    Ok(Snapshot {
        users,
        posts,
        sessions,
        client_id,
    })
}

async fn previous_copies(cluster: &PgCluster) -> anyhow::Result<Vec<String>> {
    let c = cluster.client("postgres").await?;
    let rows = c
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'stage%' AND datname <> 'stage' ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?)
}

fn show(
    prod: &Snapshot,
    stage: &Snapshot,
    prod_media: &BTreeMap<String, Vec<u8>>,
    stage_media: &BTreeMap<String, Vec<u8>>,
) {
    let same = stage_media
        .iter()
        .filter(|(k, v)| prod_media.get(*k) == Some(v))
        .count();
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
        .set_header(vec!["", "production", "staging"]);
    table.add_row(vec![
        "users".to_string(),
        prod.users.to_string(),
        stage.users.to_string(),
    ]);
    table.add_row(vec![
        "posts".to_string(),
        prod.posts.to_string(),
        stage.posts.to_string(),
    ]);
    table.add_row(vec![
        "sessions".to_string(),
        prod.sessions.to_string(),
        stage.sessions.to_string(),
    ]);
    table.add_row(vec![
        "GitHub OAuth client_id".to_string(),
        prod.client_id.clone(),
        stage.client_id.clone(),
    ]);
    table.add_row(vec![
        "media objects".to_string(),
        prod_media.len().to_string(),
        format!("{} ({same} equal to production's)", stage_media.len()),
    ]);
    for line in table.to_string().lines() {
        println!("    {line}");
    }
}
