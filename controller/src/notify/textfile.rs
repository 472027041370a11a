//! A Prometheus textfile (node_exporter's textfile collector) with each
//! pair's last run and last success, computed from the run history so a
//! failed night keeps the last success. Written to a temporary file beside
//! it and renamed over it: a reader sees the old file or the new one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::history::{self, PairOutcome, Record};

/// Writes `path` from the history in `state_dir`.
pub fn write(path: &Path, state_dir: &Path) -> std::io::Result<()> {
    let records = history::read(state_dir, None)?;
    let text = render(&records);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".stagesync-")
        .suffix(".prom.tmp")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    // The collector reads files as they are; others than us may read it.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Seconds since the epoch of an RFC 3339 time (0 when unreadable).
fn epoch(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| t.unix_timestamp())
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics of the newest record, and of the newest success, per pair.
pub fn render(records: &[Record]) -> String {
    let mut last: BTreeMap<&str, &Record> = BTreeMap::new();
    let mut success: BTreeMap<&str, &Record> = BTreeMap::new();
    for r in records {
        if r.outcome == PairOutcome::Skipped {
            continue;
        }
        last.insert(&r.pair, r);
        if r.outcome == PairOutcome::Ok {
            success.insert(&r.pair, r);
        }
    }
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, rows: Vec<(&str, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (pair, value) in rows {
            out.push_str(&format!("{name}{{pair=\"{}\"}} {value}\n", label(pair)));
        }
    };
    let seconds = |r: &Record| r.steps.first().map_or(0, |(_, ms)| *ms) as f64 / 1000.0;
    metric(
        "stagesync_pair_last_success_timestamp_seconds",
        "When the pair's last successful refresh ended (Unix time).",
        success
            .iter()
            .map(|(p, r)| (*p, epoch(&r.finished).to_string()))
            .collect(),
    );
    metric(
        "stagesync_pair_last_success_duration_seconds",
        "How long the pair's last successful refresh took.",
        success
            .iter()
            .map(|(p, r)| (*p, seconds(r).to_string()))
            .collect(),
    );
    metric(
        "stagesync_pair_last_success_bytes_restored",
        "Bytes the pair's last successful refresh restored.",
        success
            .iter()
            .map(|(p, r)| (*p, r.bytes_restored.to_string()))
            .collect(),
    );
    metric(
        "stagesync_pair_last_success_bytes_copied",
        "Bytes of S3 objects the pair's last successful run copied.",
        success
            .iter()
            .map(|(p, r)| (*p, r.bytes_copied.to_string()))
            .collect(),
    );
    metric(
        "stagesync_pair_last_run_timestamp_seconds",
        "When the pair's last run ended (Unix time).",
        last.iter()
            .map(|(p, r)| (*p, epoch(&r.finished).to_string()))
            .collect(),
    );
    metric(
        "stagesync_pair_last_run_success",
        "1 if the pair's last run succeeded, else 0.",
        last.iter()
            .map(|(p, r)| (*p, u8::from(r.outcome == PairOutcome::Ok).to_string()))
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pair: &str, outcome: PairOutcome, finished: &str, bytes: u64) -> Record {
        Record {
            pair: pair.into(),
            outcome,
            finished: finished.into(),
            bytes_restored: bytes,
            steps: vec![("database".into(), 1500)],
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_night_keeps_the_last_success() {
        let text = render(&[
            record("a", PairOutcome::Ok, "2026-12-01T04:00:00Z", 100),
            record("a", PairOutcome::Failed, "2026-12-02T04:00:00Z", 0),
            record("b\"x", PairOutcome::Ok, "2026-12-02T04:00:00Z", 7),
        ]);
        assert!(
            text.contains("stagesync_pair_last_success_timestamp_seconds{pair=\"a\"} 1796097600\n")
        );
        assert!(text.contains("stagesync_pair_last_success_bytes_restored{pair=\"a\"} 100\n"));
        assert!(text.contains("stagesync_pair_last_run_success{pair=\"a\"} 0\n"));
        assert!(
            text.contains("stagesync_pair_last_success_duration_seconds{pair=\"b\\\"x\"} 1.5\n")
        );
    }
}
