//! Preflight: everything a refresh checks before anything changes. Both
//! ends answer and allow it (the direction guard), the source exists (a
//! database, or a complete backup), the owner role exists, the tools can
//! read each other, and the destination has room for a second copy.

use std::sync::Arc;

use stagesync_proto::v1 as pb;

use super::RefreshError;
use super::shape;
use super::spec::{BackupSource, PairSource, PairSpec};
use crate::client::ClientTls;
use crate::status;

/// A pair that passed preflight.
pub struct Preflighted {
    pub dest: pb::InfoResponse,
    pub source: CheckedSource,
    /// The stream's shape, agreed with both agents.
    pub shape: pb::Shape,
}

/// The source as preflight found it.
pub enum CheckedSource {
    Agent(Box<pb::InfoResponse>),
    Backup(Box<stagesync_s3::backups::Listed>),
}

impl Preflighted {
    /// Bytes of the source: the database's size, or the backup's.
    pub fn source_size(&self, spec: &PairSpec) -> u64 {
        match &self.source {
            CheckedSource::Agent(info) => database(info, spec.source_db())
                .map(|d| d.size_bytes)
                .unwrap_or(0),
            CheckedSource::Backup(b) => b.manifest.size,
        }
    }
}

fn fail<T>(message: String) -> Result<T, RefreshError> {
    Err(RefreshError::Preflight(message))
}

fn database<'a>(info: &'a pb::InfoResponse, name: &str) -> Option<&'a pb::Database> {
    info.postgres
        .as_ref()?
        .databases
        .iter()
        .find(|d| d.name == name)
}

/// Checks both ends of the pair before anything changes.
pub async fn preflight<T: ClientTls>(
    tls: Arc<T>,
    spec: &PairSpec,
) -> Result<Preflighted, RefreshError> {
    match &spec.source {
        PairSource::Agent { target, .. } => {
            let (src, dst) = tokio::join!(
                status::info(tls.clone(), target),
                status::info(tls.clone(), &spec.dest)
            );
            let (src, dst) = (src?, dst?);
            check_reachable(&src, "source")?;
            check_dest(&dst, spec)?;
            let need = check_source(&src, &dst, spec)?;
            check_room(&dst, need, &format!("a copy of {:?}", spec.source_db()))?;
            Ok(Preflighted {
                shape: shape::agree(spec, &src, &dst),
                dest: dst,
                source: CheckedSource::Agent(Box::new(src)),
            })
        }
        PairSource::Backup(source) => {
            let dst = status::info(tls.clone(), &spec.dest).await?;
            check_dest(&dst, spec)?;
            let backup = pick_backup(source).await?;
            let what = format!(
                "restoring the backup of {:?} taken {}",
                backup.manifest.database, backup.manifest.taken
            );
            check_room(&dst, restore_space(&backup.manifest), &what)?;
            Ok(Preflighted {
                dest: dst,
                source: CheckedSource::Backup(Box::new(backup)),
                shape: pb::Shape::one_pass(pb::Mode::Stream),
            })
        }
    }
}

/// The agent's PostgreSQL answers it.
fn check_reachable(info: &pb::InfoResponse, side: &str) -> Result<(), RefreshError> {
    let pg = info.postgres.clone().unwrap_or_default();
    if !pg.reachable {
        return fail(format!(
            "{side} agent {}: PostgreSQL: {}",
            info.name, pg.error
        ));
    }
    Ok(())
}

/// The destination's part: its PostgreSQL answers, its direction guard
/// lets the database be overwritten, the owner role exists.
fn check_dest(dst: &pb::InfoResponse, spec: &PairSpec) -> Result<(), RefreshError> {
    check_reachable(dst, "destination")?;
    let dpg = dst.postgres.clone().unwrap_or_default();
    if database(dst, &spec.dest_db).is_some_and(|d| !d.may_overwrite) {
        return fail(format!(
            "direction guard: the destination agent {} may not overwrite {:?} (its policy.may_overwrite)",
            dst.name, spec.dest_db
        ));
    }
    if !dpg.roles.iter().any(|r| r == &spec.owner) {
        return fail(format!(
            "the owner role {:?} does not exist on the destination agent {}: create it first",
            spec.owner, dst.name
        ));
    }
    if let Some(why) = dpg.unfit_owners.get(&spec.owner) {
        return fail(format!(
            "the owner role {:?} on the destination agent {} may not own a restored database: {why}; use a plain login role that owns the application's objects",
            spec.owner, dst.name
        ));
    }
    Ok(())
}

