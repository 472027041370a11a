//! `stagesync mask check|suggest|preview PAIR`: the masking tools of a
//! pair's source agent. The agent checks its own rules against its live
//! schema, suggests rules, or masks a few rows itself: raw values never
//! reach this machine.

use std::sync::Arc;

use anyhow::Context;
use stagesync_certs::ReloadingClientConfig;
use stagesync_proto::v1 as pb;

use crate::Exit;

#[derive(clap::Subcommand)]
pub enum MaskCommand {
    /// The source agent's rules against the pair's live schema: rules for
    /// tables or columns that do not exist, transforms that do not fit, and
    /// in strict mode every unclassified column. Exit 4 when any.
    Check(MaskArgs),
    /// A rules file for every table and column of the pair's source
    /// database, with transforms suggested by name and type, to review and
    /// put on the source agent.
    Suggest(MaskArgs),
    /// A table's rows as staging will see them, masked on the source agent.
    Preview(PreviewArgs),
}

#[derive(clap::Args)]
pub struct MaskArgs {
    /// A pair of the plan: its source agent and database.
    pair: String,
    #[command(flatten)]
    plan: crate::sync_cmd::PlanArg,
}

#[derive(clap::Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    of: MaskArgs,
    /// The table, `schema.table` (quote a part that holds a dot).
    #[arg(long)]
    table: String,
    /// How many rows (at most 100).
    #[arg(long, default_value_t = 10)]
    rows: u32,
}

pub fn run(cmd: MaskCommand) -> anyhow::Result<Exit> {
    let (of, action, table, rows) = match &cmd {
        MaskCommand::Check(a) => (a, pb::MaskAction::MaskCheck, String::new(), 0),
        MaskCommand::Suggest(a) => (a, pb::MaskAction::MaskSuggest, String::new(), 0),
        MaskCommand::Preview(p) => (&p.of, pb::MaskAction::MaskPreview, p.table.clone(), p.rows),
    };
    let plan = match crate::sync_cmd::load_plan(&of.plan.plan) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    let Some(pair) = plan.pairs.get(&of.pair) else {
        eprintln!(
            "stagesync: no pair named {:?} in {}",
            of.pair,
            plan.source.display()
        );
        return Ok(Exit::Usage);
    };
    if pair.source_agent.is_empty() {
        eprintln!(
            "stagesync: pair {:?} refreshes from a backup; masking happens on a source agent",
            of.pair
        );
        return Ok(Exit::Usage);
    }
    let tls = Arc::new(ReloadingClientConfig::load(plan.tls.clone())?);
    let td = tls.identity().trust_domain;
    let target = plan
        .agent_target(&pair.source_agent, &td)
        .with_context(|| format!("agent {:?} is not in the plan", pair.source_agent))?;
    let req = pb::MaskRequest {
        database: pair.source_db.clone(),
        action: action as i32,
        table,
        rows,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let answer = match runtime.block_on(stagesync_controller::mask::ask(tls, &target, req)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stagesync: mask: {e}");
            return Ok(Exit::Failed);
        }
    };
    Ok(show(action, &pair.source_agent, &pair.source_db, &answer))
}

fn show(action: pb::MaskAction, agent: &str, db: &str, a: &pb::MaskResponse) -> Exit {
    if !a.problems.is_empty() {
        eprintln!(
            "stagesync: the masking rules of {agent} ({}) do not fit {db:?}:",
            a.rules_file
        );
        for p in &a.problems {
            eprintln!("  {p}");
        }
        return Exit::Refused;
    }
    match action {
        pb::MaskAction::MaskCheck => {
            println!(
                "the masking rules of {agent} ({}) fit {db:?}: every copied column is classified",
                a.rules_file
            );
        }
        pb::MaskAction::MaskSuggest => print!("{}", a.suggestion),
        pb::MaskAction::MaskPreview => {
            println!("{}", a.columns.join("\t"));
            for r in &a.rows {
                println!("{r}");
            }
        }
    }
    Exit::Ok
}
