//! `stagesync sync`: refresh pairs of the plan in `after` order, with
//! bounded parallelism, progress, a summary and a history record.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;
use stagesync_certs::ReloadingClientConfig;
use stagesync_controller::dag::{self, Outcome};
use stagesync_controller::history::{self, Record};
use stagesync_controller::plan::{self, Plan};
use stagesync_controller::refresh::{CheckedSource, Event, RefreshError, refresh};
use stagesync_proto::v1 as pb;

use crate::Exit;

#[derive(clap::Args)]
pub struct PlanArg {
    /// The fleet plan.
    #[arg(long, short, env = "STAGESYNC_PLAN", default_value = plan::DEFAULT_PLAN)]
    pub plan: PathBuf,
}

#[derive(clap::Args)]
pub struct SyncArgs {
    /// Pairs to refresh (their `after` pairs are not added: name them too, or use --all).
    pairs: Vec<String>,
    /// Every pair in the plan.
    #[arg(long, conflicts_with = "pairs")]
    all: bool,
    #[command(flatten)]
    plan: PlanArg,
    /// Pairs refreshed at the same time (default: controller.parallel, else 2).
    #[arg(long)]
    parallel: Option<u32>,
    /// One JSON event per line on stdout, for automation.
    #[arg(long)]
    json: bool,
    /// Where run history is kept (default: controller.state_dir, else ~/.local/state/stagesync).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Skip one of the plan's own preflight checks (git, commands).
    #[arg(long, value_name = "CHECK", value_parser = clap::builder::PossibleValuesParser::new(stagesync_controller::checks::CHECKS))]
    skip_preflight: Vec<String>,
}

/// Loads the plan, printing a located error on failure.
pub fn load_plan(path: &std::path::Path) -> Result<Plan, Exit> {
    plan::load(path).map_err(|e| {
        eprintln!("stagesync: bad plan: {e}");
        Exit::BadPlan
    })
}

pub fn state_dir(flag: Option<PathBuf>, plan: &Plan) -> PathBuf {
    flag.or_else(|| plan.state_dir.clone())
        .unwrap_or_else(history::default_state_dir)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

/// What one pair's run produced.
#[derive(Clone, Debug, Default)]
struct PairResult {
    record: Record,
}

struct Output {
    json: bool,
    bars: Option<(MultiProgress, Mutex<BTreeMap<String, ProgressBar>>)>,
    last_line: Mutex<BTreeMap<String, Instant>>,
}

impl Output {
    fn event(&self, value: serde_json::Value) {
        if self.json {
            println!("{value}");
        }
    }

    fn line(&self, pair: &str, text: String, throttle: bool) {
        self.line_with(pair, || text, throttle);
    }

    /// `line`, with the text made only when it is shown.
    fn line_with(&self, pair: &str, text: impl FnOnce() -> String, throttle: bool) {
        if self.json {
            return;
        }
        if let Some((_, bars)) = &self.bars {
            if let Some(b) = bars.lock().unwrap_or_else(|p| p.into_inner()).get(pair) {
                b.set_message(text());
            }
            return;
        }
        if throttle {
            let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
            // The first progress line of a kind comes after 2 s, so quick
            // steps print only their result.
            let t = last.entry(pair.to_string()).or_insert_with(Instant::now);
            if t.elapsed() < Duration::from_secs(2) {
                return;
            }
            *t = Instant::now();
        }
        eprintln!("stagesync: {pair}: {}", text());
    }

    fn start(&self, pair: &str) {
        if let Some((multi, bars)) = &self.bars {
            let b = multi.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:20} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_prefix(pair.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            bars.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pair.to_string(), b);
        }
        self.event(json!({"event": "pair_started", "pair": pair}));
        self.line(pair, "started".into(), false);
    }

    /// A progress bar for one S3 copy, under its pair's line (terminal only).
    fn copy_bar(&self, pair: &str, copy: &str) -> Option<ProgressBar> {
        let (multi, bars) = self.bars.as_ref()?;
        let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "  {prefix:18} [{bar:24}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("s3 {copy}"));
        let bar = match bars.get(pair) {
            Some(p) => multi.insert_after(p, bar),
            None => multi.add(bar),
        };
        bars.insert(format!("{pair}\u{0}{copy}"), bar.clone());
        Some(bar)
    }

    fn finish(&self, pair: &str, text: String) {
        if let Some((_, bars)) = &self.bars
            && let Some(b) = bars.lock().unwrap_or_else(|p| p.into_inner()).get(pair)
        {
            b.finish_with_message(text);
            return;
        }
        self.line(pair, text, false);
    }
}

