//! `pg_dump` command lines: the whole database, a split stream's two
//! dumps on one snapshot, or one data lane.

use std::path::Path;

use stagesync_proto::v1 as pb;

use super::pattern::TableName;
use super::{SAFE_DUMP_ARGS, check_extra, connection_args, conninfo_dbname};
use crate::config::PostgresConfig;

fn check_pattern(p: &str, what: &str) -> Result<(), String> {
    if p.is_empty() || p.starts_with('-') || p.contains('\0') || p.contains('\n') {
        return Err(format!(
            "{what} pattern {p:?} is not a valid pg_dump pattern"
        ));
    }
    Ok(())
}

/// What a `pg_dump` writes, and where.
#[derive(Clone, Copy, Debug)]
pub enum DumpTo<'a> {
    /// The whole database, custom format, to stdout.
    Stdout,
    /// Everything but the post-data section (indexes, constraints,
    /// triggers), custom format, to stdout, as of an exported snapshot.
    StdoutWithoutPostData { snapshot: &'a str },
    /// Pre-data and post-data without data, custom format, into `file`, as of the same
    /// snapshot: its post-data section is restored after the data
    /// ([`RestoreFrom::PostDataOf`]). The tables' entries stay in it so that
    /// a parallel `pg_restore` knows which items lock which table.
    Schema { snapshot: &'a str, file: &'a Path },
    /// The data section only, custom format, to stdout, as of an exported
    /// snapshot: one lane of a split stream's data.
    LaneData {
        snapshot: &'a str,
        copied: &'a [TableName],
    },
}

/// An exported snapshot's id, as `pg_export_snapshot()` makes them.
fn check_snapshot(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(format!("{id:?} is not a snapshot id"));
    }
    Ok(())
}

/// One of a split stream's two dumps: custom format, the shared snapshot,
/// pre-data and one more section.
fn split_args(snapshot: &str, section: &str) -> [String; 5] {
    [
        "--format=custom".to_string(),
        "--compress=0".to_string(),
        format!("--snapshot={snapshot}"),
        "--section=pre-data".to_string(),
        format!("--section={section}"),
    ]
}

/// `pg_dump` for `database`, custom or directory format as `to` says.
/// pg_dump's own compression is off: the wire compresses.
pub fn pg_dump(
    pg: &PostgresConfig,
    database: &str,
    opts: &pb::DumpOptions,
    to: DumpTo<'_>,
) -> Result<Vec<String>, String> {
    check_extra(&opts.extra_args, SAFE_DUMP_ARGS, "pg_dump")?;
    let mut args = connection_args(pg);
    args.extend(output_args(opts, to)?);
    args.extend(filter_args(opts)?);
    args.extend(opts.extra_args.iter().cloned());
    // Last, so nothing above can be read as the database name.
    args.push(format!("--dbname={}", conninfo_dbname(database)));
    Ok(args)
}

/// What to dump and where to write it.
fn output_args(opts: &pb::DumpOptions, to: DumpTo<'_>) -> Result<Vec<String>, String> {
    let args = match to {
        DumpTo::Stdout => vec!["--format=custom".to_string(), "--compress=0".to_string()],
        DumpTo::StdoutWithoutPostData { snapshot } => {
            check_snapshot(snapshot)?;
            split_args(snapshot, "data").to_vec()
        }
        DumpTo::Schema { snapshot, file } => {
            check_snapshot(snapshot)?;
            // Not --schema-only: that would leave out the refresh of
            // materialized views, which is post-data.
            let mut args = split_args(snapshot, "post-data").to_vec();
            args.push(format!("--file={}", file.display()));
            args
        }
        DumpTo::LaneData { snapshot, copied } => lane_args(opts, snapshot, copied)?,
    };
    Ok(args)
}

/// Lane 0: the data section (sequence values, large objects, the tables'
/// rows) as of the snapshot, but for the tables the copy lanes carry.
fn lane_args(
    opts: &pb::DumpOptions,
    snapshot: &str,
    copied: &[TableName],
) -> Result<Vec<String>, String> {
    check_snapshot(snapshot)?;
    if !opts.schemas.is_empty() || !opts.exclude_schemas.is_empty() {
        // pg_dump ignores schema filters for tables named with -t.
        return Err("data lanes cannot be combined with schema filters".into());
    }
    let mut args = vec![
        "--format=custom".to_string(),
        "--compress=0".to_string(),
        format!("--snapshot={snapshot}"),
        "--section=data".to_string(),
    ];
    for t in copied {
        args.push(format!("--exclude-table-data={}", t.exact_pattern()?));
    }
    Ok(args)
}

