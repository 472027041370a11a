//! The role's backup settings turned into the plan's `[backups]` table:
//! its daily and weekly S3 places, its weekly days (1, 7, 14, 21, 28) and
//! its AWS region. They are read from the group vars, where the role's
//! README puts its defaults.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use stagesync_proto::tomlfile::ConfigError;
use stagesync_s3::S3Location;

use super::names::q;
use super::value::{Var, boolean, scalar};
use crate::plan::DEFAULT_WEEKLY_DAYS;

const UPLOAD: &str = "stagesync_backups_upload_to_bucket";
const DAILY: &str = "stagesync_backups_s3_bucket";
const WEEKLY: &str = "stagesync_backups_s3_weekly_bucket";

/// The variables this module reads.
pub(super) const HANDLED: &[&str] = &[UPLOAD, DAILY, WEEKLY];

/// The `[backups]` table, when the role uploaded its backups to S3.
pub(super) fn import_backups(
    vars: &BTreeMap<String, Var>,
    warn: &mut dyn FnMut(ConfigError),
) -> Result<Option<String>, ConfigError> {
    let upload = match vars.get(UPLOAD) {
        Some(v) => (v, boolean(v, UPLOAD)?),
        None => return Ok(None),
    };
    if !upload.1 {
        for key in [DAILY, WEEKLY] {
            if let Some(v) = vars.get(key) {
                warn(v.err(
                    key,
                    format!("not imported: {UPLOAD} is not yes, so the role uploaded no backups"),
                ));
            }
        }
        return Ok(None);
    }
    let daily = match vars.get(DAILY) {
        Some(v) => place(v, DAILY)?,
        None => {
            return Err(upload.0.err(
                UPLOAD,
                format!("is yes, but {DAILY} (where daily backups go) is not set"),
            ));
        }
    };
    let weekly = vars.get(WEEKLY).map(|v| place(v, WEEKLY)).transpose()?;
    let region = vars
        .get("stagesync_aws_region")
        .map(|v| scalar(v, "stagesync_aws_region"))
        .transpose()?;
    warn(upload.0.err(
        UPLOAD,
        "imported as [backups]: the role kept every upload, stagesync keeps the newest 7 daily and 8 weekly backups (set keep_daily and keep_weekly), and each agent's policy.may_backup_to must allow the places",
    ));
    let mut out = String::from(
        "\n# The role's S3 backups: `stagesync backup --all AGENT` (or the timer\n# deploy/systemd/stagesync-backup@.timer) takes them.\n[backups]\n",
    );
    let _ = writeln!(out, "daily = {}", q(&daily.to_string()));
    if let Some(w) = weekly {
        let _ = writeln!(out, "weekly = {}", q(&w.to_string()));
        let days: Vec<String> = DEFAULT_WEEKLY_DAYS.iter().map(u32::to_string).collect();
        let _ = writeln!(out, "weekly_days = [{}]", days.join(", "));
    }
    if let Some(r) = region {
        let _ = writeln!(out, "region = {}", q(&r));
    }
    Ok(Some(out))
}

/// `bucket`, `bucket/prefix` or `s3://bucket/prefix` as a folder place.
fn place(var: &Var, key: &str) -> Result<S3Location, ConfigError> {
    let text = scalar(var, key)?;
    let bare = text
        .trim()
        .trim_start_matches("s3://")
        .trim_end_matches('/');
    S3Location::parse(&format!("s3://{bare}/"))
        .map_err(|e| var.err(key, format!("{text:?} is not an S3 bucket or place: {e}")))
}
