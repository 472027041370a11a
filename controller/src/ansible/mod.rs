//! `stagesync import-ansible`: the variables of the Ansible role that
//! stagesync replaces, turned into plan pairs.
//!
//! The role is run once per pair with `--extra-vars @VARS.yml` on top of a
//! group-vars file. Each vars file becomes one `[pairs.NAME]` table (NAME
//! from the file name); the group-vars file applies to all of them, and a
//! vars file overrides it, as in Ansible. Settings without an equivalent,
//! secrets that must move to the environment and defaults taken from the
//! role are reported as warnings naming file, line and variable.
//!
//! `load` reads a vars file and `value` its variables' values; `role` knows
//! which of the role's variables matter; `pair` and `copies` write one
//! pair's table, with the names and literals of `names`; this module layers
//! the files and chains the pairs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use stagesync_proto::tomlfile::ConfigError;

mod backups;
mod copies;
mod load;
mod names;
mod pair;
mod role;
mod value;

use load::{file_error, load};
use names::{pair_name, q};
use pair::{Pair, import_pair};

/// One YAML file and its text.
pub struct VarsFile {
    pub path: PathBuf,
    pub text: String,
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
    let pairs = import_pairs(&group, pair_files, options, &mut warnings)?;
    let mut out = header(group_vars, pair_files, options);
    for pair in &pairs {
        write_pair(&mut out, pair, &pairs, options);
    }
    if let Some(b) = backups::import_backups(&group, &mut |w| warnings.push(w))? {
        out.push_str(&b);
    }
    warnings.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Ok(Imported {
        toml: out,
        warnings,
    })
}

/// Each pair file over the group vars, as Ansible layers them.
fn import_pairs(
    group: &BTreeMap<String, value::Var>,
    pair_files: &[VarsFile],
    options: &Options,
    warnings: &mut Vec<ConfigError>,
) -> Result<Vec<Pair>, ConfigError> {
    let mut pairs: Vec<Pair> = Vec::new();
    let mut reported: BTreeSet<(PathBuf, String)> = BTreeSet::new();
    for file in pair_files {
        let mut vars = group.clone();
        vars.extend(load(file)?);
        let name = pair_name(&file.path);
        if let Some(other) = pairs.iter().find(|p| p.name == name) {
            return Err(file_error(
                &file.path,
                0,
                format!(
                    "gives the pair name {name:?}, as {} does: rename one of the files",
                    other.file.display()
                ),
            ));
        }
        // Warnings about a group-vars setting are given once, not per pair.
        let mut warn = |w: ConfigError| {
            if reported.insert((w.file.clone(), format!("{}:{}", w.line, w.key))) {
                warnings.push(w);
            }
        };
        pairs.push(import_pair(&name, &file.path, &vars, options, &mut warn)?);
    }
    Ok(pairs)
}

/// Where the pairs come from, and what the plan around them must hold.
fn header(group_vars: Option<&VarsFile>, pair_files: &[VarsFile], options: &Options) -> String {
    let mut sources: Vec<String> = pair_files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    if let Some(g) = group_vars {
        sources.push(format!("{} (group vars)", g.path.display()));
    }
    format!(
        "# Pairs imported from the Ansible role's variables: {}.\n# Add them to a plan with [controller] and [agents] ({} and {} must be listed there).\n",
        sources.join(", "),
        options.source_agent,
        options.dest_agent
    )
}

