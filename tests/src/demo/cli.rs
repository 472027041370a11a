//! The real `stagesync` command, run by the demo as a child process.
//!
//! The demo binary carries the whole CLI (`stagesync_cli::main`), so it runs
//! itself with [`AS_CLI_ENV`] set instead of needing a `stagesync` binary
//! built beside it: what the demo shows is what `stagesync` prints.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;

use super::app::{STAGING_CLIENT_ID, STAGING_SECRET};
use super::fleet::Fleet;

/// Set to `1` in the environment of the demo binary to make it be the
/// `stagesync` command instead of the demo.
pub const AS_CLI_ENV: &str = "STAGESYNC_DEMO_AS_CLI";

/// Whether this process was started to be the `stagesync` command.
pub fn asked_to_be_cli() -> bool {
    std::env::var_os(AS_CLI_ENV).is_some_and(|v| v == "1")
}

pub fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `stagesync ARGS` with the demo's environment; returns its exit code
/// and, unless `show` (output straight to the terminal), its output.
pub fn stagesync(fleet: &Fleet, args: &[&str], show: bool) -> anyhow::Result<(i32, String)> {
    let exe = std::env::current_exe().context("cannot find the stagesync-demo binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(AS_CLI_ENV, "1")
        .env("AWS_CONFIG_FILE", &fleet.aws_config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &fleet.aws_credentials)
        .env("STAGING_SOCIAL_CLIENT_ID", STAGING_CLIENT_ID)
        .env("STAGING_SOCIAL_SECRET", STAGING_SECRET)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("STAGESYNC_PLAN");
    if show {
        let status = cmd.status().context("cannot run stagesync")?;
        Ok((status.code().unwrap_or(1), String::new()))
    } else {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("cannot run stagesync")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code().unwrap_or(1), text))
    }
}
