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

use std::fmt;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Side, Target, classify};
use crate::spec::{ProfileFilePaths, RetrySettings, S3Location, SideConfig, encode_key};
use crate::{ClientPool, SyncError};

/// Upload part size: S3's minimum is 5 MiB; 10,000 parts of 16 MiB allow
/// dumps up to 156 GiB, and the part size grows past that (see `part_size`).
pub const PART_SIZE: usize = 16 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
const MANIFEST_SUFFIX: &str = ".manifest.json";
/// CopyObject copies up to 5 GiB; bigger objects are copied in parts.
const COPY_LIMIT: u64 = 5 * 1024 * 1024 * 1024;
const COPY_PART: u64 = 1024 * 1024 * 1024;
const DUMP_SUFFIX: &str = ".dump";

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

/// How an abort of an upload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aborted {
    /// The upload and its parts are gone now.
    Now,
    /// The server knows no such upload: completed or aborted before.
    AlreadyGone,
}

/// What a manifest records about one backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are allowed: a manifest written by a newer agent (with
// fields added since) must still read as a backup here.
pub struct Manifest {
    pub format: u32,
    pub database: String,
    /// The dump's file name, next to the manifest.
    pub dump: String,
    pub size: u64,
    pub sha256: String,
    /// `YYYY-MM-DDTHH-MM-SSZ`, as in the names.
    pub taken: String,
    /// The agent that took it.
    pub host: String,
    pub pg_dump_version: String,
    pub server_version: String,
    /// `pg_database_size` when the backup was taken: what a restore needs
    /// on disk. 0 in manifests written before it was recorded.
    #[serde(default)]
    pub database_size: u64,
}

/// One backup found in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub manifest_key: String,
    pub dump_key: String,
    pub manifest: Manifest,
}

/// What a listing of one database's folder found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Complete backups, oldest first.
    pub complete: Vec<Listed>,
    /// Dump objects without a manifest (an upload that did not finish, or
    /// whose manifest was deleted first by retention).
    pub incomplete: Vec<String>,
    /// Manifests that could not be read.
    pub unreadable: Vec<(String, String)>,
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