pub fn run(args: SyncArgs) -> anyhow::Result<Exit> {
    let plan = match load_plan(&args.plan.plan) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    let selected: Vec<String> = if args.all {
        plan.order()
    } else if args.pairs.is_empty() {
        eprintln!(
            "stagesync: name the pairs to refresh, or pass --all (pairs in {}: {})",
            plan.source.display(),
            plan.order().join(", ")
        );
        return Ok(Exit::Usage);
    } else {
        args.pairs.clone()
    };
    for p in &selected {
        if !plan.pairs.contains_key(p) {
            eprintln!(
                "stagesync: no pair named {p:?} in {} (pairs: {})",
                plan.source.display(),
                plan.order().join(", ")
            );
            return Ok(Exit::Usage);
        }
    }
    let tls = Arc::new(
        ReloadingClientConfig::load(plan.tls.clone())
            .with_context(|| format!("controller certificate from {}", plan.source.display()))?,
    );
    let trust_domain = tls.identity().trust_domain;
    let parallel = args.parallel.unwrap_or(plan.parallel).max(1) as usize;
    let nodes: BTreeMap<String, Vec<String>> = selected
        .iter()
        .map(|p| (p.clone(), plan.pairs[p].after.clone()))
        .collect();
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let out = Arc::new(Output {
        json: args.json,
        bars: (!args.json && std::io::stderr().is_terminal())
            .then(|| (MultiProgress::new(), Mutex::new(BTreeMap::new()))),
        last_line: Mutex::new(BTreeMap::new()),
    });
    out.event(
        json!({"event": "run_started", "run_id": run_id, "pairs": selected, "parallel": parallel}),
    );

    let runtime = runtime()?;
    let plan = Arc::new(plan);
    let results = runtime.block_on(dag::run(&nodes, parallel, |pair| {
        let plan = plan.clone();
        let tls = tls.clone();
        let out = out.clone();
        let td = trust_domain.clone();
        let run_id = run_id.clone();
        let skip = args.skip_preflight.clone();
        async move { run_pair(&plan, &pair, tls, &td, out, &run_id, &skip).await }
    }));

    // Summary, history, exit code.
    let mut records = Vec::new();
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(vec!["PAIR", "OUTCOME", "SECONDS", "RESTORED", "DETAIL"]);
    let (mut ok, mut failed, mut refused) = (0, 0, 0);
    for (pair, outcome) in &results {
        let record = match outcome {
            Outcome::Done(r) => {
                ok += 1;
                r.record.clone()
            }
            Outcome::Failed(e) => {
                let (kind, msg) = e.split_once('\u{1}').unwrap_or(("failed", e));
                if kind == "refused" {
                    refused += 1;
                } else {
                    failed += 1;
                }
                Record {
                    run_id: run_id.clone(),
                    pair: pair.clone(),
                    outcome: kind.to_string(),
                    error: Some(msg.to_string()),
                    finished: history::now(),
                    ..Default::default()
                }
            }
            Outcome::Skipped { after } => {
                failed += 1;
                Record {
                    run_id: run_id.clone(),
                    pair: pair.clone(),
                    outcome: "skipped".into(),
                    error: Some(format!("not run: {after} did not succeed")),
                    started: history::now(),
                    finished: history::now(),
                    ..Default::default()
                }
            }
        };
        let secs = record.steps.iter().map(|(_, ms)| *ms).sum::<u64>() as f64 / 1000.0;
        table.add_row(vec![
            pair.clone(),
            record.outcome.clone(),
            format!("{secs:.1}"),
            mib(record.bytes_restored),
            record
                .error
                .clone()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        ]);
        out.event(json!({"event": "pair_finished", "pair": pair, "outcome": record.outcome, "error": record.error, "bytes_restored": record.bytes_restored}));
        records.push(record);
    }
    let dir = state_dir(args.state_dir, &plan);
    if let Err(e) = history::append(&dir, &records) {
        eprintln!(
            "stagesync: warning: could not record the run in {}: {e}",
            dir.display()
        );
    }
    let exit = if failed == 0 && refused == 0 {
        Exit::Ok
    } else if ok > 0 {
        Exit::Partial
    } else if refused > 0 && failed == 0 {
        Exit::Refused
    } else {
        Exit::Failed
    };
    if args.json {
        let pairs: Vec<_> = records
            .iter()
            .map(|r| json!({"pair": r.pair, "outcome": r.outcome, "error": r.error, "bytes_restored": r.bytes_restored}))
            .collect();
        println!(
            "{}",
            json!({"event": "summary", "run_id": run_id, "pairs": pairs, "exit_code": exit as i32})
        );
    } else {
        if let Some((m, _)) = &out.bars {
            let _ = m.clear();
        }
        println!("{table}");
        for r in &records {
            if let Some(e) = &r.error
                && r.outcome != "ok"
            {
                eprintln!("stagesync: {}: {e}", r.pair);
            }
        }
    }
    Ok(exit)
}

