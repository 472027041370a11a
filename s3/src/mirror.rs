//! The mirror half of a sync: the guard against mass deletion and the
//! batched deletes, run only after every copy of the copy succeeded.

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use backon::Retryable;

use crate::error::{SyncError, Target, classify};
use crate::extras::Extras;
use crate::listing::Listed;
use crate::progress::{Event, Progress, SyncReport};
use crate::spec::CopySpec;
use crate::sync::{SyncOptions, backoff, retryable};

/// DeleteObjects takes at most 1,000 keys.
const DELETE_BATCH: usize = 1_000;

/// Refuses a mirror that would delete more than the spec allows.
pub(crate) fn guard(
    spec: &CopySpec,
    would_delete: u64,
    dest_objects: u64,
) -> Result<(), SyncError> {
    if spec.force_delete {
        return Ok(());
    }
    let limit = spec.delete_limit;
    let over_count = limit.max_count.is_some_and(|max| would_delete > max);
    let over_percent = limit
        .max_percent
        .is_some_and(|pct| would_delete as f64 * 100.0 > pct * dest_objects as f64);
    if over_count || over_percent {
        let count = limit
            .max_count
            .map_or("any number".into(), |c| c.to_string());
        let percent = limit
            .max_percent
            .map_or("any share".into(), |p| format!("{p}%"));
        return Err(SyncError::DeleteGuard {
            copy: spec.name.clone(),
            would_delete,
            dest_objects,
            limit: format!("at most {count} objects and {percent} of the destination"),
        });
    }
    Ok(())
}

/// Everything the deletes need, borrowed from the run.
#[derive(Clone, Copy)]
pub(crate) struct Deletes<'a> {
    pub spec: &'a CopySpec,
    pub dest: &'a Client,
    pub target: &'a Target,
    pub options: SyncOptions,
    pub progress: &'a Progress,
}

/// Deletes `extras` from the destination in batches, or in a dry run only
/// reports them.
pub(crate) async fn delete_extras(
    job: &Deletes<'_>,
    extras: Extras,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let spill_error = |e: std::io::Error| SyncError::ExtrasFile {
        copy: job.spec.name.clone(),
        detail: e.to_string(),
    };
    let mut batches = extras.into_batches(DELETE_BATCH).map_err(spill_error)?;
    let (mut failed, mut first) = (0u64, None);
    loop {
        let batch = batches.next_batch().map_err(spill_error)?;
        if batch.is_empty() {
            break;
        }
        if job.options.dry_run {
            for object in &batch {
                job.deleted(object, report);
                (job.progress)(Event::WouldDelete {
                    key: object.key.clone(),
                });
            }
            continue;
        }
        let errors = delete_batch(job, &batch).await?;
        for object in &batch {
            match errors.iter().find(|(key, _)| *key == object.key) {
                Some((key, detail)) => {
                    failed += 1;
                    first.get_or_insert_with(|| format!("`{key}`: {detail}"));
                    (job.progress)(Event::Failed {
                        key: key.clone(),
                        error: detail.clone(),
                    });
                }
                None => {
                    job.deleted(object, report);
                    (job.progress)(Event::Deleted {
                        key: object.key.clone(),
                    });
                }
            }
        }
    }
    if failed > 0 {
        return Err(SyncError::DeletesFailed {
            copy: job.spec.name.clone(),
            target: Box::new(job.target.clone()),
            failed,
            first: first.unwrap_or_default(),
        });
    }
    Ok(())
}

impl Deletes<'_> {
    /// Counts a deleted (or, in a dry run, deletable) object in the report.
    fn deleted(&self, object: &Listed, report: &mut SyncReport) {
        report.deleted.add(object.size);
        if self.options.record_keys {
            report.deleted_keys.push(object.key.clone());
        }
    }

    fn request_error(&self, detail: impl ToString) -> SyncError {
        SyncError::Request {
            target: Box::new(self.target.clone()),
            operation: "DeleteObjects",
            detail: detail.to_string(),
        }
    }
}

/// Deletes one batch (with retries). Returns the keys that were not
/// deleted, relative to the destination prefix, each with why.
async fn delete_batch(
    job: &Deletes<'_>,
    batch: &[Listed],
) -> Result<Vec<(String, String)>, SyncError> {
    let Deletes { spec, dest, .. } = *job;
    let identifiers = batch
        .iter()
        .map(|o| {
            ObjectIdentifier::builder()
                .key(format!("{}{}", spec.dest.prefix, o.key))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| job.request_error(e))?;
    let delete = Delete::builder()
        .set_objects(Some(identifiers))
        .quiet(true)
        .build()
        .map_err(|e| job.request_error(e))?;
    let sent = (|| async {
        dest.delete_objects()
            .bucket(&spec.dest.bucket)
            .delete(delete.clone())
            .send()
            .await
            .map_err(|e| classify(&e))
    })
    .retry(backoff(&spec.retry))
    .when(retryable)
    .await;
    let prefix = spec.dest.prefix.as_str();
    Ok(match sent {
        Ok(out) => out
            .errors()
            .iter()
            .map(|e| {
                let key = e.key().unwrap_or_default();
                let relative = key.strip_prefix(prefix).unwrap_or(key);
                let why = format!(
                    "{}: {}",
                    e.code().unwrap_or("error"),
                    e.message().unwrap_or("")
                );
                (relative.to_string(), why)
            })
            .collect(),
        Err(e) => batch
            .iter()
            .map(|o| (o.key.clone(), e.detail.clone()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DeleteLimit, S3Location};

    fn spec(max_count: Option<u64>, max_percent: Option<f64>, force: bool) -> CopySpec {
        let mut spec = CopySpec::new("t", S3Location::new("src", ""), S3Location::new("dst", ""));
        spec.delete_limit = DeleteLimit {
            max_count,
            max_percent,
        };
        spec.force_delete = force;
        spec
    }

    #[test]
    fn guard_counts_and_percentages() {
        assert!(guard(&spec(Some(2), None, false), 2, 100).is_ok());
        assert!(guard(&spec(Some(2), None, false), 3, 100).is_err());
        assert!(guard(&spec(None, Some(10.0), false), 10, 100).is_ok());
        assert!(guard(&spec(None, Some(10.0), false), 11, 100).is_err());
        assert!(guard(&spec(Some(1), Some(1.0), true), 99, 100).is_ok());
        assert!(guard(&spec(None, None, false), 1_000_000, 1).is_ok());
    }
}
