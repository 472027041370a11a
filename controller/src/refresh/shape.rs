//! The one place a refresh's stream shape is decided: from the plan and
//! what both agents say they can do. The destination is prepared for this
//! shape; the source may send less, never more.

use stagesync_proto::v1 as pb;

use super::spec::{CopyFormat, PairSpec};

fn can(info: &pb::InfoResponse, feature: &str) -> bool {
    info.features.iter().any(|f| f == feature)
}

/// The shape of a refresh from a live database.
pub fn agree(spec: &PairSpec, src: &pb::InfoResponse, dst: &pb::InfoResponse) -> pb::Shape {
    let post_data_file = split_post_data(spec, src, dst);
    let both = |feature| can(src, feature) && can(dst, feature);
    let data_lanes = if post_data_file {
        data_lanes(spec, src, dst)
    } else {
        0
    };
    pb::Shape {
        mode: spec.mode as i32,
        post_data_file,
        data_lanes,
        // The cheapest per byte that both agents can: XXH3-128, BLAKE3,
        // else SHA-256.
        digest: if both(stagesync_proto::FEATURE_XXH3) {
            pb::Digest::Xxh3
        } else if both(stagesync_proto::FEATURE_BLAKE3) {
            pb::Digest::Blake3
        } else {
            pb::Digest::Sha256
        } as i32,
        binary_rows: data_lanes > 1 && binary_rows(spec, src, dst),
    }
}

/// Whether copy lanes may carry rows in the binary COPY format: when both
/// agents can, the plan does not ask for text, and both servers run the
/// same major version (a built-in type's binary form is only promised
/// within one). Each lane table is still text unless all its columns
/// allow binary (the source decides).
fn binary_rows(spec: &PairSpec, src: &pb::InfoResponse, dst: &pb::InfoResponse) -> bool {
    let feature = stagesync_proto::FEATURE_BINARY_ROWS;
    let major = |info: &pb::InfoResponse| match &info.postgres {
        Some(pg) if pg.reachable && pg.server_version_num > 0 => {
            Some(pg.server_version_num / 10_000)
        }
        _ => None,
    };
    spec.copy_format != CopyFormat::Text
        && can(src, feature)
        && can(dst, feature)
        && major(src).is_some()
        && major(src) == major(dst)
}

/// Whether a stream-mode refresh sends the post-data section apart, to be
/// built by `spec.jobs` workers: only when that is more than one, and both
/// agents say they can. Not when privileges are restored: a one-pass restore
/// grants them after indexes, constraints and triggers exist, and so keeps
/// the order a dump was made for.
fn split_post_data(spec: &PairSpec, src: &pb::InfoResponse, dst: &pb::InfoResponse) -> bool {
    let feature = stagesync_proto::FEATURE_SPLIT_POST_DATA;
    spec.mode == pb::Mode::Stream
        && spec.jobs > 1
        && !spec.restore.privileges
        && can(src, feature)
        && can(dst, feature)
}

