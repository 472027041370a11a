//! A sync run's events, drawn: a spinner or lines per pair with the
//! refresh's progress, a bar per S3 copy, JSON events with `--json`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use stagesync_controller::history::{PairOutcome, Record};
use stagesync_controller::refresh::Event;
use stagesync_controller::run::{Observer, RunEvent};
use stagesync_proto::v1 as pb;

use super::copies::CopyView;
use super::{Output, mib};

/// An observer that draws a run on `out`.
pub fn observer(out: Arc<Output>) -> Observer {
    let copies: Mutex<HashMap<(String, String), CopyView>> = Mutex::default();
    Arc::new(move |e: RunEvent<'_>| draw(&out, &copies, e))
}

fn draw(out: &Output, copies: &Mutex<HashMap<(String, String), CopyView>>, e: RunEvent<'_>) {
    let views = || copies.lock().unwrap_or_else(|p| p.into_inner());
    match e {
        RunEvent::PairStarted { pair } => {
            out.event(json!({"event": "pair_started", "pair": pair}));
            out.start(pair);
        }
        RunEvent::Refresh { pair, event } => refresh_event(out, pair, event),
        RunEvent::CopyStarted {
            pair,
            copy,
            dry_run,
        } => {
            let view = CopyView::start(out, pair, copy, dry_run);
            views().insert((pair.to_string(), copy.to_string()), view);
        }
        RunEvent::Copy { pair, copy, event } => {
            if let Some(v) = views().get(&(pair.to_string(), copy.to_string())) {
                v.event(out, pair, copy, event);
            }
        }
        RunEvent::CopyFinished {
            pair,
            copy,
            result,
            ms,
            ..
        } => {
            let view = views().remove(&(pair.to_string(), copy.to_string()));
            if let Some(v) = view {
                v.finish(out, pair, copy, result, ms);
            }
        }
        RunEvent::PairFinished { record } => pair_finished(out, record),
    }
}

/// One event of a pair's refresh.
pub fn refresh_event(out: &Output, pair: &str, e: &Event) {
    match e {
        Event::Progress { source, dest } => {
            let s = source.as_deref().cloned().unwrap_or_default();
            let d = dest.as_deref().cloned().unwrap_or_default();
            let phase = pb::Phase::try_from(d.phase)
                .map(|p| format!("{p:?}").to_lowercase())
                .unwrap_or_default();
            out.event(json!({"event": "progress", "pair": pair, "phase": phase, "bytes_dumped": s.bytes_dumped, "bytes_sent": s.bytes_sent, "bytes_restored": d.bytes_restored, "rate": d.rate, "copy": super::lanes::json(&d)}));
            out.line(
                pair,
                format!(
                    "{phase}: dumped {}, restored {} ({}/s){}",
                    mib(s.bytes_dumped),
                    mib(d.bytes_restored),
                    mib(d.rate as u64),
                    super::lanes::text(&d)
                ),
                true,
            );
        }
        Event::Committed { database, previous } => {
            out.event(json!({"event": "committed", "pair": pair, "database": database, "previous": previous}));
        }
        Event::Preflight { source_size } => {
            out.event(json!({"event": "preflight_ok", "pair": pair, "source_size": source_size}));
        }
        Event::Prepared {
            job_id,
            new_database,
        } => {
            out.event(json!({"event": "prepared", "pair": pair, "job_id": job_id, "new_database": new_database}));
        }
    }
}

fn pair_finished(out: &Output, r: &Record) {
    out.event(json!({"event": "pair_finished", "pair": r.pair, "outcome": r.outcome, "error": r.error, "bytes_dumped": r.bytes_dumped, "bytes_sent": r.bytes_sent, "bytes_restored": r.bytes_restored, "rows_kept": r.rows_kept, "notes": r.notes}));
    let error = r.error.clone().unwrap_or_default();
    let text = match r.outcome {
        PairOutcome::Ok => format!(
            "ok in {:.1} s, {} restored, {} objects copied{}{}",
            r.steps.first().map_or(0, |(_, ms)| *ms) as f64 / 1000.0,
            mib(r.bytes_restored),
            r.objects_copied,
            r.rows_kept.map_or(String::new(), |n| format!(
                ", {n} rows of staging's own kept"
            )),
            r.notes.iter().map(|n| format!("; {n}")).collect::<String>()
        ),
        PairOutcome::Skipped => return,
        other => format!("{other}: {error}"),
    };
    out.finish(&r.pair, text);
}

/// How long a pair's steps took, in seconds.
pub fn seconds(r: &Record) -> f64 {
    r.steps.iter().map(|(_, ms)| *ms).sum::<u64>() as f64 / 1000.0
}
