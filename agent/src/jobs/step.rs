//! A failed step of a job's pipeline, and waiting for a tool to finish.

use stagesync_proto::v1 as pb;

use super::Job;
use crate::frames::FrameError;
use crate::procs;

/// A pipeline failure: the step, what happened, and the tool's stderr.
#[derive(Debug)]
pub struct StepError {
    pub step: pb::Step,
    pub message: String,
    pub stderr: String,
    pub cause: Cause,
}

/// Whether a step failed on its own or was stopped from outside. When
/// several parts of a job fail at once, the one that failed on its own
/// explains the failure; the others only followed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Failed,
    /// The job was cancelled, or a sibling (another data lane) failed first.
    Stopped,
}

impl StepError {
    pub fn new(step: pb::Step, message: impl Into<String>) -> Self {
        StepError {
            step,
            message: message.into(),
            stderr: String::new(),
            cause: Cause::Failed,
        }
    }

    /// The step was stopped because the job was cancelled.
    pub fn cancelled(step: pb::Step) -> Self {
        StepError {
            cause: Cause::Stopped,
            ..StepError::new(step, "the job was cancelled")
        }
    }

    /// The step was stopped because another part of the job failed.
    pub fn stopped(step: pb::Step, why: &str) -> Self {
        StepError {
            cause: Cause::Stopped,
            ..StepError::new(step, format!("stopped: {why}"))
        }
    }

    pub fn with_stderr(mut self, stderr: String) -> Self {
        self.stderr = stderr;
        self
    }

    /// Puts `context` before the message.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// Adds a note after the message.
    pub fn note(mut self, note: impl std::fmt::Display) -> Self {
        self.message = format!("{} ({note})", self.message);
        self
    }

    /// Of two failures, the one that explains the job's failure: the first
    /// that failed on its own.
    pub fn first_cause(first: Option<StepError>, next: StepError) -> StepError {
        match first {
            Some(f) if f.cause == Cause::Failed || next.cause == Cause::Stopped => f,
            _ => next,
        }
    }
}

impl From<FrameError> for StepError {
    fn from(e: FrameError) -> Self {
        StepError::new(pb::Step::Stream, e.to_string())
    }
}

/// The step a tool's failures are reported as.
fn tool_step(program: procs::Program) -> pb::Step {
    match program {
        procs::Program::PgDump => pb::Step::PgDump,
        _ => pb::Step::PgRestore,
    }
}

/// Waits for a tool to exit (killing it if the job is cancelled) and turns
/// a failure into a step error carrying its stderr. `complete` is false when
/// the tool stopped taking input early: then even a clean exit is a failure.
pub async fn finish_tool(
    job: &Job,
    tool: &mut procs::Tool,
    complete: bool,
    database: &str,
) -> Result<(), StepError> {
    let name = tool.name;
    let step = tool_step(tool.program);
    let status = tokio::select! {
        _ = job.cancel.cancelled() => {
            tool.kill().await;
            return Err(StepError::cancelled(step));
        }
        s = tool.child.wait() => s,
    };
    tool.drain().await;
    match status {
        Ok(s) if s.success() && complete => Ok(()),
        Ok(s) if s.success() => Err(StepError::new(
            step,
            format!("{name} on {database:?} stopped reading before the dump ended"),
        )
        .with_stderr(tool.stderr.text())),
        Ok(s) => Err(
            StepError::new(step, format!("{name} on {database:?} failed ({s})"))
                .with_stderr(tool.stderr.text()),
        ),
        Err(e) => Err(StepError::new(step, format!("waiting for {name}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_that_explains_is_the_first_on_its_own() {
        let failed = |m: &str| StepError::new(pb::Step::PgRestore, m);
        let stopped = || StepError::stopped(pb::Step::PgRestore, "another lane failed");
        let pick = |a, b| StepError::first_cause(a, b).message;
        assert_eq!(pick(Some(failed("a")), failed("b")), "a");
        assert_eq!(pick(Some(stopped()), failed("b")), "b");
        assert_eq!(pick(Some(failed("a")), stopped()), "a");
        assert!(pick(Some(stopped()), stopped()).starts_with("stopped"));
        assert_eq!(pick(None, failed("b")), "b");
    }
}
