//! After a good backup: the weekly copy, then retention. The backup is
//! complete by then, so what fails here is a warning in its report, never
//! a failed backup.

use stagesync_proto::v1 as pb;
use stagesync_s3::backups::{Listed, Store};

use super::Backups;

/// What happened after the backup.
#[derive(Default)]
pub(super) struct Kept {
    /// The backup was copied to the weekly place.
    pub weekly: bool,
    /// The dump keys retention deleted.
    pub pruned: Vec<String>,
    pub warnings: Vec<String>,
}

impl Backups {
    /// The weekly copy (on the request's days of the month), then the
    /// retention of both places; the new backup is never pruned.
    pub(super) async fn keep(
        &self,
        req: &pb::BackupRequest,
        daily: &Store,
        manifest_key: &str,
        day: u8,
    ) -> Kept {
        let mut kept = Kept::default();
        match (
            &req.weekly,
            listed(daily, &req.database, manifest_key).await,
        ) {
            (_, Err(e)) => kept
                .warnings
                .push(format!("no weekly copy or retention: {e}")),
            (Some(place), Ok(this)) if req.weekly_days.contains(&u32::from(day)) => {
                self.weekly_copy(req, place, daily, &this, &mut kept).await;
            }
            _ => {}
        }
        if req.keep_daily > 0 {
            let what = "daily retention";
            kept.prune(daily, &req.database, req.keep_daily, manifest_key, what)
                .await;
        }
        for w in &kept.warnings {
            tracing::warn!(database = %req.database, warning = %w, "backup complete, with a warning");
        }
        kept
    }

    /// Copies the new backup to the weekly place and prunes that place.
    async fn weekly_copy(
        &self,
        req: &pb::BackupRequest,
        place: &pb::S3Place,
        daily: &Store,
        this: &Listed,
        kept: &mut Kept,
    ) {
        let copied = async {
            let weekly = self.open(place).await?;
            let key = daily.copy_to(&weekly, this).await?;
            Ok::<_, stagesync_s3::backups::BackupError>((weekly, key))
        }
        .await;
        match copied {
            Ok((weekly, key)) => {
                kept.weekly = true;
                if req.keep_weekly > 0 {
                    let what = "weekly retention";
                    kept.prune(&weekly, &req.database, req.keep_weekly, &key, what)
                        .await;
                }
            }
            Err(e) => kept.warnings.push(format!("weekly copy: {e}")),
        }
    }
}

impl Kept {
    /// Keeps the newest `keep` backups in `store` (and always `protect`);
    /// a failure becomes a warning that starts with `what`.
    async fn prune(&mut self, store: &Store, database: &str, keep: u32, protect: &str, what: &str) {
        match store.prune(database, keep as usize, Some(protect)).await {
            Ok(p) => self.pruned.extend(p),
            Err(e) => self.warnings.push(format!("{what}: {e}")),
        }
    }
}

/// The backup just written, as a listing of its place shows it.
async fn listed(daily: &Store, database: &str, manifest_key: &str) -> Result<Listed, String> {
    let found = daily.list(database).await.map_err(|e| e.to_string())?;
    found
        .complete
        .into_iter()
        .find(|b| b.manifest_key == manifest_key)
        .ok_or_else(|| format!("the new backup {manifest_key} is not listed"))
}
