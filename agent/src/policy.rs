//! Every guard of this agent, in one place: which databases it may dump and
//! overwrite (the direction guard), where backups may go and come from, and
//! what a job request must look like. `Info` reports what these functions
//! decide, so a controller's preflight sees exactly what the agent enforces.

use stagesync_proto::v1 as pb;

use crate::config::AgentConfig;
use crate::config::places::{self, PlacePatterns};
use crate::error::AgentError;

/// The agent's own working databases (a job's new database, a swapped-out
/// copy): never dumped, never a destination.
fn ours(database: &str) -> bool {
    database.starts_with("stagesync_")
}

/// Databases no refresh may replace, whatever the policy lists.
fn reserved(database: &str) -> bool {
    database.is_empty() || ours(database) || ["template0", "template1"].contains(&database)
}

fn denied(cfg: &AgentConfig, reason: String) -> AgentError {
    AgentError::denied(&cfg.name, reason)
}

fn invalid(cfg: &AgentConfig, reason: String) -> AgentError {
    AgentError::invalid(&cfg.name, reason)
}

/// The direction guard for reading: `database` may be dumped (for a
/// refresh or a backup).
pub fn may_dump(cfg: &AgentConfig, database: &str) -> Result<(), AgentError> {
    if ours(database) || !cfg.policy.may_dump.matches(database) {
        let refused = format!("direction guard: this agent may not dump database {database:?}");
        return Err(not_listed(
            cfg,
            refused,
            "may_dump",
            &cfg.policy.may_dump.patterns,
        ));
    }
    Ok(())
}

/// This agent's masking, if its rules name `database`.
pub fn masking_for<'a>(cfg: &'a AgentConfig, database: &str) -> Option<&'a crate::mask::Masking> {
    cfg.masking
        .as_ref()
        .filter(|m| m.rules.for_database(database).is_some())
}

/// The privacy guard for backups: a backup is pg_dump's archive, which
/// cannot be masked, so a database this agent's masking rules name is
/// backed up only to places `masking.unmasked_backup_to` lists. Returns
/// whether the backup holds personal data unmasked (its manifest says so).
pub fn may_back_up_unmasked<'a>(
    cfg: &AgentConfig,
    database: &str,
    places: impl IntoIterator<Item = &'a pb::S3Place>,
) -> Result<bool, AgentError> {
    let Some(m) = masking_for(cfg, database) else {
        return Ok(false);
    };
    let file = m.rules.file.display();
    for place in places {
        let parts = places::place(&place.endpoint, &place.bucket, &place.prefix)
            .map_err(|e| invalid(cfg, e))?;
        if !m.unmasked_backup_to.matches(&parts) {
            return Err(denied(
                cfg,
                format!(
                    "privacy guard: database {database:?} has masking rules ({file}), and a backup holds it unmasked: {} is not in masking.unmasked_backup_to = {:?} in {}; back up its masked copy from a staging agent instead",
                    place_url(place),
                    m.unmasked_backup_to.patterns,
                    cfg.source.display()
                ),
            ));
        }
    }
    Ok(true)
}

/// The privacy guard for a refresh a plan asks to send unmasked: only to a
/// peer `masking.unmasked_peers` lists. Returns whether the stream carries
/// personal data unmasked (a database without rules carries none).
pub fn may_send_unmasked(
    cfg: &AgentConfig,
    database: &str,
    dest: &stagesync_certs::Identity,
) -> Result<bool, AgentError> {
    let Some(m) = masking_for(cfg, database) else {
        return Ok(false);
    };
    let file = m.rules.file.display();
    if !m.unmasked_peers.contains(dest) {
        let listed: Vec<String> = m.unmasked_peers.iter().map(|p| p.to_string()).collect();
        return Err(denied(
            cfg,
            format!(
                "privacy guard: database {database:?} has masking rules ({file}) and the plan asks to send it unmasked to {dest}, which is not in masking.unmasked_peers = {listed:?} in {}; remove `unmasked` from the plan to send it masked",
                cfg.source.display()
            ),
        ));
    }
    Ok(true)
}

