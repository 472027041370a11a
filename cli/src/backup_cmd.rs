//! `stagesync backup` (agents dump databases into S3) and `stagesync
//! backups list|verify` (read back from here).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use indicatif::{ProgressBar, ProgressStyle};
use stagesync_certs::ReloadingClientConfig;
use stagesync_controller::client::ClientError;
use stagesync_controller::history::{self, Record};
use stagesync_controller::plan::{BackupPlan, Plan};
use stagesync_s3::backups::{Listed, Store};

use crate::Exit;
use crate::sync_cmd::{PlanArg, load_plan, state_dir};

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The agent (as named in the plan) whose databases to back up.
    agent: String,
    /// A database to back up (repeatable).
    #[arg(
        long = "database",
        short = 'd',
        value_name = "DB",
        conflicts_with = "all"
    )]
    databases: Vec<String>,
    /// Every database the agent may dump.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    plan: PlanArg,
    /// Where run history is kept (default: controller.state_dir, else ~/.local/state/stagesync).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum BackupsCommand {
    /// List complete backups (and uploads that never completed).
    List(ListArgs),
    /// Re-read backups and check them against their manifests' SHA-256.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only this database.
    database: Option<String>,
    #[command(flatten)]
    plan: PlanArg,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Only this database.
    database: Option<String>,
    /// Every backup, not only the newest of each database.
    #[arg(long)]
    every: bool,
    #[command(flatten)]
    plan: PlanArg,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn backups_of(plan: &Plan) -> Result<&BackupPlan, Exit> {
    plan.backups.as_ref().ok_or_else(|| {
        eprintln!(
            "stagesync: {} has no [backups] section: add one with `daily = \"s3://bucket/prefix/\"`",
            plan.source.display()
        );
        Exit::Usage
    })
}

