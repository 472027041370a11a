//! `stagesync import-ansible`: the variables of the Ansible role that
//! stagesync replaces, turned into plan pairs.
//!
//! The role is run once per pair with `--extra-vars @VARS.yml` on top of a
//! group-vars file. Each vars file becomes one `[pairs.NAME]` table (NAME
//! from the file name); the group-vars file applies to all of them, and a
//! vars file overrides it, as in Ansible. Settings without an equivalent,
//! secrets that must move to the environment and defaults taken from the
//! role are reported as warnings naming file, line and variable.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use marked_yaml::{LoaderOptions, Node, loader::LoadError};
use stagesync_proto::tomlfile::ConfigError;

/// One YAML file and its text.
pub struct VarsFile {
    pub path: PathBuf,
    pub text: String,
}

impl VarsFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Ok(VarsFile {
            path: path.to_path_buf(),
            text,
        })
    }
}

/// Agents the imported pairs name (the role's inventory groups).
pub struct Options {
    /// The agent on the `stagesync-sourcedb` host.
    pub source_agent: String,
    /// The agent on the `stagesync-destdb` host(s).
    pub dest_agent: String,
}

/// The plan text and what the operator must know about it.
pub struct Imported {
    pub toml: String,
    /// Located notes: settings without an equivalent, secrets left out,
    /// defaults assumed.
    pub warnings: Vec<ConfigError>,
}

/// A variable's value and where it was set.
#[derive(Clone)]
struct Var {
    file: PathBuf,
    line: usize,
    node: Node,
}

impl Var {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn at(&self, node: &Node, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: line_of(node).unwrap_or(self.line),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

fn line_of(node: &Node) -> Option<usize> {
    node.span().start().map(|m| m.line())
}

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
    (
        "stagesync_source_tmp_dir",
        "no dump file is copied between hosts, so no temporary directory is used",
    ),
    (
        "stagesync_dest_tmp_dir",
        "no dump file is copied between hosts, so no temporary directory is used",
    ),
    (
        "stagesync_backup_user",
        "agents run as the OS user of their systemd unit (User=postgres)",
    ),
    (
        "stagesync_backup_group",
        "agents run as the OS user of their systemd unit (User=postgres)",
    ),
    (
        "stagesync_execute_backup",
        "every refresh dumps the live source database; an old dump file is never reused",
    ),
    (
        "stagesync_backups_create_backups_scripts",
        "backups to S3 are not part of the plan yet; keep the role's backup job meanwhile",
    ),
    (
        "stagesync_backups_script_template",
        "backups to S3 are not part of the plan yet; keep the role's backup job meanwhile",
    ),
    (
        "stagesync_backups_cleanup_script_template",
        "backups to S3 are not part of the plan yet; keep the role's backup job meanwhile",
    ),
    (
        "stagesync_backups_upload_to_bucket",
        "backups to S3 are not part of the plan yet; keep the role's backup job meanwhile",
    ),
    (
        "stagesync_backups_s3_bucket",
        "backups to S3 are not part of the plan yet; keep the role's backup job meanwhile",
    ),
    (
        "stagesync_backups_s3_weekly_bucket",
        "backups to S3 are not part of the plan yet; keep the role's backup job meanwhile",
    ),
    (
        "stagesync_backups_s3_cmd",
        "stagesync talks to S3 itself; no S3 command-line tool is needed",
    ),
    (
        "stagesync_backups_psql",
        "agents find the PostgreSQL tools themselves (or postgres.bin_dir in agent.toml)",
    ),
    (
        "stagesync_backups_pgdump",
        "agents find the PostgreSQL tools themselves (or postgres.bin_dir in agent.toml)",
    ),
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

/// Keys of one `stagesync_copies` item.
const COPY_KEYS: &[&str] = &[
    "description",
    "source_bucket",
    "source_path",
    "dest_bucket",
    "dest_path",
    "aws_profile",
];

/// Parses one YAML file into its top-level variables.
fn load(file: &VarsFile) -> Result<BTreeMap<String, Var>, ConfigError> {
    let err = |line: usize, message: String| ConfigError {
        file: file.path.clone(),
        line,
        key: String::new(),
        message,
    };
    let meaningful = file.text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "---" && t != "..."
    });
    if !meaningful {
        return Ok(BTreeMap::new());
    }
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let root =
        marked_yaml::parse_yaml_with_options(0, &file.text, options).map_err(|e| match e {
            LoadError::TopLevelMustBeMapping(m) => err(
                m.line(),
                "expected a mapping of variables (`name: value` lines), as in an Ansible vars file"
                    .into(),
            ),
            LoadError::ScanError(m, e) => err(m.line(), format!("not valid YAML: {e}")),
            LoadError::DuplicateKey(d) => ConfigError {
                file: file.path.clone(),
                line: d.key.span().start().map(|m| m.line()).unwrap_or(0),
                key: d.key.as_str().to_string(),
                message: format!(
                    "set twice (first on line {})",
                    d.prev_key.span().start().map(|m| m.line()).unwrap_or(0)
                ),
            },
            LoadError::UnexpectedAnchor(m) => err(
                m.line(),
                "YAML anchors are not supported here: write the values out".into(),
            ),
            LoadError::UnexpectedTag(m) => err(
                m.line(),
                "YAML tags (such as !vault) are not supported here".into(),
            ),
            LoadError::MappingKeyMustBeScalar(m) => {
                err(m.line(), "variable names must be plain strings".into())
            }
            other => err(0, format!("not valid YAML: {other:?}")),
        })?;
    let Some(map) = root.as_mapping() else {
        return Err(err(
            line_of(&root).unwrap_or(1),
            "expected a mapping of variables".into(),
        ));
    };
    Ok(map
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Var {
                    file: file.path.clone(),
                    line: k.span().start().map(|m| m.line()).unwrap_or(0),
                    node: v.clone(),
                },
            )
        })
        .collect())
}

