//! `stagesync`: the command-line tool. All the work is in the library.

fn main() -> std::process::ExitCode {
    stagesync_cli::main()
}