/// `2026-11-25T01-02-03Z` for a time.
pub fn stamp(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
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

    fn err(&self, op: &str, detail: impl fmt::Display) -> BackupError {
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

    fn sdk_err<E>(
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

    /// The folder of one database's backups.
    pub fn folder(&self, database: &str) -> String {
        format!("{}{database}/", self.location.prefix)
    }

    /// Dump and manifest keys of a backup taken at `taken` by `host`.
    pub fn keys(&self, database: &str, taken: &str, host: &str) -> (String, String) {
        let base = format!("{}{taken}.{host}", self.folder(database));
        (
            format!("{base}{DUMP_SUFFIX}"),
            format!("{base}{MANIFEST_SUFFIX}"),
        )
    }

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
        let mut counts = UploadProgress::default();
        let mut parts: Vec<CompletedPart> = Vec::new();
        // Aborted when dropped: a cancelled upload leaves no part task
        // running after the caller aborts the upload.
        let mut in_flight: Option<AbortOnDrop<Result<CompletedPart, BackupError>>> = None;
        loop {
            let cap = part_size(parts.len() as u64);
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
                counts.bytes_read += n as u64;
                progress(counts);
            }
            buf.truncate(filled);
            // The first part may be empty (an empty dump); later ones not.
            if filled == 0 && (in_flight.is_some() || !parts.is_empty()) {
                break;
            }
            sha.update(&buf);
            if let Some(mut task) = in_flight.take() {
                let part = (&mut task.0)
                    .await
                    .map_err(|e| BackupError(format!("upload task: {e}")))??;
                parts.push(part);
                counts.parts = parts.len() as u32;
                progress(counts);
            }
            let number = parts.len() as i32 + 1;
            if number as u64 > MAX_PARTS {
                return Err(self.err(
                    "uploading the dump",
                    format!("more than {MAX_PARTS} parts: the dump is larger than S3 allows"),
                ));
            }
            let last = filled < cap;
            let store = self.clone();
            let up = upload.clone();
            let len = buf.len() as u64;
            in_flight = Some(AbortOnDrop(tokio::spawn(async move {
                store.upload_part(&up, number, buf).await
            })));
            counts.bytes_uploaded += len;
            if last {
                break;
            }
        }
        if let Some(mut task) = in_flight.take() {
            let part = (&mut task.0)
                .await
                .map_err(|e| BackupError(format!("upload task: {e}")))??;
            parts.push(part);
            counts.parts = parts.len() as u32;
            progress(counts);
        }
        Ok(Parts {
            parts,
            size: counts.bytes_read,
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
    async fn finish_upload(
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

    /// Writes a manifest: the backup becomes visible.
    pub async fn put_manifest(&self, key: &str, m: &Manifest) -> Result<(), BackupError> {
        let body = serde_json::to_vec_pretty(m)
            .map_err(|e| BackupError(format!("writing the manifest: {e}")))?;
        self.client
            .put_object()
            .bucket(&self.location.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.sdk_err("writing the manifest", &e))?;
        Ok(())
    }

    /// Every object key under `prefix`, in key order.
    async fn keys_under(&self, prefix: &str) -> Result<Vec<String>, BackupError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.location.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.sdk_err("listing backups", &e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        Ok(keys)
    }

    /// The databases with a folder under the prefix.
    pub async fn databases(&self) -> Result<Vec<String>, BackupError> {
        let mut dbs = std::collections::BTreeSet::new();
        for key in self.keys_under(&self.location.prefix).await? {
            if let Some(rest) = key.strip_prefix(&self.location.prefix)
                && let Some((db, _)) = rest.split_once('/')
            {
                dbs.insert(db.to_string());
            }
        }
        Ok(dbs.into_iter().collect())
    }

    /// Reads and parses one manifest.
    pub async fn manifest(&self, key: &str) -> Result<Manifest, BackupError> {
        let bytes = self.get_bytes(key).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.err(&format!("reading the manifest {key}"), e))
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, BackupError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.sdk_err(&format!("reading {key}"), &e))?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| self.err(&format!("reading {key}"), e))?;
        Ok(data.into_bytes().to_vec())
    }

    /// One database's backups.
    pub async fn list(&self, database: &str) -> Result<Found, BackupError> {
        let folder = self.folder(database);
        // Only the folder's own objects: not those of a database whose name
        // continues with '/' below it.
        let keys: Vec<String> = self
            .keys_under(&folder)
            .await?
            .into_iter()
            .filter(|k| {
                k.strip_prefix(&folder)
                    .is_some_and(|rest| !rest.contains('/'))
            })
            .collect();
        let set: std::collections::BTreeSet<&String> = keys.iter().collect();
        let mut found = Found::default();
        for key in &keys {
            if let Some(base) = key.strip_suffix(MANIFEST_SUFFIX) {
                let dump_key = format!("{base}{DUMP_SUFFIX}");
                let dump_name = dump_key.rsplit('/').next().unwrap_or_default();
                match self.manifest(key).await {
                    Ok(m) if m.database != database || m.dump != dump_name => {
                        found.unreadable.push((
                            key.clone(),
                            format!(
                                "it describes {:?} of database {:?}, not this folder's {dump_name:?} of {database:?}",
                                m.dump, m.database
                            ),
                        ))
                    }
                    Ok(m) if set.contains(&dump_key) => found.complete.push(Listed {
                        manifest_key: key.clone(),
                        dump_key,
                        manifest: m,
                    }),
                    Ok(_) => found
                        .unreadable
                        .push((key.clone(), "its dump object is missing".into())),
                    Err(e) => found.unreadable.push((key.clone(), e.to_string())),
                }
            } else if let Some(base) = key.strip_suffix(DUMP_SUFFIX)
                && !set.contains(&format!("{base}{MANIFEST_SUFFIX}"))
            {
                found.incomplete.push(key.clone());
            }
        }
        // Names start with the time taken, so key order is time order.
        found
            .complete
            .sort_by(|a, b| a.manifest.taken.cmp(&b.manifest.taken));
        Ok(found)
    }

    /// Streams a dump object.
    pub async fn open_dump(&self, key: &str) -> Result<ByteStream, BackupError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.sdk_err(&format!("reading {key}"), &e))?;
        Ok(out.body)
    }

    /// Re-reads a backup's dump and checks its size and SHA-256 against the
    /// manifest. `Ok(None)` when it matches, `Ok(Some(why))` when not.
    pub async fn verify(&self, b: &Listed) -> Result<Option<String>, BackupError> {
        let mut body = self.open_dump(&b.dump_key).await?.into_async_read();
        let mut sha = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = body
                .read(&mut buf)
                .await
                .map_err(|e| self.err(&format!("reading {}", b.dump_key), e))?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            size += n as u64;
        }
        let digest = hex::encode(sha.finalize());
        Ok(if size != b.manifest.size {
            Some(format!(
                "{} bytes, the manifest says {}",
                size, b.manifest.size
            ))
        } else if digest != b.manifest.sha256 {
            Some(format!(
                "SHA-256 {digest}, the manifest says {}",
                b.manifest.sha256
            ))
        } else {
            None
        })
    }

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
                other
                    .client
                    .copy_object()
                    .bucket(&other.location.bucket)
                    .key(to)
                    .copy_source(&source)
                    .send()
                    .await
                    .map_err(|e| other.sdk_err(&op, &e))?;
                continue;
            }
            let started = other.start_upload(to).await?;
            let copied = async {
                let mut parts = Vec::new();
                let mut offset = 0u64;
                while offset < size {
                    let end = (offset + COPY_PART).min(size) - 1;
                    let number = parts.len() as i32 + 1;
                    let out = other
                        .client
                        .upload_part_copy()
                        .bucket(&other.location.bucket)
                        .key(to)
                        .upload_id(&started.upload_id)
                        .part_number(number)
                        .copy_source(&source)
                        .copy_source_range(format!("bytes={offset}-{end}"))
                        .send()
                        .await
                        .map_err(|e| other.sdk_err(&op, &e))?;
                    let etag = out
                        .copy_part_result()
                        .and_then(|r| r.e_tag())
                        .unwrap_or_default()
                        .to_string();
                    parts.push(
                        CompletedPart::builder()
                            .part_number(number)
                            .e_tag(etag)
                            .build(),
                    );
                    offset = end + 1;
                }
                other.finish_upload(&started, parts, &op).await
            }
            .await;
            if let Err(e) = copied {
                let _ = other.abort_upload(&started).await;
                return Err(e);
            }
        }
        Ok(manifest)
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
    fn stamps_sort_in_time_order() {
        let t = time::macros::datetime!(2026-11-05 01:02:03 UTC);
        assert_eq!(stamp(t), "2026-11-05T01-02-03Z");
        let later = time::macros::datetime!(2026-11-15 00:00:00 UTC);
        assert!(stamp(t) < stamp(later));
    }

    #[test]
    fn ten_thousand_parts_hold_390_gib() {
        assert_eq!(part_size(0), PART_SIZE);
        let total: u64 = (0..MAX_PARTS).map(|n| part_size(n) as u64).sum();
        assert!(total >= 390 << 30, "{total}");
        assert!((0..MAX_PARTS).all(|n| part_size(n) <= 64 << 20));
    }

    #[test]
    fn copy_source_keys_are_encoded() {
        assert_eq!(encode_key("a b/c+d.dump"), "a%20b/c%2Bd.dump");
    }
}