/// The source agent's part: its database exists and may be dumped, and the
/// destination's pg_restore reads what its pg_dump writes. Returns the disk
/// a copy needs.
fn check_source(
    src: &pb::InfoResponse,
    dst: &pb::InfoResponse,
    spec: &PairSpec,
) -> Result<u64, RefreshError> {
    let Some(sdb) = database(src, spec.source_db()) else {
        return fail(format!(
            "database {:?} does not exist on the source agent {}",
            spec.source_db(),
            src.name
        ));
    };
    if !sdb.may_dump {
        return fail(format!(
            "direction guard: the source agent {} may not dump {:?} (its policy.may_dump)",
            src.name,
            spec.source_db()
        ));
    }
    let stools = src.tools.clone().unwrap_or_default();
    let dtools = dst.tools.clone().unwrap_or_default();
    if stools.pg_dump_major == 0 || dtools.pg_restore_major == 0 {
        return fail(format!(
            "cannot tell the tool versions (source pg_dump: {:?}, destination pg_restore: {:?})",
            stools.pg_dump_version, dtools.pg_restore_version
        ));
    }
    if dtools.pg_restore_major < stools.pg_dump_major {
        return fail(format!(
            "pg_restore {} on {} cannot read what pg_dump {} on {} writes: upgrade the destination's client tools",
            dtools.pg_restore_major, dst.name, stools.pg_dump_major, src.name
        ));
    }
    // A second copy of the database must fit next to the live one.
    Ok(sdb.size_bytes + sdb.size_bytes / 10)
}

/// The destination has `need` bytes free where PostgreSQL keeps its data
/// (when it can tell).
fn check_room(dst: &pb::InfoResponse, need: u64, what: &str) -> Result<(), RefreshError> {
    let max = dst
        .postgres
        .as_ref()
        .map_or(0, |p| p.max_database_size_bytes);
    if max > 0 && need > max {
        return fail(format!(
            "the destination {} allows databases up to {} MiB (postgres.max_database_size_mb in its agent.toml); {what} needs about {} MiB",
            dst.name,
            max >> 20,
            need >> 20
        ));
    }
    let free = dst.postgres.as_ref().map_or(0, |p| p.data_dir_free_bytes);
    if free > 0 && free < need {
        return fail(format!(
            "the destination {} has {} MiB free where PostgreSQL keeps its data; {what} needs about {} MiB",
            dst.name,
            free >> 20,
            need >> 20
        ));
    }
    Ok(())
}

/// Picks the backup to restore: the named one, else the newest complete.
pub async fn pick_backup(
    source: &BackupSource,
) -> Result<stagesync_s3::backups::Listed, RefreshError> {
    let store = stagesync_s3::backups::Store::open(
        &stagesync_s3::ClientPool::new(),
        source.place.clone(),
        source.side.clone(),
        &source.files,
    )
    .await
    .map_err(|e| RefreshError::Preflight(e.to_string()))?;
    let found = store
        .list(&source.database)
        .await
        .map_err(|e| RefreshError::Preflight(e.to_string()))?;
    let chosen = match &source.taken {
        Some(t) => found.complete.iter().find(|b| &b.manifest.taken == t),
        None => found.complete.last(),
    };
    chosen.cloned().ok_or_else(|| {
        RefreshError::Preflight(match &source.taken {
            Some(t) => format!(
                "no complete backup of {:?} taken {t} under {}",
                source.database, source.place
            ),
            None => format!(
                "no complete backup of {:?} under {} (incomplete uploads are never restored)",
                source.database, source.place
            ),
        })
    })
}

/// Disk a restore of `m` needs: the database's size when it was backed up,
/// plus a tenth, as for a live copy. Older manifests do not record it;
/// then three times the compressed dump, a rough guess.
fn restore_space(m: &stagesync_s3::backups::Manifest) -> u64 {
    if m.database_size > 0 {
        m.database_size + m.database_size / 10
    } else {
        m.size.saturating_mul(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_space_uses_the_recorded_database_size() {
        let mut m: stagesync_s3::backups::Manifest = serde_json::from_str(
            r#"{"format":1,"database":"production","dump":"x.dump","size":100,"sha256":"00",
                "taken":"2026-11-25T01-00-00Z","host":"prod-db","pg_dump_version":"pg_dump (PostgreSQL) 15",
                "server_version":"15"}"#,
        )
        .expect("a manifest without database_size still reads");
        assert_eq!(m.database_size, 0);
        assert_eq!(restore_space(&m), 300, "older manifests: 3x the dump");
        m.database_size = 1000;
        assert_eq!(restore_space(&m), 1100);
    }
}
