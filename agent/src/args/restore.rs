//! `pg_restore` command lines, and the session settings of a parallel one.

use std::path::Path;

use stagesync_proto::v1 as pb;

use super::{SAFE_RESTORE_ARGS, check_extra, connection_args_as, conninfo_dbname};
use crate::config::PostgresConfig;

/// Where a `pg_restore` reads its archive.
#[derive(Clone, Copy, Debug)]
pub enum RestoreFrom<'a> {
    /// Custom format on stdin.
    Stdin,
    /// The post-data section of a custom-format file, restored by `jobs`
    /// workers.
    PostDataOf(&'a Path, u32),
    /// The pre-data section of a custom-format file (the tables a lane
    /// stream's data goes into).
    PreDataOf(&'a Path),
    /// The post-data items a list file names (`pg_restore -l` lines), of a
    /// custom-format file, by `jobs` workers.
    PostDataListed {
        file: &'a Path,
        list: &'a Path,
        jobs: u32,
        /// Builds running at once, this one included: they share the
        /// cores.
        alongside: u32,
    },
}

/// Who a `pg_restore` logs in as, and the role it creates objects as.
#[derive(Clone, Copy, Debug)]
pub struct RestoreAs<'a> {
    /// The job's login role (see `db::JobLogin`).
    pub login: &'a str,
    /// The owner of everything restored.
    pub owner: &'a str,
}

/// `pg_restore` into `new_database`, logged in as `who.login` and creating
/// everything as `who.owner`, from where `from` says.
pub fn pg_restore(
    pg: &PostgresConfig,
    new_database: &str,
    who: RestoreAs<'_>,
    opts: &pb::RestoreOptions,
    from: RestoreFrom<'_>,
) -> Result<Vec<String>, String> {
    check_extra(&opts.extra_args, SAFE_RESTORE_ARGS, "pg_restore")?;
    let owner = who.owner;
    let mut args = connection_args_as(pg, who.login);
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
        RestoreFrom::PostDataOf(file, jobs) => {
            args.push("--section=post-data".to_string());
            ("custom", Some((file, jobs)))
        }
        RestoreFrom::PreDataOf(file) => {
            args.push("--section=pre-data".to_string());
            ("custom", Some((file, 1)))
        }
        RestoreFrom::PostDataListed {
            file, list, jobs, ..
        } => {
            args.push("--section=post-data".to_string());
            args.push(format!("--use-list={}", list.display()));
            ("custom", Some((file, jobs)))
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
            RestoreFrom::PostDataOf(_, jobs) => (*jobs).max(1),
            RestoreFrom::PostDataListed {
                jobs, alongside, ..
            } => (*jobs).max(*alongside).max(1),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(RestoreFrom::PostDataOf(Path::new("d"), 0).workers(), 1);
        assert_eq!(RestoreFrom::Stdin.workers(), 1);
    }
}
