//! One pair's variables turned into the keys of its `[pairs.NAME]` table:
//! the destination, excluded table data, the role's post-restore task and
//! its git preflight. The copies are in `copies`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use marked_yaml::Node;
use stagesync_proto::tomlfile::ConfigError;

use super::Options;
use super::copies::copies;
use super::names::{env_name, git_ref, q, q_list};
use super::role::report_left_out;
use super::value::{Var, boolean, scalar};

/// One pair before chaining.
pub(super) struct Pair {
    pub(super) name: String,
    pub(super) file: PathBuf,
    pub(super) source_db: String,
    pub(super) dest_db: String,
    /// The pair's keys after `source` (and before `after`).
    pub(super) keys: String,
    /// Its `[[pairs.NAME.copies]]` tables.
    pub(super) copies: String,
}

/// The role's placeholder for `stagesync_hosted_repo`.
const PLACEHOLDER_REPO: &str = "https://github.com/example/example";

/// One pair's variables (group vars under its own) being imported.
struct PairImport<'a> {
    name: &'a str,
    file: &'a Path,
    vars: &'a BTreeMap<String, Var>,
    warn: &'a mut dyn FnMut(ConfigError),
}

pub(super) fn import_pair(
    name: &str,
    file: &Path,
    vars: &BTreeMap<String, Var>,
    options: &Options,
    warn: &mut dyn FnMut(ConfigError),
) -> Result<Pair, ConfigError> {
    let mut p = PairImport {
        name,
        file,
        vars,
        warn,
    };
    let source_db = p.get("stagesync_sourcedb", "production")?;
    let dest_db = p.get("stagesync_destdb", "stage")?;
    let owner = p.get("stagesync_destdb_role", "stage")?;
    report_left_out(vars, p.warn);

    let mut keys = String::new();
    let _ = writeln!(
        keys,
        "dest = {{ agent = {}, database = {}, owner = {} }}",
        q(&options.dest_agent),
        q(&dest_db),
        q(&owner)
    );
    p.exclude_table_data(&mut keys)?;
    p.social_app(&mut keys)?;
    p.git_preflight(&mut keys)?;
    let region = p.optional("stagesync_aws_region")?;
    let copies = match vars.get("stagesync_copies") {
        Some(v) => copies(v, name, region.as_deref(), p.warn)?,
        None => String::new(),
    };
    Ok(Pair {
        name: name.to_string(),
        file: file.to_path_buf(),
        source_db,
        dest_db,
        keys,
        copies,
    })
}

impl PairImport<'_> {
    /// The variable's value, or the role's default, with a warning.
    fn get(&mut self, key: &str, role_default: &str) -> Result<String, ConfigError> {
        if let Some(v) = self.vars.get(key) {
            return scalar(v, key);
        }
        (self.warn)(ConfigError {
            file: self.file.to_path_buf(),
            line: 0,
            key: key.to_string(),
            message: format!("{key} is not set; using the role's default {role_default:?}"),
        });
        Ok(role_default.to_string())
    }

    fn optional(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.vars.get(key).map(|v| scalar(v, key)).transpose()
    }

    fn switch(&self, key: &str, role_default: bool) -> Result<bool, ConfigError> {
        match self.vars.get(key) {
            Some(v) => boolean(v, key),
            None => Ok(role_default),
        }
    }

    /// Warns of each of `keys` that is set.
    fn warn_if_set(&mut self, keys: &[&str], message: &str) {
        for key in keys {
            if let Some(v) = self.vars.get(*key) {
                (self.warn)(v.err(key, message));
            }
        }
    }

    fn exclude_table_data(&self, keys: &mut String) -> Result<(), ConfigError> {
        let key = "stagesync_exclude_table_data";
        let Some(v) = self.vars.get(key) else {
            return Ok(());
        };
        let tables = match &v.node {
            Node::Sequence(items) => items
                .iter()
                .map(|n| match n.as_scalar() {
                    Some(s) => Ok(s.as_str().to_string()),
                    None => Err(v.at(n, key, "each item must be a table name")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Node::Scalar(_) => vec![scalar(v, key)?],
            Node::Mapping(_) => {
                return Err(v.err(key, "expected a table name or a list of table names"));
            }
        };
        if !tables.is_empty() {
            let _ = writeln!(keys, "exclude_table_data = {}", q_list(&tables));
        }
        Ok(())
    }

    /// The social-app credentials: as the role's post-restore task, but with
    /// the values read from the environment when `stagesync sync` runs.
    fn social_app(&mut self, keys: &mut String) -> Result<(), ConfigError> {
        let update = self.switch("stagesync_post_restore_update_db", false)?;
        let id_env = env_name(self.name, "SOCIAL_CLIENT_ID");
        let secret_env = env_name(self.name, "SOCIAL_SECRET");
        if !update {
            self.warn_if_set(
                &["stagesync_social_client_id", "stagesync_social_secret"],
                "ignored: stagesync_post_restore_update_db is not true, so the role does not use it either",
            );
            return Ok(());
        }
        for (key, env) in [
            ("stagesync_social_client_id", &id_env),
            ("stagesync_social_secret", &secret_env),
        ] {
            self.warn_if_set(
                &[key],
                &format!("the value is not copied into the plan (no secrets in plan files): export {env} where `stagesync sync` runs"),
            );
        }
        let _ = writeln!(
            keys,
            "# The role's post-restore task: staging logs in with its own OAuth app.\npost_restore_sql = \"\"\"\nUPDATE socialaccount_socialapp\n   SET client_id = ${{{id_env}}}, secret = ${{{secret_env}}}\n WHERE id = (SELECT min(id) FROM socialaccount_socialapp WHERE provider = 'github')\n\"\"\"\nparams = [{}, {}]",
            q(&id_env),
            q(&secret_env)
        );
        Ok(())
    }

    /// The git preflight (on by default in the role).
    fn git_preflight(&mut self, keys: &mut String) -> Result<(), ConfigError> {
        if !self.switch("stagesync_compare_git_commits", true)? {
            self.warn_if_set(
                &[
                    "stagesync_hosted_repo",
                    "stagesync_source_gitbranch",
                    "stagesync_destination_gitbranch",
                ],
                "ignored: stagesync_compare_git_commits is false, so no git preflight",
            );
            return Ok(());
        }
        let repo = self.get("stagesync_hosted_repo", PLACEHOLDER_REPO)?;
        if repo == PLACEHOLDER_REPO {
            self.warn_if_set(
                &["stagesync_hosted_repo"],
                "this is the role's placeholder repository: put the app's repository in preflight.git.repo",
            );
        }
        let source = self.get("stagesync_source_gitbranch", "origin/master")?;
        let dest = self.get("stagesync_destination_gitbranch", "origin/develop")?;
        let _ = writeln!(
            keys,
            "# Refuse unless both branches of the app are at one commit (the role's git preflight).\npreflight.git = {{ repo = {}, source_ref = {}, dest_ref = {} }}",
            q(&repo),
            q(&git_ref(&source)),
            q(&git_ref(&dest))
        );
        Ok(())
    }
}
