//! The errors a sync returns, each naming the copy, the side, the bucket and
//! the profile, and saying what to check. SDK errors are classified here
//! once so the rest of the engine can ask "is this worth retrying?".

use std::fmt;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::error::display::DisplayErrorContext;

/// Which end of a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Source,
    Dest,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Dest => "destination",
        })
    }
}

/// Where an error happened, for messages: copy, side, bucket, profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub copy: String,
    pub side: Side,
    /// The backup store rather than one end of a copy: `copy` and `side`
    /// then mean nothing to the user and are left out of messages.
    pub backups: bool,
    pub bucket: String,
    pub profile: String,
    pub endpoint: Option<String>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.backups {
            write!(
                f,
                "backups in bucket `{}` (profile {}",
                self.bucket, self.profile
            )?;
        } else {
            write!(
                f,
                "copy `{}`, {} bucket `{}` (profile {}",
                self.copy, self.side, self.bucket, self.profile
            )?;
        }
        if let Some(endpoint) = &self.endpoint {
            write!(f, ", endpoint {endpoint}")?;
        }
        f.write_str(")")
    }
}

/// Everything a sync can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("copy `{copy}`: {reason}")]
    InvalidSpec { copy: String, reason: String },

    #[error(
        "{target}: profile `{profile}` is not in the AWS config or credentials file; add it (`aws configure --profile {profile}`) or fix the name"
    )]
    UnknownProfile {
        target: Box<Target>,
        profile: String,
    },

    #[error("{target}: could not read the AWS profile files: {detail}")]
    ProfileFiles { target: Box<Target>, detail: String },

    #[error("{target}: the bucket does not exist; check its name, region and endpoint")]
    MissingBucket { target: Box<Target> },

    #[error(
        "{target}: access denied ({detail}); check the profile's credentials and that its policy allows this bucket"
    )]
    AccessDenied { target: Box<Target>, detail: String },

    #[error(
        "{target}: cannot reach the S3 endpoint ({detail}); check the endpoint URL and network"
    )]
    BadEndpoint { target: Box<Target>, detail: String },

    #[error("{target}: {operation} failed: {detail}")]
    Request {
        target: Box<Target>,
        operation: &'static str,
        detail: String,
    },

    #[error(
        "copy `{copy}`: {failed} object(s) failed to copy, so nothing was deleted; first failure: {first}"
    )]
    CopiesFailed {
        copy: String,
        failed: u64,
        first: String,
    },

    #[error(
        "copy `{copy}`: the mirror would delete {would_delete} of {dest_objects} destination objects, more than the limit ({limit}); nothing was deleted. Check the source prefix, raise the limit, or force the delete"
    )]
    DeleteGuard {
        copy: String,
        would_delete: u64,
        dest_objects: u64,
        limit: String,
    },

    #[error("copy `{copy}`: {failed} delete(s) failed on {target}; first failure: {first}")]
    DeletesFailed {
        copy: String,
        target: Box<Target>,
        failed: u64,
        first: String,
    },

    #[error(
        "copy `{copy}`: cannot keep the list of objects to delete in a temporary file ({detail}); nothing was deleted. Check the space and permissions of TMPDIR"
    )]
    ExtrasFile { copy: String, detail: String },
}

/// What kind of failure an SDK error is, as far as the engine cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    NotFound,
    Denied,
    Unreachable,
    /// Throttling, 5xx, resets, timeouts: worth trying again.
    Transient,
    Other,
}

/// An SDK error reduced to its kind and a full one-line description.
#[derive(Clone, Debug)]
pub(crate) struct Classified {
    pub kind: Kind,
    pub detail: String,
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>) -> Classified
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let detail = DisplayErrorContext(err).to_string();
    let kind = match err {
        SdkError::DispatchFailure(failure) => {
            if failure.is_io() || failure.is_timeout() {
                // A refused connection is how a wrong endpoint shows up;
                // a reset mid-run is transient. Callers that know they are
                // in preflight map this to `BadEndpoint`.
                Kind::Transient
            } else {
                Kind::Unreachable
            }
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Kind::Transient,
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            match (service.err().code(), status) {
                (Some("NoSuchBucket"), _) => Kind::NotFound,
                (Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"), _) => {
                    Kind::Denied
                }
                (Some("SlowDown" | "Throttling" | "RequestTimeout" | "InternalError"), _) => {
                    Kind::Transient
                }
                (_, 403) => Kind::Denied,
                (_, 404) => Kind::NotFound,
                (_, 429 | 500..=599) => Kind::Transient,
                _ => Kind::Other,
            }
        }
        _ => Kind::Other,
    };
    Classified { kind, detail }
}

/// Turns a classified preflight or listing failure into the user's error.
pub(crate) fn side_error(target: Target, operation: &'static str, c: Classified) -> SyncError {
    let target = Box::new(target);
    match c.kind {
        Kind::NotFound => SyncError::MissingBucket { target },
        Kind::Denied => SyncError::AccessDenied {
            target,
            detail: c.detail,
        },
        Kind::Unreachable => SyncError::BadEndpoint {
            target,
            detail: c.detail,
        },
        Kind::Transient if c.detail.contains("dispatch failure") => SyncError::BadEndpoint {
            target,
            detail: c.detail,
        },
        Kind::Transient | Kind::Other => SyncError::Request {
            target,
            operation,
            detail: c.detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_a_copy_or_the_backup_store() {
        let mut t = Target {
            copy: "media".into(),
            side: Side::Source,
            backups: false,
            bucket: "media-prod".into(),
            profile: "prod".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
        };
        assert_eq!(
            t.to_string(),
            "copy `media`, source bucket `media-prod` (profile prod, endpoint http://127.0.0.1:9000)"
        );
        t.backups = true;
        t.endpoint = None;
        assert_eq!(
            t.to_string(),
            "backups in bucket `media-prod` (profile prod)"
        );
    }
}
