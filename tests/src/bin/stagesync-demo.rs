//! `stagesync-demo`: a real refresh on a throwaway local fleet (see the
//! harness's `demo` module). Started with `STAGESYNC_DEMO_AS_CLI=1`, it is
//! the `stagesync` command instead: that is how the demo runs the real
//! `plan` and `sync` without a `stagesync` binary built beside it.

use std::process::ExitCode;

use clap::Parser;
use stagesync_harness::demo;

/// As in `stagesync`: the demo's agents run in this process, and its
/// `stagesync` children are this binary too.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run a real refresh on a throwaway local fleet (two PostgreSQL clusters,
/// an S3-API server, two agents), show what changed and the direction
/// guard, then clean up.
#[derive(Parser)]
#[command(name = "stagesync-demo", version)]
struct DemoArgs {
    /// Leave the fleet running after the demo (until Ctrl-C) and print how
    /// to look around.
    #[arg(long)]
    keep: bool,
    /// Run the clusters as a managed service would: TLS over TCP, password
    /// logins, and agents whose roles are no superuser.
    #[arg(long)]
    tcp: bool,
}

fn main() -> ExitCode {
    if demo::asked_to_be_cli() {
        return stagesync_cli::main();
    }
    let args = DemoArgs::parse();
    stagesync_cli::init_logging();
    stagesync_cli::report(demo::run(args.keep, args.tcp))
}
