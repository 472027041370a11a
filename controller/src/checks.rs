//! The plan's own preflight checks, run on the controller before a pair
//! changes anything: matching git refs, and commands that must succeed.

use std::process::Stdio;

use tokio::process::Command;

use crate::plan::{GitCheck, Preflight};

/// Names accepted by `--skip-preflight`.
pub const CHECKS: &[&str] = &["git", "commands"];

/// The commit a ref of `repo` points at, via `git ls-remote`.
async fn resolve(repo: &str, r: &str) -> Result<String, String> {
    let out = Command::new("git")
        .args(["ls-remote", "--", repo, r])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git ls-remote {repo} {r} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut hashes: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    hashes.dedup();
    match hashes.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(format!("{repo} has no ref {r:?}")),
        _ => Err(format!(
            "{r:?} is ambiguous in {repo}: name it fully, e.g. refs/heads/{r}"
        )),
    }
}

async fn git(g: &GitCheck) -> Result<(), String> {
    let (a, b) = tokio::join!(
        resolve(&g.repo, &g.source_ref),
        resolve(&g.repo, &g.dest_ref)
    );
    let (a, b) = (a?, b?);
    if a != b {
        return Err(format!(
            "git: {} is at {} but {} is at {} in {}: deploy the same code (and migrations) to both before copying data",
            g.source_ref,
            &a[..a.len().min(12)],
            g.dest_ref,
            &b[..b.len().min(12)],
            g.repo
        ));
    }
    Ok(())
}

async fn command(c: &str) -> Result<(), String> {
    let out = Command::new("sh")
        .args(["-c", c])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {c:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "preflight command {c:?} failed ({}){}",
            out.status,
            err.lines()
                .last()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ))
    }
}

/// Runs the checks not named in `skip`; the first failure refuses the pair.
pub async fn run(p: &Preflight, skip: &[String]) -> Result<(), String> {
    if let Some(g) = &p.git
        && !skip.iter().any(|s| s == "git")
    {
        git(g).await?;
    }
    if !skip.iter().any(|s| s == "commands") {
        for c in &p.commands {
            command(c).await?;
        }
    }
    Ok(())
}
