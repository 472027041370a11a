//! Uploading a dump from a reader: a multipart upload, one part read
//! while the previous one uploads, each part's MD5 checked against its
//! ETag, and the stored size checked before the upload counts.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{BackupError, Store};
use crate::spec::SideConfig;

/// Upload part size: S3's minimum is 5 MiB; 10,000 parts of 16 MiB allow
/// dumps up to 156 GiB, and the part size grows past that (see `part_size`).
pub const PART_SIZE: usize = 16 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;

/// How an abort of an upload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aborted {
    /// The upload and its parts are gone now.
    Now,
    /// The server knows no such upload: completed or aborted before.
    AlreadyGone,
}

/// A started multipart upload, recorded by the agent so that an upload cut
/// by a crash is aborted when it starts again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpload {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    pub side: PendingSide,
}

/// How to reach the store of a [`PendingUpload`] again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSide {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

impl From<&SideConfig> for PendingSide {
    fn from(side: &SideConfig) -> Self {
        PendingSide {
            profile: side.profile.clone(),
            region: side.region.clone(),
            endpoint: side.endpoint.clone(),
        }
    }
}

impl From<&PendingSide> for SideConfig {
    fn from(side: &PendingSide) -> Self {
        SideConfig {
            profile: side.profile.clone(),
            region: side.region.clone(),
            endpoint: side.endpoint.clone(),
        }
    }
}

/// Counts of an upload in progress.
#[derive(Clone, Copy, Debug, Default)]
pub struct UploadProgress {
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub parts: u32,
}

/// The uploaded parts of an upload not yet completed.
#[derive(Debug)]
pub struct Parts {
    parts: Vec<CompletedPart>,
    pub size: u64,
    pub sha256: String,
}

/// What an upload produced.
#[derive(Clone, Debug)]
pub struct Uploaded {
    pub size: u64,
    pub sha256: String,
}

/// The part size for a dump of unknown size: 16 MiB for the first 5,000
/// parts (78 GiB), then 64 MiB, so 10,000 parts hold 390 GiB while memory
/// stays at two parts (128 MiB at most).
fn part_size(parts_so_far: u64) -> usize {
    match parts_so_far {
        0..5_000 => PART_SIZE,
        _ => 64 * 1024 * 1024,
    }
}

