//! Command lines for `pg_dump` and `pg_restore`. Options from the controller
//! become separate arguments (never a shell string), and extra arguments
//! pass only if they are on a short list of harmless flags.

use std::path::Path;

use stagesync_proto::v1 as pb;

use crate::config::PostgresConfig;

/// Extra `pg_dump` flags a plan may add.
pub const SAFE_DUMP_ARGS: &[&str] = &[
    "--no-comments",
    "--no-publications",
    "--no-subscriptions",
    "--no-security-labels",
    "--no-tablespaces",
    "--no-toast-compression",
    "--no-unlogged-table-data",
    "--no-table-access-method",
    "--no-blobs",
    "--no-large-objects",
    "--quote-all-identifiers",
    "--lock-wait-timeout=",
    "--extra-float-digits=",
];

/// Extra `pg_restore` flags a plan may add.
pub const SAFE_RESTORE_ARGS: &[&str] = &[
    "--no-comments",
    "--no-publications",
    "--no-security-labels",
    "--no-tablespaces",
    "--no-table-access-method",
    "--disable-triggers",
    "--no-data-for-failed-tables",
];

fn check_extra(args: &[String], safe: &[&str], tool: &str) -> Result<(), String> {
    for a in args {
        let ok = safe.iter().any(|s| {
            if s.ends_with('=') {
                a.starts_with(s)
                    && a.len() > s.len()
                    && a[s.len()..]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.')
            } else {
                a == s
            }
        });
        if !ok {
            return Err(format!(
                "{tool} argument {a:?} is not allowed; allowed extra arguments: {}",
                safe.join(" ")
            ));
        }
    }
    Ok(())
}

fn connection_args(pg: &PostgresConfig) -> Vec<String> {
    vec![
        format!("--host={}", pg.socket_dir.display()),
        format!("--port={}", pg.port),
        format!("--username={}", pg.user),
        "--no-password".to_string(),
    ]
}

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
    /// The whole database as a directory, written by `jobs` workers.
    Directory(&'a Path, u32),
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
    LaneData { snapshot: &'a str, lane: Lane<'a> },
}

/// Which tables' data one lane carries.
#[derive(Clone, Copy, Debug)]
pub enum Lane<'a> {
    /// One table of its own.
    Table(&'a TableName),
    /// Every table but these (they travel in lanes of their own).
    AllBut(&'a [TableName]),
}

/// A table as the catalog names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// A pg_dump pattern that matches this table and nothing else: both
    /// parts double-quoted, where wildcards and dots are literal and case
    /// is kept.
    pub fn exact_pattern(&self) -> Result<String, String> {
        let quote = |s: &str| {
            if s.is_empty() || s.chars().any(char::is_control) {
                return Err(format!("{s:?} cannot be named in a pg_dump pattern"));
            }
            Ok(format!("\"{}\"", s.replace('"', "\"\"")))
        };
        Ok(format!("{}.{}", quote(&self.schema)?, quote(&self.table)?))
    }
}

/// A table pattern as pg_dump reads it (`--exclude-table`,
/// `--exclude-table-data`): dots split schema and table; outside double
/// quotes `*` and `?` are wildcards and letters fold to lower case; inside
/// them everything is literal and `""` is a quote. Regular expression
/// syntax outside quotes, which pg_dump also accepts, is refused. Used to
/// tell which tables
/// a plan leaves out, so that none of them is given a data lane of its own.
pub struct TablePattern {
    schema: Option<globset::GlobMatcher>,
    table: globset::GlobMatcher,
    /// Has an unquoted `?`, which globset reads as one byte and pg_dump as
    /// one character.
    any_char: bool,
}

