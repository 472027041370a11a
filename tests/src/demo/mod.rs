//! The demo behind `stagesync-demo` (and `stagesync demo`, which launches
//! it): a real refresh on a throwaway local fleet.
//!
//! Two PostgreSQL clusters ("production" and "staging"), an S3-API server
//! with a media bucket for each, two agents with their own certificates and
//! a plan, all under temporary directories. The demo then runs the real
//! `stagesync plan` and `stagesync sync` as child processes (`cli.rs`),
//! checks and shows what changed, shows the direction guard refusing a
//! reversed plan, and removes everything.
//!
//! It lives with the harness rather than in the CLI so that the released
//! `stagesync` binary links no test S3 server and no fault proxy.

mod app;
mod cli;
mod fleet;
mod look;

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use stagesync_cli::Exit;
use tokio::runtime::Runtime;
use tokio::signal::unix::{SignalKind, signal};

pub use cli::{AS_CLI_ENV, asked_to_be_cli};

use app::{STAGING_CLIENT_ID, STAGING_SECRET};
use cli::{path, stagesync};
use fleet::Fleet;
use look::{Snapshot, previous_copies, show, snapshot};

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

/// Runs the demo; with `keep`, the fleet stays up until Ctrl-C.
pub fn run(keep: bool, tcp: bool) -> anyhow::Result<Exit> {
    if let Err(e) = crate::pg::bin_dir() {
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
    let result = demo(&runtime, keep, tcp);
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("\nstagesync demo: interrupted; everything it started is stopped and removed");
        return Ok(Exit::Interrupted);
    }
    result
}

/// The demo itself; everything it started is stopped and removed when it
/// returns, whatever happened (the fleet's parts clean up when dropped).
fn demo(runtime: &Runtime, keep: bool, tcp: bool) -> anyhow::Result<Exit> {
    step(match tcp {
        false => {
            "Building a throwaway fleet: a CA, two PostgreSQL clusters, an S3-API server, two agents"
        }
        true => {
            "Building a throwaway fleet: a CA, two PostgreSQL clusters served like a managed service (TLS over TCP, password logins, no superuser for the agents), an S3-API server, two agents"
        }
    })?;
    let fleet = runtime.block_on(Fleet::build(tcp))?;
    describe(&fleet);
    let before_prod = show_before(runtime, &fleet)?;
    dry_run(&fleet)?;
    sync(&fleet)?;
    check_after(runtime, &fleet, &before_prod)?;
    direction_guard(runtime, &fleet, &before_prod)?;
    if keep {
        keep_until_ctrl_c(runtime, &fleet)?;
    }
    step("Cleaning up")?;
    runtime.block_on(fleet.stop());
    println!("    done: clusters stopped, agents stopped, temporary directories removed");
    Ok(Exit::Ok)
}

/// Where each part of the fleet is, for a look from another terminal.
fn describe(fleet: &Fleet) {
    println!("    demo directory: {}", fleet.dir.path().display());
    for (label, cluster) in [("production", &fleet.prod), ("staging", &fleet.staging)] {
        match &cluster.tcp {
            Some(t) => println!(
                "    {label:<10} cluster: localhost:{} (TLS, CA {}; the agent logs in as {})",
                t.port,
                t.ca.display(),
                match label {
                    "production" => crate::fleet::MANAGED_SOURCE_ROLE,
                    _ => crate::fleet::MANAGED_DEST_ROLE,
                }
            ),
            None => println!(
                "    {label:<10} cluster: socket {} port {}",
                cluster.socket_dir.display(),
                cluster.port
            ),
        }
    }
    println!("    S3-API server:      {}", fleet.s3.endpoint());
    for a in &fleet.agents {
        println!("    agent {:<13} {}", a.name, a.addr);
    }
    println!("    plan:               {}", fleet.plan.display());
}

/// Shows both environments before the sync; returns production's state,
/// which nothing the demo does may change.
fn show_before(runtime: &Runtime, fleet: &Fleet) -> anyhow::Result<Snapshot> {
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
    Ok(before_prod)
}

fn dry_run(fleet: &Fleet) -> anyhow::Result<()> {
    step(&format!(
        "stagesync plan --plan {}   (a dry run: changes nothing)",
        fleet.plan.display()
    ))?;
    let code = stagesync(fleet, &["plan", "--plan", &path(&fleet.plan)], true)?.0;
    if code != 0 {
        bail!("`stagesync plan` exited with {code}; the demo fleet is broken");
    }
    Ok(())
}

