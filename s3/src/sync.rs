//! One sync from start to end: preflight both buckets, merge the two
//! listings into work, copy with bounded concurrency and retries, then —
//! only if every copy succeeded and the guard allows — delete the extras.

use std::cmp::Ordering;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_s3::Client;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Built, ClientPool};
use crate::error::{Classified, Kind, Side, SyncError, Target, classify, side_error};
use crate::extras::Extras;
use crate::listing::{self, Listed, Listing};
use crate::mirror::{self, Deletes};
use crate::plan::{Verdict, compare, next_step};
use crate::progress::{CopyReason, Event, Progress, SyncReport};
use crate::spec::{CopySpec, Filter, RetrySettings};
use crate::transfer::Transfer;

/// How to run a sync.
#[derive(Clone, Copy, Debug)]
pub struct SyncOptions {
    /// List exactly what would be copied and deleted; change nothing.
    pub dry_run: bool,
    /// Keep the copied and deleted keys in the report. Off for huge syncs
    /// where only the counts matter.
    pub record_keys: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            dry_run: false,
            record_keys: true,
        }
    }
}

enum Work {
    Copy(Listed, CopyReason),
    /// Same size, ETags not comparable: read the recorded identities.
    Check(Listed, Listed),
}

/// Syncs one copy with a fresh client pool.
pub async fn sync(
    spec: &CopySpec,
    options: SyncOptions,
    progress: impl Fn(Event) + Send + Sync + 'static,
) -> Result<SyncReport, SyncError> {
    sync_with(&ClientPool::new(), spec, options, Arc::new(progress)).await
}

/// Syncs one copy, reusing clients from `pool` across copies.
pub async fn sync_with(
    pool: &ClientPool,
    spec: &CopySpec,
    options: SyncOptions,
    progress: Progress,
) -> Result<SyncReport, SyncError> {
    let filter = spec.validate()?;
    let spec = Arc::new(spec.clone());
    let ends = Ends::connect(pool, &spec).await?;
    tracing::info!(copy = %spec.name, source = %spec.source, dest = %spec.dest, dry_run = options.dry_run, "sync starting");
    let source_list = ends.list(Side::Source, &spec, filter.clone(), &progress);
    let dest_list = ends.list(Side::Dest, &spec, filter, &progress);
    let run = Run::new(spec.clone(), ends, options, progress);

    let (work_tx, work_rx) = mpsc::channel(spec.concurrency * 2);
    let workers =
        ReceiverStream::new(work_rx).for_each_concurrent(spec.concurrency, |work| run.handle(work));
    let (merged, ()) = tokio::join!(run.merge(source_list, dest_list, work_tx), workers);
    let extras = merged?;

    let mut report = run.take_report();
    run.check_copies(&report)?;
    if spec.delete && !extras.is_empty() {
        run.delete(extras, &mut report).await?;
    }
    report.copied_keys.sort();
    report.deleted_keys.sort();
    tracing::info!(
        copy = %spec.name,
        copied = report.copied.objects,
        copied_bytes = report.copied.bytes,
        skipped = report.skipped.objects,
        deleted = report.deleted.objects,
        dry_run = options.dry_run,
        "sync finished"
    );
    Ok(report)
}

/// Both ends of a copy, with clients that reached their buckets.
struct Ends {
    source: Built,
    dest: Built,
    source_target: Target,
    dest_target: Target,
}

impl Ends {
    /// Clients for both sides, each bucket checked before any work.
    async fn connect(pool: &ClientPool, spec: &CopySpec) -> Result<Ends, SyncError> {
        let source_target = target(spec, Side::Source);
        let dest_target = target(spec, Side::Dest);
        let files = &spec.profile_files;
        let source = pool
            .built(&spec.source_side, files, spec.retry, &source_target)
            .await?;
        let dest = pool
            .built(&spec.dest_side, files, spec.retry, &dest_target)
            .await?;
        preflight(&source.client, &source_target).await?;
        preflight(&dest.client, &dest_target).await?;
        Ok(Ends {
            source,
            dest,
            source_target,
            dest_target,
        })
    }

    /// One side's listing, running ahead of the merge.
    fn list(&self, side: Side, spec: &CopySpec, filter: Filter, progress: &Progress) -> Listing {
        let (built, location, target) = match side {
            Side::Source => (&self.source, &spec.source, &self.source_target),
            Side::Dest => (&self.dest, &spec.dest, &self.dest_target),
        };
        listing::spawn(
            built.client.clone(),
            location.clone(),
            filter,
            spec.listing,
            spec.retry,
            target.clone(),
            progress.clone(),
        )
    }
}

