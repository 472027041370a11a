//! An S3 copy as the commands draw it: running totals fed by the engine's
//! events (from many tasks), a bar redrawn from them by a ticker of its own
//! on a terminal, throttled lines otherwise, and one JSON event per object
//! that changed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::ProgressBar;
use serde_json::json;

use super::{Output, mib};

/// Running totals of one copy, fed by the engine's events from many tasks.
#[derive(Default)]
pub struct CopyTally {
    listed_objects: AtomicU64,
    listed_bytes: AtomicU64,
    done_bytes: AtomicU64,
    copied: AtomicU64,
    copied_bytes: AtomicU64,
    skipped: AtomicU64,
    deleted: AtomicU64,
    failed: AtomicU64,
}

/// How often a copy's bar is brought up to date from its tally.
const REDRAW: Duration = Duration::from_millis(100);

impl CopyTally {
    fn draw(&self, bar: &ProgressBar, dry_run: bool) {
        bar.set_length(self.listed_bytes.load(Ordering::Relaxed));
        bar.set_position(self.done_bytes.load(Ordering::Relaxed));
        bar.set_message(self.summary(dry_run));
    }

    fn apply(&self, e: &stagesync_s3::Event) {
        use stagesync_s3::Event as E;
        let add = |a: &AtomicU64, n: u64| {
            a.fetch_add(n, Ordering::Relaxed);
        };
        match e {
            E::Listed {
                side: stagesync_s3::Side::Source,
                objects,
                bytes,
            } => {
                add(&self.listed_objects, *objects);
                add(&self.listed_bytes, *bytes);
            }
            E::Listed { .. } | E::Retrying { .. } => {}
            E::Copied { bytes, .. } | E::WouldCopy { bytes, .. } => {
                add(&self.copied, 1);
                add(&self.copied_bytes, *bytes);
                add(&self.done_bytes, *bytes);
            }
            E::Skipped { bytes, .. } => {
                add(&self.skipped, 1);
                add(&self.done_bytes, *bytes);
            }
            E::Deleted { .. } | E::WouldDelete { .. } => add(&self.deleted, 1),
            E::Failed { .. } => add(&self.failed, 1),
        }
    }

    fn summary(&self, dry_run: bool) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut text = format!(
            "{} of {} objects listed, {} {} ({}), {} unchanged, {} {}",
            get(&self.copied) + get(&self.skipped),
            get(&self.listed_objects),
            get(&self.copied),
            if dry_run { "to copy" } else { "copied" },
            mib(get(&self.copied_bytes)),
            get(&self.skipped),
            get(&self.deleted),
            if dry_run { "to delete" } else { "deleted" },
        );
        if get(&self.failed) > 0 {
            text.push_str(&format!(", {} failed", get(&self.failed)));
        }
        text
    }
}

/// `ServerSideMultipart` → `server_side_multipart`, for JSON events.
fn snake(debug: impl std::fmt::Debug) -> String {
    let mut out = String::new();
    for (i, c) in format!("{debug:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// One JSON event per object that changed (or would change), failed or is
/// retried; listings and unchanged objects only count in the totals.
fn s3_event(pair: &str, copy: &str, e: &stagesync_s3::Event) -> Option<serde_json::Value> {
    use stagesync_s3::Event as E;
    Some(match e {
        E::Copied {
            key,
            bytes,
            method,
            reason,
        } => {
            json!({"event": "s3_copied", "pair": pair, "copy": copy, "key": key, "bytes": bytes, "method": snake(method), "reason": snake(reason)})
        }
        E::WouldCopy { key, bytes, reason } => {
            json!({"event": "s3_would_copy", "pair": pair, "copy": copy, "key": key, "bytes": bytes, "reason": snake(reason)})
        }
        E::Deleted { key } => {
            json!({"event": "s3_deleted", "pair": pair, "copy": copy, "key": key})
        }
        E::WouldDelete { key } => {
            json!({"event": "s3_would_delete", "pair": pair, "copy": copy, "key": key})
        }
        E::Failed { key, error } => {
            json!({"event": "s3_failed", "pair": pair, "copy": copy, "key": key, "error": error})
        }
        E::Retrying { key, error } => {
            json!({"event": "s3_retrying", "pair": pair, "copy": copy, "key": key, "error": error})
        }
        E::Listed { .. } | E::Skipped { .. } => return None,
    })
}

/// One copy being drawn.
pub struct CopyView {
    tally: Arc<CopyTally>,
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    dry_run: bool,
    /// The key of its throttled lines.
    line_key: String,
}

impl CopyView {
    /// Starts drawing copy `copy` of `item` (a bar under its spinner).
    pub fn start(out: &Output, item: &str, copy: &str, dry_run: bool) -> Self {
        let tally = Arc::new(CopyTally::default());
        let bar = out.sub_bar(item, copy, format!("s3 {copy}"));
        let ticker = bar.clone().map(|b| {
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REDRAW);
                loop {
                    tick.tick().await;
                    tally.draw(&b, dry_run);
                }
            })
        });
        CopyView {
            tally,
            bar,
            ticker,
            dry_run,
            line_key: format!("{item} s3 {copy}"),
        }
    }

    /// One event of the copy.
    pub fn event(&self, out: &Output, item: &str, copy: &str, e: &stagesync_s3::Event) {
        self.tally.apply(e);
        if let Some(v) = s3_event(item, copy, e) {
            out.event(v);
        }
        // A copy sends an event per object: a bar is drawn from the tally
        // by its ticker, and lines are made only when shown.
        if self.bar.is_none() {
            out.line_with(&self.line_key, || self.tally.summary(self.dry_run), true);
        }
    }

    /// The copy ended.
    pub fn finish(
        self,
        out: &Output,
        item: &str,
        copy: &str,
        result: Result<&stagesync_s3::SyncReport, String>,
        ms: u64,
    ) {
        if let Some(t) = &self.ticker {
            t.abort();
        }
        let dry_run = self.dry_run;
        if let Some(b) = &self.bar {
            self.tally.draw(b, dry_run);
        }
        match result {
            Ok(r) => {
                out.event(json!({"event": "s3_finished", "pair": item, "copy": copy, "dry_run": dry_run, "objects_copied": r.copied.objects, "bytes_copied": r.copied.bytes, "objects_deleted": r.deleted.objects, "objects_unchanged": r.skipped.objects, "ms": ms}));
                match &self.bar {
                    Some(b) => {
                        b.finish_with_message(format!("done: {}", self.tally.summary(dry_run)))
                    }
                    None => out.line(item, finished_line(copy, r, dry_run), false),
                }
            }
            Err(e) => {
                out.event(json!({"event": "s3_finished", "pair": item, "copy": copy, "dry_run": dry_run, "error": e, "ms": ms}));
                if let Some(b) = &self.bar {
                    b.abandon_with_message(format!("failed: {e}"));
                }
            }
        }
    }
}

fn finished_line(copy: &str, r: &stagesync_s3::SyncReport, dry_run: bool) -> String {
    format!(
        "s3 {copy}: {} {} objects ({}), {} {} objects, {} unchanged",
        if dry_run { "would copy" } else { "copied" },
        r.copied.objects,
        mib(r.copied.bytes),
        if dry_run { "would delete" } else { "deleted" },
        r.deleted.objects,
        r.skipped.objects
    )
}
