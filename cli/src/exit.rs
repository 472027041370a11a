//! Exit codes of the `stagesync` command.

use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for was done.
    Ok = 0,
    /// The command failed (and said why).
    Failed = 1,
    /// Bad arguments (clap's own code).
    Usage = 2,
    /// Some of the work failed, the rest succeeded (e.g. one agent down).
    Partial = 3,
    /// Refused by preflight: nothing was changed.
    Refused = 4,
    /// The plan file (or a file to import) is wrong; the message names
    /// file, line and key.
    BadPlan = 5,
    /// Stopped by Ctrl-C (128 + SIGINT).
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}