/// Refreshes one pair; errors come back as "kind\u{1}message".
async fn run_pair(
    plan: &Plan,
    pair: &str,
    tls: Arc<ReloadingClientConfig>,
    trust_domain: &str,
    out: Arc<Output>,
    run_id: &str,
    skip: &[String],
) -> Result<PairResult, String> {
    out.start(pair);
    let started = history::now();
    let t0 = Instant::now();
    if let Err(e) = stagesync_controller::checks::run(&plan.pairs[pair].preflight, skip).await {
        out.finish(pair, format!("refused: {e}"));
        return Err(format!("refused\u{1}preflight: {e}"));
    }
    let spec = plan
        .pair_spec(pair, trust_domain, |k| std::env::var(k).ok())
        .map_err(|e| format!("refused\u{1}{e}"))?;
    let o = out.clone();
    let name = pair.to_string();
    let on_event = move |e| match e {
        Event::Progress { source, dest } => {
            let s = source.map(|s| *s).unwrap_or_default();
            let d = dest.map(|d| *d).unwrap_or_default();
            let phase = pb::Phase::try_from(d.phase)
                .map(|p| format!("{p:?}").to_lowercase())
                .unwrap_or_default();
            o.event(json!({"event": "progress", "pair": name, "phase": phase, "bytes_dumped": s.bytes_dumped, "bytes_sent": s.bytes_sent, "bytes_restored": d.bytes_restored, "rate": d.rate}));
            o.line(
                &name,
                format!(
                    "{phase}: dumped {}, restored {} ({}/s)",
                    mib(s.bytes_dumped),
                    mib(d.bytes_restored),
                    mib(d.rate as u64)
                ),
                true,
            );
        }
        Event::Committed { database, previous } => {
            o.event(json!({"event": "committed", "pair": name, "database": database, "previous": previous}));
        }
        Event::Preflight { source_size } => {
            o.event(json!({"event": "preflight_ok", "pair": name, "source_size": source_size}));
        }
        Event::Prepared {
            job_id,
            new_database,
        } => {
            o.event(json!({"event": "prepared", "pair": name, "job_id": job_id, "new_database": new_database}));
        }
    };
    let db = refresh(tls, &spec, on_event);
    let s3 = run_copies(&plan.pairs[pair].copies, out.clone(), pair, false);
    let (result, (copied, copy_errors)) = tokio::join!(db, s3);
    let ms = t0.elapsed().as_millis() as u64;
    match result {
        Ok(r) if copy_errors.is_empty() => {
            let objects: u64 = copied.iter().map(|c| c.1.copied.objects).sum();
            out.finish(
                pair,
                format!(
                    "ok in {:.1} s, {} restored, {objects} objects copied",
                    ms as f64 / 1000.0,
                    mib(r.bytes_restored)
                ),
            );
            let mut steps = vec![("database".to_string(), ms)];
            steps.extend(copied.iter().map(|(n, _, ms)| (format!("s3:{n}"), *ms)));
            Ok(PairResult {
                record: Record {
                    run_id: run_id.to_string(),
                    pair: pair.to_string(),
                    started,
                    finished: history::now(),
                    outcome: "ok".into(),
                    bytes_dumped: r.bytes_dumped,
                    bytes_restored: r.bytes_restored,
                    objects_copied: objects,
                    bytes_copied: copied.iter().map(|c| c.1.copied.bytes).sum(),
                    objects_deleted: copied.iter().map(|c| c.1.deleted.objects).sum(),
                    steps,
                    ..Default::default()
                },
            })
        }
        Ok(_) => {
            let e = copy_errors.join("; ");
            out.finish(pair, format!("failed: {e}"));
            Err(format!(
                "failed\u{1}the database was refreshed, but S3: {e}"
            ))
        }
        Err(e @ RefreshError::Preflight(_)) => {
            out.finish(pair, format!("refused: {e}"));
            Err(format!("refused\u{1}{e}"))
        }
        Err(e) => {
            out.finish(pair, format!("failed: {e}"));
            Err(format!("failed\u{1}{e}"))
        }
    }
}

