//! Child processes (`pg_dump`, `pg_restore`): started so they die with the
//! agent, their stderr kept as a bounded tail for error messages, and killed
//! and reaped when their job is cancelled.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The last lines a tool wrote to stderr.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

const TAIL_LINES: usize = 20;

impl StderrTail {
    pub fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }
}

/// A running tool.
pub struct Tool {
    pub name: &'static str,
    pub child: Child,
    pub stderr: StderrTail,
}

/// Starts `bin_dir/name args` with the given stdin/stdout; `settings`
/// (`name=value`) become the tool's session settings through PGOPTIONS.
pub fn spawn(
    bin_dir: &Path,
    name: &'static str,
    args: &[String],
    settings: &[String],
    stdin: Stdio,
    stdout: Stdio,
) -> std::io::Result<Tool> {
    let mut cmd = Command::new(bin_dir.join(name));
    let options: Vec<String> = settings.iter().map(|s| format!("-c {s}")).collect();
    cmd.args(args)
        .env("PGOPTIONS", options.join(" "))
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .env("PGAPPNAME", format!("stagesync-{name}"))
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes the prctl system call, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // If the agent dies (even by SIGKILL), the tool dies with it
            // instead of writing into a database nobody will swap in.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn()?;
    let tail = StderrTail::default();
    if let Some(err) = child.stderr.take() {
        let tail = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(tool = name, line = %line, "stderr");
                tail.push(line);
            }
        });
    }
    Ok(Tool {
        name,
        child,
        stderr: tail,
    })
}

impl Tool {
    /// Kills the tool (if still running) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