fn sync(fleet: &Fleet) -> anyhow::Result<()> {
    step(&format!(
        "stagesync sync --all --plan {}",
        fleet.plan.display()
    ))?;
    let state = fleet.state_dir();
    let args = [
        "sync",
        "--all",
        "--plan",
        &path(&fleet.plan),
        "--state-dir",
        &path(&state),
    ];
    let code = stagesync(fleet, &args, true)?.0;
    if code != 0 {
        bail!("`stagesync sync` exited with {code}");
    }
    Ok(())
}

/// Shows both environments after the sync and fails unless staging is
/// exactly what the plan asked for and production did not change.
fn check_after(runtime: &Runtime, fleet: &Fleet, before_prod: &Snapshot) -> anyhow::Result<()> {
    let after_prod = runtime.block_on(snapshot(&fleet.prod, "production"))?;
    let after_stage = runtime.block_on(snapshot(&fleet.staging, "stage"))?;
    let prod_media = fleet.s3.objects("prod-media");
    let after_media = fleet.s3.objects("stage-media");
    step("After: staging has production's data, masked, with staging's own credentials")?;
    show(&after_prod, &after_stage, &prod_media, &after_media);
    let previous = runtime.block_on(previous_copies(&fleet.staging))?;
    if !previous.is_empty() {
        println!(
            "    staging's old database is kept as {}: `stagesync rollback prod-to-staging` swaps it back",
            previous.join(", ")
        );
    }
    // Emails and usernames were masked on the production agent: none of
    // production's reached staging, and each masked one is new.
    let (email, username) = &after_stage.first_user;
    if email == &after_prod.first_user.0
        || username == &after_prod.first_user.1
        || !email.ends_with(&format!("@{}", fleet::MASKED_DOMAIN))
    {
        bail!("staging's first user is not masked: {email} {username}");
    }
    let expected = Snapshot {
        users: after_prod.users,
        posts: after_prod.posts,
        sessions: 0,
        client_id: STAGING_CLIENT_ID.into(),
        first_user: after_stage.first_user.clone(),
        production_emails: 0,
    };
    if after_stage != expected {
        bail!("staging is not what the plan asked for: {after_stage:?}, expected {expected:?}");
    }
    if after_media.keys().collect::<Vec<_>>() != prod_media.keys().collect::<Vec<_>>()
        || after_media != prod_media
    {
        bail!("the staging media bucket does not mirror production's");
    }
    if after_prod != *before_prod {
        bail!("production changed during the demo: {before_prod:?} → {after_prod:?}");
    }
    println!(
        "    production's OAuth client_id ({}) arrived and was rewritten by the pair's post_restore_sql",
        after_prod.client_id
    );
    println!(
        "    masked on the production agent before they left it, by its own rules ({}) and key, which no plan can change: every email and username",
        fleet.masking_rules.display()
    );
    println!(
        "    checked: users and posts equal production's, emails and usernames masked, sessions left out, OAuth app rewritten, media mirrored"
    );
    Ok(())
}

/// Runs the reversed plan and fails unless it was refused with production
/// untouched.
fn direction_guard(runtime: &Runtime, fleet: &Fleet, before_prod: &Snapshot) -> anyhow::Result<()> {
    step("The direction guard: a reversed plan (staging → production) is refused")?;
    let state = fleet.state_dir();
    let args = [
        "sync",
        "--all",
        "--plan",
        &path(&fleet.reversed_plan),
        "--state-dir",
        &path(&state),
    ];
    let (code, output) = stagesync(fleet, &args, false)?;
    if let Some(line) = output
        .lines()
        .find(|l| l.starts_with("stagesync:") && l.contains("direction guard"))
    {
        println!("    {line}");
    }
    let still_prod = runtime.block_on(snapshot(&fleet.prod, "production"))?;
    if code != Exit::Refused as i32 || still_prod != *before_prod {
        bail!("the reversed plan was not refused (exit {code}):\n{output}");
    }
    println!(
        "    exit code {code} (refused); production is untouched: the production agent lists nothing in policy.may_overwrite"
    );
    Ok(())
}

/// `--keep`: prints how to look around, then waits for Ctrl-C, which here
/// means "clean up now" rather than "interrupted".
fn keep_until_ctrl_c(runtime: &Runtime, fleet: &Fleet) -> anyhow::Result<()> {
    step("The fleet is still running. Look around from another terminal:")?;
    let state = fleet.state_dir();
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
    Ok(())
}
