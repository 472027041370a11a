//! A sync run: the selected pairs of a plan in `after` order with bounded
//! parallelism, each refreshed and its copies made, and every pair's
//! record (also for pairs skipped after a failure) in the run history.
//!
//! What happens is reported as [`RunEvent`]s to an observer, which the CLI
//! draws (bars, lines or JSON); nothing here prints.
//!
//! - [`pair`]: one pair: its checks, its refresh, its copies, its record.
//! - [`copies`]: a pair's S3 copies.
//! - [`lock`]: one run of a plan at a time.

pub mod copies;
pub mod lock;
pub mod pair;
pub mod preview;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use stagesync_certs::ReloadingClientConfig;

use crate::dag::{self, Outcome};
use crate::history::{self, PairOutcome, Record};
use crate::plan::Plan;
use crate::refresh;

/// What a run reports as it goes.
pub enum RunEvent<'a> {
    PairStarted {
        pair: &'a str,
    },
    /// The pair's database refresh.
    Refresh {
        pair: &'a str,
        event: &'a refresh::Event,
    },
    CopyStarted {
        pair: &'a str,
        copy: &'a str,
        dry_run: bool,
    },
    /// One object of a copy (or a listing, a retry).
    Copy {
        pair: &'a str,
        copy: &'a str,
        event: &'a stagesync_s3::Event,
    },
    CopyFinished {
        pair: &'a str,
        copy: &'a str,
        dry_run: bool,
        result: Result<&'a stagesync_s3::SyncReport, String>,
        ms: u64,
    },
    PairFinished {
        record: &'a Record,
    },
}

/// Receives a run's events, from several tasks at once.
pub type Observer = Arc<dyn Fn(RunEvent<'_>) + Send + Sync>;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Pairs refreshed at the same time (at least 1).
    pub parallel: usize,
    /// The plan's preflight checks to skip (`git`, `commands`).
    pub skip_preflight: Vec<String>,
    /// Where the run history goes.
    pub state_dir: PathBuf,
}

/// A finished run.
pub struct RunSummary {
    pub run_id: String,
    /// One record per selected pair, in the order they ended.
    pub records: Vec<Record>,
    /// Set when the history could not be written.
    pub history_error: Option<String>,
}

/// A run's id: the start time in milliseconds, in hex.
pub fn new_run_id() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    )
}

/// Runs the `selected` pairs of `plan` and records them in the history.
pub async fn sync(
    plan: Arc<Plan>,
    selected: &[String],
    tls: Arc<ReloadingClientConfig>,
    options: RunOptions,
    observer: Observer,
) -> RunSummary {
    let run_id = new_run_id();
    let nodes: BTreeMap<String, Vec<String>> = selected
        .iter()
        .map(|p| (p.clone(), plan.pairs[p].after.clone()))
        .collect();
    let trust_domain = tls.identity().trust_domain;
    let ctx = Arc::new(pair::PairRun {
        plan,
        tls,
        trust_domain,
        run_id: run_id.clone(),
        skip: options.skip_preflight.clone(),
        observer: observer.clone(),
    });
    let ended = dag::run(&nodes, options.parallel.max(1), |name| {
        let ctx = ctx.clone();
        async move { ctx.run(&name).await }
    })
    .await;
    let records: Vec<Record> = ended
        .into_iter()
        .map(|(name, outcome)| match outcome {
            Outcome::Done(r) | Outcome::Failed(r) => r,
            Outcome::Skipped { after } => {
                let r = skipped(&run_id, &name, &after);
                observer(RunEvent::PairFinished { record: &r });
                r
            }
        })
        .collect();
    let history_error = history::append(&options.state_dir, &records)
        .err()
        .map(|e| {
            format!(
                "could not record the run in {}: {e}",
                options.state_dir.display()
            )
        });
    RunSummary {
        run_id,
        records,
        history_error,
    }
}

fn skipped(run_id: &str, pair: &str, after: &str) -> Record {
    Record {
        run_id: run_id.to_string(),
        pair: pair.to_string(),
        outcome: PairOutcome::Skipped,
        error: Some(format!("not run: {after} did not succeed")),
        started: history::now(),
        finished: history::now(),
        ..Default::default()
    }
}
