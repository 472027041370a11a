//! SQL text built by the agent: identifiers are always quoted, values are
//! always literals, and stagesync's own database names are recognisable.

use sha2::{Digest, Sha256};

/// `"name"` with embedded quotes doubled: safe for any identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal that is correct whatever `standard_conforming_strings` is.
pub fn literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", doubled.replace('\\', "\\\\"))
    } else {
        format!("'{doubled}'")
    }
}

/// `ALTER DATABASE "from" RENAME TO "to"`.
pub fn rename_database(from: &str, to: &str) -> String {
    format!("ALTER DATABASE {} RENAME TO {}", ident(from), ident(to))
}

/// `ALTER DATABASE "db" ALLOW_CONNECTIONS true|false`.
pub fn allow_connections(db: &str, allowed: bool) -> String {
    format!("ALTER DATABASE {} ALLOW_CONNECTIONS {allowed}", ident(db))
}

/// `DROP DATABASE IF EXISTS "name" WITH (FORCE)`: its sessions are ended
/// rather than waited for.
pub fn drop_database(name: &str) -> String {
    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name))
}

/// Prefix of the databases a job restores into before the swap.
pub const NEW_PREFIX: &str = "stagesync_new_";
/// Prefix of the previous copies kept for rollback.
pub const PREVIOUS_PREFIX: &str = "stagesync_prev_";
/// Prefix of an older previous copy between a swap and its drop.
pub const DROP_PREFIX: &str = "stagesync_drop_";
/// Prefix of the login role a job's restore sessions authenticate as.
pub const JOB_ROLE_PREFIX: &str = "stagesync_job_";
/// The group every job login is a member of: what `pg_hba.conf` names.
pub const JOB_GROUP: &str = "stagesync_jobs";
/// PostgreSQL truncates identifiers to 63 bytes; we never rely on that.
const MAX_IDENT: usize = 63;

/// The database a job restores into.
pub fn new_database(job_id: &str) -> String {
    format!("{NEW_PREFIX}{job_id}")
}

/// The login role of the job whose new database is `new_db`, if it is one.
pub fn job_role_of(new_db: &str) -> Option<String> {
    new_db
        .strip_prefix(NEW_PREFIX)
        .map(|id| format!("{JOB_ROLE_PREFIX}{id}"))
}

/// The name a live database keeps for rollback after a swap.
pub fn previous_database(live: &str) -> String {
    with_prefix(PREVIOUS_PREFIX, live)
}

/// A transient name used while swapping back.
pub fn swap_database(live: &str) -> String {
    with_prefix("stagesync_swap_", live)
}

/// Marks a name shortened with a hash, right after the prefix.
const HASHED: char = '#';

/// `prefix` + `live`, or, when that is too long for PostgreSQL (or `live`
/// itself starts with the mark), `prefix` + `#` + a readable head + `_` +
/// 128 bits of `live`'s SHA-256. The two forms cannot meet: only the second
/// has `#` right after the prefix. So two live databases never share one
/// name here, whatever their names.
pub fn with_prefix(prefix: &str, live: &str) -> String {
    let plain = format!("{prefix}{live}");
    if plain.len() <= MAX_IDENT && !live.starts_with(HASHED) {
        return plain;
    }
    let hash = hex::encode(&Sha256::digest(live.as_bytes())[..16]);
    let room = MAX_IDENT - prefix.len() - HASHED.len_utf8() - 1 - hash.len();
    let mut head = String::new();
    for c in live.chars() {
        if head.len() + c.len_utf8() > room {
            break;
        }
        head.push(c);
    }
    format!("{prefix}{HASHED}{head}_{hash}")
}

/// Replaces `${NAME}` with the quoted literal of `params[NAME]`.
/// `$${` stays a literal `${`.
pub fn substitute(
    sql: &str,
    params: &std::collections::HashMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(pos) = rest.find("${") {
        if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed ${ in the post-restore SQL".to_string())?;
        let name = &after[..end];
        let value = params.get(name).ok_or_else(|| {
            format!("the post-restore SQL uses ${{{name}}}, but no value for {name} was sent")
        })?;
        out.push_str(&literal(value));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_live_names_share_a_rollback_name() {
        // Under the former scheme a long name was cut to a head and 6
        // bytes of its hash, with no mark: a 48-byte name written as that
        // head and hash got the long name's rollback name.
        let long = "a".repeat(60);
        let old_hash = hex::encode(&Sha256::digest(long.as_bytes())[..6]);
        let old_head = "a".repeat(MAX_IDENT - PREVIOUS_PREFIX.len() - 1 - old_hash.len());
        let crafted = format!("{old_head}_{old_hash}");
        assert_eq!(format!("{PREVIOUS_PREFIX}{crafted}").len(), MAX_IDENT);
        assert_eq!(
            format!("{PREVIOUS_PREFIX}{crafted}"),
            format!("{PREVIOUS_PREFIX}{old_head}_{old_hash}"),
            "the former collision"
        );
        assert_ne!(previous_database(&long), previous_database(&crafted));
        // A short name cannot mimic the hashed form either.
        let hashed = previous_database(&long);
        let mimic = hashed.trim_start_matches(PREVIOUS_PREFIX);
        assert!(mimic.len() + PREVIOUS_PREFIX.len() <= MAX_IDENT);
        assert_ne!(previous_database(mimic), hashed);
        for name in [&long, &crafted, mimic] {
            assert!(previous_database(name).len() <= MAX_IDENT, "{name}");
        }
    }
    use std::collections::HashMap;

    #[test]
    fn quoting() {
        assert_eq!(ident("my \"db\""), "\"my \"\"db\"\"\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\'b"), "E'a\\\\''b'");
    }

    #[test]
    fn names_fit() {
        let long = "x".repeat(63);
        let p = previous_database(&long);
        assert!(p.len() <= 63 && p.starts_with(PREVIOUS_PREFIX));
        assert_ne!(previous_database(&long), previous_database(&"x".repeat(62)));
        assert_eq!(previous_database("stage"), "stagesync_prev_stage");
        let uni = "é".repeat(40);
        assert!(previous_database(&uni).len() <= 63);
    }

    #[test]
    fn substitution() {
        let params = HashMap::from([("SECRET".to_string(), "o'hara".to_string())]);
        assert_eq!(
            substitute("UPDATE t SET s = ${SECRET}, d = '$${x}'", &params).unwrap(),
            "UPDATE t SET s = 'o''hara', d = '${x}'"
        );
        assert!(
            substitute("SELECT ${MISSING}", &params)
                .unwrap_err()
                .contains("MISSING")
        );
        assert!(substitute("SELECT ${OPEN", &params).is_err());
    }
}