/// How many data lanes a split stream may use: lane 0 and up to
/// `spec.jobs` (or the plan's `lanes`) copy lanes when both agents can,
/// except with schema filters (pg_dump does not apply them to tables named
/// on their own). The source decides how many it really uses, by its
/// tables.
fn data_lanes(spec: &PairSpec, src: &pb::InfoResponse, dst: &pb::InfoResponse) -> u32 {
    let feature = stagesync_proto::FEATURE_DATA_LANES;
    if !can(src, feature)
        || !can(dst, feature)
        || !spec.dump.schemas.is_empty()
        || !spec.dump.exclude_schemas.is_empty()
    {
        return 0;
    }
    match spec.lanes.unwrap_or(spec.jobs).min(spec.jobs) {
        0 => 0,
        n => n.min(stagesync_proto::MAX_COPY_LANES) + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::AgentTarget;

    fn test_spec() -> PairSpec {
        let target = || AgentTarget {
            address: "127.0.0.1:1".into(),
            expected: None,
        };
        PairSpec::new(target(), "prod", target(), "stage", "stage")
    }

    fn with(features: &[&str]) -> pb::InfoResponse {
        pb::InfoResponse {
            features: features.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn post_data_is_split_only_when_both_agents_can_and_it_helps() {
        let mut spec = test_spec();
        let can = with(&[stagesync_proto::FEATURE_SPLIT_POST_DATA]);
        let old = pb::InfoResponse::default();
        assert!(split_post_data(&spec, &can, &can));
        assert!(!split_post_data(&spec, &can, &old), "old destination");
        assert!(!split_post_data(&spec, &old, &can), "old source");
        spec.jobs = 1;
        assert!(!split_post_data(&spec, &can, &can), "one worker: one pass");
        spec.jobs = 4;
        spec.restore.privileges = true;
        assert!(!split_post_data(&spec, &can, &can), "privileges restored");
    }

    #[test]
    fn data_lanes_only_with_a_split_stream_and_no_schema_filters() {
        let mut spec = test_spec();
        spec.jobs = 3;
        let lanes = with(&[
            stagesync_proto::FEATURE_SPLIT_POST_DATA,
            stagesync_proto::FEATURE_DATA_LANES,
        ]);
        let split_only = with(&[stagesync_proto::FEATURE_SPLIT_POST_DATA]);
        let agreed = |spec: &PairSpec, s, d| agree(spec, s, d).data_lanes;
        assert_eq!(agreed(&spec, &lanes, &lanes), 4, "lane 0 and 3 copy lanes");
        assert_eq!(agreed(&spec, &lanes, &split_only), 0, "old destination");
        assert_eq!(agreed(&spec, &split_only, &lanes), 0, "old source");
        spec.lanes = Some(2);
        assert_eq!(agreed(&spec, &lanes, &lanes), 3, "capped by the plan");
        spec.lanes = Some(1);
        assert_eq!(agreed(&spec, &lanes, &lanes), 2, "one copy lane");
        spec.lanes = Some(0);
        assert_eq!(agreed(&spec, &lanes, &lanes), 0, "one data stream");
        spec.lanes = None;
        spec.jobs = 100;
        assert_eq!(
            agreed(&spec, &lanes, &lanes),
            stagesync_proto::MAX_DATA_LANES
        );
        spec.dump.exclude_schemas = vec!["audit".into()];
        assert_eq!(agreed(&spec, &lanes, &lanes), 0, "schema filter");
        spec.dump.exclude_schemas.clear();
        spec.jobs = 1;
        assert_eq!(agreed(&spec, &lanes, &lanes), 0, "no split, no lanes");
        assert!(agree(&spec, &lanes, &lanes).check().is_ok());
        // BLAKE3 only when both agents list it.
        let b3 = with(&[stagesync_proto::FEATURE_BLAKE3]);
        assert_eq!(agree(&spec, &b3, &b3).digest, pb::Digest::Blake3 as i32);
        assert_eq!(agree(&spec, &b3, &lanes).digest, pb::Digest::Sha256 as i32);
        // XXH3 only when both agents list it; BLAKE3 is the next best.
        let xxh3 = with(&[
            stagesync_proto::FEATURE_XXH3,
            stagesync_proto::FEATURE_BLAKE3,
        ]);
        assert_eq!(agree(&spec, &xxh3, &xxh3).digest, pb::Digest::Xxh3 as i32);
        assert_eq!(agree(&spec, &xxh3, &b3).digest, pb::Digest::Blake3 as i32);
        assert!(agree(&spec, &xxh3, &xxh3).check().is_ok());
    }

    #[test]
    fn binary_rows_only_between_equal_major_versions_that_both_can() {
        let mut spec = test_spec();
        spec.jobs = 2;
        let agent = |version: u32, binary: bool| {
            let mut info = with(&[
                stagesync_proto::FEATURE_SPLIT_POST_DATA,
                stagesync_proto::FEATURE_DATA_LANES,
            ]);
            if binary {
                info.features
                    .push(stagesync_proto::FEATURE_BINARY_ROWS.to_string());
            }
            info.postgres = Some(pb::PostgresInfo {
                reachable: true,
                server_version_num: version,
                ..Default::default()
            });
            info
        };
        let binary = |spec: &PairSpec, s: &pb::InfoResponse, d: &pb::InfoResponse| {
            agree(spec, s, d).binary_rows
        };
        assert!(binary(&spec, &agent(150018, true), &agent(150004, true)));
        assert!(
            agree(&spec, &agent(150018, true), &agent(150004, true))
                .check()
                .is_ok()
        );
        assert!(
            !binary(&spec, &agent(150018, true), &agent(160002, true)),
            "15 to 16"
        );
        assert!(
            !binary(&spec, &agent(150018, true), &agent(150018, false)),
            "old destination"
        );
        assert!(
            !binary(&spec, &agent(150018, false), &agent(150018, true)),
            "old source"
        );
        assert!(
            !binary(&spec, &agent(0, true), &agent(0, true)),
            "versions unknown"
        );
        spec.copy_format = CopyFormat::Text;
        assert!(
            !binary(&spec, &agent(150018, true), &agent(150018, true)),
            "the plan says text"
        );
        spec.copy_format = CopyFormat::Auto;
        spec.lanes = Some(0);
        assert!(
            !binary(&spec, &agent(150018, true), &agent(150018, true)),
            "no lanes"
        );
    }
}
