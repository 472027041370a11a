//! What the agent's configuration tests share: a valid configuration to
//! break, and a run of the real binary that must stop on it.

// Each test file uses its own part of this.
#![allow(dead_code)]

use stagesync_harness::agent::write_config;
use stagesync_harness::wait::exit_of;
use stagesync_harness::{AgentSpec, TestPki};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const AGENT: &str = env!("CARGO_BIN_EXE_stagesync-agent");

pub struct Fixture {
    pub _pki: TestPki,
    pub dir: tempfile::TempDir,
    pub base: String,
}

pub fn fixture() -> Fixture {
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = pki.agent("staging-db").unwrap();
    let mut spec = AgentSpec::new("staging-db");
    spec.may_overwrite = vec!["stage".into()];
    let path = write_config(dir.path(), &spec, &tls, None).unwrap();
    let base = std::fs::read_to_string(path).unwrap();
    Fixture {
        _pki: pki,
        dir,
        base,
    }
}

/// Runs the agent on `config`; it must exit by itself.
pub fn run_agent(config: &Path) -> (Option<i32>, String) {
    let child = Command::new(AGENT)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    match exit_of(child) {
        Ok(out) => (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(out) => panic!(
            "the agent accepted the configuration and kept running: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Writes `text` as a config and expects exit 64 naming `key` on the line
/// that contains `marker`, plus `needle` somewhere in the message.
pub fn expect_error(f: &Fixture, text: &str, marker: &str, key: &str, needle: &str) {
    let path = write_text(f, text);
    let line = text
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("marker {marker:?} not in the config"))
        + 1;
    let (code, stderr) = run_agent(&path);
    assert_eq!(code, Some(64), "exit code; stderr: {stderr}");
    let prefix = format!("{}:{line}: {key}: ", path.display());
    assert!(stderr.contains(&prefix), "expected {prefix:?} in: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

pub fn replace_line(text: &str, starts_with: &str, new: &str) -> String {
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if !found && l.starts_with(starts_with) {
                found = true;
                new.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "no line starts with {starts_with:?}");
    out.join("\n") + "\n"
}

/// Writes `text` as the fixture's agent.toml; its path.
pub fn write_text(f: &Fixture, text: &str) -> PathBuf {
    let path = f.dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `stagesync-agent --check` accepts `text`; what it printed.
pub fn accepted(f: &Fixture, text: &str) -> String {
    let out = Command::new(AGENT)
        .args(["--check", "--config"])
        .arg(write_text(f, text))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
