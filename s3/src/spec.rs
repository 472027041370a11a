//! What one copy is: source and destination locations, how to reach each
//! side, and the knobs of a sync. Validated once, before any request.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};

use crate::error::SyncError;

/// S3 refuses multipart parts below 5 MiB (except the last one).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3 allows at most this many parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// Above this size a server-side copy must use `UploadPartCopy`.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 5 * 1024 * 1024 * 1024;
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
pub const DEFAULT_CONCURRENCY: usize = 64;

/// `s3://bucket/prefix/`. The prefix is kept with a trailing `/` (or empty
/// for a whole bucket) so `photos` never matches `photos-old/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub prefix: String,
}

impl S3Location {
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let prefix = prefix.trim_start_matches('/');
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        S3Location {
            bucket: bucket.into(),
            prefix,
        }
    }

    /// Parses `s3://bucket` or `s3://bucket/some/prefix/`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{url}` is not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.len() < 3 {
            return Err(format!("`{url}`: bucket names have at least 3 characters"));
        }
        Ok(S3Location::new(bucket, prefix))
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// How to reach one side. Credentials come only from the standard AWS
/// chain; a profile names an entry in the shared config/credentials files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SideConfig {
    pub profile: Option<String>,
    pub region: Option<String>,
    /// An S3-compatible endpoint (MinIO, GCS interop). Path-style addressing
    /// is used whenever this is set.
    pub endpoint: Option<String>,
}

impl SideConfig {
    pub fn profile_label(&self) -> String {
        self.profile
            .clone()
            .unwrap_or_else(|| "(default chain)".into())
    }
}

/// How a side is listed (see `listing`): both give the same keys in the
/// same order; they differ in requests and in what they cost the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListingMode {
    /// 1,000 keys a request, whatever the folders: the cheapest on S3.
    #[default]
    Flat,
    /// Folder by folder, several at once: for servers whose flat listing
    /// walks the whole store for each page (file-system backed ones).
    Tree,
}

impl std::str::FromStr for ListingMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "flat" => Ok(ListingMode::Flat),
            "tree" => Ok(ListingMode::Tree),
            other => Err(format!(
                "listing must be \"flat\" or \"tree\", not {other:?}"
            )),
        }
    }
}

/// The most a mirror may delete without `force_delete`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeleteLimit {
    pub max_count: Option<u64>,
    /// Percentage of the destination objects in scope.
    pub max_percent: Option<f64>,
}

impl Default for DeleteLimit {
    fn default() -> Self {
        DeleteLimit {
            max_count: Some(10_000),
            max_percent: Some(50.0),
        }
    }
}

/// Where the shared AWS files are, when not the standard places (tests,
/// or a CLI flag). `None` follows `AWS_CONFIG_FILE` and friends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProfileFilePaths {
    pub config: Option<PathBuf>,
    pub credentials: Option<PathBuf>,
}

/// Retry settings: the SDK retries each request (standard mode, which
/// classifies 503 SlowDown, other 5xx and connection errors as retryable);
/// stagesync retries a whole object on top, for failures the SDK cannot
/// replay (a body cut mid-stream, an exhausted retry quota).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetrySettings {
    pub request_attempts: u32,
    pub object_attempts: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            request_attempts: 5,
            object_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
        }
    }
}

/// One copy as the user describes it.
#[derive(Clone, Debug)]
pub struct CopySpec {
    /// Names the copy in errors and events ("media", "uploads to stage1").
    pub name: String,
    pub source: S3Location,
    pub dest: S3Location,
    pub source_side: SideConfig,
    pub dest_side: SideConfig,
    /// Globs on keys relative to the prefix; empty means everything.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Mirror: delete destination objects that are not in the source.
    pub delete: bool,
    pub delete_limit: DeleteLimit,
    pub force_delete: bool,
    /// Server-side copies above this size use multipart `UploadPartCopy`.
    pub multipart_threshold: u64,
    /// Part size for multipart uploads and copies; also the most one
    /// transfer holds in memory at a time.
    pub part_size: u64,
    pub concurrency: usize,
    pub listing: ListingMode,
    pub retry: RetrySettings,
    pub profile_files: ProfileFilePaths,
}

impl CopySpec {
    pub fn new(name: impl Into<String>, source: S3Location, dest: S3Location) -> Self {
        CopySpec {
            name: name.into(),
            source,
            dest,
            source_side: SideConfig::default(),
            dest_side: SideConfig::default(),
            include: Vec::new(),
            exclude: Vec::new(),
            delete: true,
            delete_limit: DeleteLimit::default(),
            force_delete: false,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            listing: ListingMode::default(),
            retry: RetrySettings::default(),
            profile_files: ProfileFilePaths::default(),
        }
    }

    /// One profile, region and endpoint for both sides, as the role did.
    pub fn with_both_sides(mut self, side: SideConfig) -> Self {
        self.source_side = side.clone();
        self.dest_side = side;
        self
    }

    /// Server-side copy needs the same credentials and endpoint on both sides.
    pub fn same_side(&self) -> bool {
        self.source_side == self.dest_side
    }

