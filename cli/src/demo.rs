//! `stagesync demo`: a launcher for `stagesync-demo`.
//!
//! The demo builds its fleet from the test harness (PostgreSQL clusters, an
//! in-process S3 server, agents), which a release binary must not link; so
//! the demo is a binary of the harness crate, and this command only finds
//! and starts it.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::Exit;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Leave the fleet running after the demo (until Ctrl-C) and print how
    /// to look around.
    #[arg(long)]
    keep: bool,
    /// Run the clusters as a managed service would (TLS over TCP, password
    /// logins), with agents whose roles are no superuser.
    #[arg(long)]
    tcp: bool,
}

const DEMO_BIN: &str = "stagesync-demo";

pub fn run(args: DemoArgs) -> anyhow::Result<Exit> {
    let flags: Vec<&str> = [(args.keep, "--keep"), (args.tcp, "--tcp")]
        .into_iter()
        .filter_map(|(on, flag)| on.then_some(flag))
        .collect();
    let keep = match flags.is_empty() {
        true => String::new(),
        false => format!(" -- {}", flags.join(" ")),
    };
    let Some(demo) = find_demo() else {
        eprintln!(
            "stagesync demo: cannot find the {DEMO_BIN} binary next to this one or on PATH.\n\
             It is built with the test harness; from a clone of stagesync, run the demo with:\n    \
             cargo run -q -p stagesync-harness --bin {DEMO_BIN}{keep}"
        );
        return Ok(Exit::Failed);
    };
    let mut cmd = Command::new(&demo);
    cmd.args(&flags);
    // Becoming the demo, rather than waiting for it as a child, keeps this
    // process's id, terminal and signals: Ctrl-C reaches the demo's own
    // handler only, and the demo's exit code is this command's.
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot run {}", demo.display()))
}

/// `stagesync-demo` next to this executable (where cargo builds both), or
/// else the first one on PATH.
fn find_demo() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(DEMO_BIN)));
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(DEMO_BIN));
    beside.into_iter().chain(on_path).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
