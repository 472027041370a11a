//! `stagesync refresh` and `stagesync rollback`: one database pair, named
//! on the command line (the plan file's `sync` runs many).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use stagesync_certs::{Identity, Kind, ReloadingClientConfig};
use stagesync_controller::AgentTarget;
use stagesync_controller::refresh::{
    Compress, CopyFormat, Event, PairSpec, RefreshError, Report, abort_all, refresh, rollback,
};
use stagesync_proto::v1 as pb;

use crate::output::{Output, mib};
use crate::status_cmd::tls_files;
use crate::{Exit, TlsArgs};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CopyFormatArg {
    Auto,
    Text,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    /// The schema by pg_dump, table data in COPY lanes, indexes as tables
    /// land; nothing lands on disk but the schema.
    Stream,
    /// Retired (stream mode's copy lanes are faster): refused with a note.
    Parallel,
}

#[derive(clap::Args)]
pub struct RefreshArgs {
    /// The source agent, NAME=HOST:PORT.
    #[arg(long, value_name = "NAME=HOST:PORT")]
    source: String,
    /// The database to copy.
    #[arg(long)]
    source_db: String,
    /// The destination agent, NAME=HOST:PORT.
    #[arg(long, value_name = "NAME=HOST:PORT")]
    dest: String,
    /// The database to replace.
    #[arg(long)]
    dest_db: String,
    /// The role that will own everything restored.
    #[arg(long)]
    owner: String,
    #[arg(long, value_enum, default_value = "stream")]
    mode: ModeArg,
    /// Workers: for the whole restore in parallel mode; in stream mode for
    /// indexes, constraints and triggers after the data (1: one pass).
    #[arg(long, default_value_t = 2)]
    jobs: u32,
    /// Stream mode: copy table data in at most this many concurrent COPY
    /// lanes, largest tables first (default: --jobs; 0: all data in
    /// pg_dump's one stream).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=stagesync_proto::MAX_COPY_LANES as i64))]
    lanes: Option<u32>,
    /// How copy lanes carry rows: "auto" sends a table in PostgreSQL's
    /// binary COPY format when all its columns allow it and both servers
    /// run one major version; "text" always sends text.
    #[arg(long, value_enum, default_value = "auto")]
    copy_format: CopyFormatArg,
    /// Send the dump uncompressed (for fast links where CPU is scarcer).
    /// Default: zstd, except between agents on one host (loopback).
    #[arg(long, conflicts_with = "compress")]
    no_compress: bool,
    /// Compress with zstd even between agents on one host.
    #[arg(long)]
    compress: bool,
    /// Tables to leave out (pg_dump patterns).
    #[arg(long)]
    exclude_table: Vec<String>,
    /// Tables whose rows to leave out, e.g. big cache tables.
    #[arg(long)]
    exclude_table_data: Vec<String>,
    /// Only these schemas.
    #[arg(long)]
    schema: Vec<String>,
    #[arg(long)]
    exclude_schema: Vec<String>,
    /// Extra pg_dump arguments (only harmless ones are accepted, e.g. --no-comments).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pg_dump_arg: Vec<String>,
    /// Extra pg_restore arguments (only harmless ones are accepted).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pg_restore_arg: Vec<String>,
    /// Restore GRANT/REVOKE from the dump (off by default: production's
    /// roles rarely exist on staging).
    #[arg(long)]
    privileges: bool,
    /// SQL run in the new database before the swap; ${NAME} takes the value
    /// of environment variable NAME (see --param).
    #[arg(long, value_name = "FILE")]
    post_restore_sql: Option<PathBuf>,
    /// Environment variables the post-restore SQL may use as ${NAME}.
    #[arg(long, value_name = "NAME")]
    param: Vec<String>,
    /// The address the source agent dials for the destination, if not --dest's.
    #[arg(long, value_name = "HOST:PORT")]
    dest_peer_address: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    /// A pair of the plan: its destination database is rolled back.
    pair: Option<String>,
    #[command(flatten)]
    plan: crate::sync_cmd::PlanArg,
    /// Without a plan: the destination agent, NAME=HOST:PORT.
    #[arg(
        long,
        value_name = "NAME=HOST:PORT",
        conflicts_with = "pair",
        requires = "database"
    )]
    dest: Option<String>,
    /// Without a plan: the database to roll back to its previous copy.
    #[arg(long, conflicts_with = "pair", requires = "dest")]
    database: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

