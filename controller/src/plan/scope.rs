//! Errors located under one dotted key of the plan file, so that the steps
//! validating a pair or a copy name only the key below it.

use std::ops::Range;

use stagesync_proto::tomlfile::{ConfigError, TomlFile};

/// The plan file and a key prefix such as `pairs.NAME` or
/// `pairs.NAME.copies[2]`.
pub(super) struct Scope<'a> {
    pub(super) f: &'a TomlFile<'a>,
    prefix: String,
}

impl<'a> Scope<'a> {
    pub(super) fn new(f: &'a TomlFile<'a>, prefix: impl Into<String>) -> Self {
        Scope {
            f,
            prefix: prefix.into(),
        }
    }

    /// The scope of `key` below this one.
    pub(super) fn under(&self, key: &str) -> Scope<'a> {
        Scope::new(self.f, format!("{}.{key}", self.prefix))
    }

    /// An error at `span` naming `PREFIX.key`.
    pub(super) fn error(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.f
            .error(span, &format!("{}.{key}", self.prefix), message)
    }

    pub(super) fn err<T>(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(self.error(span, key, message))
    }
}