impl TablePattern {
    pub fn parse(pattern: &str) -> Result<TablePattern, String> {
        let mut parts = Vec::new();
        let mut part = String::new();
        let mut quoted = false;
        let mut any_char = false;
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    part.push('"');
                }
                '"' => quoted = !quoted,
                '.' if !quoted => parts.push(std::mem::take(&mut part)),
                '*' if !quoted => part.push(c),
                '?' if !quoted => {
                    any_char = true;
                    part.push(c);
                }
                // pg_dump passes these on as regular expression syntax,
                // which this reading does not follow.
                '|' | '+' | '(' | ')' | '^' | '[' | ']' | '{' | '}' | '\\' if !quoted => {
                    return Err(format!(
                        "table pattern {pattern:?} uses regular expression syntax"
                    ));
                }
                // Everything else is literal; globset escapes with a backslash.
                c if "*?[]{}\\".contains(c) => {
                    part.push('\\');
                    part.push(c);
                }
                c if !quoted => part.push(c.to_ascii_lowercase()),
                c => part.push(c),
            }
        }
        parts.push(part);
        let glob = |g: &str| {
            globset::GlobBuilder::new(g)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("table pattern {pattern:?}: {e}"))
        };
        let n = parts.len();
        match n {
            1 => Ok(TablePattern {
                schema: None,
                table: glob(&parts[0])?,
                any_char,
            }),
            // database.schema.table: the database part is the dump's own.
            2 | 3 => Ok(TablePattern {
                schema: Some(glob(&parts[n - 2])?),
                table: glob(&parts[n - 1])?,
                any_char,
            }),
            _ => Err(format!(
                "table pattern {pattern:?} has too many dotted names"
            )),
        }
    }

    /// True when the pattern names `t`. A pattern without a schema is taken
    /// to name the table in every schema (pg_dump limits it to the visible
    /// ones): the answer errs towards "named".
    pub fn matches(&self, t: &TableName) -> bool {
        if self.any_char && !(t.schema.is_ascii() && t.table.is_ascii()) {
            return true;
        }
        self.schema.as_ref().is_none_or(|s| s.is_match(&t.schema)) && self.table.is_match(&t.table)
    }
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
    match to {
        DumpTo::Stdout => args.extend(["--format=custom".to_string(), "--compress=0".to_string()]),
        DumpTo::Directory(dir, jobs) => args.extend([
            "--format=directory".to_string(),
            "--compress=0".to_string(),
            format!("--jobs={}", jobs.max(1)),
            format!("--file={}", dir.display()),
        ]),
        DumpTo::StdoutWithoutPostData { snapshot } => {
            check_snapshot(snapshot)?;
            args.extend(split_args(snapshot, "data"));
        }
        DumpTo::Schema { snapshot, file } => {
            check_snapshot(snapshot)?;
            // Not --schema-only: that would leave out the refresh of
            // materialized views, which is post-data.
            args.extend(split_args(snapshot, "post-data"));
            args.push(format!("--file={}", file.display()));
        }
        DumpTo::LaneData { snapshot, lane } => {
            check_snapshot(snapshot)?;
            if !opts.schemas.is_empty() || !opts.exclude_schemas.is_empty() {
                // pg_dump ignores schema filters for tables named with -t.
                return Err("data lanes cannot be combined with schema filters".into());
            }
            args.extend([
                "--format=custom".to_string(),
                "--compress=0".to_string(),
                format!("--snapshot={snapshot}"),
                "--section=data".to_string(),
            ]);
            match lane {
                Lane::Table(t) => args.push(format!("--table={}", t.exact_pattern()?)),
                Lane::AllBut(others) => {
                    for t in others {
                        args.push(format!("--exclude-table-data={}", t.exact_pattern()?));
                    }
                }
            }
        }
    }
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
    args.extend(opts.extra_args.iter().cloned());
    // Last, so nothing above can be read as the database name.
    args.push(format!("--dbname={}", conninfo_dbname(database)));
    Ok(args)
}

