//! Run history: one JSON line per pair per run, appended under the state
//! directory, so `stagesync history` can show what ran, when and how it ended.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How one pair (or one backup) of a run ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairOutcome {
    Ok,
    /// Refused before anything changed (preflight, policy, a bad request).
    Refused,
    /// Failed on the way; the destination is as it was.
    #[default]
    Failed,
    /// Not run: a pair it comes after did not succeed.
    Skipped,
}

impl PairOutcome {
    pub fn label(self) -> &'static str {
        match self {
            PairOutcome::Ok => "ok",
            PairOutcome::Refused => "refused",
            PairOutcome::Failed => "failed",
            PairOutcome::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for PairOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// One pair's run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub run_id: String,
    pub pair: String,
    /// RFC 3339, UTC.
    pub started: String,
    pub finished: String,
    pub outcome: PairOutcome,
    pub bytes_dumped: u64,
    /// Bytes on the wire (after compression); absent in older records.
    #[serde(default)]
    pub bytes_sent: u64,
    pub bytes_restored: u64,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    pub objects_deleted: u64,
    /// Milliseconds per step, e.g. ("database", 12000), ("s3:media", 3000).
    pub steps: Vec<(String, u64)>,
    pub error: Option<String>,
    /// The step that failed, and on which agent, when an agent's job did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_host: Option<String>,
    /// Rows of staging's own kept across the refresh (pairs with `keep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_kept: Option<u64>,
    /// What an operator should know of a run that went well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The default state directory: `$XDG_STATE_HOME/stagesync`, else
/// `~/.local/state/stagesync`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("stagesync");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/stagesync")
}

fn file(dir: &Path) -> PathBuf {
    dir.join("history.jsonl")
}

/// Appends records (one line each). The file is readable by its owner
/// only: errors in it name databases, hosts and steps.
pub fn append(dir: &Path, records: &[Record]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file(dir))?;
    // A file an older version made with the default umask is narrowed too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    for r in records {
        let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
        writeln!(f, "{line}")?;
    }
    f.sync_all()
}

/// Reads all records, oldest first, optionally only for `pair`. Lines that
/// do not parse (a torn write) are skipped.
pub fn read(dir: &Path, pair: Option<&str>) -> std::io::Result<Vec<Record>> {
    let text = match std::fs::read_to_string(file(dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .filter(|r| pair.is_none_or(|p| r.pair == p))
        .collect())
}

/// Now, as RFC 3339 UTC.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = Record {
            run_id: "r1".into(),
            pair: "a".into(),
            outcome: PairOutcome::Ok,
            ..Default::default()
        };
        let b = Record {
            run_id: "r1".into(),
            pair: "b".into(),
            outcome: PairOutcome::Failed,
            error: Some("x".into()),
            ..Default::default()
        };
        append(dir.path(), std::slice::from_ref(&a)).unwrap();
        append(dir.path(), std::slice::from_ref(&b)).unwrap();
        assert_eq!(read(dir.path(), None).unwrap(), vec![a, b.clone()]);
        assert_eq!(read(dir.path(), Some("b")).unwrap(), vec![b]);
        assert!(now().ends_with('Z'));
    }

    #[test]
    fn the_history_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // One made before, with the default umask, is narrowed too.
        std::fs::write(file(dir.path()), "").unwrap();
        std::fs::set_permissions(file(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        append(dir.path(), &[Record::default()]).unwrap();
        let mode = std::fs::metadata(file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