/// Running totals of one copy, fed by the engine's events from many tasks.
#[derive(Default)]
struct CopyTally {
    listed_objects: AtomicU64,
    listed_bytes: AtomicU64,
    done_bytes: AtomicU64,
    copied: AtomicU64,
    copied_bytes: AtomicU64,
    skipped: AtomicU64,
    deleted: AtomicU64,
    failed: AtomicU64,
}

/// How often a copy's bar is brought up to date from its tally.
const REDRAW: Duration = Duration::from_millis(100);

impl CopyTally {
    fn draw(&self, bar: &ProgressBar, dry_run: bool) {
        bar.set_length(self.listed_bytes.load(Ordering::Relaxed));
        bar.set_position(self.done_bytes.load(Ordering::Relaxed));
        bar.set_message(self.summary(dry_run));
    }

    fn apply(&self, e: &stagesync_s3::Event) {
        use stagesync_s3::Event as E;
        let add = |a: &AtomicU64, n: u64| {
            a.fetch_add(n, Ordering::Relaxed);
        };
        match e {
            E::Listed {
                side: stagesync_s3::Side::Source,
                objects,
                bytes,
            } => {
                add(&self.listed_objects, *objects);
                add(&self.listed_bytes, *bytes);
            }
            E::Listed { .. } | E::Retrying { .. } => {}
            E::Copied { bytes, .. } | E::WouldCopy { bytes, .. } => {
                add(&self.copied, 1);
                add(&self.copied_bytes, *bytes);
                add(&self.done_bytes, *bytes);
            }
            E::Skipped { bytes, .. } => {
                add(&self.skipped, 1);
                add(&self.done_bytes, *bytes);
            }
            E::Deleted { .. } | E::WouldDelete { .. } => add(&self.deleted, 1),
            E::Failed { .. } => add(&self.failed, 1),
        }
    }

    fn summary(&self, dry_run: bool) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut text = format!(
            "{} of {} objects listed, {} {} ({}), {} unchanged, {} {}",
            get(&self.copied) + get(&self.skipped),
            get(&self.listed_objects),
            get(&self.copied),
            if dry_run { "to copy" } else { "copied" },
            mib(get(&self.copied_bytes)),
            get(&self.skipped),
            get(&self.deleted),
            if dry_run { "to delete" } else { "deleted" },
        );
        if get(&self.failed) > 0 {
            text.push_str(&format!(", {} failed", get(&self.failed)));
        }
        text
    }
}

