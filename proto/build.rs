//! Compiles `locsvc/v1/*.proto` with a vendored `protoc`, so building needs
//! no system protobuf compiler.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    let protos = [
        "locsvc/v1/location.proto",
        "locsvc/v1/cluster.proto",
        "locsvc/v1/subscriber.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("locsvc_descriptor.bin"))
        .compile_with_config(config, &protos, &["."])?;
    Ok(())
}