fn target(spec: &CopySpec, side: Side) -> Target {
    let (location, config) = match side {
        Side::Source => (&spec.source, &spec.source_side),
        Side::Dest => (&spec.dest, &spec.dest_side),
    };
    Target {
        copy: spec.name.clone(),
        side,
        backups: false,
        bucket: location.bucket.clone(),
        profile: config.profile_label(),
        endpoint: config.endpoint.clone(),
    }
}

/// Checks a bucket is there and readable before any work, so a wrong name
/// or credential fails fast with a message naming the side.
async fn preflight(client: &Client, target: &Target) -> Result<(), SyncError> {
    client
        .head_bucket()
        .bucket(&target.bucket)
        .send()
        .await
        .map_err(|e| side_error(target.clone(), "HeadBucket", classify(&e)))?;
    Ok(())
}

pub(crate) fn backoff(retry: &RetrySettings) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(retry.initial_backoff)
        .with_max_delay(retry.max_backoff)
        .with_max_times(retry.object_attempts.saturating_sub(1))
}

pub(crate) fn retryable(err: &Classified) -> bool {
    matches!(err.kind, Kind::Transient | Kind::Unreachable)
}

struct Run {
    transfer: Transfer,
    /// The destination as errors name it, for the deletes.
    dest_target: Target,
    options: SyncOptions,
    progress: Progress,
    report: Mutex<SyncReport>,
    first_failure: Mutex<Option<String>>,
}

impl Run {
    fn new(spec: Arc<CopySpec>, ends: Ends, options: SyncOptions, progress: Progress) -> Run {
        Run {
            transfer: Transfer {
                spec: spec.clone(),
                source: ends.source.client,
                dest: ends.dest.client,
                slots: Arc::new(Semaphore::new(spec.concurrency)),
                head_etags: [AtomicBool::new(true), AtomicBool::new(true)],
                lean: Default::default(),
                credentials: [ends.source.credentials, ends.dest.credentials],
            },
            dest_target: ends.dest_target,
            options,
            progress,
            report: Mutex::new(SyncReport {
                copy: spec.name.clone(),
                dry_run: options.dry_run,
                ..SyncReport::default()
            }),
            first_failure: Mutex::new(None),
        }
    }

    /// Fails the sync when any copy failed: then nothing may be deleted.
    fn check_copies(&self, report: &SyncReport) -> Result<(), SyncError> {
        if report.failed.objects == 0 {
            return Ok(());
        }
        let first = self
            .first_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        Err(SyncError::CopiesFailed {
            copy: self.transfer.spec.name.clone(),
            failed: report.failed.objects,
            first,
        })
    }

    /// Deletes the destination's extras, if the guard allows that many.
    async fn delete(&self, extras: Extras, report: &mut SyncReport) -> Result<(), SyncError> {
        let spec = &self.transfer.spec;
        mirror::guard(spec, extras.len(), report.listed_dest.objects)?;
        let job = Deletes {
            spec,
            dest: &self.transfer.dest,
            target: &self.dest_target,
            options: self.options,
            progress: &self.progress,
        };
        mirror::delete_extras(&job, extras, report).await
    }

