//! `stagesync backup`: agents dump databases straight into the plan's
//! [backups] place; each is drawn as it goes, recorded in the history, and
//! shown in a table.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use stagesync_certs::ReloadingClientConfig;
use stagesync_controller::backup::{self, BackupEvent, BackupRun};
use stagesync_controller::history::PairOutcome;
use stagesync_controller::plan::{BackupPlan, Plan};

use crate::Exit;
use crate::output::{Output, mib, run_view::seconds};
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

/// The plan's `[backups]`, or a clear error.
pub fn backups_of(plan: &Plan) -> Result<&BackupPlan, Exit> {
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
    let found = backup::databases(tls.clone(), &target, args.all, &args.databases);
    let databases = match runtime.block_on(found) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("stagesync: {e}");
            return Ok(Exit::Failed);
        }
    };
    if databases.is_empty() {
        eprintln!(
            "stagesync: nothing to back up: name databases with --database, or use --all (every database {} may dump)",
            args.agent
        );
        return Ok(Exit::Usage);
    }
    let out = Output::new(false);
    let dir = state_dir(args.state_dir, &plan);
    let agent = args.agent.as_str();
    let (runs, history_error) = runtime.block_on(backup::run_all(
        tls,
        (agent, &target),
        &backups,
        &databases,
        &dir,
        |db, e| draw(&out, &format!("backup {agent}/{db}"), e),
    ));
    if let Some(e) = history_error {
        eprintln!("stagesync: warning: {e}");
    }
    out.clear();
    println!("{}", table(&backups, &runs, agent));
    Ok(Exit::of(runs.iter().map(|r| r.record.outcome)))
}

/// One backup's progress.
fn draw(out: &Output, item: &str, e: BackupEvent<'_>) {
    match e {
        BackupEvent::Started => out.start(item),
        BackupEvent::Progress(p) => out.line(
            item,
            format!(
                "dumped {}, uploaded {} in {} parts",
                mib(p.bytes_dumped),
                mib(p.bytes_uploaded),
                p.parts
            ),
            true,
        ),
        BackupEvent::Finished(r) => out.finish(item, r.outcome.to_string()),
    }
}

/// The table of a run; warnings of complete backups go to stderr.
fn table(backups: &BackupPlan, runs: &[BackupRun], agent: &str) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "DATABASE",
        "OUTCOME",
        "SIZE",
        "SECONDS",
        "OBJECT / ERROR",
    ]);
    for run in runs {
        let r = &run.record;
        let secs = format!("{:.1}", seconds(r));
        let db = run.database.clone();
        match (&run.result, r.outcome) {
            (Ok(done), PairOutcome::Ok) => {
                for w in &done.warnings {
                    eprintln!("stagesync: warning: backup {agent}/{db} is complete, but {w}");
                }
                let mut detail = format!("s3://{}/{}", backups.daily.bucket, done.dump_key);
                if done.weekly {
                    detail.push_str(" (+ weekly copy)");
                }
                if !done.pruned.is_empty() {
                    detail.push_str(&format!(", {} old backups pruned", done.pruned.len()));
                }
                table.add_row(vec![db, "ok".into(), mib(done.size), secs, detail]);
            }
            _ => {
                let error = r.error.clone().unwrap_or_default();
                table.add_row(vec![db, r.outcome.to_string(), String::new(), secs, error]);
            }
        }
    }
    table
}
