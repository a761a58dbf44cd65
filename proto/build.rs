//! Generates the gRPC types and services from the protos with `protox`, a protobuf
//! compiler in Rust (no `protoc` to install), and keeps the encoded descriptors for gRPC
//! reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: [&str; 1] = ["logpipeline/v1/log_service.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=logpipeline");
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("logpipeline_descriptors.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .skip_protoc_run()
        .compile_fds(descriptors)?;
    Ok(())
}