fn target(spec: &str, trust_domain: &str, flag: &str) -> anyhow::Result<AgentTarget> {
    let (name, address) = spec
        .split_once('=')
        .with_context(|| format!("{flag} {spec:?}: use NAME=HOST:PORT"))?;
    Ok(AgentTarget {
        address: address.to_string(),
        expected: Some(
            Identity::new(trust_domain, Kind::Agent, name)
                .with_context(|| format!("{flag} {spec:?}"))?,
        ),
    })
}

pub fn run(args: RefreshArgs) -> anyhow::Result<Exit> {
    if let ModeArg::Parallel = args.mode {
        anyhow::bail!(
            "--mode parallel: {}",
            stagesync_controller::refresh::PARALLEL_RETIRED
        );
    }
    let tls = Arc::new(ReloadingClientConfig::load(tls_files(&args.tls)?)?);
    let spec = spec(&args, &tls.identity().trust_domain)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let out = Output::new(false);
    let item = format!("{} → {}", args.source_db, args.dest_db);
    out.start(&item);
    let job_id: Mutex<Option<String>> = Mutex::default();
    let on_event = |e: Event| {
        if let Event::Prepared { job_id: id, .. } = &e {
            *job_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        }
        let (line, throttle) = event_line(e);
        out.line(&item, line, throttle);
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = refresh(tls.clone(), &spec, on_event) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    out.clear();
    let Some(result) = result else {
        let job = job_id.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(job) = &job {
            let reason = "interrupted by the operator";
            runtime.block_on(abort_all(tls, &spec, job, reason));
        }
        eprintln!(
            "stagesync: interrupted{}; the destination database {:?} is unchanged",
            job.map(|j| format!(": job {j} aborted"))
                .unwrap_or_default(),
            args.dest_db
        );
        return Ok(Exit::Interrupted);
    };
    Ok(print_result(&args, result))
}

/// The refresh the arguments ask for.
fn spec(args: &RefreshArgs, td: &str) -> anyhow::Result<PairSpec> {
    let mut spec = PairSpec::new(
        target(&args.source, td, "--source")?,
        &args.source_db,
        target(&args.dest, td, "--dest")?,
        &args.dest_db,
        &args.owner,
    );
    spec.mode = match args.mode {
        ModeArg::Stream => pb::Mode::Stream,
        ModeArg::Parallel => anyhow::bail!(
            "--mode parallel: {}",
            stagesync_controller::refresh::PARALLEL_RETIRED
        ),
    };
    spec.jobs = args.jobs;
    spec.lanes = args.lanes;
    spec.copy_format = match args.copy_format {
        CopyFormatArg::Auto => CopyFormat::Auto,
        CopyFormatArg::Text => CopyFormat::Text,
    };
    spec.compress = match (args.compress, args.no_compress) {
        (true, _) => Compress::Always,
        (_, true) => Compress::Never,
        _ => Compress::Auto,
    };
    spec.dest_peer_address = args.dest_peer_address.clone();
    spec.dump = pb::DumpOptions {
        exclude_tables: args.exclude_table.clone(),
        exclude_table_data: args.exclude_table_data.clone(),
        schemas: args.schema.clone(),
        exclude_schemas: args.exclude_schema.clone(),
        extra_args: args.pg_dump_arg.clone(),
    };
    spec.restore = pb::RestoreOptions {
        privileges: args.privileges,
        extra_args: args.pg_restore_arg.clone(),
    };
    if let Some(file) = &args.post_restore_sql {
        spec.post_restore_sql = std::fs::read_to_string(file)
            .with_context(|| format!("--post-restore-sql {}", file.display()))?;
    }
    let mut params = HashMap::new();
    for name in &args.param {
        match std::env::var(name) {
            Ok(v) => {
                params.insert(name.clone(), v);
            }
            Err(_) => bail!("--param {name}: environment variable {name} is not set"),
        }
    }
    spec.params = params;
    Ok(spec)
}

/// A refresh event as a line, and whether lines of its kind are throttled.
fn event_line(e: Event) -> (String, bool) {
    match e {
        Event::Preflight { source_size } => (
            format!("preflight ok: source database is {}", mib(source_size)),
            false,
        ),
        Event::Prepared {
            job_id,
            new_database,
        } => (
            format!("job {job_id}: restoring into {new_database}"),
            false,
        ),
        Event::Progress { source, dest } => {
            let s = source.map(|s| *s).unwrap_or_default();
            let d = dest.map(|d| *d).unwrap_or_default();
            let phase = pb::Phase::try_from(d.phase)
                .map(|p| format!("{p:?}"))
                .unwrap_or_default();
            let line = format!(
                "{}: dumped {}, sent {}, restored {} ({}/s){}",
                phase.to_lowercase(),
                mib(s.bytes_dumped),
                mib(s.bytes_sent),
                mib(d.bytes_restored),
                mib(d.rate as u64),
                crate::output::lanes::text(&d)
            );
            (line, true)
        }
        Event::Committed { database, previous } => (
            format!("swapped in {database}; the old one is kept as {previous}"),
            false,
        ),
    }
}

/// Says how the refresh ended; its exit code.
fn print_result(args: &RefreshArgs, result: Result<Report, RefreshError>) -> Exit {
    match result {
        Ok(r) => {
            println!(
                "refreshed {:?} from {:?} in {:.1} s: {} dumped, {} sent, {} restored{}; the previous copy is {:?} (undo with `stagesync rollback --dest {} --database {:?}`)",
                r.database,
                args.source_db,
                r.elapsed.as_secs_f64(),
                mib(r.bytes_dumped),
                mib(r.bytes_sent),
                mib(r.bytes_restored),
                match (r.data_lanes, r.post_data_jobs) {
                    (0 | 1, 0) => String::new(),
                    (0 | 1, n) => format!(", indexes and constraints built by {n} workers"),
                    (l, n) => format!(
                        ", {} tables ({} rows, {} tables in binary) copied in {} lanes with {} indexes built as their tables landed in {:.1} s, the rest of the post-data section by {n} workers in {:.1} s",
                        r.tables_copied,
                        r.rows_copied,
                        r.tables_binary,
                        l - 1,
                        r.indexes_built,
                        r.copy_time.as_secs_f64(),
                        r.rest_time.as_secs_f64()
                    ),
                },
                r.previous,
                args.dest,
                r.database
            );
            Exit::Ok
        }
        Err(e @ RefreshError::Preflight(_)) => {
            eprintln!("stagesync: refused: {e}\nstagesync: nothing was changed");
            Exit::Refused
        }
        Err(e) => {
            eprintln!(
                "stagesync: refresh failed: {e}\nstagesync: the destination database {:?} is unchanged",
                args.dest_db
            );
            Exit::Failed
        }
    }
}

pub fn run_rollback(args: RollbackArgs) -> anyhow::Result<Exit> {
    let (tls_files, dest_spec, database) = match (&args.pair, &args.dest, &args.database) {
        (Some(pair), _, _) => {
            let plan = match crate::sync_cmd::load_plan(&args.plan.plan) {
                Ok(p) => p,
                Err(exit) => return Ok(exit),
            };
            let Some(p) = plan.pairs.get(pair) else {
                eprintln!(
                    "stagesync: no pair named {pair:?} in {}",
                    plan.source.display()
                );
                return Ok(Exit::Usage);
            };
            let a = &plan.agents[&p.dest_agent];
            (
                plan.tls.clone(),
                format!("{}={}", a.name, a.endpoint),
                p.dest_db.clone(),
            )
        }
        (None, Some(dest), Some(db)) => (tls_files(&args.tls)?, dest.clone(), db.clone()),
        _ => bail!("name a pair of the plan, or give --dest NAME=HOST:PORT and --database DB"),
    };
    let tls = Arc::new(ReloadingClientConfig::load(tls_files)?);
    let td = tls.identity().trust_domain;
    let dest = target(&dest_spec, &td, "--dest")?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match runtime.block_on(rollback(tls, &dest, &database)) {
        Ok(r) => {
            println!(
                "rolled {:?} back to its previous copy; the replaced one is now {:?} (roll back again to undo)",
                r.database, r.previous_database
            );
            Ok(Exit::Ok)
        }
        Err(e) => {
            eprintln!("stagesync: rollback failed: {e}");
            Ok(Exit::Failed)
        }
    }
}