/// Where a `pg_restore` reads its archive.
#[derive(Clone, Copy, Debug)]
pub enum RestoreFrom<'a> {
    /// Custom format on stdin.
    Stdin,
    /// A directory-format archive, restored by `jobs` workers.
    Directory(&'a Path, u32),
    /// The post-data section of a custom-format file, restored by `jobs`
    /// workers.
    PostDataOf(&'a Path, u32),
    /// The pre-data section of a custom-format file (the tables a lane
    /// stream's data goes into).
    PreDataOf(&'a Path),
}

/// `pg_restore` into `new_database` as `owner`, from where `from` says.
pub fn pg_restore(
    pg: &PostgresConfig,
    new_database: &str,
    owner: &str,
    opts: &pb::RestoreOptions,
    from: RestoreFrom<'_>,
) -> Result<Vec<String>, String> {
    check_extra(&opts.extra_args, SAFE_RESTORE_ARGS, "pg_restore")?;
    let mut args = connection_args(pg);
    args.extend([
        format!("--dbname={}", conninfo_dbname(new_database)),
        "--no-owner".to_string(),
        format!("--role={owner}"),
        "--exit-on-error".to_string(),
        // A subscription restored on staging would connect to production's
        // publisher; never restore them.
        "--no-subscriptions".to_string(),
    ]);
    if !opts.privileges {
        args.push("--no-privileges".to_string());
    }
    args.extend(opts.extra_args.iter().cloned());
    let (format, input) = match from {
        RestoreFrom::Stdin => ("custom", None),
        RestoreFrom::Directory(dir, jobs) => ("directory", Some((dir, jobs))),
        RestoreFrom::PostDataOf(file, jobs) => {
            args.push("--section=post-data".to_string());
            ("custom", Some((file, jobs)))
        }
        RestoreFrom::PreDataOf(file) => {
            args.push("--section=pre-data".to_string());
            ("custom", Some((file, 1)))
        }
    };
    args.push(format!("--format={format}"));
    if let Some((path, jobs)) = input {
        args.push(format!("--jobs={}", jobs.max(1)));
        args.push(path.display().to_string());
    }
    Ok(args)
}

impl RestoreFrom<'_> {
    /// How many workers `pg_restore` runs.
    pub fn workers(&self) -> u32 {
        match self {
            RestoreFrom::Directory(_, jobs) | RestoreFrom::PostDataOf(_, jobs) => (*jobs).max(1),
            RestoreFrom::Stdin | RestoreFrom::PreDataOf(_) => 1,
        }
    }
}

/// The session settings of a `pg_restore` that runs `workers` workers on a
/// host with `cores` cores: the configured ones, plus a share of the cores
/// for each index build's parallel workers. PostgreSQL would otherwise give
/// every concurrent `CREATE INDEX` its full `max_parallel_maintenance_workers`
/// and put more processes on the cores than there are cores, which makes
/// the whole pass slower. A setting the operator gave is left alone.
pub fn restore_settings(configured: &[String], workers: u32, cores: usize) -> Vec<String> {
    const KEY: &str = "max_parallel_maintenance_workers";
    let mut settings = configured.to_vec();
    // PostgreSQL reads setting names in any case and with - for _.
    let given = configured.iter().any(|s| {
        s.split('=')
            .next()
            .is_some_and(|k| k.trim().replace('-', "_").eq_ignore_ascii_case(KEY))
    });
    if workers > 1 && !given {
        let share = cores / workers as usize;
        settings.push(format!("{KEY}={}", share.saturating_sub(1)));
    }
    settings
}

/// A database name as a conninfo string, so names with spaces, quotes or
/// `=` are never parsed as connection options.
fn conninfo_dbname(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_patterns_read_as_pg_dump_reads_them() {
        let t = |schema: &str, table: &str| TableName {
            schema: schema.into(),
            table: table.into(),
        };
        let m = |p: &str, name: &TableName| TablePattern::parse(p).expect(p).matches(name);
        assert!(m("app.posts", &t("app", "posts")));
        assert!(m("APP.Posts", &t("app", "posts")), "unquoted names fold");
        assert!(!m("app.posts", &t("App", "posts")));
        assert!(m("\"App\".posts", &t("App", "posts")));
        assert!(m("posts", &t("anything", "posts")), "no schema: any schema");
        assert!(m("app.cache_*", &t("app", "cache_sessions")));
        assert!(!m("app.cache_*", &t("app", "posts")));
        assert!(m("app.post?", &t("app", "posts")));
        assert!(m("*.*", &t("x", "y")));
        assert!(m("mydb.app.posts", &t("app", "posts")));
        // Quoted: wildcards, dots and brackets are literal; "" is a quote.
        let odd = t("app", "Big \"*.t");
        assert!(m("app.\"Big \"\"*.t\"", &odd));
        assert!(!m("app.\"Big \"\"*.t\"", &t("app", "Big \"xx.t")));
        assert!(m("app.\"a[1]\"", &t("app", "a[1]")));
        assert!(!m("app.\"a[1]\"", &t("app", "a1")));
        assert!(m("app.\"a{b}\"", &t("app", "a{b}")));
        assert!(m("app.a$b", &t("app", "a$b")), "pg_dump escapes $");
        assert!(TablePattern::parse("a.b.c.d").is_err());
        // Regular expression syntax outside quotes is not followed: the
        // caller then gives no table a lane.
        assert!(TablePattern::parse("app.(posts|users)").is_err());
        assert!(TablePattern::parse("app.\"(posts|users)\"").is_ok());
        // ? against a name that is not ASCII: taken as named.
        assert!(m("app.caf?", &t("app", "café")));
        assert!(m("app.caf?", &t("app", "cafe")));
        // The exact pattern of any table names that table.
        for name in [odd, t("s p", "Ta\\ble"), t("x", "?")] {
            assert!(
                m(&name.exact_pattern().expect("nameable"), &name),
                "{name:?}"
            );
        }
    }

    #[test]
    fn index_builds_share_the_cores_among_restore_workers() {
        let base = vec!["synchronous_commit=off".to_string()];
        // One worker: PostgreSQL's own default stands.
        assert_eq!(restore_settings(&base, 1, 2), base);
        // Two workers on two cores: no extra processes per index build.
        assert_eq!(
            restore_settings(&base, 2, 2),
            [
                "synchronous_commit=off",
                "max_parallel_maintenance_workers=0"
            ]
        );
        // Two workers on sixteen cores: seven helpers each.
        assert_eq!(
            restore_settings(&base, 2, 16)[1],
            "max_parallel_maintenance_workers=7"
        );
        // More workers than cores.
        assert_eq!(
            restore_settings(&base, 8, 4)[1],
            "max_parallel_maintenance_workers=0"
        );
        // The operator's own value wins.
        for own in [
            "max_parallel_maintenance_workers = 4",
            "Max-Parallel-Maintenance-Workers=4",
        ] {
            let own = vec![own.to_string()];
            assert_eq!(restore_settings(&own, 2, 2), own);
        }
        assert_eq!(RestoreFrom::PostDataOf(Path::new("s"), 3).workers(), 3);
        assert_eq!(RestoreFrom::Directory(Path::new("d"), 0).workers(), 1);
        assert_eq!(RestoreFrom::Stdin.workers(), 1);
    }

    fn pg() -> PostgresConfig {
        PostgresConfig {
            socket_dir: "/run/pg".into(),
            port: 5432,
            user: "postgres".into(),
            bin_dir: "/usr/bin".into(),
            restore_settings: Vec::new(),
        }
    }

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
            "owner",
            &pb::RestoreOptions::default(),
            RestoreFrom::PostDataOf(Path::new("/w/schema.dump"), 3),
        )
        .unwrap();
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
        let own = pg_dump(
            &pg(),
            "db",
            &opts,
            DumpTo::LaneData {
                snapshot: id,
                lane: Lane::Table(&big),
            },
        )
        .unwrap();
        for a in [
            "--section=data",
            "--snapshot=00000003-0000001B-1",
            "--table=\"App Data\".\"Big\"\"*.t\"",
            // The plan's own filters still apply inside a lane.
            "--exclude-table-data=public.cache_*",
        ] {
            assert!(own.contains(&a.to_string()), "{a} in {own:?}");
        }
        assert!(!own.iter().any(|a| a.contains("pre-data")), "{own:?}");
        let list = [big.clone(), other];
        let rest = pg_dump(
            &pg(),
            "db",
            &opts,
            DumpTo::LaneData {
                snapshot: id,
                lane: Lane::AllBut(&list),
            },
        )
        .unwrap();
        for a in [
            "--exclude-table-data=\"App Data\".\"Big\"\"*.t\"",
            "--exclude-table-data=\"public\".\"accounts\"",
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
                    lane: Lane::Table(&big),
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
            "owner",
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
