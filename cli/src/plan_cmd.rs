//! `stagesync plan`: what `sync` would do for each pair, changing nothing:
//! the preflight's verdict and what each S3 copy would copy and delete.

use std::sync::Arc;

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use stagesync_certs::ReloadingClientConfig;
use stagesync_controller::plan::{Plan, PlanPair};
use stagesync_controller::run::preview::{self, Preview, SourceFound};

use crate::Exit;
use crate::output::{Output, mib, run_view, runtime};
use crate::sync_cmd::{PlanArg, load_plan, selected_pairs};

#[derive(clap::Args)]
pub struct PlanArgs {
    /// Pairs to look at (default: all).
    pairs: Vec<String>,
    #[command(flatten)]
    plan: PlanArg,
}

/// `stagesync plan`.
pub fn run(args: PlanArgs) -> anyhow::Result<Exit> {
    let plan = match load_plan(&args.plan.plan) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    let pairs = match selected_pairs(&plan, &args.pairs, args.pairs.is_empty()) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    let tls = Arc::new(ReloadingClientConfig::load(plan.tls.clone())?);
    let runtime = runtime()?;
    let observer = run_view::observer(Arc::new(Output::lines()));
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "PAIR",
        "SOURCE",
        "SIZE",
        "DESTINATION",
        "MODE",
        "PREFLIGHT",
        "S3: COPY / DELETE",
    ]);
    let mut refused = 0;
    for name in &pairs {
        let seen = runtime.block_on(preview::preview(&plan, name, tls.clone(), &observer));
        if seen.preflight.is_err() {
            refused += 1;
        }
        table.add_row(row(&plan, name, &seen));
    }
    println!("{table}");
    println!("nothing was changed; `stagesync sync` would do the above");
    Ok(if refused == 0 {
        Exit::Ok
    } else if refused < pairs.len() {
        Exit::Partial
    } else {
        Exit::Refused
    })
}

/// A pair's row of the table.
fn row(plan: &Plan, name: &str, seen: &Preview) -> Vec<String> {
    let p: &PlanPair = &plan.pairs[name];
    let (preflight, size) = match &seen.preflight {
        Ok(SourceFound::Database { size }) => ("ok".to_string(), mib(*size)),
        Ok(SourceFound::Backup { taken, size }) => {
            ("ok".to_string(), format!("backup {taken} ({})", mib(*size)))
        }
        Err(e) => (format!("refused: {e}"), String::new()),
    };
    let mut s3: Vec<String> = seen
        .copies
        .done
        .iter()
        .map(|c| {
            let r = &c.report;
            format!(
                "{}: {} ({}) / {}",
                c.name,
                r.copied.objects,
                mib(r.copied.bytes),
                r.deleted.objects
            )
        })
        .collect();
    s3.extend(seen.copies.errors.iter().map(|e| format!("error: {e}")));
    vec![
        name.to_string(),
        match &p.source_backup {
            Some(b) => format!("{}{}/", b.place, p.source_db),
            None => format!("{}/{}", p.source_agent, p.source_db),
        },
        size,
        format!("{}/{} (owner {})", p.dest_agent, p.dest_db, p.owner),
        format!("{:?}", p.mode).to_lowercase(),
        preflight,
        if s3.is_empty() {
            "(none)".into()
        } else {
            s3.join("\n")
        },
    ]
}
