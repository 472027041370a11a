//! `stagesync-agent --config /etc/stagesync/agent.toml`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use stagesync_agent::{EXIT_CONFIG, EXIT_UNAVAILABLE, config, db};
use tokio::signal::unix::{SignalKind, signal};

/// The stagesync agent: dumps and restores the local PostgreSQL databases
/// its policy allows, for the controllers and peers its policy names.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The agent's configuration file.
    #[arg(long, short, default_value = config::DEFAULT_PATH, env = "STAGESYNC_AGENT_CONFIG")]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cfg = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stagesync-agent: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if args.check {
        println!("{}: ok ({})", args.config.display(), cfg.identity);
        return check_server(&cfg);
    }
    raise_open_files();
    keep_freed_memory();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.jobs.worker_threads)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stagesync-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cfg))
}

/// glibc gives large freed blocks back to the kernel (its mmap threshold
/// and heap trim), so every chunk a copy lane reads would be a fresh
/// mapping, faulted in and zeroed page by page: about a sixth of a source
/// agent's CPU on the benchmark. Blocks up to 8 MiB come from the heap, and
/// up to 64 MiB of it is kept free for reuse; what the heap holds stays
/// bounded by the data in flight.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 8 << 20);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// `--check` on a restoring agent: can a job's restore log in as its own
/// role? A server that cannot be reached is reported but does not fail the
/// check (the configuration itself is fine); a refused login does, with the
/// line to add.
fn check_server(cfg: &config::AgentConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stagesync-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(stagesync_agent::check_postgres(cfg)) {
        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
        Err((true, e)) => {
            eprintln!("stagesync-agent {}: {e}", cfg.name);
            return ExitCode::from(EXIT_CONFIG as u8);
        }
        Err((false, e)) => {
            println!("postgres: not reachable now: {e}");
            return ExitCode::SUCCESS;
        }
    }
    match runtime.block_on(stagesync_agent::check_job_logins(cfg)) {
        None => ExitCode::SUCCESS,
        Some(Ok(db::JobLogins::PerJobRole)) => {
            println!("job logins: ok (restores run as a role of group stagesync_jobs)");
            ExitCode::SUCCESS
        }
        Some(Ok(db::JobLogins::AgentLogin)) => {
            println!(
                "job logins: restores run as the agent's own login, which is no superuser (with SET ROLE to the owner)"
            );
            ExitCode::SUCCESS
        }
        Some(Err(db::LoginProblem::Refused(e))) => {
            eprintln!("stagesync-agent: {e}");
            ExitCode::from(EXIT_CONFIG as u8)
        }
        Some(Err(db::LoginProblem::Failed(e))) => {
            println!("job logins: not checked: {e}");
            ExitCode::SUCCESS
        }
    }
}

/// Lets the agent use every file descriptor its hard limit allows: a flood
/// of connections must not leave none for the database, the tools and the
/// controllers (each connection is bounded in time, not in number of fds).
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

async fn run(cfg: config::AgentConfig) -> ExitCode {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %cfg.source.display(), agent = %cfg.identity, "starting");
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "stagesync-agent: cannot listen on {} (listen in {}): {e}",
                cfg.listen,
                cfg.source.display()
            );
            return ExitCode::from(EXIT_UNAVAILABLE as u8);
        }
    };
    match listener.local_addr() {
        Ok(addr) => tracing::info!(listen = %addr, "listening"),
        Err(_) => tracing::info!(listen = %cfg.listen, "listening"),
    }
    // Watch the signals before telling systemd we are ready, so a stop
    // right after start is never missed.
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("stagesync-agent: cannot watch SIGTERM/SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    };
    let ready = || {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    };
    match stagesync_agent::serve_with_ready(listener, cfg, shutdown, ready).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stagesync-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