pub fn run(args: BackupArgs) -> anyhow::Result<Exit> {
    let plan = match load_plan(&args.plan.plan) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    let backups = match backups_of(&plan) {
        Ok(b) => b.clone(),
        Err(exit) => return Ok(exit),
    };
    let tls = Arc::new(
        ReloadingClientConfig::load(plan.tls.clone())
            .with_context(|| format!("controller certificate from {}", plan.source.display()))?,
    );
    let td = tls.identity().trust_domain;
    let Some(target) = plan.agent_target(&args.agent, &td) else {
        eprintln!(
            "stagesync: no agent named {:?} in {} (agents: {})",
            args.agent,
            plan.source.display(),
            plan.agents.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        return Ok(Exit::Usage);
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let databases = if args.all {
        let info = runtime.block_on(stagesync_controller::status::info(tls.clone(), &target));
        match info {
            Ok(info) => info
                .postgres
                .map(|p| {
                    p.databases
                        .into_iter()
                        .filter(|d| d.may_dump)
                        .map(|d| d.name)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
            Err(e) => {
                eprintln!("stagesync: {e}");
                return Ok(Exit::Failed);
            }
        }
    } else {
        args.databases.clone()
    };
    if databases.is_empty() {
        eprintln!(
            "stagesync: nothing to back up: name databases with --database, or use --all (every database {} may dump)",
            args.agent
        );
        return Ok(Exit::Usage);
    }
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let terminal = std::io::stderr().is_terminal();
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "DATABASE",
        "OUTCOME",
        "SIZE",
        "SECONDS",
        "OBJECT / ERROR",
    ]);
    let (mut ok, mut failed, mut refused) = (0, 0, 0);
    let mut records = Vec::new();
    for db in &databases {
        let started = history::now();
        let t0 = Instant::now();
        let bar = terminal.then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:20} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_prefix(db.clone());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        let mut last_line = Instant::now();
        let req = stagesync_controller::backup::request(&backups, db);
        let result = runtime.block_on(stagesync_controller::backup::run(
            tls.clone(),
            &target,
            req,
            |p| {
                let text = format!(
                    "dumped {}, uploaded {} in {} parts",
                    mib(p.bytes_dumped),
                    mib(p.bytes_uploaded),
                    p.parts
                );
                match &bar {
                    Some(b) => b.set_message(text),
                    None if last_line.elapsed() >= Duration::from_secs(5) => {
                        last_line = Instant::now();
                        eprintln!("stagesync: backup {}/{db}: {text}", args.agent);
                    }
                    None => {}
                }
            },
        ));
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut record = Record {
            run_id: run_id.clone(),
            pair: format!("backup:{}/{db}", args.agent),
            started,
            finished: history::now(),
            steps: vec![("backup".into(), t0.elapsed().as_millis() as u64)],
            ..Default::default()
        };
        match result {
            Ok(done) => {
                ok += 1;
                record.outcome = "ok".into();
                record.bytes_dumped = done.size;
                let mut detail = format!("s3://{}/{}", backups.daily.bucket, done.dump_key);
                if done.weekly {
                    detail.push_str(" (+ weekly copy)");
                }
                if !done.pruned.is_empty() {
                    detail.push_str(&format!(", {} old backups pruned", done.pruned.len()));
                }
                for w in &done.warnings {
                    eprintln!(
                        "stagesync: warning: backup {}/{db} is complete, but {w}",
                        args.agent
                    );
                }
                table.add_row(vec![
                    db.clone(),
                    "ok".into(),
                    mib(done.size),
                    format!("{secs:.1}"),
                    detail,
                ]);
            }
            Err(e) => {
                let is_refused = matches!(
                    &e,
                    ClientError::Refused {
                        code: tonic::Code::PermissionDenied
                            | tonic::Code::InvalidArgument
                            | tonic::Code::FailedPrecondition,
                        ..
                    }
                );
                if is_refused {
                    refused += 1;
                    record.outcome = "refused".into();
                } else {
                    failed += 1;
                    record.outcome = "failed".into();
                }
                record.error = Some(e.to_string());
                table.add_row(vec![
                    db.clone(),
                    record.outcome.clone(),
                    String::new(),
                    format!("{secs:.1}"),
                    e.to_string(),
                ]);
            }
        }
        records.push(record);
    }
    let dir = state_dir(args.state_dir, &plan);
    if let Err(e) = history::append(&dir, &records) {
        eprintln!(
            "stagesync: warning: could not record the run in {}: {e}",
            dir.display()
        );
    }
    println!("{table}");
    Ok(if failed == 0 && refused == 0 {
        Exit::Ok
    } else if ok > 0 {
        Exit::Partial
    } else if failed == 0 {
        Exit::Refused
    } else {
        Exit::Failed
    })
}

/// The plan's backup stores: daily, then weekly.
async fn stores(b: &BackupPlan) -> anyhow::Result<Vec<(&'static str, Store)>> {
    let pool = stagesync_s3::ClientPool::new();
    let files = stagesync_s3::ProfileFilePaths::default();
    let mut out = vec![(
        "daily",
        Store::open(&pool, b.daily.clone(), b.side.clone(), &files).await?,
    )];
    if let Some(w) = &b.weekly {
        out.push((
            "weekly",
            Store::open(&pool, w.clone(), b.side.clone(), &files).await?,
        ));
    }
    Ok(out)
}

pub fn backups(cmd: BackupsCommand) -> anyhow::Result<Exit> {
    let (plan_arg, database) = match &cmd {
        BackupsCommand::List(a) => (&a.plan, a.database.clone()),
        BackupsCommand::Verify(a) => (&a.plan, a.database.clone()),
    };
    let plan = match load_plan(&plan_arg.plan) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    let b = match backups_of(&plan) {
        Ok(b) => b.clone(),
        Err(exit) => return Ok(exit),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let stores = stores(&b).await?;
        // Every (kind, store, database, backups found).
        let mut found = Vec::new();
        for (kind, store) in &stores {
            let dbs = match &database {
                Some(d) => vec![d.clone()],
                None => store.databases().await?,
            };
            for db in dbs {
                let f = store.list(&db).await?;
                found.push((*kind, store, db, f));
            }
        }
        match cmd {
            BackupsCommand::List(_) => {
                let mut table = Table::new();
                table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
                    "DATABASE", "KIND", "TAKEN", "HOST", "SIZE", "SHA-256", "OBJECT",
                ]);
                let mut notes = Vec::new();
                for (kind, store, db, f) in &found {
                    for l in &f.complete {
                        table.add_row(vec![
                            db.clone(),
                            kind.to_string(),
                            l.manifest.taken.clone(),
                            l.manifest.host.clone(),
                            mib(l.manifest.size),
                            l.manifest.sha256.chars().take(12).collect(),
                            format!("s3://{}/{}", store.location.bucket, l.dump_key),
                        ]);
                    }
                    for key in &f.incomplete {
                        notes.push(format!(
                            "incomplete (no manifest, never restored from): s3://{}/{key}",
                            store.location.bucket
                        ));
                    }
                    for (key, why) in &f.unreadable {
                        notes.push(format!(
                            "unusable manifest s3://{}/{key}: {why}",
                            store.location.bucket
                        ));
                    }
                }
                if found.iter().all(|(_, _, _, f)| f.complete.is_empty()) {
                    println!("no complete backups under {}", b.daily);
                } else {
                    println!("{table}");
                }
                for n in notes {
                    eprintln!("stagesync: {n}");
                }
                Ok(Exit::Ok)
            }
            BackupsCommand::Verify(a) => {
                let mut bad = 0;
                let mut checked = 0;
                for (kind, store, db, f) in &found {
                    let chosen: Vec<&Listed> = if a.every {
                        f.complete.iter().collect()
                    } else {
                        f.complete.last().into_iter().collect()
                    };
                    for l in chosen {
                        checked += 1;
                        let verdict = match store.verify(l).await {
                            Ok(v) => v,
                            Err(e) => Some(format!("could not be read: {e}")),
                        };
                        match verdict {
                            None => println!(
                                "ok       {db} {kind} {} ({}, sha256 {})",
                                l.manifest.taken,
                                mib(l.manifest.size),
                                &l.manifest.sha256[..12.min(l.manifest.sha256.len())]
                            ),
                            Some(why) => {
                                bad += 1;
                                println!(
                                    "MISMATCH {db} {kind} {}: s3://{}/{}: {why}",
                                    l.manifest.taken, store.location.bucket, l.dump_key
                                );
                            }
                        }
                    }
                }
                if checked == 0 {
                    eprintln!("stagesync: no complete backups to verify under {}", b.daily);
                    return Ok(Exit::Failed);
                }
                if bad > 0 {
                    eprintln!(
                        "stagesync: {bad} of {checked} backups do not match their manifests: do not restore from them; take a new backup"
                    );
                    return Ok(Exit::Failed);
                }
                Ok(Exit::Ok)
            }
        }
    })
}