    pub(crate) fn validate(&self) -> Result<Filter, SyncError> {
        let invalid = |reason: String| SyncError::InvalidSpec {
            copy: self.name.clone(),
            reason,
        };
        if self.part_size < MIN_PART_SIZE {
            return Err(invalid(format!(
                "part size {} is below the S3 minimum of 5 MiB",
                self.part_size
            )));
        }
        if self.concurrency == 0 {
            return Err(invalid("concurrency must be at least 1".into()));
        }
        if let Some(why) = self.overlap() {
            return Err(invalid(why));
        }
        for bucket in [&self.source.bucket, &self.dest.bucket] {
            if bucket.len() < 3 {
                return Err(invalid(format!(
                    "bucket `{bucket}`: bucket names have at least 3 characters"
                )));
            }
        }
        Filter::new(&self.include, &self.exclude).map_err(invalid)
    }
}

impl CopySpec {
    /// Why the copy would write into its own source, if it would: the same
    /// bucket on the same server (bucket names are global on AWS, whatever
    /// the profiles and regions; with endpoints, the same endpoint) and
    /// prefixes one inside the other.
    pub fn overlap(&self) -> Option<String> {
        let server = |s: &SideConfig| {
            s.endpoint
                .as_deref()
                .map(|e| e.trim_end_matches('/').to_ascii_lowercase())
        };
        let same_bucket = self.source.bucket == self.dest.bucket
            && server(&self.source_side) == server(&self.dest_side);
        if !same_bucket || !overlaps(&self.source.prefix, &self.dest.prefix) {
            return None;
        }
        let side = |s: &SideConfig| match (&s.profile, &s.endpoint) {
            (Some(p), _) => format!(" (profile {p})"),
            (None, Some(e)) => format!(" (endpoint {e})"),
            (None, None) => String::new(),
        };
        Some(format!(
            "{}{} and {}{} are the same bucket{} and their prefixes overlap: a mirror would copy into its own source and delete from it",
            self.source,
            side(&self.source_side),
            self.dest,
            side(&self.dest_side),
            match self.source_side.endpoint {
                None => " on AWS (bucket names are global, whatever the profiles)",
                Some(_) => " on one endpoint",
            }
        ))
    }
}

fn overlaps(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Include/exclude globs compiled once. `*` does not cross `/`; use `**`.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Filter {
    fn new(include: &[String], exclude: &[String]) -> Result<Self, String> {
        Ok(Filter {
            include: build_set(include)?,
            exclude: build_set(exclude)?,
        })
    }

    pub(crate) fn accepts(&self, relative_key: &str) -> bool {
        let included = self
            .include
            .as_ref()
            .is_none_or(|set| set.is_match(relative_key));
        let excluded = self
            .exclude
            .as_ref()
            .is_some_and(|set| set.is_match(relative_key));
        included && !excluded
    }
}

fn build_set(patterns: &[String]) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("bad glob `{pattern}`: {e}"))?;
        builder.add(glob);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| format!("bad globs: {e}"))
}

/// Characters of a key that travel in a URL path (and in
/// `x-amz-copy-source`) as they are; every other byte is percent-encoded,
/// as the SDK encodes keys.
const KEY_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// A key percent-encoded for a URL path or `x-amz-copy-source` (`/` kept).
pub(crate) fn encode_key(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, KEY_KEPT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        let loc = S3Location::parse("s3://media-prod/uploads").unwrap();
        assert_eq!(loc.bucket, "media-prod");
        assert_eq!(loc.prefix, "uploads/");
        assert_eq!(S3Location::parse("s3://abc").unwrap().prefix, "");
        assert!(S3Location::parse("s3://ab/x").is_err());
        assert!(S3Location::parse("https://abc/x").is_err());
    }

    #[test]
    fn filters_relative_keys() {
        let f = Filter::new(&["**/*.jpg".into(), "*.jpg".into()], &["tmp/**".into()]).unwrap();
        assert!(f.accepts("a.jpg"));
        assert!(f.accepts("x/y/a.jpg"));
        assert!(!f.accepts("tmp/a.jpg"));
        assert!(!f.accepts("a.png"));
        let all = Filter::new(&[], &[]).unwrap();
        assert!(all.accepts("anything at all"));
    }

    #[test]
    fn the_same_bucket_through_two_profiles_is_still_one_bucket() {
        let mut spec = CopySpec::new(
            "media",
            S3Location::new("media", "uploads/"),
            S3Location::new("media", ""),
        );
        spec.source_side.profile = Some("prod".into());
        spec.dest_side.profile = Some("staging".into());
        spec.dest_side.region = Some("eu-west-1".into());
        let why = spec.overlap().expect("one bucket on AWS");
        assert!(
            why.contains("profile prod") && why.contains("profile staging"),
            "{why}"
        );
        // On two different servers the names are two buckets.
        spec.source_side.endpoint = Some("http://127.0.0.1:9000".into());
        assert!(spec.overlap().is_none());
        spec.dest_side.endpoint = Some("http://127.0.0.1:9000/".into());
        assert!(spec.overlap().is_some(), "the same endpoint");
        // Prefixes side by side do not overlap.
        spec.dest.prefix = "copies/".into();
        assert!(spec.overlap().is_none());
    }

    #[test]
    fn rejects_overlapping_prefixes() {
        let spec = CopySpec::new(
            "t",
            S3Location::new("bucket", "a/"),
            S3Location::new("bucket", "a/b/"),
        );
        assert!(matches!(
            spec.validate(),
            Err(SyncError::InvalidSpec { .. })
        ));
    }
}
