//! A pair's refresh options: each key from the pair, else from
//! `[defaults]`, else the built-in default.

use stagesync_proto::tomlfile::ConfigError;
use stagesync_proto::v1 as pb;

use super::pair::PairCheck;
use super::raw::RawOptions;
use crate::refresh::{Compress, CopyFormat};

/// The options of one pair, validated.
pub(super) struct RunOptions {
    pub(super) mode: pb::Mode,
    pub(super) jobs: u32,
    pub(super) lanes: Option<u32>,
    pub(super) copy_format: CopyFormat,
    pub(super) compress: Compress,
    pub(super) dump: pb::DumpOptions,
    pub(super) restore: pb::RestoreOptions,
}

impl PairCheck<'_> {
    pub(super) fn options(&self, defaults: &RawOptions) -> Result<RunOptions, ConfigError> {
        let o = self.raw.options().or(defaults);
        let mode = self.mode(&o)?;
        let jobs = self.jobs(&o)?;
        let lanes = self.lanes(&o)?;
        let copy_format = self.copy_format(&o)?;
        Ok(RunOptions {
            mode,
            jobs,
            lanes,
            copy_format,
            compress: match o.compress {
                None => Compress::Auto,
                Some(true) => Compress::Always,
                Some(false) => Compress::Never,
            },
            dump: pb::DumpOptions {
                exclude_tables: o.exclude_tables.unwrap_or_default(),
                exclude_table_data: o.exclude_table_data.unwrap_or_default(),
                schemas: o.schemas.unwrap_or_default(),
                exclude_schemas: o.exclude_schemas.unwrap_or_default(),
                extra_args: o.pg_dump_args.unwrap_or_default(),
            },
            restore: pb::RestoreOptions {
                privileges: o.privileges.unwrap_or(false),
                extra_args: o.pg_restore_args.unwrap_or_default(),
            },
        })
    }

    fn mode(&self, o: &RawOptions) -> Result<pb::Mode, ConfigError> {
        let span = o.mode.as_ref().map(|m| m.span()).unwrap_or(0..0);
        let mode = match o.mode.as_ref().map(|m| m.get_ref().as_str()) {
            None | Some("stream") => pb::Mode::Stream,
            Some("parallel") => {
                return self.at.err(span, "mode", crate::refresh::PARALLEL_RETIRED);
            }
            Some(other) => {
                return self.at.err(
                    span,
                    "mode",
                    format!("unknown mode {other:?}: the one mode is \"stream\""),
                );
            }
        };
        Ok(mode)
    }

    fn jobs(&self, o: &RawOptions) -> Result<u32, ConfigError> {
        match &o.jobs {
            Some(j) if !(1..=64).contains(j.get_ref()) => {
                self.at.err(j.span(), "jobs", "must be 1 to 64")
            }
            Some(j) => Ok(*j.get_ref()),
            None => Ok(2),
        }
    }

    /// "auto" (the default): binary rows where both ends allow; "text".
    fn copy_format(&self, o: &RawOptions) -> Result<CopyFormat, ConfigError> {
        match &o.copy_format {
            None => Ok(CopyFormat::Auto),
            Some(f) => match f.get_ref().as_str() {
                "auto" => Ok(CopyFormat::Auto),
                "text" => Ok(CopyFormat::Text),
                other => self.at.err(
                    f.span(),
                    "copy_format",
                    format!("unknown copy format {other:?}: \"auto\" (binary where both ends allow) or \"text\""),
                ),
            },
        }
    }

    /// None: as many lanes as `jobs`.
    fn lanes(&self, o: &RawOptions) -> Result<Option<u32>, ConfigError> {
        match &o.lanes {
            Some(l) if *l.get_ref() > stagesync_proto::MAX_COPY_LANES => self.at.err(
                l.span(),
                "lanes",
                format!("must be 0 to {}", stagesync_proto::MAX_COPY_LANES),
            ),
            l => Ok(l.as_ref().map(|l| *l.get_ref())),
        }
    }
}
