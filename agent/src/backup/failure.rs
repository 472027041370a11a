//! A failed backup: the step that failed, what happened, and the tail of
//! `pg_dump`'s stderr when it was `pg_dump` that failed.

use std::fmt;

/// The steps of one backup, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupStep {
    /// Reaching the bucket of the daily place.
    Store,
    /// Asking PostgreSQL about the database (it exists, its version).
    Database,
    /// Starting the multipart upload.
    StartUpload,
    /// Recording the upload in the work dir.
    Record,
    /// Running `pg_dump`.
    Dump,
    /// Uploading the dump's parts (also when the controller went away).
    Upload,
    /// Completing the upload and checking the stored size.
    Complete,
    /// Writing the manifest that makes the dump a backup.
    Manifest,
}

/// Why a backup failed. Its text is what the operator sees after
/// "backup of <database>:", so it says what failed without the step's name.
#[derive(Debug)]
pub struct BackupFailure {
    pub step: BackupStep,
    pub message: String,
    /// The last lines `pg_dump` wrote to stderr, when it failed.
    pub stderr: Option<String>,
}

impl BackupFailure {
    pub fn new(step: BackupStep, message: impl Into<String>) -> Self {
        BackupFailure {
            step,
            message: message.into(),
            stderr: None,
        }
    }

    /// For `map_err`: an error of `step`, in the error's own words.
    pub fn at<E: fmt::Display>(step: BackupStep) -> impl FnOnce(E) -> Self {
        move |e| BackupFailure::new(step, e.to_string())
    }

    pub fn with_stderr(mut self, tail: String) -> Self {
        self.stderr = Some(tail);
        self
    }
}

impl fmt::Display for BackupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match &self.stderr {
            Some(tail) => write!(f, ": {tail}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for BackupFailure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stderr_tail_follows_the_message() {
        let plain = BackupFailure::new(BackupStep::Manifest, "writing the manifest: denied");
        assert_eq!(plain.to_string(), "writing the manifest: denied");
        let dumped = BackupFailure::new(BackupStep::Dump, "pg_dump failed (exit status: 1)")
            .with_stderr("pg_dump: error: no such table".into());
        assert_eq!(
            dumped.to_string(),
            "pg_dump failed (exit status: 1): pg_dump: error: no such table"
        );
    }
}
