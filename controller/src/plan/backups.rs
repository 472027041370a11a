//! The `[backups]` table: where daily and weekly backups go and how many of
//! each are kept.

use stagesync_proto::tomlfile::{ConfigError, TomlFile};
use stagesync_s3::{S3Location, SideConfig};

use super::raw::{RawBackups, S};
use super::{BackupPlan, DEFAULT_WEEKLY_DAYS};

pub(super) fn validate_backups(
    f: &TomlFile<'_>,
    b: &RawBackups,
) -> Result<BackupPlan, ConfigError> {
    let daily = place(f, &b.daily, "backups.daily")?;
    let weekly = match &b.weekly {
        Some(w) => Some(weekly(f, w, &daily)?),
        None => None,
    };
    Ok(BackupPlan {
        daily,
        weekly,
        weekly_days: weekly_days(f, b)?,
        keep_daily: keep(f, &b.keep_daily, "backups.keep_daily", 7)?,
        keep_weekly: keep(f, &b.keep_weekly, "backups.keep_weekly", 8)?,
        side: SideConfig {
            profile: b.profile.clone(),
            region: b.region.clone(),
            endpoint: b.endpoint.clone(),
        },
    })
}

fn place(f: &TomlFile<'_>, url: &S<String>, key: &str) -> Result<S3Location, ConfigError> {
    S3Location::parse(url.get_ref()).map_err(|e| f.error(url.span(), key, e))
}

fn weekly(f: &TomlFile<'_>, w: &S<String>, daily: &S3Location) -> Result<S3Location, ConfigError> {
    let loc = place(f, w, "backups.weekly")?;
    let nested = loc.bucket == daily.bucket
        && (loc.prefix.starts_with(&daily.prefix) || daily.prefix.starts_with(&loc.prefix));
    if nested {
        return f.err(
            w.span(),
            "backups.weekly",
            "must not be backups.daily or lie inside it (or it inside this): retention of one would prune the other",
        );
    }
    Ok(loc)
}

fn weekly_days(f: &TomlFile<'_>, b: &RawBackups) -> Result<Vec<u32>, ConfigError> {
    let Some(days) = &b.weekly_days else {
        return Ok(DEFAULT_WEEKLY_DAYS.to_vec());
    };
    if let Some(d) = days.get_ref().iter().find(|d| !(1..=31).contains(*d)) {
        return f.err(
            days.span(),
            "backups.weekly_days",
            format!("{d} is not a day of the month (1 to 31)"),
        );
    }
    Ok(days.get_ref().clone())
}

fn keep(f: &TomlFile<'_>, v: &Option<S<u32>>, key: &str, default: u32) -> Result<u32, ConfigError> {
    match v {
        Some(k) if *k.get_ref() == 0 => f.err(
            k.span(),
            key,
            "must be at least 1: the newest good backup is always kept",
        ),
        Some(k) => Ok(*k.get_ref()),
        None => Ok(default),
    }
}
