//! The databases this agent made and has not finished with: a job's new
//! database, an older previous copy between a swap and its drop. Each is
//! recorded in the agent's work directory before it exists, so cleaning up
//! after a crash drops these and nothing else: not another agent's on the
//! same cluster, not a database someone happened to name like ours.

use std::path::{Path, PathBuf};

use super::DbError;

/// The records, one empty file per database, named by its name in hex (a
/// database name may hold any character).
#[derive(Clone, Debug)]
pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    pub fn new(work_dir: &Path) -> Self {
        Ledger {
            dir: work_dir.join("databases"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(hex::encode(name))
    }

    /// Records `name` as this agent's, before it is made.
    pub fn record(&self, name: &str) -> Result<(), DbError> {
        let fail = |e: std::io::Error| {
            DbError(format!(
                "cannot record database {name:?} in {}: {e}",
                self.dir.display()
            ))
        };
        std::fs::create_dir_all(&self.dir).map_err(fail)?;
        let file = std::fs::File::create(self.path(name)).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        // The record must survive a crash right after the database is made.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)
    }

    /// Forgets `name`: dropped, or no longer this agent's (swapped in).
    pub fn forget(&self, name: &str) {
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(database = name, error = %e, "could not remove the record of a database")
            }
        }
    }

    /// Every database recorded.
    pub fn names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| hex::decode(n).ok()))
            .filter_map(|b| String::from_utf8(b).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path());
        assert!(ledger.names().is_empty());
        for name in [
            "stagesync_new_0123456789abcdef",
            "stagesync_drop_Ünï \"x\"/y",
        ] {
            ledger.record(name).unwrap();
        }
        let mut names = ledger.names();
        names.sort();
        assert_eq!(
            names,
            vec![
                "stagesync_drop_Ünï \"x\"/y",
                "stagesync_new_0123456789abcdef"
            ]
        );
        ledger.forget("stagesync_new_0123456789abcdef");
        ledger.forget("never recorded");
        assert_eq!(ledger.names(), vec!["stagesync_drop_Ünï \"x\"/y"]);
    }
}