/// The privacy guard on the receiving side: personal data a source sends
/// unmasked is restored only where `policy.may_receive_unmasked` is on.
pub fn may_receive_unmasked(cfg: &AgentConfig, what: &str) -> Result<(), AgentError> {
    if cfg.policy.may_receive_unmasked {
        return Ok(());
    }
    Err(denied(
        cfg,
        format!(
            "privacy guard: {what} holds personal data unmasked, and this agent may not receive it (policy.may_receive_unmasked is off in {}); refresh from a masked source instead",
            cfg.source.display()
        ),
    ))
}

/// The direction guard for writing: `database` may be replaced by a
/// refresh, or rolled back.
pub fn may_overwrite(cfg: &AgentConfig, database: &str) -> Result<(), AgentError> {
    if reserved(database) {
        return Err(denied(
            cfg,
            format!("database {database:?} cannot be a refresh destination"),
        ));
    }
    if !cfg.policy.may_overwrite.matches(database) {
        let refused =
            format!("direction guard: this agent may not overwrite database {database:?}");
        let listed = &cfg.policy.may_overwrite.patterns;
        return Err(not_listed(cfg, refused, "may_overwrite", listed));
    }
    Ok(())
}

/// What `policy.may_backup_to` / `may_restore_from` match: the place with
/// its server, so a request cannot send a dump to another endpoint under a
/// permitted bucket name. `s3://bucket/prefix/` on AWS itself,
/// `https://host:port/bucket/prefix/` with an endpoint.
pub fn place_url(p: &pb::S3Place) -> String {
    if p.endpoint.is_empty() {
        format!("s3://{}/{}", p.bucket, p.prefix)
    } else {
        format!(
            "{}/{}/{}",
            p.endpoint.trim_end_matches('/'),
            p.bucket,
            p.prefix
        )
    }
}

/// A backup may be uploaded to `place`.
pub fn may_backup_to(cfg: &AgentConfig, place: &pb::S3Place) -> Result<(), AgentError> {
    let listed = &cfg.policy.may_backup_to;
    place_listed(cfg, place, "upload backups to", "may_backup_to", listed)
}

/// The backup object `key` may be restored from `place`: the place is
/// listed, and the key lies under its prefix.
pub fn may_restore_from(
    cfg: &AgentConfig,
    place: &pb::S3Place,
    key: &str,
) -> Result<(), AgentError> {
    let listed = &cfg.policy.may_restore_from;
    place_listed(cfg, place, "restore from", "may_restore_from", listed)?;
    if !key.starts_with(&place.prefix) || key.len() == place.prefix.len() {
        return Err(denied(
            cfg,
            format!(
                "the backup {key:?} is not under {} (the place the request names)",
                place_url(place)
            ),
        ));
    }
    Ok(())
}

/// `place` is well formed and matches `listed` (`policy.<key>`), which says
/// where this agent may `doing`.
fn place_listed(
    cfg: &AgentConfig,
    place: &pb::S3Place,
    doing: &str,
    key: &str,
    listed: &PlacePatterns,
) -> Result<(), AgentError> {
    let parts = places::place(&place.endpoint, &place.bucket, &place.prefix)
        .map_err(|e| invalid(cfg, e))?;
    if !listed.matches(&parts) {
        let refused = format!("this agent may not {doing} {}", place_url(place));
        return Err(not_listed(cfg, refused, key, &listed.patterns));
    }
    Ok(())
}

/// A refusal because `policy.<key>` does not list what was asked: names
/// the list and the file to change.
fn not_listed(cfg: &AgentConfig, refused: String, key: &str, listed: &[String]) -> AgentError {
    denied(
        cfg,
        format!(
            "{refused} (policy.{key} = {listed:?} in {})",
            cfg.source.display()
        ),
    )
}

/// A job id: what the controller makes, 8 to 32 lowercase hex digits
/// (it names the job's database and work directory).
pub fn job_id(cfg: &AgentConfig, id: &str) -> Result<(), AgentError> {
    let ok = (8..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(invalid(
            cfg,
            format!("job id {id:?} is not 8-32 lowercase hex digits"),
        ));
    }
    Ok(())
}

