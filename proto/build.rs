//! Generates the gRPC code from `proto/` with a protoc that ships as a crate,
//! so a build needs nothing but the Rust toolchain.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Dump data moves from socket to pipe without being copied into a Vec.
    config.bytes([".stagesync.v1.DumpData.payload"]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/stagesync/v1/agent.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
