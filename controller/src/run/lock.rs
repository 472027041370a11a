//! One run of a plan at a time: `sync` holds an exclusive lock on a file
//! named after the plan (its full path) in the state directory for as long
//! as it runs. The lock goes with the process, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Held while a run of the plan goes on.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another run of {plan} is going on ({holder}); this one did nothing. Let it finish (`stagesync history` tells how runs ended)"
    )]
    Held { plan: String, holder: String },
    #[error("cannot take the run lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RunLock {
    /// Takes the lock of `plan` in `state_dir`, or says who holds it.
    pub fn acquire(state_dir: &Path, plan: &Path) -> Result<RunLock, LockError> {
        let plan = plan.canonicalize().unwrap_or_else(|_| plan.to_path_buf());
        let dir = state_dir.join("locks");
        let name = hex::encode(&Sha256::digest(plan.as_os_str().as_encoded_bytes())[..12]);
        let path = dir.join(format!("{name}.lock"));
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(LockError::Held {
                    plan: plan.display().to_string(),
                    holder: match holder.trim() {
                        "" => "its process did not say who it is".into(),
                        h => h.to_string(),
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the run that finds it taken.
        let whom = format!(
            "process {} since {}",
            std::process::id(),
            crate::history::now()
        );
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(whom.as_bytes()))
            .map_err(io)?;
        Ok(RunLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_runs_once_at_a_time() {
        let state = tempfile::tempdir().unwrap();
        let plans = tempfile::tempdir().unwrap();
        let (a, b) = (plans.path().join("a.toml"), plans.path().join("b.toml"));
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        let held = RunLock::acquire(state.path(), &a).unwrap();
        match RunLock::acquire(state.path(), &a) {
            Err(LockError::Held { holder, .. }) => {
                assert!(
                    holder.contains(&format!("process {}", std::process::id())),
                    "{holder}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Another plan is another lock; the same plan by another path is not.
        let _other = RunLock::acquire(state.path(), &b).unwrap();
        let roundabout = plans.path().join(".").join("a.toml");
        assert!(RunLock::acquire(state.path(), &roundabout).is_err());
        drop(held);
        let _again = RunLock::acquire(state.path(), &a).unwrap();
    }
}
