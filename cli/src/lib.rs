//! The `stagesync` command line: argument parsing and output. The work
//! itself is in `stagesync-controller` and `stagesync-certs`.

#![forbid(unsafe_code)]

mod backup_cmd;
mod backups_cmd;
mod certs_cmd;
mod demo;
mod exit;
mod history_cmd;
mod import_cmd;
mod mask_cmd;
mod output;
mod plan_cmd;
mod refresh_cmd;
mod status_cmd;
mod sync_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use exit::Exit;

/// stagesync refreshes staging from production: PostgreSQL through agents
/// on the database hosts, S3 buckets from here.
#[derive(Parser)]
#[command(name = "stagesync", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the fleet CA and certificates.
    #[command(subcommand)]
    Certs(certs_cmd::CertsCommand),
    /// Ask agents what they are, what they run and what they may do.
    Status(status_cmd::StatusArgs),
    /// Refresh pairs of the plan (databases, in `after` order).
    Sync(sync_cmd::SyncArgs),
    /// Show what `sync` would do (databases, preflight, S3 copies and
    /// deletes), changing nothing.
    Plan(plan_cmd::PlanArgs),
    /// Show what earlier runs did.
    History(history_cmd::HistoryArgs),
    /// Refresh one database from another through their agents.
    Refresh(Box<refresh_cmd::RefreshArgs>),
    /// Swap the previous copy of a database back in.
    Rollback(refresh_cmd::RollbackArgs),
    /// Back databases up into S3: the agent streams pg_dump into the plan's
    /// [backups] place, then applies retention.
    Backup(backup_cmd::BackupArgs),
    /// List or verify the backups in the plan's [backups] place.
    #[command(subcommand)]
    Backups(backups_cmd::BackupsCommand),
    /// Turn the Ansible role's vars files into plan pairs (printed; warnings
    /// for settings without an equivalent).
    #[command(name = "import-ansible")]
    ImportAnsible(import_cmd::ImportArgs),
    /// The masking tools of a pair's source agent: check its rules against
    /// the live schema, suggest rules, preview masked rows.
    #[command(subcommand)]
    Mask(mask_cmd::MaskCommand),
    /// Print a shell completion script (e.g. `stagesync completions bash > /etc/bash_completion.d/stagesync`).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), generated from this command line.
    Man,
    /// Run a real refresh on a throwaway local fleet (two PostgreSQL
    /// clusters, an S3-API server, two agents), show what changed and the
    /// direction guard, then clean up.
    Demo(demo::DemoArgs),
}

/// Where the controller's certificate comes from.
#[derive(clap::Args, Clone, Debug)]
pub struct TlsArgs {
    /// Certs directory made by `stagesync certs init` (ca.crt, controller-NAME.crt/.key).
    #[arg(long, env = "STAGESYNC_CERTS_DIR", default_value = "certs")]
    pub certs_dir: PathBuf,
    /// Controller name whose certificate to use (default: the only controller-*.crt in the certs directory).
    #[arg(long, env = "STAGESYNC_CONTROLLER")]
    pub controller: Option<String>,
    /// CA certificate (overrides the certs directory).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Controller certificate (overrides the certs directory).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Controller private key (overrides the certs directory).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Certs(cmd) => certs_cmd::run(cmd),
        Command::Status(args) => status_cmd::run(args),
        Command::Refresh(args) => refresh_cmd::run(*args),
        Command::Sync(args) => sync_cmd::run(args),
        Command::History(args) => history_cmd::run(args),
        Command::Plan(args) => plan_cmd::run(args),
        Command::Rollback(args) => refresh_cmd::run_rollback(args),
        Command::ImportAnsible(args) => import_cmd::run(args),
        Command::Backup(args) => backup_cmd::run(args),
        Command::Backups(cmd) => backups_cmd::run(cmd),
        Command::Mask(cmd) => mask_cmd::run(cmd),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "stagesync", &mut std::io::stdout());
            Ok(Exit::Ok)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => Ok(Exit::Ok),
                Err(e) => Err(anyhow::anyhow!("writing the man page: {e}")),
            }
        }
        Command::Demo(args) => demo::run(args),
    };
    report(result)
}

/// The one logging set-up of `stagesync` (and of `stagesync-demo`, which
/// runs in its place): warnings and up on stderr, `STAGESYNC_LOG` to tune.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STAGESYNC_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Turns a command's outcome into the process exit code; an error is
/// printed first, so every failure of the command says why.
pub fn report(result: anyhow::Result<Exit>) -> ExitCode {
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("stagesync: error: {e:#}");
            Exit::Failed.into()
        }
    }
}