/// A scalar's text; refused when it is a list or mapping, or a template.
fn scalar(var: &Var, key: &str) -> Result<String, ConfigError> {
    let Some(s) = var.node.as_scalar() else {
        return Err(var.err(key, "expected a single value, found a list or mapping"));
    };
    let text = s.as_str().to_string();
    if text.contains("{{") || text.contains("{%") {
        return Err(var.err(
            key,
            format!("{text:?} is a Jinja template; stagesync does not evaluate templates: write the value itself"),
        ));
    }
    Ok(text)
}

/// Ansible's truthy values.
fn boolean(var: &Var, key: &str) -> Result<bool, ConfigError> {
    let text = scalar(var, key)?;
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" | "y" => Ok(true),
        "false" | "no" | "off" | "0" | "n" | "" => Ok(false),
        _ => Err(var.err(key, format!("{text:?} is not true or false"))),
    }
}

/// `origin/master` (the role's form) → `refs/heads/master`.
fn git_ref(branch: &str) -> String {
    if branch.starts_with("refs/") {
        return branch.to_string();
    }
    let name = branch
        .split_once('/')
        .map(|(_, rest)| rest)
        .unwrap_or(branch);
    format!("refs/heads/{name}")
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn q_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A pair name from a vars file name: `vars/prod-to-stage1.yml` → `prod-to-stage1`.
fn pair_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name = format!("pair-{name}");
    }
    name
}

/// An environment variable name for one of a pair's secrets.
fn env_name(pair: &str, what: &str) -> String {
    let base: String = pair
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{base}_{what}")
}

/// A copy name from the role's free-text description.
fn copy_name(description: Option<&str>, index: usize) -> String {
    let slug: String = description
        .unwrap_or("")
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if slug.is_empty() {
        format!("copy-{}", index + 1)
    } else {
        slug.chars()
            .take(48)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string()
    }
}