fn write_pair(out: &mut String, pair: &Pair, pairs: &[Pair], options: &Options) {
    // A pair whose source is another imported pair's destination is a
    // chain link (stage1 -> dev): it runs after that pair, from the
    // destination host.
    let feeder = pairs
        .iter()
        .find(|p| p.name != pair.name && p.dest_db == pair.source_db);
    let (source_agent, why) = match feeder {
        Some(f) => (
            &options.dest_agent,
            format!("it reads {}'s destination", f.name),
        ),
        None => (&options.source_agent, "--source-agent".to_string()),
    };
    // The role's vars files name no hosts: say which agents were assumed.
    let _ = writeln!(
        out,
        "\n# Source on agent {} ({why}), destination on agent {} (--dest-agent);\n# change them if this pair runs on other hosts.",
        q(source_agent),
        q(&options.dest_agent)
    );
    let _ = writeln!(out, "[pairs.{}]", pair.name);
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

#[cfg(test)]
mod tests {
    use std::path::Path;

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
        // Uploads off: no [backups], and nothing to say about it.
        assert!(!has("stagesync_backups_upload_to_bucket"), "{w:#?}");
        assert!(plan.backups.is_none());
        assert!(
            t.contains("# Source on agent \"prod-db\" (--source-agent), destination on agent \"staging-db\" (--dest-agent)"),
            "{t}"
        );
        assert!(
            has("vars/prod-to-stage1.yml:14: stagesync_social_client_id: the value is not copied"),
            "{w:#?}"
        );
        assert!(has("export PROD_TO_STAGE1_SOCIAL_SECRET"), "{w:#?}");
    }

    /// The backup settings of the role's defaults/main.yml, as its README
    /// and tasks describe them, with uploads switched on.
    const ROLE_DEFAULTS: &str = r#"---
stagesync_sourcedb: "production"
stagesync_destdb: "stage"
stagesync_destdb_role: "stage"
stagesync_compare_git_commits: false
stagesync_aws_region: "us-east-1"
stagesync_backup_script: /var/lib/postgresql/scripts/postgresbackup.sh
stagesync_source_backups_dir: /opt/backups/postgres
stagesync_execute_backup: true
stagesync_backups_create_backups_scripts: true
stagesync_backups_upload_to_bucket: "yes"
stagesync_backups_s3_bucket: "example-backups/daily"
stagesync_backups_s3_weekly_bucket: "s3://example-backups/weekly/"
stagesync_backups_s3_cmd: /usr/local/bin/aws
stagesync_backups_pgdump: /usr/bin/pg_dump
stagesync_backups_psql: /usr/bin/psql
"#;

    #[test]
    fn the_roles_backup_uploads_import_as_backups() {
        let group = vars("group_vars/stagesync/main.yml", ROLE_DEFAULTS);
        let pair = vars(
            "vars/prod-to-stage.yml",
            "stagesync_destdb: stage
",
        );
        let imported = import(Some(&group), &[pair], &opts()).unwrap();
        let plan = parses(&imported.toml);
        let b = plan.backups.as_ref().expect("a [backups] table");
        assert_eq!(b.daily.to_string(), "s3://example-backups/daily/");
        assert_eq!(
            b.weekly.as_ref().map(|w| w.to_string()).as_deref(),
            Some("s3://example-backups/weekly/")
        );
        assert_eq!(b.weekly_days, vec![1, 7, 14, 21, 28]);
        assert_eq!(b.side.region.as_deref(), Some("us-east-1"));
        let w: Vec<String> = imported.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            !w.iter().any(|l| l.contains("not part of the plan")),
            "{w:#?}"
        );
        assert!(
            w.iter().any(|l| l.contains(
                "main.yml:11: stagesync_backups_upload_to_bucket: imported as [backups]"
            )),
            "{w:#?}"
        );

        // Uploads on but nowhere to put them: located.
        let broken = vars(
            "g.yml",
            "stagesync_backups_upload_to_bucket: yes
stagesync_compare_git_commits: no
",
        );
        let e = import(
            Some(&broken),
            &[vars(
                "v/p.yml", "---
",
            )],
            &opts(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.starts_with("g.yml:1: stagesync_backups_upload_to_bucket: is yes, but"),
            "{e}"
        );
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
            imported.toml.contains(
                "# Source on agent \"staging-db\" (it reads prod-to-stage1's destination)"
            ),
            "{}",
            imported.toml
        );
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
}
