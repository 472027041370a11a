//! How a run is reported when it ends (`[notify]`): a webhook told what
//! each pair did, and a Prometheus textfile with each pair's last success.
//! Reporting never changes how the run ended: what goes wrong here comes
//! back as warnings for the caller to print.

pub mod textfile;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::history::{PairOutcome, Record};
use crate::run::RunSummary;

/// When the webhook is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// Only when a pair did not succeed.
    Failure,
}

/// A webhook whose URL is in environment variable `env`.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub env: String,
    pub when: When,
    /// For each attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
}

/// The plan's `[notify]` table.
#[derive(Clone, Debug)]
pub struct NotifyPlan {
    pub webhook: Option<Webhook>,
    pub textfile: Option<PathBuf>,
}

/// Reports a run that ended: the textfile (from the whole history in
/// `state_dir`, so a failed night keeps the last success), then the
/// webhook. Returns what went wrong, as warnings.
pub async fn after_run(
    plan: &NotifyPlan,
    plan_file: &Path,
    summary: &RunSummary,
    state_dir: &Path,
    elapsed: Duration,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(path) = &plan.textfile
        && let Err(e) = textfile::write(path, state_dir)
    {
        warnings.push(format!("notify: textfile {}: {e}", path.display()));
    }
    if let Some(hook) = &plan.webhook {
        let failed = summary.records.iter().any(|r| r.outcome != PairOutcome::Ok);
        if hook.when == When::Always || failed {
            let body = body(plan_file, summary, elapsed);
            if let Err(e) = webhook::send(hook, &body, |k| std::env::var(k).ok()).await {
                warnings.push(format!("notify: {e}"));
            }
        }
    }
    warnings
}

/// The webhook's JSON: Slack's `text`, and the run in fields of its own.
pub fn body(plan_file: &Path, summary: &RunSummary, elapsed: Duration) -> Value {
    let ok = summary
        .records
        .iter()
        .filter(|r| r.outcome == PairOutcome::Ok)
        .count();
    let outcome = match ok == summary.records.len() {
        true => "ok",
        false => "failed",
    };
    let plan = plan_file.display().to_string();
    let mut text = format!(
        "stagesync {plan}: {ok} of {} pairs ok in {:.0} s",
        summary.records.len(),
        elapsed.as_secs_f64()
    );
    for r in &summary.records {
        text.push_str(&format!("\n• {}: {}", r.pair, line(r)));
    }
    json!({
        "text": text,
        "plan": plan,
        "run_id": summary.run_id,
        "outcome": outcome,
        "duration_s": elapsed.as_secs_f64(),
        "pairs": summary.records.iter().map(pair).collect::<Vec<_>>(),
    })
}

fn seconds(r: &Record) -> f64 {
    r.steps.first().map_or(0, |(_, ms)| *ms) as f64 / 1000.0
}

fn line(r: &Record) -> String {
    match r.outcome {
        PairOutcome::Ok => format!(
            "ok in {:.0} s, {} bytes restored, {} objects copied",
            seconds(r),
            r.bytes_restored,
            r.objects_copied
        ),
        other => {
            let at = match (&r.failed_step, &r.failed_host) {
                (Some(step), Some(host)) => format!(" at {step} on {host}"),
                _ => String::new(),
            };
            format!("{other}{at}: {}", r.error.as_deref().unwrap_or(""))
        }
    }
}

fn pair(r: &Record) -> Value {
    json!({
        "pair": r.pair,
        "outcome": r.outcome,
        "duration_s": seconds(r),
        "bytes_restored": r.bytes_restored,
        "bytes_copied": r.bytes_copied,
        "objects_copied": r.objects_copied,
        "rows_kept": r.rows_kept,
        "error": r.error,
        "failed_step": r.failed_step,
        "failed_host": r.failed_host,
    })
}