/// `ServerSideMultipart` → `server_side_multipart`, for JSON events.
fn snake(debug: impl std::fmt::Debug) -> String {
    let mut out = String::new();
    for (i, c) in format!("{debug:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// One JSON event per object that changed (or would change), failed or is
/// retried; listings and unchanged objects only count in the totals.
fn s3_event(pair: &str, copy: &str, e: &stagesync_s3::Event) -> Option<serde_json::Value> {
    use stagesync_s3::Event as E;
    Some(match e {
        E::Copied {
            key,
            bytes,
            method,
            reason,
        } => {
            json!({"event": "s3_copied", "pair": pair, "copy": copy, "key": key, "bytes": bytes, "method": snake(method), "reason": snake(reason)})
        }
        E::WouldCopy { key, bytes, reason } => {
            json!({"event": "s3_would_copy", "pair": pair, "copy": copy, "key": key, "bytes": bytes, "reason": snake(reason)})
        }
        E::Deleted { key } => {
            json!({"event": "s3_deleted", "pair": pair, "copy": copy, "key": key})
        }
        E::WouldDelete { key } => {
            json!({"event": "s3_would_delete", "pair": pair, "copy": copy, "key": key})
        }
        E::Failed { key, error } => {
            json!({"event": "s3_failed", "pair": pair, "copy": copy, "key": key, "error": error})
        }
        E::Retrying { key, error } => {
            json!({"event": "s3_retrying", "pair": pair, "copy": copy, "key": key, "error": error})
        }
        E::Listed { .. } | E::Skipped { .. } => return None,
    })
}

/// Runs a pair's S3 copies one after the other (alongside its database
/// refresh), each with its own progress bar on a terminal. Returns the
/// reports and the errors.
async fn run_copies(
    copies: &[stagesync_s3::CopySpec],
    out: Arc<Output>,
    pair: &str,
    dry_run: bool,
) -> (Vec<(String, stagesync_s3::SyncReport, u64)>, Vec<String>) {
    let pool = stagesync_s3::ClientPool::new();
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for c in copies {
        let t0 = Instant::now();
        let tally = Arc::new(CopyTally::default());
        let bar = out.copy_bar(pair, &c.name);
        let progress: stagesync_s3::Progress = {
            let (o, p, name, tally, bar) = (
                out.clone(),
                pair.to_string(),
                c.name.clone(),
                tally.clone(),
                bar.clone(),
            );
            let line_key = format!("{p} s3 {name}");
            Arc::new(move |e: stagesync_s3::Event| {
                tally.apply(&e);
                if let Some(v) = s3_event(&p, &name, &e) {
                    o.event(v);
                }
                // A copy sends an event per object: a bar is drawn from the
                // tally by its own ticker, and lines only when shown.
                if bar.is_none() {
                    o.line_with(&line_key, || tally.summary(dry_run), true);
                }
            })
        };
        let ticker = bar.clone().map(|b| {
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REDRAW);
                loop {
                    tick.tick().await;
                    tally.draw(&b, dry_run);
                }
            })
        });
        let options = stagesync_s3::SyncOptions {
            dry_run,
            record_keys: dry_run,
        };
        let result = stagesync_s3::sync_with(&pool, c, options, progress).await;
        if let Some(t) = ticker {
            t.abort();
        }
        if let Some(b) = &bar {
            tally.draw(b, dry_run);
        }
        let ms = t0.elapsed().as_millis() as u64;
        match result {
            Ok(r) => {
                let text = format!(
                    "s3 {}: {} {} objects ({}), {} {} objects, {} unchanged",
                    c.name,
                    if dry_run { "would copy" } else { "copied" },
                    r.copied.objects,
                    mib(r.copied.bytes),
                    if dry_run { "would delete" } else { "deleted" },
                    r.deleted.objects,
                    r.skipped.objects
                );
                out.event(json!({"event": "s3_finished", "pair": pair, "copy": c.name, "dry_run": dry_run, "objects_copied": r.copied.objects, "bytes_copied": r.copied.bytes, "objects_deleted": r.deleted.objects, "objects_unchanged": r.skipped.objects, "ms": ms}));
                match &bar {
                    Some(b) => b.finish_with_message(format!("done: {}", tally.summary(dry_run))),
                    None => out.line(pair, text, false),
                }
                done.push((c.name.clone(), r, ms));
            }
            Err(e) => {
                out.event(json!({"event": "s3_finished", "pair": pair, "copy": c.name, "dry_run": dry_run, "error": e.to_string(), "ms": ms}));
                if let Some(b) = &bar {
                    b.abandon_with_message(format!("failed: {e}"));
                }
                errors.push(e.to_string());
            }
        }
    }
    (done, errors)
}

#[derive(clap::Args)]
pub struct PlanArgs {
    /// Pairs to look at (default: all).
    pairs: Vec<String>,
    #[command(flatten)]
    plan: PlanArg,
}

