//! What the importer knows of the role's variables: those it turns into
//! plan settings, and those stagesync has no use for, with the reason.

use std::collections::BTreeMap;

use stagesync_proto::tomlfile::ConfigError;

use super::value::Var;

const NO_TMP_DIR: &str = "no dump file is copied between hosts, so no temporary directory is used";
const AGENT_USER: &str = "agents run as the OS user of their systemd unit (User=postgres)";
const BACKUP_SCRIPTS: &str = "agents take backups themselves (`stagesync backup`, deploy/systemd/stagesync-backup@.timer); no script is generated";
const PG_TOOLS: &str =
    "agents find the PostgreSQL tools themselves (or postgres.bin_dir in agent.toml)";

/// Settings of the role that stagesync does differently, and why.
const NO_EQUIVALENT: &[(&str, &str)] = &[
    (
        "stagesync_local_repo",
        "the git preflight asks the repository with `git ls-remote`; no local clone is kept",
    ),
    (
        "stagesync_backup_script",
        "the dump streams from agent to agent; no backup script runs",
    ),
    (
        "stagesync_source_backups_dir",
        "no dump file is written on the source host",
    ),
    ("stagesync_source_tmp_dir", NO_TMP_DIR),
    ("stagesync_dest_tmp_dir", NO_TMP_DIR),
    ("stagesync_backup_user", AGENT_USER),
    ("stagesync_backup_group", AGENT_USER),
    (
        "stagesync_execute_backup",
        "every refresh dumps the live source database; an old dump file is never reused",
    ),
    ("stagesync_backups_create_backups_scripts", BACKUP_SCRIPTS),
    ("stagesync_backups_script_template", BACKUP_SCRIPTS),
    (
        "stagesync_backups_cleanup_script_template",
        "retention is the plan's (backups.keep_daily, keep_weekly) and applied after each backup",
    ),
    (
        "stagesync_backups_s3_cmd",
        "stagesync talks to S3 itself; no S3 command-line tool is needed",
    ),
    ("stagesync_backups_psql", PG_TOOLS),
    ("stagesync_backups_pgdump", PG_TOOLS),
];

/// Variables this importer turns into plan settings.
const HANDLED: &[&str] = &[
    "stagesync_sourcedb",
    "stagesync_destdb",
    "stagesync_destdb_role",
    "stagesync_copies",
    "stagesync_aws_region",
    "stagesync_post_restore_update_db",
    "stagesync_social_client_id",
    "stagesync_social_secret",
    "stagesync_compare_git_commits",
    "stagesync_hosted_repo",
    "stagesync_source_gitbranch",
    "stagesync_destination_gitbranch",
    "stagesync_exclude_table_data",
];

/// Warns of each role variable that is left out of the plan.
pub(super) fn report_left_out(vars: &BTreeMap<String, Var>, warn: &mut dyn FnMut(ConfigError)) {
    for (key, var) in vars {
        if let Some((_, why)) = NO_EQUIVALENT.iter().find(|(k, _)| k == key) {
            warn(var.err(key, format!("no equivalent in stagesync: {why}")));
        } else if key.starts_with("stagesync_")
            && !HANDLED.contains(&key.as_str())
            && !super::backups::HANDLED.contains(&key.as_str())
        {
            warn(var.err(
                key,
                "not a variable of the role this importer knows; left out",
            ));
        }
    }
}
