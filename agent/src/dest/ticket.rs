//! A job's one-time ticket: whoever feeds the job (the peer's stream, or a
//! controller's `RestoreBackup`) must present it, once, before it expires.

use crate::jobs::{DestSetup, Job};

/// Uses up a job's one-time ticket, if `given` is it and still valid.
pub fn take(job: &Job, setup: &DestSetup, given: &str) -> Result<(), String> {
    let mut ticket = setup.ticket.lock().unwrap_or_else(|p| p.into_inner());
    let valid = match ticket.as_deref() {
        None => return Err(format!("the ticket of job {} was already used", job.id)),
        Some(t) => constant_time_eq(t.as_bytes(), given.as_bytes()),
    };
    if !valid {
        return Err(format!("wrong ticket for job {}", job.id));
    }
    if std::time::Instant::now() > setup.ticket_expires {
        return Err(format!("the ticket of job {} has expired", job.id));
    }
    *ticket = None;
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
