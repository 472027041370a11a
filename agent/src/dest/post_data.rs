//! Indexes as tables land. The post-data items of a lane stream's schema
//! file (`pg_restore -l`) are split by when they can be built: a table's
//! own indexes and its primary-key, unique and check constraints as soon
//! as it landed (lane 0's tables once lane 0 is in), while other tables
//! still copy; everything else (foreign keys, triggers, rules, index
//! attachments, and any line that cannot be read without doubt) waits for
//! the final pass, where pg_restore orders it by its dependencies.

use stagesync_proto::v1 as pb;

/// The post-data items, by when they run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The listing lines of the items that can be built once what landed:
    /// at 0, lane 0's tables; at `i + 1`, lane table `i`.
    pub early: Vec<Vec<String>>,
    /// The listing lines of everything else, for the final pass.
    pub rest: Vec<String>,
}

impl Plan {
    /// Items built before the final pass.
    pub fn early_items(&self) -> usize {
        self.early.iter().map(Vec::len).sum()
    }
}

/// Splits `pg_restore -l --section=post-data` output for a stream whose
/// copy lanes carry `tables`.
pub fn plan(listing: &str, tables: &[pb::LaneTable]) -> Plan {
    let mut plan = Plan {
        early: vec![Vec::new(); tables.len() + 1],
        rest: Vec::new(),
    };
    for line in listing.lines() {
        let item = line.trim();
        if item.is_empty() || item.starts_with(';') {
            continue;
        }
        match landing_of(item, tables) {
            Some(unit) => plan.early[unit].push(item.to_string()),
            _ => plan.rest.push(item.to_string()),
        }
    }
    plan
}

/// What must land before `item` can be built (0: lane 0; `i + 1`: lane
/// table `i`), if it is a table's own index or constraint and its line
/// reads one way only.
fn landing_of(item: &str, tables: &[pb::LaneTable]) -> Option<usize> {
    // `ID; CATALOG OID TYPE SCHEMA TAG OWNER`.
    let (_, rest) = item.split_once("; ")?;
    let mut words = rest.splitn(3, ' ');
    let (_, _, desc) = (words.next()?, words.next()?, words.next()?);
    if let Some(body) = desc.strip_prefix("INDEX ") {
        if body.starts_with("ATTACH ") {
            return None;
        }
        // SCHEMA NAME OWNER
        for (i, t) in tables.iter().enumerate() {
            for index in &t.indexes {
                if let Some(owner) = body.strip_prefix(&format!("{} {index} ", t.schema))
                    && single_word(owner)
                {
                    return Some(i + 1);
                }
            }
        }
        return (body.split(' ').count() == 3).then_some(0);
    }
    if let Some(body) = desc.strip_prefix("CONSTRAINT ") {
        // SCHEMA TABLE NAME OWNER
        for (i, t) in tables.iter().enumerate() {
            if let Some(after) = body.strip_prefix(&format!("{} {} ", t.schema, t.table))
                && after.split(' ').count() == 2
            {
                return Some(i + 1);
            }
        }
        return (body.split(' ').count() == 4).then_some(0);
    }
    None
}

fn single_word(s: &str) -> bool {
    !s.is_empty() && !s.contains(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pg_restore -l --section=post-data` of a small schema.
    const LISTING: &str = ";
; Archive created at 2026-12-03 15:20:00 UTC
;
3219; 2606 16398 CONSTRAINT public My T My T_pkey postgres
3214; 2606 16390 CONSTRAINT public big big_pkey postgres
3216; 2606 16392 CONSTRAINT public big big_u_key postgres
3220; 1259 16404 INDEX public odd idx postgres
3221; 1259 16415 INDEX public p_k postgres
3222; 1259 16416 INDEX public p1_k_idx postgres
3217; 1259 16393 INDEX public big_v postgres
3223; 0 0 INDEX ATTACH public p1_k_idx postgres
3224; 2606 16399 FK CONSTRAINT public My T My T_t_id_fkey postgres
3225; 2620 16420 TRIGGER public big audit postgres
";

    #[test]
    fn a_tables_indexes_and_keys_follow_its_landing() {
        let big = pb::LaneTable {
            schema: "public".into(),
            table: "big".into(),
            columns: vec!["id".into()],
            indexes: vec!["big_pkey".into(), "big_u_key".into(), "big_v".into()],
            slices: 1,
            binary: false,
        };
        let p = plan(LISTING, &[big]);
        let ids = |lines: &[String]| -> Vec<String> {
            lines
                .iter()
                .map(|l| l.split(';').next().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids(&p.early[1]), ["3214", "3216", "3217"]);
        // Lane 0's tables: a plain index and a partition's; names with
        // spaces cannot be read one way, so they wait for the final pass.
        assert_eq!(ids(&p.early[0]), ["3221", "3222"]);
        assert_eq!(ids(&p.rest), ["3219", "3220", "3223", "3224", "3225"]);
        assert_eq!(p.early_items(), 5);
        // Without copy lanes, everything is early for lane 0 or waits.
        let p = plan(LISTING, &[]);
        assert_eq!(p.early.len(), 1);
        assert_eq!(ids(&p.early[0]), ["3214", "3216", "3221", "3222", "3217"]);
    }
}
