//! A destination's copy lanes, as progress shows them: tables and rows
//! copied, indexes built, and what each lane is copying now.

use serde_json::json;
use stagesync_proto::v1 as pb;

use super::size::human_bytes;

/// ", 12 tables (1204000 rows) copied, 9 indexes built [1: public.accounts
/// 410.0 MiB | 2: public.articles (slice 2 of 4) 96.0 MiB]"; empty when the
/// data does not move on copy lanes.
pub fn text(d: &pb::JobStatus) -> String {
    if d.data_lanes < 2 {
        return String::new();
    }
    let mut out = format!(
        ", {} tables ({} rows) copied, {} indexes built",
        d.tables_copied, d.rows_copied, d.indexes_built
    );
    let busy: Vec<String> = d
        .lanes
        .iter()
        .filter(|l| !l.table.is_empty())
        .map(|l| {
            let slice = match l.slices {
                0 | 1 => String::new(),
                n => format!(" (slice {} of {n})", l.slice),
            };
            format!("{}: {}{slice} {}", l.lane, l.table, human_bytes(l.bytes))
        })
        .collect();
    if !busy.is_empty() {
        out.push_str(&format!(" [{}]", busy.join(" | ")));
    }
    out
}

/// The same, for a JSON progress event.
pub fn json(d: &pb::JobStatus) -> serde_json::Value {
    let lanes: Vec<serde_json::Value> = d
        .lanes
        .iter()
        .filter(|l| !l.table.is_empty())
        .map(|l| json!({"lane": l.lane, "table": l.table, "slice": l.slice, "slices": l.slices, "bytes": l.bytes}))
        .collect();
    json!({"data_lanes": d.data_lanes, "tables_copied": d.tables_copied, "rows_copied": d.rows_copied, "indexes_built": d.indexes_built, "lanes": lanes})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_lanes_are_listed() {
        let d = pb::JobStatus {
            data_lanes: 3,
            tables_copied: 4,
            rows_copied: 1200,
            indexes_built: 2,
            lanes: vec![
                pb::LaneProgress {
                    lane: 1,
                    table: "public.accounts".into(),
                    slice: 2,
                    slices: 4,
                    bytes: 3 << 20,
                },
                pb::LaneProgress {
                    lane: 2,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            text(&d),
            ", 4 tables (1200 rows) copied, 2 indexes built [1: public.accounts (slice 2 of 4) 3.0 MiB]"
        );
        assert_eq!(json(&d)["lanes"].as_array().unwrap().len(), 1);
        assert_eq!(text(&pb::JobStatus::default()), "");
    }
}
