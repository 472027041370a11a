//! One pair of a run: the plan's own checks, the database refresh and the
//! pair's S3 copies side by side, and the pair's record.

use std::sync::Arc;
use std::time::Instant;

use stagesync_certs::ReloadingClientConfig;

use super::copies::{self, CopiesDone};
use super::{Observer, RunEvent};
use crate::history::{self, PairOutcome, Record};
use crate::plan::Plan;
use crate::refresh::{self, RefreshError};

/// What every pair of one run shares.
pub struct PairRun {
    pub plan: Arc<Plan>,
    pub tls: Arc<ReloadingClientConfig>,
    pub trust_domain: String,
    pub run_id: String,
    pub skip: Vec<String>,
    pub observer: Observer,
}

impl PairRun {
    /// Runs `pair`; its record either way (`Err` when it did not succeed).
    pub async fn run(&self, pair: &str) -> Result<Record, Record> {
        (self.observer)(RunEvent::PairStarted { pair });
        let mut record = Record {
            run_id: self.run_id.clone(),
            pair: pair.to_string(),
            started: history::now(),
            ..Default::default()
        };
        let t0 = Instant::now();
        let ended = self.refresh_and_copy(pair).await;
        record.finished = history::now();
        let ms = t0.elapsed().as_millis() as u64;
        let result = match ended {
            Ok((report, copied)) => {
                fill_ok(&mut record, &report, &copied, ms);
                Ok(record)
            }
            Err((outcome, error)) => {
                record.outcome = outcome;
                record.error = Some(error.to_string());
                if let Some(RefreshError::Job { step, host, .. }) = error.refresh() {
                    record.failed_step = Some(step.to_string());
                    record.failed_host = Some(host.clone());
                }
                record.steps = vec![("database".to_string(), ms)];
                Err(record)
            }
        };
        let record = match &result {
            Ok(r) | Err(r) => r,
        };
        (self.observer)(RunEvent::PairFinished { record });
        result
    }

    /// The checks, then the refresh and the copies at once.
    async fn refresh_and_copy(
        &self,
        pair: &str,
    ) -> Result<(refresh::Report, CopiesDone), (PairOutcome, PairError)> {
        let p = &self.plan.pairs[pair];
        if let Err(e) = crate::checks::run(&p.preflight, &self.skip).await {
            return Err((
                PairOutcome::Refused,
                PairError::Text(format!("preflight: {e}")),
            ));
        }
        let spec = self
            .plan
            .pair_spec(pair, &self.trust_domain, |k| std::env::var(k).ok())
            .map_err(|e| (PairOutcome::Refused, PairError::Text(e)))?;
        let observer = self.observer.clone();
        let on_event = move |event: refresh::Event| {
            observer(RunEvent::Refresh {
                pair,
                event: &event,
            })
        };
        let db = refresh::refresh(self.tls.clone(), &spec, on_event);
        let s3 = copies::run(&p.copies, pair, false, &self.observer);
        match tokio::join!(db, s3) {
            (Ok(report), copied) if copied.errors.is_empty() => Ok((report, copied)),
            (Ok(_), copied) => Err((
                PairOutcome::Failed,
                PairError::Text(format!(
                    "the database was refreshed, but S3: {}",
                    copied.errors.join("; ")
                )),
            )),
            (Err(e @ RefreshError::Preflight(_)), _) => {
                Err((PairOutcome::Refused, PairError::Refresh(e)))
            }
            (Err(e), _) => Err((PairOutcome::Failed, PairError::Refresh(e))),
        }
    }
}

/// Why a pair did not succeed: its refresh's own error, or a message.
enum PairError {
    Refresh(RefreshError),
    Text(String),
}

impl PairError {
    fn refresh(&self) -> Option<&RefreshError> {
        match self {
            PairError::Refresh(e) => Some(e),
            PairError::Text(_) => None,
        }
    }
}

impl std::fmt::Display for PairError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairError::Refresh(e) => e.fmt(f),
            PairError::Text(t) => f.write_str(t),
        }
    }
}

fn fill_ok(record: &mut Record, r: &refresh::Report, copied: &CopiesDone, ms: u64) {
    record.outcome = PairOutcome::Ok;
    record.bytes_dumped = r.bytes_dumped;
    record.bytes_sent = r.bytes_sent;
    record.bytes_restored = r.bytes_restored;
    if r.nothing_to_keep {
        record.notes.push(
            "no live database yet (a first refresh): no rows of staging's own to keep".into(),
        );
    } else if r.rows_kept > 0 {
        record.rows_kept = Some(r.rows_kept);
    }
    record.objects_copied = copied.done.iter().map(|c| c.report.copied.objects).sum();
    record.bytes_copied = copied.done.iter().map(|c| c.report.copied.bytes).sum();
    record.objects_deleted = copied.done.iter().map(|c| c.report.deleted.objects).sum();
    record.steps = vec![("database".to_string(), ms)];
    record
        .steps
        .extend(copied.done.iter().map(|c| (format!("s3:{}", c.name), c.ms)));
}
