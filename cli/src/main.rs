//! `stagesync`: the command-line tool. All the work is in the library.

/// The S3 engine makes many small allocations per request (the AWS SDK's
/// request pipeline); mimalloc serves them with less CPU than the system
/// allocator (bench/s3-sync).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    stagesync_cli::main()
}
