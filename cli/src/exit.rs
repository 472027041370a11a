//! Exit codes of the `stagesync` command.

use std::process::ExitCode;

use stagesync_controller::history::PairOutcome;

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
    /// Another run of the same plan is going on: this one did nothing.
    Busy = 6,
    /// Stopped by Ctrl-C (128 + SIGINT).
    Interrupted = 130,
}

impl Exit {
    /// The exit code of a run from how its items ended: all well, some,
    /// none because refused (nothing changed), or none.
    pub fn of(outcomes: impl IntoIterator<Item = PairOutcome>) -> Exit {
        let (mut ok, mut refused, mut failed) = (0, 0, 0);
        for o in outcomes {
            match o {
                PairOutcome::Ok => ok += 1,
                PairOutcome::Refused => refused += 1,
                // A skipped pair did not get what was asked.
                PairOutcome::Failed | PairOutcome::Skipped => failed += 1,
            }
        }
        match (ok, refused, failed) {
            (_, 0, 0) => Exit::Ok,
            (1.., _, _) => Exit::Partial,
            (0, _, 0) => Exit::Refused,
            _ => Exit::Failed,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PairOutcome::*;

    #[test]
    fn a_run_exits_by_how_its_items_ended() {
        assert_eq!(Exit::of([Ok, Ok]), Exit::Ok);
        assert_eq!(Exit::of([]), Exit::Ok);
        assert_eq!(Exit::of([Ok, Failed]), Exit::Partial);
        assert_eq!(Exit::of([Ok, Refused]), Exit::Partial);
        assert_eq!(Exit::of([Refused, Refused]), Exit::Refused);
        assert_eq!(Exit::of([Refused, Skipped]), Exit::Failed);
        assert_eq!(Exit::of([Failed]), Exit::Failed);
    }
}