    fn with_report(&self, f: impl FnOnce(&mut SyncReport)) {
        f(&mut self.report.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn take_report(&self) -> SyncReport {
        std::mem::take(&mut *self.report.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Walks both sorted listings in step. Returns the destination objects
    /// the source does not have (a few thousand in memory, the rest in a
    /// temporary file).
    async fn merge(
        &self,
        mut source: Listing,
        mut dest: Listing,
        work: mpsc::Sender<Work>,
    ) -> Result<Extras, SyncError> {
        let mut extras = Extras::default();
        let mut s = next(&mut source, None, &self.transfer.spec, Side::Source).await?;
        let mut d = next(&mut dest, None, &self.transfer.spec, Side::Dest).await?;
        while let Some(order) = next_step(s.as_ref(), d.as_ref()) {
            let (take_source, take_dest) = match order {
                Ordering::Less => (true, false),
                Ordering::Greater => (false, true),
                Ordering::Equal => (true, true),
            };
            let source_item = if take_source { s.take() } else { None };
            let dest_item = if take_dest { d.take() } else { None };
            if let Some(item) = &source_item {
                self.with_report(|r| r.listed_source.add(item.size));
            }
            if let Some(item) = &dest_item {
                self.with_report(|r| r.listed_dest.add(item.size));
            }
            let job = self.decide(source_item.as_ref(), dest_item.clone(), &mut extras)?;
            if let Some(job) = job
                && work.send(job).await.is_err()
            {
                break;
            }
            if take_source {
                s = next(
                    &mut source,
                    source_item.as_ref(),
                    &self.transfer.spec,
                    Side::Source,
                )
                .await?;
            }
            if take_dest {
                d = next(
                    &mut dest,
                    dest_item.as_ref(),
                    &self.transfer.spec,
                    Side::Dest,
                )
                .await?;
            }
        }
        Ok(extras)
    }

    /// What one key needs: a copy, a closer look, nothing, or (when only
    /// the destination has it) a place among the extras to delete.
    fn decide(
        &self,
        source: Option<&Listed>,
        dest: Option<Listed>,
        extras: &mut Extras,
    ) -> Result<Option<Work>, SyncError> {
        Ok(match (source, dest) {
            (Some(src), None) => Some(Work::Copy(src.clone(), CopyReason::Missing)),
            (Some(src), Some(dst)) => match compare(src, &dst) {
                Verdict::Same => {
                    self.skipped(src);
                    None
                }
                Verdict::Copy(reason) => Some(Work::Copy(src.clone(), reason)),
                Verdict::AskMetadata => Some(Work::Check(src.clone(), dst)),
            },
            (None, Some(dst)) => {
                if self.transfer.spec.delete {
                    extras.push(dst).map_err(|e| SyncError::ExtrasFile {
                        copy: self.transfer.spec.name.clone(),
                        detail: e.to_string(),
                    })?;
                }
                None
            }
            (None, None) => None,
        })
    }

    fn skipped(&self, object: &Listed) {
        self.with_report(|r| r.skipped.add(object.size));
        (self.progress)(Event::Skipped {
            key: object.key.clone(),
            bytes: object.size,
        });
    }

    async fn handle(&self, work: Work) {
        match work {
            Work::Copy(object, reason) => self.copy(object, reason).await,
            Work::Check(source, dest) => {
                let retry = &self.transfer.spec.retry;
                let differs = (|| self.transfer.differs_by_metadata(&source, &dest))
                    .retry(backoff(retry))
                    .when(retryable)
                    .await;
                match differs {
                    Ok(false) => self.skipped(&source),
                    Ok(true) => self.copy(source, CopyReason::ContentDiffers).await,
                    Err(e) => self.failed(&source, &e),
                }
            }
        }
    }

    async fn copy(&self, object: Listed, reason: CopyReason) {
        if self.options.dry_run {
            self.count_copied(&object);
            (self.progress)(Event::WouldCopy {
                key: object.key,
                bytes: object.size,
                reason,
            });
            return;
        }
        let copied = (|| self.transfer.copy(&object))
            .retry(backoff(&self.transfer.spec.retry))
            .when(retryable)
            .notify(|e, _| {
                tracing::debug!(key = %object.key, error = %e, "copy failed, retrying");
                (self.progress)(Event::Retrying {
                    key: object.key.clone(),
                    error: e.detail.clone(),
                });
            })
            .await;
        match copied {
            Ok(method) => {
                self.count_copied(&object);
                (self.progress)(Event::Copied {
                    key: object.key,
                    bytes: object.size,
                    method,
                    reason,
                });
            }
            Err(e) => self.failed(&object, &e),
        }
    }

    /// Counts a copied (or, in a dry run, copyable) object in the report.
    fn count_copied(&self, object: &Listed) {
        let record = self.options.record_keys;
        self.with_report(|r| {
            r.copied.add(object.size);
            if record {
                r.copied_keys.push(object.key.clone());
            }
        });
    }

    fn failed(&self, object: &Listed, err: &Classified) {
        tracing::warn!(copy = %self.transfer.spec.name, key = %object.key, error = %err, "copy failed");
        self.with_report(|r| r.failed.add(object.size));
        let mut first = self
            .first_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(format!("`{}`: {}", object.key, err.detail));
        }
        drop(first);
        (self.progress)(Event::Failed {
            key: object.key.clone(),
            error: err.detail.clone(),
        });
    }
}

/// The next listed object of one side, refusing a listing that goes
/// backwards: the merge (and so every delete) relies on key order.
async fn next(
    listing: &mut Listing,
    previous: Option<&Listed>,
    spec: &CopySpec,
    side: Side,
) -> Result<Option<Listed>, SyncError> {
    let item = listing.recv().await.transpose()?;
    if let (Some(prev), Some(item)) = (previous, &item)
        && item.key.as_str() <= prev.key.as_str()
    {
        return Err(SyncError::Request {
            target: Box::new(target(spec, side)),
            operation: "ListObjectsV2",
            detail: format!(
                "the server listed `{}` after `{}`, out of key order; refusing to compare or delete",
                item.key, prev.key
            ),
        });
    }
    Ok(item)
}
