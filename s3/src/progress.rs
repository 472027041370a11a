//! Progress events for a CLI to draw, and the report a sync returns.

use std::sync::Arc;

use crate::error::Side;

/// How an object was (or would be) copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// `CopyObject` inside one endpoint: no bytes through stagesync.
    ServerSide,
    /// `UploadPartCopy` parts inside one endpoint, for objects above the threshold.
    ServerSideMultipart,
    /// GET then PUT, held in memory one object at a time.
    Streamed,
    /// Ranged GETs into `UploadPart`, one part in memory at a time per slot.
    StreamedMultipart,
}

/// Why an object is copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyReason {
    Missing,
    SizeDiffers,
    ContentDiffers,
}

/// One thing that happened. Keys are relative to the copy's prefixes.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A page of listing arrived (after include/exclude).
    Listed {
        side: Side,
        objects: u64,
        bytes: u64,
    },
    Copied {
        key: String,
        bytes: u64,
        method: CopyMethod,
        reason: CopyReason,
    },
    /// Dry run: this object would be copied.
    WouldCopy {
        key: String,
        bytes: u64,
        reason: CopyReason,
    },
    /// Already identical at the destination.
    Skipped {
        key: String,
        bytes: u64,
    },
    Deleted {
        key: String,
    },
    /// Dry run: this destination object would be deleted.
    WouldDelete {
        key: String,
    },
    /// A copy or delete failed for good (after retries).
    Failed {
        key: String,
        error: String,
    },
    /// An attempt failed and will be tried again.
    Retrying {
        key: String,
        error: String,
    },
}

/// Where events go. Called from many tasks at once, so keep it quick.
pub type Progress = Arc<dyn Fn(Event) + Send + Sync>;

/// Objects and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub objects: u64,
    pub bytes: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes += bytes;
    }
}

/// What a sync did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    pub copy: String,
    pub dry_run: bool,
    pub listed_source: Tally,
    pub listed_dest: Tally,
    /// Copied, or in a dry run, to be copied.
    pub copied: Tally,
    pub skipped: Tally,
    /// Deleted, or in a dry run, to be deleted.
    pub deleted: Tally,
    pub failed: Tally,
    /// Relative keys, sorted; filled only with `SyncOptions::record_keys`.
    pub copied_keys: Vec<String>,
    pub deleted_keys: Vec<String>,
}
