//! A minimal command line over the sync engine until the stagesync CLI
//! grows an `s3` command; the benchmark drives it.
//!
//! `s3sync [--profile P] [--endpoint URL] [--region R] [--concurrency N]
//!  [--listing flat|tree] [--part-size BYTES] [--dry-run] [--no-delete] [--force-delete] SRC DST`

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// As in the stagesync CLI, which this stands in for.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use stagesync_s3::{CopySpec, Event, S3Location, SideConfig, SyncOptions, sync};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut side = SideConfig::default();
    let (mut concurrency, mut part_size, mut listing) = (None, None, None);
    let (mut dry_run, mut delete, mut force) = (false, true, false);
    let mut positional = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--profile" => side.profile = Some(value()?),
            "--endpoint" => side.endpoint = Some(value()?),
            "--region" => side.region = Some(value()?),
            "--concurrency" => concurrency = Some(value()?.parse()?),
            "--listing" => listing = Some(value()?.parse::<stagesync_s3::ListingMode>()?),
            "--part-size" => part_size = Some(value()?.parse()?),
            "--dry-run" => dry_run = true,
            "--no-delete" => delete = false,
            "--force-delete" => force = true,
            _ => positional.push(arg),
        }
    }
    let [source, dest] = positional.as_slice() else {
        return Err("usage: s3sync [options] s3://SRC/ s3://DST/".into());
    };
    let mut spec = CopySpec::new("cli", S3Location::parse(source)?, S3Location::parse(dest)?)
        .with_both_sides(side);
    spec.delete = delete;
    spec.force_delete = force;
    if let Some(c) = concurrency {
        spec.concurrency = c;
    }
    if let Some(p) = part_size {
        spec.part_size = p;
    }
    if let Some(l) = listing {
        spec.listing = l;
    }
    let retries = Arc::new(AtomicU64::new(0));
    let counter = retries.clone();
    let progress = move |event: Event| {
        if let Event::Retrying { .. } = event {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    };
    let options = SyncOptions {
        dry_run,
        record_keys: false,
    };
    // One thread: the work is thousands of small requests, and handing them
    // between worker threads costs more CPU than it saves.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(sync(&spec, options, progress))?;
    println!(
        "listed {} source / {} dest objects; copied {} objects ({} bytes); skipped {}; deleted {}; failed {}; retries {}",
        report.listed_source.objects,
        report.listed_dest.objects,
        report.copied.objects,
        report.copied.bytes,
        report.skipped.objects,
        report.deleted.objects,
        report.failed.objects,
        retries.load(Ordering::Relaxed),
    );
    Ok(())
}