/// `stagesync plan`: what `sync` would do, changing nothing.
pub fn plan_cmd(args: PlanArgs) -> anyhow::Result<Exit> {
    let plan = match load_plan(&args.plan.plan) {
        Ok(p) => p,
        Err(exit) => return Ok(exit),
    };
    let pairs = if args.pairs.is_empty() {
        plan.order()
    } else {
        args.pairs.clone()
    };
    for p in &pairs {
        if !plan.pairs.contains_key(p) {
            eprintln!(
                "stagesync: no pair named {p:?} in {}",
                plan.source.display()
            );
            return Ok(Exit::Usage);
        }
    }
    let tls = Arc::new(ReloadingClientConfig::load(plan.tls.clone())?);
    let td = tls.identity().trust_domain;
    let runtime = runtime()?;
    let out = Arc::new(Output {
        json: false,
        bars: None,
        last_line: Mutex::new(BTreeMap::new()),
    });
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "PAIR",
        "SOURCE",
        "SIZE",
        "DESTINATION",
        "MODE",
        "PREFLIGHT",
        "S3: COPY / DELETE",
    ]);
    let mut refused = 0;
    for name in &pairs {
        let p = &plan.pairs[name];
        let (preflight, size) = runtime.block_on(async {
            let spec = match plan.pair_spec(name, &td, |k| std::env::var(k).ok()) {
                Ok(s) => s,
                Err(e) => return (format!("refused: {e}"), String::new()),
            };
            if let Err(e) = stagesync_controller::checks::run(&p.preflight, &[]).await {
                return (format!("refused: {e}"), String::new());
            }
            match stagesync_controller::refresh::preflight(tls.clone(), &spec).await {
                Ok(ready) => {
                    let size = match &ready.source {
                        CheckedSource::Backup(l) => {
                            format!("backup {} ({})", l.manifest.taken, mib(l.manifest.size))
                        }
                        CheckedSource::Agent(_) => mib(ready.source_size(&spec)),
                    };
                    ("ok".to_string(), size)
                }
                Err(e) => (format!("refused: {e}"), String::new()),
            }
        });
        if preflight != "ok" {
            refused += 1;
        }
        let (reports, errors) = runtime.block_on(run_copies(&p.copies, out.clone(), name, true));
        let mut s3: Vec<String> = reports
            .iter()
            .map(|(n, r, _)| {
                format!(
                    "{n}: {} ({}) / {}",
                    r.copied.objects,
                    mib(r.copied.bytes),
                    r.deleted.objects
                )
            })
            .collect();
        s3.extend(errors.iter().map(|e| format!("error: {e}")));
        table.add_row(vec![
            name.clone(),
            match &p.source_backup {
                Some(b) => format!("{}{}/", b.place, p.source_db),
                None => format!("{}/{}", p.source_agent, p.source_db),
            },
            size,
            format!("{}/{} (owner {})", p.dest_agent, p.dest_db, p.owner),
            format!("{:?}", p.mode).to_lowercase(),
            preflight,
            if s3.is_empty() {
                "(none)".into()
            } else {
                s3.join("\n")
            },
        ]);
    }
    println!("{table}");
    println!("nothing was changed; `stagesync sync` would do the above");
    Ok(if refused == 0 {
        Exit::Ok
    } else if refused < pairs.len() {
        Exit::Partial
    } else {
        Exit::Refused
    })
}

#[derive(clap::Args)]
pub struct HistoryArgs {
    /// Only this pair.
    pair: Option<String>,
    #[command(flatten)]
    plan: PlanArg,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The last N runs.
    #[arg(long, default_value_t = 20)]
    last: usize,
}

pub fn history_cmd(args: HistoryArgs) -> anyhow::Result<Exit> {
    let dir = match args.state_dir {
        Some(d) => d,
        None => match plan::load(&args.plan.plan) {
            Ok(p) => state_dir(None, &p),
            Err(_) => history::default_state_dir(),
        },
    };
    let records = history::read(&dir, args.pair.as_deref())
        .with_context(|| format!("reading {}", dir.display()))?;
    if records.is_empty() {
        println!("no runs recorded in {}", dir.display());
        return Ok(Exit::Ok);
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "STARTED", "PAIR", "OUTCOME", "SECONDS", "DUMPED", "RESTORED", "ERROR",
    ]);
    let skip = records.len().saturating_sub(args.last);
    for r in records.iter().skip(skip) {
        let secs = r.steps.iter().map(|(_, ms)| *ms).sum::<u64>() as f64 / 1000.0;
        table.add_row(vec![
            r.started.clone(),
            r.pair.clone(),
            r.outcome.clone(),
            format!("{secs:.1}"),
            mib(r.bytes_dumped),
            mib(r.bytes_restored),
            r.error
                .clone()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        ]);
    }
    println!("{table}");
    Ok(Exit::Ok)
}

/// The controller only coordinates: agents move the database, and S3 copies
/// are many small requests. One thread does both, and spends less CPU on
/// handing work between threads than a pool would (measured on the S3
/// benchmark's no-change re-run: about a fifth less).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
