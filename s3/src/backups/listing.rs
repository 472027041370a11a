//! Finding backups: the databases under a prefix, one database's complete
//! and incomplete backups, reading a dump, and verifying it against its
//! manifest.

use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::names::{DUMP_SUFFIX, MANIFEST_SUFFIX, Manifest};
use super::{BackupError, Store};

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

/// The most a manifest may weigh: a few hundred bytes in practice.
const MAX_SMALL_OBJECT: usize = 1 << 20;

impl Store {
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

    /// A whole object, read into memory (a manifest).
    pub(super) async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, BackupError> {
        use tokio::io::AsyncReadExt;
        let out = self.get_object(key).await?;
        let too_big = || {
            BackupError(format!(
                "{key} is larger than {MAX_SMALL_OBJECT} bytes, far more than a manifest holds: not read (remove it, or check who writes into this place)"
            ))
        };
        if out
            .content_length()
            .is_some_and(|n| n > MAX_SMALL_OBJECT as i64)
        {
            return Err(too_big());
        }
        // A server that sent no length, or the wrong one, is read only so far.
        let mut data = Vec::new();
        out.body
            .into_async_read()
            .take(MAX_SMALL_OBJECT as u64 + 1)
            .read_to_end(&mut data)
            .await
            .map_err(|e| self.err(&format!("reading {key}"), e))?;
        if data.len() > MAX_SMALL_OBJECT {
            return Err(too_big());
        }
        Ok(data)
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
        Ok(self.get_object(key).await?.body)
    }

    /// Starts reading an object: its length, if the server says, and body.
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, BackupError> {
        self.client
            .get_object()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.sdk_err(&format!("reading {key}"), &e))
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
}