/// One pair before chaining.
struct Pair {
    name: String,
    file: PathBuf,
    source_db: String,
    dest_db: String,
    /// The pair's keys after `source` (and before `after`).
    keys: String,
    /// Its `[[pairs.NAME.copies]]` tables.
    copies: String,
}

/// Turns the role's variables into plan text.
pub fn import(
    group_vars: Option<&VarsFile>,
    pair_files: &[VarsFile],
    options: &Options,
) -> Result<Imported, ConfigError> {
    let mut warnings = Vec::new();
    let group = match group_vars {
        Some(g) => load(g)?,
        None => BTreeMap::new(),
    };
    let mut pairs: Vec<Pair> = Vec::new();
    let mut reported: std::collections::BTreeSet<(PathBuf, String)> = Default::default();
    for file in pair_files {
        let mut vars = group.clone();
        vars.extend(load(file)?);
        let name = pair_name(&file.path);
        if let Some(other) = pairs.iter().find(|p| p.name == name) {
            return Err(ConfigError {
                file: file.path.clone(),
                line: 0,
                key: String::new(),
                message: format!(
                    "gives the pair name {name:?}, as {} does: rename one of the files",
                    other.file.display()
                ),
            });
        }
        // Warnings about a group-vars setting are given once, not per pair.
        let mut warn = |w: ConfigError| {
            if reported.insert((w.file.clone(), format!("{}:{}", w.line, w.key))) {
                warnings.push(w);
            }
        };
        let pair = import_pair(&name, &file.path, &vars, options, &mut warn)?;
        pairs.push(pair);
    }

    let mut out = String::new();
    let mut sources: Vec<String> = pair_files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    if let Some(g) = group_vars {
        sources.push(format!("{} (group vars)", g.path.display()));
    }
    let _ = writeln!(
        out,
        "# Pairs imported from the Ansible role's variables: {}.\n# Add them to a plan with [controller] and [agents] ({} and {} must be listed there).",
        sources.join(", "),
        options.source_agent,
        options.dest_agent
    );
    for pair in &pairs {
        // A pair whose source is another imported pair's destination is a
        // chain link (stage1 -> dev): it runs after that pair, from the
        // destination host.
        let feeder = pairs
            .iter()
            .find(|p| p.name != pair.name && p.dest_db == pair.source_db);
        let source_agent = if feeder.is_some() {
            &options.dest_agent
        } else {
            &options.source_agent
        };
        let _ = writeln!(out, "\n[pairs.{}]", pair.name);
        let _ = writeln!(
            out,
            "source = {{ agent = {}, database = {} }}",
            q(source_agent),
            q(&pair.source_db)
        );
        out.push_str(&pair.keys);
        if let Some(f) = feeder {
            let _ = writeln!(out, "after = [{}]", q(&f.name));
        }
        out.push_str(&pair.copies);
    }
    warnings.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Ok(Imported {
        toml: out,
        warnings,
    })
}

