//! Copying a backup into another store (the weekly copy), and retention.

use aws_sdk_s3::types::CompletedPart;

use super::listing::Listed;
use super::upload::PendingUpload;
use super::{BackupError, Store};
use crate::spec::encode_key;

/// CopyObject copies up to 5 GiB; bigger objects are copied in parts.
const COPY_LIMIT: u64 = 5 * 1024 * 1024 * 1024;
const COPY_PART: u64 = 1024 * 1024 * 1024;

impl Store {
    /// Copies a backup into another store (same endpoint and credentials):
    /// the dump first (in parts above 5 GiB, CopyObject's limit), then the
    /// manifest. Returns the copy's manifest key.
    pub async fn copy_to(&self, other: &Store, b: &Listed) -> Result<String, BackupError> {
        let (dump, manifest) =
            other.keys(&b.manifest.database, &b.manifest.taken, &b.manifest.host);
        for (from, to, size) in [
            (&b.dump_key, &dump, b.manifest.size),
            (&b.manifest_key, &manifest, 0),
        ] {
            let source = format!("{}/{}", self.location.bucket, encode_key(from));
            let op = format!("copying {from} to {to}");
            if size <= COPY_LIMIT {
                other.copy_object(&source, to, &op).await?;
            } else {
                other.copy_in_parts(&source, to, size, &op).await?;
            }
        }
        Ok(manifest)
    }

    /// Copies `source` (`bucket/key`, encoded) to `to` in one request.
    async fn copy_object(&self, source: &str, to: &str, op: &str) -> Result<(), BackupError> {
        self.client
            .copy_object()
            .bucket(&self.location.bucket)
            .key(to)
            .copy_source(source)
            .send()
            .await
            .map_err(|e| self.sdk_err(op, &e))?;
        Ok(())
    }

    /// Copies `source` of `size` bytes to `to` as a multipart upload of
    /// ranged part copies, aborted if any of it fails.
    async fn copy_in_parts(
        &self,
        source: &str,
        to: &str,
        size: u64,
        op: &str,
    ) -> Result<(), BackupError> {
        let started = self.start_upload(to).await?;
        let copied = async {
            let mut parts = Vec::new();
            let mut offset = 0u64;
            while offset < size {
                let end = (offset + COPY_PART).min(size) - 1;
                let number = parts.len() as i32 + 1;
                parts.push(
                    self.copy_part(&started, source, number, offset, end, op)
                        .await?,
                );
                offset = end + 1;
            }
            self.finish_upload(&started, parts, op).await
        }
        .await;
        if let Err(e) = copied {
            let _ = self.abort_upload(&started).await;
            return Err(e);
        }
        Ok(())
    }

    /// Copies bytes `start..=end` of `source` as part `number` of `upload`.
    async fn copy_part(
        &self,
        upload: &PendingUpload,
        source: &str,
        number: i32,
        start: u64,
        end: u64,
        op: &str,
    ) -> Result<CompletedPart, BackupError> {
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.location.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .part_number(number)
            .copy_source(source)
            .copy_source_range(format!("bytes={start}-{end}"))
            .send()
            .await
            .map_err(|e| self.sdk_err(op, &e))?;
        let etag = out
            .copy_part_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_string();
        Ok(CompletedPart::builder()
            .part_number(number)
            .e_tag(etag)
            .build())
    }

    /// Deletes all but the newest `keep` complete backups of a database
    /// (never fewer than one, and never `protect`, the backup just taken,
    /// whatever the clocks of other hosts wrote into older names), manifest
    /// first so that a half-deleted backup is never listed as complete.
    /// Returns the deleted dump keys.
    pub async fn prune(
        &self,
        database: &str,
        keep: usize,
        protect: Option<&str>,
    ) -> Result<Vec<String>, BackupError> {
        let found = self.list(database).await?;
        let keep = keep.max(1);
        let n = found.complete.len();
        let mut deleted = Vec::new();
        for b in found.complete.iter().take(n.saturating_sub(keep)) {
            if protect.is_some_and(|p| p == b.manifest_key || p == b.dump_key) {
                continue;
            }
            for key in [&b.manifest_key, &b.dump_key] {
                self.delete(key).await?;
            }
            deleted.push(b.dump_key.clone());
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_keys_are_encoded() {
        assert_eq!(encode_key("a b/c+d.dump"), "a%20b/c%2Bd.dump");
    }
}