/// The plan's table and schema filters, each pattern checked.
fn filter_args(opts: &pb::DumpOptions) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    for (list, flag, what) in [
        (&opts.exclude_tables, "--exclude-table=", "exclude_tables"),
        (
            &opts.exclude_table_data,
            "--exclude-table-data=",
            "exclude_table_data",
        ),
        (&opts.schemas, "--schema=", "schemas"),
        (
            &opts.exclude_schemas,
            "--exclude-schema=",
            "exclude_schemas",
        ),
    ] {
        for p in list {
            check_pattern(p, what)?;
            args.push(format!("{flag}{p}"));
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::super::test_postgres as pg;
    use super::super::{RestoreAs, RestoreFrom, pg_restore};
    use super::*;

    #[test]
    fn extra_args_are_checked() {
        let mut opts = pb::DumpOptions {
            extra_args: vec!["--no-comments".into(), "--lock-wait-timeout=30s".into()],
            ..Default::default()
        };
        assert!(pg_dump(&pg(), "db", &opts, DumpTo::Stdout).is_ok());
        for bad in [
            "--file=/etc/passwd",
            "--lock-wait-timeout=1;x",
            "-f",
            "--no-comments2",
        ] {
            opts.extra_args = vec![bad.into()];
            assert!(
                pg_dump(&pg(), "db", &opts, DumpTo::Stdout).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_are_conninfo_quoted() {
        let args = pg_dump(
            &pg(),
            "it's a db",
            &pb::DumpOptions::default(),
            DumpTo::Stdout,
        )
        .unwrap();
        assert_eq!(args.last().unwrap(), "--dbname=dbname='it\\'s a db'");
    }

    #[test]
    fn patterns() {
        let mut opts = pb::DumpOptions {
            exclude_table_data: vec!["public.cache_*".into()],
            ..Default::default()
        };
        let args = pg_dump(&pg(), "db", &opts, DumpTo::Stdout).unwrap();
        assert!(args.contains(&"--exclude-table-data=public.cache_*".to_string()));
        opts.exclude_table_data = vec!["--file=x".into()];
        assert!(pg_dump(&pg(), "db", &opts, DumpTo::Stdout).is_err());
    }

    #[test]
    fn split_dumps_share_the_snapshot() {
        let opts = pb::DumpOptions::default();
        let id = "00000003-0000001B-1";
        let main = pg_dump(
            &pg(),
            "db",
            &opts,
            DumpTo::StdoutWithoutPostData { snapshot: id },
        )
        .unwrap();
        for a in [
            "--snapshot=00000003-0000001B-1",
            "--section=pre-data",
            "--section=data",
        ] {
            assert!(main.contains(&a.to_string()), "{main:?}");
        }
        assert!(!main.iter().any(|a| a.starts_with("--file")), "{main:?}");
        let schema = pg_dump(
            &pg(),
            "db",
            &opts,
            DumpTo::Schema {
                snapshot: id,
                file: Path::new("/w/schema.dump"),
            },
        )
        .unwrap();
        for a in [
            "--snapshot=00000003-0000001B-1",
            "--section=pre-data",
            "--section=post-data",
            "--file=/w/schema.dump",
        ] {
            assert!(schema.contains(&a.to_string()), "{schema:?}");
        }
        for bad in ["", "1; x", "--file=x", "0000 0001"] {
            assert!(
                pg_dump(
                    &pg(),
                    "db",
                    &opts,
                    DumpTo::StdoutWithoutPostData { snapshot: bad }
                )
                .is_err(),
                "{bad:?}"
            );
        }
        let restore = pg_restore(
            &pg(),
            "new",
            RestoreAs {
                login: "stagesync_job_1",
                owner: "owner",
            },
            &pb::RestoreOptions::default(),
            RestoreFrom::PostDataOf(Path::new("/w/schema.dump"), 3),
        )
        .unwrap();
        // Logged in as the job's own role, creating as the owner.
        assert!(restore.contains(&"--username=stagesync_job_1".to_string()));
        assert!(restore.contains(&"--role=owner".to_string()));
        assert_eq!(
            &restore[restore.len() - 4..],
            [
                "--section=post-data",
                "--format=custom",
                "--jobs=3",
                "/w/schema.dump"
            ]
        );
    }

    #[test]
    fn lanes_name_their_tables_exactly() {
        let opts = pb::DumpOptions {
            exclude_table_data: vec!["public.cache_*".into()],
            ..Default::default()
        };
        let id = "00000003-0000001B-1";
        let big = TableName {
            schema: "App Data".into(),
            table: "Big\"*.t".into(),
        };
        let other = TableName {
            schema: "public".into(),
            table: "accounts".into(),
        };
        let list = [big.clone(), other];
        let rest = pg_dump(
            &pg(),
            "db",
            &opts,
            DumpTo::LaneData {
                snapshot: id,
                copied: &list,
            },
        )
        .unwrap();
        for a in [
            "--exclude-table-data=\"App Data\".\"Big\"\"*.t\"",
            "--exclude-table-data=\"public\".\"accounts\"",
            "--section=data",
            "--snapshot=00000003-0000001B-1",
            // The plan's own filters still apply to lane 0.
            "--exclude-table-data=public.cache_*",
        ] {
            assert!(rest.contains(&a.to_string()), "{a} in {rest:?}");
        }
        assert!(!rest.iter().any(|a| a.starts_with("--table")), "{rest:?}");
        let filtered = pb::DumpOptions {
            schemas: vec!["app".into()],
            ..Default::default()
        };
        assert!(
            pg_dump(
                &pg(),
                "db",
                &filtered,
                DumpTo::LaneData {
                    snapshot: id,
                    copied: &list,
                },
            )
            .is_err()
        );
        let newline = TableName {
            schema: "public".into(),
            table: "a\nb".into(),
        };
        assert!(newline.exact_pattern().is_err());
        let pre = pg_restore(
            &pg(),
            "new",
            RestoreAs {
                login: "stagesync_job_1",
                owner: "owner",
            },
            &pb::RestoreOptions::default(),
            RestoreFrom::PreDataOf(Path::new("/w/schema.dump")),
        )
        .unwrap();
        assert_eq!(
            &pre[pre.len() - 4..],
            [
                "--section=pre-data",
                "--format=custom",
                "--jobs=1",
                "/w/schema.dump"
            ]
        );
    }
}
