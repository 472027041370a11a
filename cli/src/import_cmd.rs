//! `stagesync import-ansible`: the Ansible role's vars files → plan pairs.

use std::path::PathBuf;

use stagesync_controller::ansible::{self, Options, VarsFile};

use crate::Exit;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The role's per-pair vars files (`--extra-vars @FILE`); each becomes a
    /// pair named after the file.
    #[arg(required = true, value_name = "VARS.yml")]
    vars: Vec<PathBuf>,
    /// The role's group-vars file (e.g. group_vars/stagesync/main.yml),
    /// overridden by each vars file as in Ansible.
    #[arg(long, value_name = "FILE")]
    group_vars: Option<PathBuf>,
    /// Agent on the role's `stagesync-sourcedb` host.
    #[arg(long, default_value = "prod-db")]
    source_agent: String,
    /// Agent on the role's `stagesync-destdb` host.
    #[arg(long, default_value = "staging-db")]
    dest_agent: String,
}

/// Prints the pairs on stdout (append them to a plan) and the warnings on
/// stderr.
pub fn run(args: ImportArgs) -> anyhow::Result<Exit> {
    let read = |p: &PathBuf| {
        VarsFile::read(p).map_err(|e| {
            eprintln!("stagesync: {e}");
            Exit::BadPlan
        })
    };
    let group = match args.group_vars.as_ref().map(read).transpose() {
        Ok(g) => g,
        Err(exit) => return Ok(exit),
    };
    let mut files = Vec::new();
    for p in &args.vars {
        match read(p) {
            Ok(f) => files.push(f),
            Err(exit) => return Ok(exit),
        }
    }
    for (flag, name) in [
        ("--source-agent", &args.source_agent),
        ("--dest-agent", &args.dest_agent),
    ] {
        if let Err(e) = stagesync_certs::identity::validate_name(name) {
            eprintln!("stagesync: {flag} {name:?}: {e}");
            return Ok(Exit::Usage);
        }
    }
    let options = Options {
        source_agent: args.source_agent,
        dest_agent: args.dest_agent,
    };
    match ansible::import(group.as_ref(), &files, &options) {
        Ok(imported) => {
            print!("{}", imported.toml);
            for w in &imported.warnings {
                eprintln!("stagesync: warning: {w}");
            }
            if !imported.warnings.is_empty() {
                eprintln!(
                    "stagesync: {} warning(s): read them before using the pairs",
                    imported.warnings.len()
                );
            }
            Ok(Exit::Ok)
        }
        Err(e) => {
            eprintln!("stagesync: cannot import: {e}");
            Ok(Exit::BadPlan)
        }
    }
}
