//! `stagesync sync`: refresh pairs of the plan (the controller's run: `after`
//! order, bounded parallelism, history), drawn as it goes, then a summary
//! and an exit code.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::json;
use stagesync_certs::ReloadingClientConfig;
use stagesync_controller::history::{self, PairOutcome, Record};
use stagesync_controller::plan::{self, Plan};
use stagesync_controller::run::lock::{LockError, RunLock};
use stagesync_controller::run::{self, RunOptions, RunSummary};

use crate::Exit;
use crate::output::{Output, mib, run_view, runtime};

#[derive(clap::Args)]
pub struct PlanArg {
    /// The fleet plan.
    #[arg(long, short, env = "STAGESYNC_PLAN", default_value = plan::DEFAULT_PLAN)]
    pub plan: PathBuf,
}

#[derive(clap::Args)]
pub struct SyncArgs {
    /// Pairs to refresh (their `after` pairs are not added: name them too, or use --all).
    pairs: Vec<String>,
    /// Every pair in the plan.
    #[arg(long, conflicts_with = "pairs")]
    all: bool,
    #[command(flatten)]
    plan: PlanArg,
    /// Pairs refreshed at the same time (default: controller.parallel, else 2).
    #[arg(long)]
    parallel: Option<u32>,
    /// One JSON event per line on stdout, for automation.
    #[arg(long)]
    json: bool,
    /// Where run history is kept (default: controller.state_dir, else ~/.local/state/stagesync).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Skip one of the plan's own preflight checks (git, commands).
    #[arg(long, value_name = "CHECK", value_parser = clap::builder::PossibleValuesParser::new(stagesync_controller::checks::CHECKS))]
    skip_preflight: Vec<String>,
}

/// Loads the plan, printing a located error on failure.
pub fn load_plan(path: &std::path::Path) -> Result<Plan, Exit> {
    plan::load(path).map_err(|e| {
        eprintln!("stagesync: bad plan: {e}");
        Exit::BadPlan
    })
}

pub fn state_dir(flag: Option<PathBuf>, plan: &Plan) -> PathBuf {
    flag.or_else(|| plan.state_dir.clone())
        .unwrap_or_else(history::default_state_dir)
}

/// The pairs named (or all of them), each checked against the plan.
pub fn selected_pairs(plan: &Plan, names: &[String], all: bool) -> Result<Vec<String>, Exit> {
    if all {
        return Ok(plan.order());
    }
    if names.is_empty() {
        eprintln!(
            "stagesync: name the pairs to refresh, or pass --all (pairs in {}: {})",
            plan.source.display(),
            plan.order().join(", ")
        );
        return Err(Exit::Usage);
    }
    if let Some(p) = names.iter().find(|p| !plan.pairs.contains_key(*p)) {
        eprintln!(
            "stagesync: no pair named {p:?} in {} (pairs: {})",
            plan.source.display(),
            plan.order().join(", ")
        );
        return Err(Exit::Usage);
    }
    Ok(names.to_vec())
}

/// `stagesync sync`.
pub fn run(args: SyncArgs) -> anyhow::Result<Exit> {
    let plan = match load_plan(&args.plan.plan) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    let selected = match selected_pairs(&plan, &args.pairs, args.all) {
        Ok(s) => s,
        Err(exit) => return Ok(exit),
    };
    let tls = Arc::new(
        ReloadingClientConfig::load(plan.tls.clone())
            .with_context(|| format!("controller certificate from {}", plan.source.display()))?,
    );
    let options = RunOptions {
        parallel: args.parallel.unwrap_or(plan.parallel).max(1) as usize,
        skip_preflight: args.skip_preflight.clone(),
        state_dir: state_dir(args.state_dir.clone(), &plan),
    };
    // Held until the run ends: a second run of this plan exits at once.
    let _lock = match RunLock::acquire(&options.state_dir, &args.plan.plan) {
        Ok(lock) => lock,
        Err(e @ LockError::Held { .. }) => {
            eprintln!("stagesync: {e}");
            return Ok(Exit::Busy);
        }
        Err(e) => return Err(e.into()),
    };
    let out = Arc::new(Output::new(args.json));
    out.event(json!({"event": "run_started", "pairs": selected, "parallel": options.parallel}));
    let observer = run_view::observer(out.clone());
    let (notify, plan_file) = (plan.notify.clone(), plan.source.clone());
    let state = options.state_dir.clone();
    let started = std::time::Instant::now();
    let rt = runtime()?;
    let summary = rt.block_on(run::sync(Arc::new(plan), &selected, tls, options, observer));
    if let Some(e) = &summary.history_error {
        eprintln!("stagesync: warning: {e}");
    }
    if let Some(n) = notify {
        let elapsed = started.elapsed();
        let warnings = rt.block_on(stagesync_controller::notify::after_run(
            &n, &plan_file, &summary, &state, elapsed,
        ));
        for w in warnings {
            eprintln!("stagesync: warning: {w}");
        }
    }
    let exit = Exit::of(summary.records.iter().map(|r| r.outcome));
    print_summary(&out, &summary, exit);
    Ok(exit)
}

/// The summary: a JSON event, or a table and the errors in full.
fn print_summary(out: &Output, summary: &RunSummary, exit: Exit) {
    if out.json() {
        let pairs: Vec<_> = summary
            .records
            .iter()
            .map(|r| json!({"pair": r.pair, "outcome": r.outcome, "error": r.error, "bytes_dumped": r.bytes_dumped, "bytes_sent": r.bytes_sent, "bytes_restored": r.bytes_restored}))
            .collect();
        println!(
            "{}",
            json!({"event": "summary", "run_id": summary.run_id, "pairs": pairs, "exit_code": exit as i32})
        );
        return;
    }
    out.clear();
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["PAIR", "OUTCOME", "SECONDS", "RESTORED", "DETAIL"]);
    for r in &summary.records {
        table.add_row(row(r));
    }
    println!("{table}");
    for r in &summary.records {
        if let Some(e) = &r.error
            && r.outcome != PairOutcome::Ok
        {
            eprintln!("stagesync: {}: {e}", r.pair);
        }
    }
}

fn row(r: &Record) -> Vec<String> {
    let first_line = r
        .error
        .as_deref()
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    vec![
        r.pair.clone(),
        r.outcome.to_string(),
        format!("{:.1}", run_view::seconds(r)),
        mib(r.bytes_restored),
        first_line.to_string(),
    ]
}