impl Store {
    /// Starts a multipart upload of `key`.
    pub async fn start_upload(&self, key: &str) -> Result<PendingUpload, BackupError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.location.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .send()
            .await
            .map_err(|e| self.sdk_err("starting the upload of the dump", &e))?;
        let upload_id = out
            .upload_id()
            .ok_or_else(|| self.err("starting the upload", "the server returned no upload id"))?
            .to_string();
        Ok(PendingUpload {
            bucket: self.location.bucket.clone(),
            key: key.to_string(),
            upload_id,
            side: PendingSide::from(&self.side),
        })
    }

    /// Uploads everything `reader` gives as the parts of `upload`; the
    /// caller then completes it ([`Store::complete`]) once it knows the
    /// reader's producer succeeded, or aborts it.
    pub async fn upload_parts(
        &self,
        upload: &PendingUpload,
        reader: &mut (impl AsyncRead + Unpin),
        progress: &(dyn Fn(UploadProgress) + Send + Sync),
    ) -> Result<Parts, BackupError> {
        let mut sha = Sha256::new();
        let mut done = Done {
            parts: Vec::new(),
            counts: UploadProgress::default(),
            progress,
        };
        // Aborted when dropped: a cancelled upload leaves no part task
        // running after the caller aborts the upload.
        let mut in_flight: Option<PartTask> = None;
        loop {
            let cap = part_size(done.parts.len() as u64);
            let buf = read_part(reader, cap, &mut done).await?;
            // The first part may be empty (an empty dump); later ones not.
            if buf.is_empty() && (in_flight.is_some() || !done.parts.is_empty()) {
                break;
            }
            sha.update(&buf);
            if let Some(task) = in_flight.take() {
                done.land(task).await?;
            }
            let number = done.parts.len() as i32 + 1;
            if number as u64 > MAX_PARTS {
                return Err(self.err(
                    "uploading the dump",
                    format!("more than {MAX_PARTS} parts: the dump is larger than S3 allows"),
                ));
            }
            let last = buf.len() < cap;
            done.counts.bytes_uploaded += buf.len() as u64;
            let (store, up) = (self.clone(), upload.clone());
            in_flight = Some(AbortOnDrop(tokio::spawn(async move {
                store.upload_part(&up, number, buf).await
            })));
            if last {
                break;
            }
        }
        if let Some(task) = in_flight.take() {
            done.land(task).await?;
        }
        Ok(Parts {
            parts: done.parts,
            size: done.counts.bytes_read,
            sha256: hex::encode(sha.finalize()),
        })
    }

    /// Completes an upload and checks the stored object's size.
    pub async fn complete(
        &self,
        upload: &PendingUpload,
        done: Parts,
    ) -> Result<Uploaded, BackupError> {
        let Parts {
            parts,
            size,
            sha256,
        } = done;
        self.finish_upload(upload, parts, "completing the upload of the dump")
            .await?;
        let head = self
            .client
            .head_object()
            .bucket(&upload.bucket)
            .key(&upload.key)
            .send()
            .await;
        let head = match head {
            Ok(h) => h,
            Err(e) => {
                let err = self.sdk_err("checking the uploaded dump", &e);
                let _ = self.delete(&upload.key).await;
                return Err(err);
            }
        };
        let stored = head.content_length().unwrap_or(-1);
        if stored != size as i64 {
            // Completed but wrong: not a backup, and not to be left behind.
            let _ = self.delete(&upload.key).await;
            return Err(self.err(
                "checking the uploaded dump",
                format!(
                    "{} holds {stored} bytes, but {size} were uploaded",
                    upload.key
                ),
            ));
        }
        Ok(Uploaded { size, sha256 })
    }

    /// Completes a multipart upload from its parts.
    pub(super) async fn finish_upload(
        &self,
        upload: &PendingUpload,
        parts: Vec<CompletedPart>,
        op: &str,
    ) -> Result<(), BackupError> {
        self.client
            .complete_multipart_upload()
            .bucket(&upload.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.sdk_err(op, &e))?;
        Ok(())
    }

    async fn upload_part(
        &self,
        upload: &PendingUpload,
        number: i32,
        body: Vec<u8>,
    ) -> Result<CompletedPart, BackupError> {
        let digest = Md5::digest(&body);
        let md5 = hex::encode(digest);
        let out = self
            .client
            .upload_part()
            // The server checks the part against this (also where, with
            // encryption, the ETag is not the MD5).
            .content_md5(aws_smithy_types::base64::encode(digest.as_slice()))
            .bucket(&upload.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.sdk_err(&format!("uploading part {number} of the dump"), &e))?;
        let etag = out
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        // A plain ETag is the part's MD5; encrypted buckets return others.
        if crate::plan::is_plain_md5(&etag) && !etag.eq_ignore_ascii_case(&md5) {
            return Err(self.err(
                &format!("uploading part {number} of the dump"),
                format!("the server stored other bytes (ETag {etag}, expected MD5 {md5})"),
            ));
        }
        Ok(CompletedPart::builder()
            .part_number(number)
            .e_tag(out.e_tag().unwrap_or_default())
            .build())
    }

    /// Aborts an upload (after a failure, or one left by a crash).
    pub async fn abort_upload(&self, upload: &PendingUpload) -> Result<Aborted, BackupError> {
        let sent = self
            .client
            .abort_multipart_upload()
            .bucket(&upload.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Aborted::Now),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => {
                Ok(Aborted::AlreadyGone)
            }
            Err(e) => Err(self.sdk_err("aborting the upload of the dump", &e)),
        }
    }
}

/// The upload of one part, running while the next part is read.
type PartTask = AbortOnDrop<Result<CompletedPart, BackupError>>;

/// The parts uploaded so far, and the counts reported as they grow.
struct Done<'a> {
    parts: Vec<CompletedPart>,
    counts: UploadProgress,
    progress: &'a (dyn Fn(UploadProgress) + Send + Sync),
}

impl Done<'_> {
    /// Waits for the part in flight and counts it as uploaded.
    async fn land(&mut self, mut task: PartTask) -> Result<(), BackupError> {
        let part = (&mut task.0)
            .await
            .map_err(|e| BackupError(format!("upload task: {e}")))??;
        self.parts.push(part);
        self.counts.parts = self.parts.len() as u32;
        (self.progress)(self.counts);
        Ok(())
    }
}

/// Reads one part of up to `cap` bytes: shorter only at the end of the
/// dump. Every read is counted and reported.
async fn read_part(
    reader: &mut (impl AsyncRead + Unpin),
    cap: usize,
    done: &mut Done<'_>,
) -> Result<Vec<u8>, BackupError> {
    let mut buf = vec![0u8; cap];
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader
            .read(&mut buf[filled..])
            .await
            .map_err(|e| BackupError(format!("reading the dump: {e}")))?;
        if n == 0 {
            break;
        }
        filled += n;
        done.counts.bytes_read += n as u64;
        (done.progress)(done.counts);
    }
    buf.truncate(filled);
    Ok(buf)
}

/// A task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_parts_hold_390_gib() {
        assert_eq!(part_size(0), PART_SIZE);
        let total: u64 = (0..MAX_PARTS).map(|n| part_size(n) as u64).sum();
        assert!(total >= 390 << 30, "{total}");
        assert!((0..MAX_PARTS).all(|n| part_size(n) <= 64 << 20));
    }
}
