//! A pair's S3 copies, one after the other (alongside its database
//! refresh), each reported object by object to the run's observer.

use std::sync::Arc;
use std::time::Instant;

use super::{Observer, RunEvent};

/// A copy that finished.
pub struct CopyDone {
    pub name: String,
    pub report: stagesync_s3::SyncReport,
    pub ms: u64,
}

/// A pair's copies: those that finished, and the errors of the others.
#[derive(Default)]
pub struct CopiesDone {
    pub done: Vec<CopyDone>,
    pub errors: Vec<String>,
}

/// Runs `copies` of `pair` (`dry_run`: lists and compares, changes nothing).
pub async fn run(
    copies: &[stagesync_s3::CopySpec],
    pair: &str,
    dry_run: bool,
    observer: &Observer,
) -> CopiesDone {
    let pool = stagesync_s3::ClientPool::new();
    let mut out = CopiesDone::default();
    for c in copies {
        let copy = c.name.as_str();
        observer(RunEvent::CopyStarted {
            pair,
            copy,
            dry_run,
        });
        let t0 = Instant::now();
        let progress: stagesync_s3::Progress = {
            let (observer, pair, copy) = (observer.clone(), pair.to_string(), c.name.clone());
            Arc::new(move |event: stagesync_s3::Event| {
                observer(RunEvent::Copy {
                    pair: &pair,
                    copy: &copy,
                    event: &event,
                })
            })
        };
        let options = stagesync_s3::SyncOptions {
            dry_run,
            record_keys: dry_run,
        };
        let result = stagesync_s3::sync_with(&pool, c, options, progress).await;
        let ms = t0.elapsed().as_millis() as u64;
        observer(RunEvent::CopyFinished {
            pair,
            copy,
            dry_run,
            result: result.as_ref().map_err(|e| e.to_string()),
            ms,
        });
        match result {
            Ok(report) => out.done.push(CopyDone {
                name: c.name.clone(),
                report,
                ms,
            }),
            Err(e) => out.errors.push(e.to_string()),
        }
    }
    out
}