fn import_pair(
    name: &str,
    file: &Path,
    vars: &BTreeMap<String, Var>,
    options: &Options,
    warn: &mut dyn FnMut(ConfigError),
) -> Result<Pair, ConfigError> {
    let default = |key: &str, value: &str, warn: &mut dyn FnMut(ConfigError)| {
        warn(ConfigError {
            file: file.to_path_buf(),
            line: 0,
            key: key.to_string(),
            message: format!("{key} is not set; using the role's default {value:?}"),
        });
        value.to_string()
    };
    let get = |key: &str, role_default: &str, warn: &mut dyn FnMut(ConfigError)| match vars.get(key)
    {
        Some(v) => scalar(v, key),
        None => Ok(default(key, role_default, warn)),
    };
    let source_db = get("stagesync_sourcedb", "production", warn)?;
    let dest_db = get("stagesync_destdb", "stage", warn)?;
    let owner = get("stagesync_destdb_role", "stage", warn)?;

    for (key, var) in vars {
        if let Some((_, why)) = NO_EQUIVALENT.iter().find(|(k, _)| k == key) {
            warn(var.err(key, format!("no equivalent in stagesync: {why}")));
        } else if key.starts_with("stagesync_") && !HANDLED.contains(&key.as_str()) {
            warn(var.err(
                key,
                "not a variable of the role this importer knows; left out",
            ));
        }
    }

    let mut body = String::new();
    let _ = writeln!(
        body,
        "dest = {{ agent = {}, database = {}, owner = {} }}",
        q(&options.dest_agent),
        q(&dest_db),
        q(&owner)
    );

    if let Some(v) = vars.get("stagesync_exclude_table_data") {
        let key = "stagesync_exclude_table_data";
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
            let _ = writeln!(body, "exclude_table_data = {}", q_list(&tables));
        }
    }

    // The social-app credentials: as the role's post-restore task, but with
    // the values read from the environment when `stagesync sync` runs.
    let update = match vars.get("stagesync_post_restore_update_db") {
        Some(v) => boolean(v, "stagesync_post_restore_update_db")?,
        None => false,
    };
    let (id_env, secret_env) = (
        env_name(name, "SOCIAL_CLIENT_ID"),
        env_name(name, "SOCIAL_SECRET"),
    );
    for (key, env) in [
        ("stagesync_social_client_id", &id_env),
        ("stagesync_social_secret", &secret_env),
    ] {
        if let Some(v) = vars.get(key) {
            if update {
                warn(v.err(
                    key,
                    format!("the value is not copied into the plan (no secrets in plan files): export {env} where `stagesync sync` runs"),
                ));
            } else {
                warn(v.err(
                    key,
                    "ignored: stagesync_post_restore_update_db is not true, so the role does not use it either",
                ));
            }
        }
    }
    if update {
        let _ = writeln!(
            body,
            "# The role's post-restore task: staging logs in with its own OAuth app.\npost_restore_sql = \"\"\"\nUPDATE socialaccount_socialapp\n   SET client_id = ${{{id_env}}}, secret = ${{{secret_env}}}\n WHERE id = (SELECT min(id) FROM socialaccount_socialapp WHERE provider = 'github')\n\"\"\"\nparams = [{}, {}]",
            q(&id_env),
            q(&secret_env)
        );
    }

    // The git preflight (on by default in the role).
    let compare = match vars.get("stagesync_compare_git_commits") {
        Some(v) => boolean(v, "stagesync_compare_git_commits")?,
        None => true,
    };
    if compare {
        let repo = get(
            "stagesync_hosted_repo",
            "https://github.com/example/example",
            warn,
        )?;
        if repo == "https://github.com/example/example"
            && let Some(v) = vars.get("stagesync_hosted_repo")
        {
            warn(v.err(
                "stagesync_hosted_repo",
                "this is the role's placeholder repository: put the app's repository in preflight.git.repo",
            ));
        }
        let source = get("stagesync_source_gitbranch", "origin/master", warn)?;
        let dest = get("stagesync_destination_gitbranch", "origin/develop", warn)?;
        let _ = writeln!(
            body,
            "# Refuse unless both branches of the app are at one commit (the role's git preflight).\npreflight.git = {{ repo = {}, source_ref = {}, dest_ref = {} }}",
            q(&repo),
            q(&git_ref(&source)),
            q(&git_ref(&dest))
        );
    } else {
        for key in [
            "stagesync_hosted_repo",
            "stagesync_source_gitbranch",
            "stagesync_destination_gitbranch",
        ] {
            if let Some(v) = vars.get(key) {
                warn(v.err(
                    key,
                    "ignored: stagesync_compare_git_commits is false, so no git preflight",
                ));
            }
        }
    }

    // Bucket copies: `rclone sync --checksum`, a mirror, as stagesync's default.
    let region = match vars.get("stagesync_aws_region") {
        Some(v) => Some(scalar(v, "stagesync_aws_region")?),
        None => None,
    };
    let mut copies = String::new();
    if let Some(v) = vars.get("stagesync_copies") {
        let key = "stagesync_copies";
        let items: &[Node] = match &v.node {
            Node::Sequence(items) => items,
            Node::Scalar(s) if s.as_str().is_empty() || s.as_str() == "[]" => &[],
            _ => {
                return Err(v.err(
                    key,
                    "expected a list of copies ({source_bucket, source_path, dest_bucket, dest_path, aws_profile})",
                ));
            }
        };
        let mut names = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(map) = item.as_mapping() else {
                return Err(v.at(item, key, format!("item {} must be a mapping", i + 1)));
            };
            for (k, _) in map.iter() {
                if !COPY_KEYS.contains(&k.as_str()) {
                    warn(ConfigError {
                        file: v.file.clone(),
                        line: k.span().start().map(|m| m.line()).unwrap_or(v.line),
                        key: format!("{key}[{i}].{}", k.as_str()),
                        message: format!(
                            "unknown key, left out (the role reads {})",
                            COPY_KEYS.join(", ")
                        ),
                    });
                }
            }
            let field = |f: &str, required: bool| -> Result<Option<String>, ConfigError> {
                match map.get(f) {
                    Some(n) => match n.as_scalar() {
                        Some(s) if s.as_str().contains("{{") => Err(v.at(
                            n,
                            &format!("{key}[{i}].{f}"),
                            "a Jinja template; stagesync does not evaluate templates: write the value itself",
                        )),
                        Some(s) => Ok(Some(s.as_str().to_string())),
                        None => Err(v.at(n, &format!("{key}[{i}].{f}"), "expected a single value")),
                    },
                    None if required => Err(v.at(
                        item,
                        &format!("{key}[{i}]"),
                        format!("{f} is missing"),
                    )),
                    None => Ok(None),
                }
            };
            let source_bucket = field("source_bucket", true)?.unwrap_or_default();
            let dest_bucket = field("dest_bucket", true)?.unwrap_or_default();
            let source_path = field("source_path", false)?.unwrap_or_default();
            let dest_path = field("dest_path", false)?.unwrap_or_default();
            let description = field("description", false)?;
            let profile = field("aws_profile", false)?;
            let mut cname = copy_name(description.as_deref(), i);
            if names.contains(&cname) {
                cname = format!("{cname}-{}", i + 1);
            }
            names.push(cname.clone());
            let url = |bucket: &str, path: &str| {
                let path = path.trim_start_matches('/');
                if path.is_empty() || path.ends_with('/') {
                    format!("s3://{bucket}/{path}")
                } else {
                    format!("s3://{bucket}/{path}/")
                }
            };
            let _ = writeln!(copies, "\n[[pairs.{name}.copies]]");
            if let Some(d) = &description {
                let _ = writeln!(copies, "# {}", d.replace('\n', " "));
            }
            let _ = writeln!(copies, "name = {}", q(&cname));
            let _ = writeln!(copies, "source = {}", q(&url(&source_bucket, &source_path)));
            let _ = writeln!(copies, "dest = {}", q(&url(&dest_bucket, &dest_path)));
            if let Some(p) = &profile {
                let _ = writeln!(copies, "profile = {}", q(p));
            }
            if let Some(r) = &region {
                let _ = writeln!(copies, "region = {}", q(r));
            }
        }
    }
    Ok(Pair {
        name: name.to_string(),
        file: file.to_path_buf(),
        source_db,
        dest_db,
        keys: body,
        copies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(path: &str, text: &str) -> VarsFile {
        VarsFile {
            path: PathBuf::from(path),
            text: text.to_string(),
        }
    }

    fn opts() -> Options {
        Options {
            source_agent: "prod-db".into(),
            dest_agent: "staging-db".into(),
        }
    }

    const HEADER: &str = r#"[controller]
name = "ops"
certs_dir = "certs"
[agents]
prod-db = { endpoint = "db1.example.com:7443" }
staging-db = { endpoint = "staging-db1.example.com:7443" }
"#;

    fn parses(toml: &str) -> crate::plan::Plan {
        let text = format!("{HEADER}{toml}");
        crate::plan::parse(Path::new("stagesync.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_roles_readme_example_becomes_a_valid_pair() {
        let group = vars(
            "group_vars/stagesync/main.yml",
            "---\nstagesync_hosted_repo: https://git.example.com/web/app\nstagesync_local_repo: /opt/app\nstagesync_aws_region: us-east-2\nstagesync_backups_upload_to_bucket: \"no\"\n",
        );
        let pair = vars(
            "vars/prod-to-stage1.yml",
            r#"stagesync_sourcedb: "production"
stagesync_destdb: "stage"
stagesync_destdb_role: "stage"

stagesync_copies:
  - description: production to stage media bucket
    source_bucket: production-bucket
    source_path: "files/"
    dest_bucket: staging-bucket
    dest_path: "files/"
    aws_profile: stage

stagesync_post_restore_update_db: true
stagesync_social_client_id: "123"
stagesync_social_secret: "456"
stagesync_exclude_table_data: [public.cache_table]
"#,
        );
        let imported = import(Some(&group), &[pair], &opts()).unwrap();
        let plan = parses(&imported.toml);
        let p = &plan.pairs["prod-to-stage1"];
        assert_eq!(
            (p.source_agent.as_str(), p.source_db.as_str()),
            ("prod-db", "production")
        );
        assert_eq!(
            (p.dest_agent.as_str(), p.dest_db.as_str(), p.owner.as_str()),
            ("staging-db", "stage", "stage")
        );
        assert_eq!(p.copies.len(), 1);
        let c = &p.copies[0];
        assert_eq!(c.name, "production-to-stage-media-bucket");
        assert_eq!(c.source.to_string(), "s3://production-bucket/files/");
        assert_eq!(c.dest.to_string(), "s3://staging-bucket/files/");
        assert!(c.delete, "the role's rclone sync is a mirror");
        let t = &imported.toml;
        assert!(t.contains("${PROD_TO_STAGE1_SOCIAL_CLIENT_ID}"), "{t}");
        assert!(
            !t.contains("\"456\"") && !t.contains("123"),
            "secrets leaked: {t}"
        );
        assert!(
            t.contains("refs/heads/master") && t.contains("refs/heads/develop"),
            "{t}"
        );
        assert!(t.contains("region = \"us-east-2\""), "{t}");
        assert!(
            t.contains("exclude_table_data = [\"public.cache_table\"]"),
            "{t}"
        );
        let w: Vec<String> = imported.warnings.iter().map(|w| w.to_string()).collect();
        let has = |s: &str| w.iter().any(|l| l.contains(s));
        assert!(
            has("group_vars/stagesync/main.yml:3: stagesync_local_repo: no equivalent"),
            "{w:#?}"
        );
        assert!(
            has(
                "group_vars/stagesync/main.yml:5: stagesync_backups_upload_to_bucket: no equivalent"
            ),
            "{w:#?}"
        );
        assert!(
            has("vars/prod-to-stage1.yml:14: stagesync_social_client_id: the value is not copied"),
            "{w:#?}"
        );
        assert!(has("export PROD_TO_STAGE1_SOCIAL_SECRET"), "{w:#?}");
    }

    #[test]
    fn a_chain_runs_after_the_pair_that_feeds_it() {
        let a = vars(
            "vars/prod-to-stage1.yml",
            "stagesync_sourcedb: production\nstagesync_destdb: stage1\nstagesync_destdb_role: stage\nstagesync_compare_git_commits: no\n",
        );
        let b = vars(
            "vars/stage1-to-dev.yml",
            "stagesync_sourcedb: stage1\nstagesync_destdb: dev\nstagesync_destdb_role: dev\nstagesync_compare_git_commits: false\n",
        );
        let imported = import(None, &[b, a], &opts()).unwrap();
        let plan = parses(&imported.toml);
        let dev = &plan.pairs["stage1-to-dev"];
        assert_eq!(dev.after, vec!["prod-to-stage1".to_string()]);
        assert_eq!(dev.source_agent, "staging-db");
        assert_eq!(plan.order(), vec!["prod-to-stage1", "stage1-to-dev"]);
        assert!(plan.pairs["prod-to-stage1"].after.is_empty());
        assert!(
            !imported.toml.contains("preflight.git"),
            "{}",
            imported.toml
        );
    }

    #[test]
    fn missing_variables_take_the_roles_defaults_with_a_warning() {
        let imported = import(None, &[vars("vars/p.yml", "---\n")], &opts()).unwrap();
        let plan = parses(&imported.toml);
        let p = &plan.pairs["p"];
        assert_eq!(
            (p.source_db.as_str(), p.dest_db.as_str(), p.owner.as_str()),
            ("production", "stage", "stage")
        );
        let w: Vec<String> = imported.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            w.iter().any(|l| l.contains(
                "stagesync_sourcedb is not set; using the role's default \"production\""
            )),
            "{w:#?}"
        );
    }

    #[test]
    fn social_values_without_the_switch_are_reported_not_imported() {
        let imported = import(
            None,
            &[vars(
                "v/x.yml",
                "stagesync_social_client_id: abc\nstagesync_compare_git_commits: false\n",
            )],
            &opts(),
        )
        .unwrap();
        assert!(
            !imported.toml.contains("post_restore_sql"),
            "{}",
            imported.toml
        );
        assert!(imported.warnings.iter().any(|w| {
            w.line == 1
                && w.message
                    .contains("stagesync_post_restore_update_db is not true")
        }));
    }

    #[test]
    fn bad_input_is_located() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "stagesync_sourcedb: [a, b]\n",
                "stagesync_sourcedb",
                1,
                "expected a single value",
            ),
            (
                "stagesync_destdb: \"{{ env }}\"\n",
                "stagesync_destdb",
                1,
                "Jinja template",
            ),
            (
                "stagesync_copies:\n  - source_bucket: a-bucket\n    dest_path: x/\n",
                "stagesync_copies[0]",
                2,
                "dest_bucket is missing",
            ),
            (
                "stagesync_copies: yes please\n",
                "stagesync_copies",
                1,
                "expected a list of copies",
            ),
            (
                "stagesync_post_restore_update_db: maybe\n",
                "stagesync_post_restore_update_db",
                1,
                "not true or false",
            ),
            ("a: 1\na: 2\n", "a", 2, "set twice (first on line 1)"),
            ("just: [unclosed\n", "", 2, "not valid YAML"),
            ("- a\n- b\n", "", 1, "expected a mapping of variables"),
        ];
        for (text, key, line, msg) in cases {
            let e = match import(None, &[vars("vars/bad.yml", text)], &opts()) {
                Err(e) => e,
                Ok(i) => panic!("accepted {text:?}:\n{}", i.toml),
            };
            assert_eq!((e.key.as_str(), e.line), (*key, *line), "{text:?}: {e}");
            assert!(e.message.contains(msg), "{text:?}: {e}");
            assert_eq!(e.file, PathBuf::from("vars/bad.yml"));
        }
    }

    #[test]
    fn names_from_files_and_descriptions() {
        assert_eq!(
            pair_name(Path::new("vars/Prod to Stage.yml")),
            "prod-to-stage"
        );
        assert_eq!(git_ref("origin/main"), "refs/heads/main");
        assert_eq!(git_ref("develop"), "refs/heads/develop");
        assert_eq!(git_ref("refs/tags/v1"), "refs/tags/v1");
        assert_eq!(
            copy_name(Some("Production → stage media!"), 0),
            "production-stage-media"
        );
        assert_eq!(copy_name(None, 2), "copy-3");
        assert_eq!(
            env_name("prod-to-stage1", "SOCIAL_SECRET"),
            "PROD_TO_STAGE1_SOCIAL_SECRET"
        );
    }
}