/// Why role `r` may not own a restored database, if it may not: the dump's
/// code (functions, triggers, defaults, the post-restore SQL) runs as the
/// owner, so the owner must hold no right beyond its own objects.
pub fn unfit_owner(r: &crate::pg::RoleRow) -> Option<&'static str> {
    if r.superuser {
        Some("it is a superuser")
    } else if r.createrole {
        Some("it has CREATEROLE (it could make itself or others more powerful)")
    } else if r.bypassrls {
        Some("it has BYPASSRLS (row-level security would not hold for it)")
    } else {
        None
    }
}

/// The owner of a restored database must be fit for it.
pub fn owner(cfg: &AgentConfig, role: &crate::pg::RoleRow) -> Result<(), AgentError> {
    match unfit_owner(role) {
        None => Ok(()),
        Some(why) => Err(denied(
            cfg,
            format!(
                "the role {:?} may not own a restored database: {why}; use a plain login role that owns the application's objects",
                role.name
            ),
        )),
    }
}

/// The most workers (pg_dump/pg_restore jobs) one request may ask for.
pub const MAX_JOBS: u32 = 64;

/// Workers asked for by a job request.
pub fn jobs(cfg: &AgentConfig, jobs: u32) -> Result<(), AgentError> {
    if !(1..=MAX_JOBS).contains(&jobs) {
        return Err(invalid(
            cfg,
            format!("jobs must be 1 to {MAX_JOBS}, not {jobs}"),
        ));
    }
    Ok(())
}

/// What staging keeps, as a request asks it: named tables (PostgreSQL's
/// identifiers: 1 to 63 bytes, no NUL), a bounded number of them.
pub fn staging(cfg: &AgentConfig, rules: &pb::StagingRules) -> Result<(), AgentError> {
    const MAX_TABLES: usize = 1000;
    if rules.keep.len() + rules.truncate.len() > MAX_TABLES {
        return Err(invalid(
            cfg,
            format!("at most {MAX_TABLES} kept and truncated tables"),
        ));
    }
    let name_ok = |n: &str| (1..=63).contains(&n.len()) && !n.contains('\0');
    let kept = rules.keep.iter().map(|k| k.table.as_ref());
    for t in kept.chain(rules.truncate.iter().map(Some)) {
        match t {
            Some(t) if name_ok(&t.schema) && name_ok(&t.table) => {}
            Some(t) => {
                return Err(invalid(
                    cfg,
                    format!("{:?}.{:?} is not a table name", t.schema, t.table),
                ));
            }
            None => return Err(invalid(cfg, "a kept table has no name".into())),
        }
    }
    if rules.keep.iter().any(|k| k.r#where.contains('\0')) {
        return Err(invalid(
            cfg,
            "a kept table's `where` holds a NUL byte".into(),
        ));
    }
    Ok(())
}

/// A stream shape asked for by a job request.
pub fn shape(cfg: &AgentConfig, shape: Option<&pb::Shape>) -> Result<pb::Shape, AgentError> {
    let shape = shape
        .cloned()
        .ok_or_else(|| invalid(cfg, "the request has no stream shape".into()))?;
    shape.check().map_err(|e| invalid(cfg, e))?;
    Ok(shape)
}

/// The one-time ticket of a job is long enough to be unguessable.
pub fn ticket(cfg: &AgentConfig, ticket: &str) -> Result<(), AgentError> {
    if ticket.len() < 32 {
        return Err(invalid(cfg, "the ticket is too short".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_never_destinations() {
        for name in [
            "",
            "stagesync_new_x",
            "stagesync_drop_y",
            "template0",
            "template1",
        ] {
            assert!(reserved(name), "{name:?}");
        }
        for name in ["staging", "template2", "postgres", "stagesync"] {
            assert!(!reserved(name), "{name:?}");
        }
    }

    #[test]
    fn place_urls_carry_their_server() {
        let mut p = pb::S3Place {
            bucket: "b1".into(),
            prefix: "db/".into(),
            ..Default::default()
        };
        assert_eq!(place_url(&p), "s3://b1/db/");
        p.endpoint = "http://127.0.0.1:9000/".into();
        assert_eq!(place_url(&p), "http://127.0.0.1:9000/b1/db/");
    }
}
