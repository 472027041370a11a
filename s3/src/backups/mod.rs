//! Database backups kept in S3: where they go, how they are uploaded, and
//! how they are listed, verified, copied and pruned.
//!
//! A backup of database `db` under `s3://bucket/prefix/` is two objects:
//! `prefix/db/<YYYY-MM-DDTHH-MM-SSZ>.<host>.dump` (the `pg_dump -Fc`
//! output) and, written only after the dump was uploaded and checked,
//! `prefix/db/<same>.manifest.json`. A dump without its manifest is not a
//! backup: listings report it as incomplete and never restore from it.
//!
//! Uploads are multipart from a reader, one part buffered while the
//! previous one uploads, so memory is two parts whatever the size. Each
//! part's MD5 is checked against the ETag the server returns, and the
//! final size against a HEAD of the object; the SHA-256 of the whole dump
//! goes into the manifest, for `verify` and for restores.
//!
//! `names.rs` makes the names and reads and writes manifests, `upload.rs`
//! uploads a dump, `listing.rs` lists and verifies backups, and `copy.rs`
//! copies them to another store and prunes old ones.

mod copy;
mod listing;
mod names;
mod upload;

use std::fmt;

use aws_sdk_s3::Client;

use crate::error::{Side, Target, classify};
use crate::spec::{ProfileFilePaths, RetrySettings, S3Location, SideConfig};
use crate::{ClientPool, SyncError};

pub use listing::{Found, Listed};
pub use names::{Manifest, stamp};
pub use upload::{Aborted, PART_SIZE, Parts, PendingSide, PendingUpload, UploadProgress, Uploaded};

/// A backup operation that failed, with the location and what to check.
#[derive(Debug)]
pub struct BackupError(pub String);

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BackupError {}

impl From<SyncError> for BackupError {
    fn from(e: SyncError) -> Self {
        BackupError(e.to_string())
    }
}

/// One store: a bucket and prefix reached with one client.
#[derive(Clone)]
pub struct Store {
    client: Client,
    pub location: S3Location,
    pub side: SideConfig,
}

impl Store {
    /// A store at `location`, with credentials from the standard AWS chain
    /// (optionally from the given profile files).
    pub async fn open(
        pool: &ClientPool,
        location: S3Location,
        side: SideConfig,
        files: &ProfileFilePaths,
    ) -> Result<Self, BackupError> {
        let target = Target {
            copy: "backups".into(),
            side: Side::Dest,
            backups: true,
            bucket: location.bucket.clone(),
            profile: side.profile_label(),
            endpoint: side.endpoint.clone(),
        };
        let client = pool
            .client(&side, files, RetrySettings::default(), &target)
            .await?;
        Ok(Store {
            client,
            location,
            side,
        })
    }

    pub(super) fn err(&self, op: &str, detail: impl fmt::Display) -> BackupError {
        BackupError(format!(
            "{op} in {} (profile {}{}): {detail}",
            self.location,
            self.side.profile_label(),
            self.side
                .endpoint
                .as_ref()
                .map(|e| format!(", endpoint {e}"))
                .unwrap_or_default()
        ))
    }

    pub(super) fn sdk_err<E>(
        &self,
        op: &str,
        e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> BackupError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        let c = classify(e);
        let no_bucket = match e {
            aws_sdk_s3::error::SdkError::ServiceError(s) => {
                aws_sdk_s3::error::ProvideErrorMetadata::code(s.err()) == Some("NoSuchBucket")
            }
            _ => false,
        };
        let hint = match c.kind {
            crate::error::Kind::NotFound if no_bucket => "; does the bucket exist?",
            crate::error::Kind::Denied => "; check the credentials and the bucket policy",
            _ => "",
        };
        self.err(op, format!("{}{hint}", c.detail))
    }

    /// Deletes one object.
    pub async fn delete(&self, key: &str) -> Result<(), BackupError> {
        self.client
            .delete_object()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.sdk_err(&format!("deleting {key}"), &e))?;
        Ok(())
    }
}
