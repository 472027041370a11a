//! `stagesync history`: the recorded runs, newest last.

use std::path::PathBuf;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use stagesync_controller::history;
use stagesync_controller::plan;

use crate::Exit;
use crate::output::{mib, run_view::seconds};
use crate::sync_cmd::{PlanArg, state_dir};

#[derive(clap::Args)]
pub struct HistoryArgs {
    /// Only this pair.
    pair: Option<String>,
    #[command(flatten)]
    plan: PlanArg,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The last N runs.
    #[arg(long, default_value_t = 20)]
    last: usize,
}

pub fn run(args: HistoryArgs) -> anyhow::Result<Exit> {
    let dir = match args.state_dir {
        Some(d) => d,
        None => match plan::load(&args.plan.plan) {
            Ok(p) => state_dir(None, &p),
            Err(_) => history::default_state_dir(),
        },
    };
    let records = history::read(&dir, args.pair.as_deref())
        .with_context(|| format!("reading {}", dir.display()))?;
    if records.is_empty() {
        println!("no runs recorded in {}", dir.display());
        return Ok(Exit::Ok);
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "STARTED", "PAIR", "OUTCOME", "SECONDS", "DUMPED", "RESTORED", "ERROR",
    ]);
    let skip = records.len().saturating_sub(args.last);
    for r in records.iter().skip(skip) {
        let secs = seconds(r);
        table.add_row(vec![
            r.started.clone(),
            r.pair.clone(),
            r.outcome.to_string(),
            format!("{secs:.1}"),
            mib(r.bytes_dumped),
            mib(r.bytes_restored),
            r.error
                .clone()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        ]);
    }
    println!("{table}");
    Ok(Exit::Ok)
}
