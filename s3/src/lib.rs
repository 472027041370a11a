//! stagesync's S3 sync engine: mirrors one `s3://bucket/prefix/` into
//! another, copying only what differs and deleting only what is safe to.
//!
//! - [`spec`]: what a copy is (locations, sides, filters, limits).
//! - [`backups`]: database backups kept in S3 (upload, manifest, list,
//!   verify, copy, prune).
//! - [`client`]: one S3 client per (profile, region, endpoint), reused.
//! - `listing`: page-by-page listing into bounded channels.
//! - `plan`: the sorted merge and the content comparison (pure logic).
//! - `head`: the lean HEAD that compares objects without the SDK's pipeline.
//! - `transfer`: server-side, multipart and streamed copies of one object.
//! - [`sync`]: the run itself — preflight, merge, copies with retries.
//! - `mirror`: the delete guard and batched deletes of extra objects.
//! - [`progress`]: events for a progress display, and the final report.
//! - [`error`]: errors that name the copy, side, bucket and profile.

#![forbid(unsafe_code)]

pub mod backups;
pub mod client;
pub mod error;
mod extras;
mod head;
pub mod https;
mod listing;
mod mirror;
mod plan;
pub mod progress;
pub mod spec;
pub mod sync;
mod transfer;

pub use client::ClientPool;
pub use error::{Side, SyncError, Target};
pub use plan::{META_MD5, META_SOURCE_ETAG};
pub use progress::{CopyMethod, CopyReason, Event, Progress, SyncReport, Tally};
pub use spec::{
    CopySpec, DeleteLimit, ListingMode, ProfileFilePaths, RetrySettings, S3Location, SideConfig,
};
pub use sync::{SyncOptions, sync, sync_with};
