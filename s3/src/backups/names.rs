//! Where a backup's two objects go and what its manifest says: the names
//! sort by the time taken, and the manifest is what makes a dump a backup.

use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};

use super::{BackupError, Store};

pub(super) const MANIFEST_SUFFIX: &str = ".manifest.json";
pub(super) const DUMP_SUFFIX: &str = ".dump";

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
    /// The database has masking rules on the agent that took it, and this
    /// backup holds its rows unmasked: only an agent whose policy says it
    /// may receive unmasked data restores it.
    #[serde(default)]
    pub unmasked_personal_data: bool,
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

impl Store {
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

    /// The manifest key next to a dump's key, if it is one.
    pub fn manifest_key_of(dump_key: &str) -> Option<String> {
        dump_key
            .strip_suffix(DUMP_SUFFIX)
            .map(|base| format!("{base}{MANIFEST_SUFFIX}"))
    }

    /// Reads and parses one manifest.
    pub async fn manifest(&self, key: &str) -> Result<Manifest, BackupError> {
        let bytes = self.get_bytes(key).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.err(&format!("reading the manifest {key}"), e))
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
}
